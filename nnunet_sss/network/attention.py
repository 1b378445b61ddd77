"""What a Bi-WKV layer attends to: the exact weight each token of a query's partition gets.

The WKV output at position t of a sequence of real length T is a weighted mean of the values
(design section 2, w' = w/T, u' = u/T), per channel c:

    y_t = sum_i a_ti v_i,   a_ti = exp(l_ti) / sum_j exp(l_tj),
    l_ti = k_i - (|t-i| - 1) w'    (i != t),      l_tt = k_t + u'

so a_t. is a softmax over the sequence: the decay with the distance along the scan, the bonus
at the token itself and exp(k) of each key. A spatial mix runs one sequence per window and
scan order and merges the orders with its softmax scan weights s_o, so the merged output at a
map token q is sum_o s_o sum_i a^o_{t_o(q), i} v_{p_o(i)}: one weight per token of q's window
(the same window in every order; each order visits it in its own permutation). Those weights
sum to 1 over the window and are exactly 0 outside it.

With the low-resolution WKV (pool p), the sequences run over the pooled map: the value of a
pooled token is the mean of the values of the full-resolution tokens of its cell (the mix and
the projection are linear, so they commute with the mean), and every token of a cell reads
the output of its pooled token (nearest repeat). At the layer's own resolution, a token j of
the query's partition therefore gets its cell's weight divided by the cell's real token count:
again weights that sum to 1, exactly what y at the query is made of.

`WKVProbe` watches one spatial mix (it is the mix's `wkv_probe`): it keeps, as float64 copies,
the inputs of the WKV of one forward; `layer_weights` turns them into the map of one query.
`attention_maps` does both for every spatial mix of a network and one input voxel.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .scan import ScanPlan
from .spatial_mix import SpatialMix


@dataclass
class WKVInputs:
    """One sample's WKV inputs as a spatial mix saw them (float64, on the CPU)."""

    keys: Tensor                   # (K*W, T, C) scanned keys of the sample
    plan: ScanPlan                 # windows, orders, index / inverse / lengths (on the CPU)
    decay: Tensor                  # (C,) w as the operator takes it (it divides by the real length)
    bonus: Tensor                  # (C,) u, likewise
    scan_weights: Tensor           # (K,) softmax weights of the scan orders (1 for a single order)
    size: Tuple[int, ...]          # the layer's map size (full resolution)
    pool: Tuple[int, ...]          # pool factor per axis of the WKV map (1 = full resolution)


class WKVProbe:
    """Watches one spatial mix: the map size of its input (a forward pre-hook) and, as its
    `wkv_probe`, the WKV's inputs for sample `sample` of the last forward. `close()` detaches it."""

    def __init__(self, module: SpatialMix, sample: int = 0):
        self.module, self.sample = module, sample
        self.inputs: Optional[WKVInputs] = None
        self._size = None
        self._hook = module.register_forward_pre_hook(self._see_input)
        module.wkv_probe = self

    def _see_input(self, module, args) -> None:
        self._size = tuple(int(s) for s in args[0].shape[1:-1])

    def __call__(self, *, keys: Tensor, plan: ScanPlan, lengths, decay: Tensor, bonus: Tensor,
                 scan_weights: Optional[Tensor]) -> None:
        size = self._size
        pool = tuple(min(p, s) for p, s in zip(self.module.pool, size))  # clipped as the mix clips it
        if tuple(plan.map_size) != tuple(-(-s // p) for s, p in zip(size, pool)):
            raise RuntimeError(f"the WKV map {plan.map_size} is not the {size} map pooled by {pool}")
        per_sample = plan.n_orders * plan.n_windows
        cpu = lambda t: t.detach().to("cpu", torch.float64)  # noqa: E731
        weights = torch.ones(1, dtype=torch.float64) if scan_weights is None else cpu(scan_weights)
        self.inputs = WKVInputs(
            keys=cpu(keys[self.sample * per_sample:(self.sample + 1) * per_sample]), plan=plan.to("cpu"),
            decay=cpu(decay), bonus=cpu(bonus), scan_weights=weights, size=size, pool=pool)

    def close(self) -> None:
        self._hook.remove()
        self.module.wkv_probe = None


def sequence_weights(keys: Tensor, decay: Tensor, bonus: Tensor, query: int) -> Tensor:
    """(C, T) weights a_{query, i} of the T real tokens of one sequence (keys (T, C)), per channel."""
    length = keys.shape[0]
    gap = (torch.arange(length, dtype=keys.dtype) - query).abs() - 1
    logits = keys - gap[:, None] * (decay / length)
    logits[query] = keys[query] + bonus / length
    return torch.softmax(logits, 0).t()


def _ravel(token: Sequence[int], size: Sequence[int]) -> int:
    for t, s in zip(token, size):
        if not 0 <= t < s:
            raise ValueError(f"token {tuple(token)} lies outside the map of size {tuple(size)}")
    index = 0
    for t, s in zip(token, size):
        index = index * s + int(t)
    return index


def wkv_weights(inputs: WKVInputs, token: Sequence[int]) -> Tuple[Tensor, Tensor]:
    """Weights (C, *wkv map) of every token of the WKV map in the merged output at `token` (a
    position in the WKV map), and the mask (*wkv map) of its window."""
    plan = inputs.plan
    query = _ravel(token, plan.map_size)
    channels, t_max = inputs.keys.shape[-1], plan.seq_len
    out = torch.zeros(channels, math.prod(plan.map_size), dtype=torch.float64)
    window = torch.zeros(math.prod(plan.map_size), dtype=torch.bool)
    for order in range(plan.n_orders):
        sequence, position = divmod(int(plan.inverse[order, query]), t_max)
        length = t_max if plan.lengths is None else int(plan.lengths[sequence % plan.n_windows])
        weights = sequence_weights(inputs.keys[sequence, :length], inputs.decay, inputs.bonus, position)
        tokens = plan.index[sequence * t_max:sequence * t_max + length]
        out[:, tokens] += inputs.scan_weights[order] * weights
        window[tokens] = True
    return out.view(channels, *plan.map_size), window.view(*plan.map_size)


def _cell_sizes(size: int, pool: int) -> Tensor:
    """Real tokens of each pooled cell along an axis (the last one may be partial)."""
    return torch.tensor([min(pool, size - start) for start in range(0, size, pool)])


def spread_cells(low: Tensor, size: Sequence[int], pool: Sequence[int], share: bool) -> Tensor:
    """(..., *pooled) -> (..., *size): each cell's entry on each of its tokens, divided by the
    cell's real token count if `share` (a weight shared by the tokens whose mean the cell is)."""
    lead = low.dim() - len(size)
    for axis, (s, p) in enumerate(zip(size, pool)):
        counts = _cell_sizes(s, p)
        if share:
            low = low / counts.view(-1, *[1] * (len(size) - axis - 1)).to(low.dtype)
        low = low.repeat_interleave(counts, dim=lead + axis)
    return low


@dataclass
class LayerWeights:
    """The weight map of one query in one spatial mix, at the layer's resolution."""

    weights: Tensor       # (C, *size) float64: weight of each token, per channel; sums to 1 per channel
    partition: Tensor     # (*size) bool: the query's partition (the tokens whose pooled cell is in its window)
    low_weights: Tensor   # (C, *wkv map): the same on the map the WKV runs on
    token: Tuple[int, ...]


def layer_weights(inputs: WKVInputs, token: Sequence[int]) -> LayerWeights:
    """The weights of `token` (a position in the layer's full-resolution map)."""
    token = tuple(int(t) for t in token)
    _ravel(token, inputs.size)  # checks the bounds
    low, window = wkv_weights(inputs, tuple(t // p for t, p in zip(token, inputs.pool)))
    return LayerWeights(weights=spread_cells(low, inputs.size, inputs.pool, share=True),
                        partition=spread_cells(window, inputs.size, inputs.pool, share=False),
                        low_weights=low, token=token)


@dataclass
class BlockAttention:
    """One spatial mix (global or local layer of a Stage-Scan block) and its map for one voxel."""

    name: str                    # module path of the spatial mix
    stage: int
    block: int                   # Stage-Scan block within the stage
    layer: str                   # "global" or "local"
    stride: Tuple[int, ...]      # input voxels per token of the layer's map, per axis
    window: Tuple[Optional[int], ...]
    pool: Tuple[int, ...]
    scan_weights: Tensor         # (K,)
    map: LayerWeights


_WHERE = re.compile(r"stages\.(\d+)\..*blocks\.(\d+)\.(global|local)_layer\.")


def spatial_mixes(network: nn.Module) -> List[Tuple[str, SpatialMix]]:
    """(name, module) of every spatial mix that runs a Bi-WKV (mixer "wkv"), in order."""
    return [(name, module) for name, module in network.named_modules()
            if isinstance(module, SpatialMix) and module.mixer == "wkv"]


def _where(name: str) -> Tuple[int, int, str]:
    """(stage, block, "global" | "local") of a spatial mix, from its module path."""
    match = _WHERE.search(name + ".")
    if match is None:
        raise ValueError(f"spatial mix {name} is not at 'stages.<s>. ... blocks.<b>.<global|local>_layer.'")
    return int(match.group(1)), int(match.group(2)), match.group(3)


def stage_strides(network: nn.Module) -> List[Tuple[int, ...]]:
    """Input voxels per token of each encoder stage's map: the product of the strides so far."""
    strides, total = [], None
    for stride in network.encoder.strides:
        total = tuple(stride) if total is None else tuple(a * b for a, b in zip(total, stride))
        strides.append(total)
    return strides


def attention_maps(network: nn.Module, x: Tensor, voxel: Sequence[int]) -> List[BlockAttention]:
    """One forward of `network` on `x` (1, C, *S) and, for every spatial mix, the weight map of
    the token that holds input voxel `voxel` (the token covering input voxels [j*stride, (j+1)*stride)).
    The network's mode and weights are left as they were."""
    if x.shape[0] != 1:
        raise ValueError(f"give one sample (batch 1), got a batch of {x.shape[0]}")
    mixes = spatial_mixes(network)
    if not mixes:
        raise ValueError("the network has no Bi-WKV layer (no SpatialMix running the WKV)")
    voxel = tuple(int(v) for v in voxel)
    if len(voxel) != x.dim() - 2 or not all(0 <= v < s for v, s in zip(voxel, x.shape[2:])):
        raise ValueError(f"voxel {voxel} lies outside the input of size {tuple(x.shape[2:])}")
    places = [_where(name) for name, _ in mixes]
    probes = [WKVProbe(module) for _, module in mixes]
    was_training = network.training
    try:
        network.eval()
        with torch.inference_mode():
            network(x)
    finally:
        network.train(was_training)
        for probe in probes:
            probe.close()
    strides = stage_strides(network)
    out = []
    for (name, module), (stage, block, layer), probe in zip(mixes, places, probes):
        token = tuple(v // s for v, s in zip(voxel, strides[stage]))
        out.append(BlockAttention(name=name, stage=stage, block=block, layer=layer, stride=strides[stage],
                                  window=module.window, pool=probe.inputs.pool, scan_weights=probe.inputs.scan_weights,
                                  map=layer_weights(probe.inputs, token)))
    return out


def to_input_grid(token_map: Tensor, stride: Sequence[int]) -> Tensor:
    """(..., *size) per-token values -> (..., *size * stride): each token's value on every input
    voxel it covers (nearest repeat by the stage's stride)."""
    lead = token_map.dim() - len(stride)
    for axis, s in enumerate(stride):
        token_map = token_map.repeat_interleave(int(s), dim=lead + axis)
    return token_map
