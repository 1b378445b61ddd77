"""How much each RWKV layer of a network actually mixes: the facts behind "does the WKV add anything".

For every RWKV layer (global and local layer of each stage), one forward of a batch gives:

- `spread`: the within-window variance of the token mixer's output over the within-window
  variance of its input v (channels and windows averaged; the windows of the first scan order).
  1 for the identity mixer, 0 for the window mean; a Bi-WKV that is close to a mean over its
  window sits near 0, one that keeps local detail nearer 1.
- `local_channels`: the share of channels whose WKV weight falls by e within `LOCAL_TOKENS`
  tokens along the scan (a per-token decay w' = w / T >= 1 / LOCAL_TOKENS, T the longest window;
  "token" decay: w' = exp(decay)). With Vision-RWKV's w / T over long windows few channels are.
- `spatial_branch` / `channel_branch`: the norm of each residual branch (after its layer scale)
  over the norm of the residual it is added to. An untrained branch of about 0.4 adds mostly noise.
- `same_window`: the layer's partition of this map equals the other layer's of its block (the
  global and local windows coincide: one of the two repeats the other's work).

Read-only: hooks are removed afterwards and the network's parameters are not touched.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .block import RWKVLayer, StageScanBlock
from .scan import clip_window, scan, scan_plan, sequence_lengths

LOCAL_TOKENS = 8


@dataclass
class LayerFacts:
    name: str                      # module path of the RWKV layer
    mixer: str                     # "wkv", "mean" or "identity"
    wkv_size: Tuple[int, ...]      # the map the token mixer runs on (pooled where the WKV is)
    window: Tuple[int, ...]        # the partition's window on that map, clipped to it
    n_windows: int
    spread: float
    local_channels: Optional[float]  # None without a Bi-WKV
    spatial_branch: float
    channel_branch: float
    same_window: bool = False


def _within_window_variance(x: Tensor, plan) -> Tensor:
    """Mean over windows and channels of the variance over each window's real tokens; x (B, S', C)."""
    seq = scan(x, plan).double()  # (B*W, T, C) for one order, padding slots 0
    lengths = sequence_lengths(plan, x.shape[0])
    if lengths is None:
        return seq.var(1, unbiased=False).mean()
    real = (torch.arange(plan.seq_len, device=x.device)[None, :] < lengths[:, None]).double()[..., None]
    count = real.sum(1)
    mean = (seq * real).sum(1) / count
    return ((seq - mean[:, None]) ** 2 * real).sum(1).div(count).mean()


def _local_share(mix, seq_len: int) -> Optional[float]:
    if mix.mixer != "wkv":
        return None
    w, _ = mix.wkv_parameters(seq_len)
    return (w.detach().double() / seq_len >= 1.0 / LOCAL_TOKENS).double().mean().item()


class _Watch:
    """Hooks on one RWKV layer collecting what `LayerFacts` needs from one forward."""

    def __init__(self, layer: RWKVLayer, stack: ExitStack):
        self.layer, self.seen = layer, {}
        mix = layer.spatial_mix
        original = mix.mix_tokens

        def mix_tokens(k, v, wkv_size):
            y = original(k, v, wkv_size)
            self.seen["mix"] = (v, y, tuple(wkv_size))
            return y

        mix.mix_tokens = mix_tokens
        stack.callback(lambda: delattr(mix, "mix_tokens"))
        for module, key in ((layer.norm1, "x1"), (layer.norm2, "x2")):
            stack.enter_context(module.register_forward_pre_hook(self._keep(key)))
        for module, key in ((mix, "spatial"), (layer.channel_mix, "channel")):
            stack.enter_context(module.register_forward_hook(self._keep_output(key)))

    def _keep(self, key):
        def hook(module, args):
            self.seen[key] = args[0]
        return hook

    def _keep_output(self, key):
        def hook(module, args, out):
            self.seen[key] = out
        return hook

    @staticmethod
    def _branch(residual: Tensor, branch: Tensor, scale: Optional[Tensor]) -> float:
        if scale is not None:
            branch = branch * scale
        return (branch.double().norm() / residual.double().norm().clamp_min(1e-30)).item()

    def facts(self, name: str) -> LayerFacts:
        mix, s = self.layer.spatial_mix, self.seen
        v, y, wkv_size = s["mix"]
        plan = scan_plan(wkv_size, mix.window, mix.orders[:1], mix.snake, v.device)
        spread = (_within_window_variance(y, plan) / _within_window_variance(v, plan).clamp_min(1e-30)).item()
        return LayerFacts(
            name=name, mixer=mix.mixer, wkv_size=wkv_size, window=clip_window(mix.window, wkv_size),
            n_windows=plan.n_windows, spread=spread, local_channels=_local_share(mix, plan.seq_len),
            spatial_branch=self._branch(s["x1"], s["spatial"], self.layer.scale1),
            channel_branch=self._branch(s["x2"], s["channel"], self.layer.scale2))


@torch.no_grad()
def layer_facts(network: nn.Module, x: Tensor) -> List[LayerFacts]:
    """One forward of `x` through `network` (eval mode for the forward, restored after); the
    facts of every RWKV layer in the order they ran."""
    layers = [(name, m) for name, m in network.named_modules() if isinstance(m, RWKVLayer)]
    if not layers:
        raise ValueError(f"{type(network).__name__} has no RWKV layer to probe")
    was_training = network.training
    with ExitStack() as stack:
        watches = [(name, _Watch(layer, stack)) for name, layer in layers]
        network.eval()
        try:
            network(x)
        finally:
            network.train(was_training)
        facts = {name: watch.facts(name) for name, watch in watches}
    for block in (m for m in network.modules() if isinstance(m, StageScanBlock)):
        if block.local_layer is None:
            continue
        names = [n for n, layer in layers if layer is block.global_layer or layer is block.local_layer]
        first, second = (facts[n] for n in names)
        if first.window == second.window:
            second.same_window = True
    return list(facts.values())
