"""GPU memory of RWKV-SSS training in bytes: what the memory-target planner sizes patches and batches by.

The network counts its activations for nnU-Net's planners (`compute_conv_feature_map_size`, in
PlainConvUNet's units: one per conv output element, which keeps about two; the RWKV layers and
the dynamic upsampling converted at that rate, see nnunet_sss/network/cost.py). One training
step, forward and backward with the checkpointed layers rebuilt for the whole batch as on a GPU,
then peaks at

    step peak = batch x units(patch) x BYTES_PER_UNIT  +  4 bytes x parameters (their gradients)

BYTES_PER_UNIT is fitted to the live-tensor peaks measured in float32
(`python -m nnunet_sss.bench.memory` prints estimate and measurement side by side; docs/workflow.md
has the table): below the 8 bytes the units stand for, since part of what the forward keeps is
freed by the backward before its peak. What is alive at the peak differs with the layout: per
sample the measured peaks come to 6.5-7.0 bytes a unit in the 3D plans and 5.8-6.0 in the 2D
ones, so one rate leaves the estimate within 10% of both. Training holds
besides the weights and the optimizer's state (AdamW, the RWKV-SSS trainers': two floats per
weight), and a GPU process the CUDA context and the caching allocator's slack; the planner takes
those off the target (`usable_bytes`). Under nnU-Net's fp16 autocast a GPU's peak is lower than
the float32 figure, so plans sized by it keep that difference as headroom.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from torch import nn

BYTES_PER_UNIT = 6.5  # fitted: measured / estimated peak 0.90-1.08 over the plans of the benchmark
FLOAT_BYTES = 4
OPTIMIZER_STATES = 2  # AdamW: first and second moments
GiB = 2 ** 30
# Taken off a GPU's memory before sizing (assumed, not measured: a CUDA context with cuDNN and
# cuBLAS loaded takes about half a GiB; the caching allocator holds some memory it cannot reuse).
CUDA_CONTEXT_BYTES = GiB // 2
ALLOCATOR_SLACK = 0.1


@dataclass(frozen=True)
class MemoryCost:
    """Bytes of a network at one patch size: `fixed` whatever the batch, `per_sample` per sample."""

    fixed: int
    per_sample: int

    def at(self, batch: int) -> int:
        return self.fixed + batch * self.per_sample

    def max_batch(self, budget: float) -> int:
        """The largest batch whose bytes stay within `budget` (0 if not even one sample fits)."""
        return max(0, math.floor((budget - self.fixed) / self.per_sample))


def step_cost(network: nn.Module, patch_size: Sequence[int]) -> MemoryCost:
    """The peak of one forward+backward above the weights and the input: activations and gradients."""
    params = sum(p.numel() for p in network.parameters())
    units = int(network.compute_conv_feature_map_size(list(patch_size)))
    return MemoryCost(fixed=FLOAT_BYTES * params, per_sample=math.ceil(BYTES_PER_UNIT * units))


def training_cost(network: nn.Module, patch_size: Sequence[int],
                  optimizer_states: int = OPTIMIZER_STATES) -> MemoryCost:
    """A training process's tensors: the step's peak plus the weights and the optimizer's state."""
    step = step_cost(network, patch_size)
    params = step.fixed // FLOAT_BYTES
    return MemoryCost(fixed=step.fixed + FLOAT_BYTES * (1 + optimizer_states) * params, per_sample=step.per_sample)


def usable_bytes(target_gib: float) -> float:
    """What tensors may take of a GPU with `target_gib` GiB."""
    return target_gib * GiB * (1 - ALLOCATOR_SLACK) - CUDA_CONTEXT_BYTES


def target_gib(tensor_bytes: float) -> float:
    """The GPU size (GiB) at which `tensor_bytes` are usable: the inverse of `usable_bytes`."""
    return (tensor_bytes + CUDA_CONTEXT_BYTES) / (1 - ALLOCATOR_SLACK) / GiB
