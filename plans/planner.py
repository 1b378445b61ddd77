"""Plans sized to a GPU: nnU-Net's experiment planner weighing RWKV-SSS in bytes.

nnU-Net's ExperimentPlanner starts each configuration's patch at the median image (at most
256^3 or 2048^2 voxels), shrinks it one axis at a time while its network's estimate, scaled to
two samples, exceeds a reference value, and gives the memory left over to the batch. Its
estimate counts PlainConvUNet's activations and its reference is tuned to an 8 GB GPU; nnU-Net's
ResEnc presets (nnUNetPlannerResEncM/L/XL) subclass it and change the two. So does this
planner: each candidate is built as RWKV-SSS (the options of a size preset, on the meta device:
no memory), its estimate is the training bytes of plans/memory.py, the reference is the bytes
usable on the target GPU, and the batch is the largest that fits, capped as nnU-Net caps it (at
most 5% of the dataset's voxels in one batch: where the whole median image fits with room to
spare, the plans are nnU-Net's own patch and batch). nnU-Net's search, topology, spacing,
normalisation and lowres logic run unchanged, and as in the ResEnc presets 2d and 3d_fullres
reuse nnUNetPlans' preprocessed data (same spacing): no second preprocessing for them.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

import numpy as np
import torch
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.json_export import recursive_fix_for_json_export

from nnunet_sss.checks import UsageError

from .architecture import preset_options_for, rwkvsss_architecture
from .memory import MemoryCost, target_gib, training_cost, usable_bytes
from .presets import MEMORY_PRESETS

SMALLEST_BATCH = 2  # nnU-Net's search asks whether two samples fit (UNet_min_batch_size)


def architecture_cost(architecture: Mapping, options: Mapping, patch_size, input_channels: int,
                      output_channels: int) -> MemoryCost:
    """Training bytes of RWKV-SSS with `options` on a plans `architecture` entry, at `patch_size`
    (the network built on the meta device: no memory, no initialisation)."""
    arch = rwkvsss_architecture(architecture, {**options, "patch_size": [int(p) for p in patch_size]})
    with torch.device("meta"):
        network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                         input_channels, output_channels, allow_init=False, deep_supervision=True)
    return training_cost(network, patch_size)


class _NoSmallerPatch(Exception):
    """nnU-Net's search went past the smallest patch that still makes a U-Net."""


class RWKVSSSPlanner(ExperimentPlanner):
    """nnU-Net's ExperimentPlanner for RWKV-SSS with the options `options_for` gives each
    configuration (by default the default preset's, 2d or 3d), sized to `gpu_memory_target_in_gb`
    GiB of GPU memory."""

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = MEMORY_PRESETS["M"],
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetRWKVSSSPlans",
                 overwrite_target_spacing=None, suppress_transpose: bool = False,
                 options_for: Optional[Callable[[Mapping], Mapping]] = None):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        self.options_for = preset_options_for if options_for is None else options_for
        self.usable = usable_bytes(gpu_memory_target_in_gb)
        # nnU-Net shrinks while estimate / reference batch x 2 > reference value x target / reference GB:
        # with the estimate in bytes per sample at batch 2, that is "two samples do not fit"
        self.UNet_reference_val_2d = self.UNet_reference_val_3d = self.usable
        self.UNet_reference_val_corresp_GB = gpu_memory_target_in_gb
        self.UNet_reference_val_corresp_bs_2d = self.UNet_reference_val_corresp_bs_3d = 1
        self.UNet_min_batch_size = SMALLEST_BATCH
        self._costs = {}
        self._last = None  # (patch, MemoryCost) of the latest candidate

    def generate_data_identifier(self, configuration_name: str) -> str:
        if configuration_name in ("2d", "3d_fullres"):
            return "nnUNetPlans_" + configuration_name  # nnU-Net's default spacing: its preprocessed data
        return self.plans_identifier + "_" + configuration_name

    def candidate_cost(self, patch_size, input_channels: int, output_channels: int,
                       architecture: Mapping) -> MemoryCost:
        key = repr((list(patch_size), input_channels, output_channels, architecture))
        if key not in self._costs:
            self._costs[key] = architecture_cost(architecture, self.options_for(architecture), patch_size,
                                                 input_channels, output_channels)
        return self._costs[key]

    def static_estimate_VRAM_usage(self, patch_size, input_channels, output_channels, arch_class_name, arch_kwargs,
                                   arch_kwargs_req_import):
        """Training bytes per sample at batch 2 (nnU-Net's search multiplies its estimate by 2)."""
        if arch_kwargs["n_stages"] < 2 or min(patch_size) < 1:
            raise _NoSmallerPatch
        cost = self.candidate_cost(patch_size, input_channels, output_channels, {
            "network_class_name": arch_class_name, "arch_kwargs": arch_kwargs,
            "_kw_requires_import": arch_kwargs_req_import})
        self._last = (tuple(int(p) for p in patch_size), cost)
        return cost.at(SMALLEST_BATCH) / SMALLEST_BATCH

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset,
                                    _cache):
        # a fresh cache: every candidate passes through static_estimate_VRAM_usage (this planner keeps its own)
        self._last = None
        try:
            plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                       approximate_n_voxels_dataset, {})
        except _NoSmallerPatch:
            if self._last is None:
                raise UsageError(f"the median image ({'x'.join(str(round(s)) for s in median_shape)} voxels) is too "
                                 f"small for a U-Net of two stages: nothing to plan") from None
            patch, cost = self._last
            need = math.ceil(target_gib(cost.at(SMALLEST_BATCH)) * 10) / 10
            raise UsageError(
                f"{self.UNet_vram_target_GB:g} GB of GPU memory is below what RWKV-SSS training needs for its smallest "
                f"valid {len(patch)}D patch ({'x'.join(map(str, patch))}, batch {SMALLEST_BATCH}): "
                f"{need:g} GB; give --gpu-memory-target {need:g} or more") from None
        patch, cost = self._last  # the search's last candidate is the plan's patch
        # nnU-Net's batch rule with the batch that fits in place of its linear reference ratio
        # (the training bytes have a part that does not grow with the batch)
        dataset_cap = round(approximate_n_voxels_dataset * self.max_dataset_covered /
                            np.prod(patch, dtype=np.float64))
        plan["batch_size"] = int(max(min(cost.max_batch(self.usable), dataset_cap), self.UNet_min_batch_size))
        return plan

    def save_plans(self, plans):
        """Keep the plans (nnU-Net's layout, which writer.write_gpu_memory_plans turns into RWKV-SSS
        plans and writes): nnU-Net's own would merge them into an existing file of that name."""
        recursive_fix_for_json_export(plans)
        self.plans = plans
