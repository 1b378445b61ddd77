"""Short-schedule variants of every trainer, generated from one table.

`<trainer>_<suffix>` trains `<trainer>` for the table's epochs, iterations and batch size, for
the baseline (nnU-Net's nnUNetTrainer) and for each RWKV-SSS trainer alike, so comparisons
are like for like. Names use single underscores (nnU-Net splits result folders on `__`) and
none of them is a name nnU-Net itself defines (it has nnUNetTrainer_5epochs etc.).
"""
from copy import deepcopy
from dataclasses import dataclass
from types import MappingProxyType

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from .ablations import ABLATION_TRAINERS
from .trainer import nnUNetTrainerAdamWWarmup, nnUNetTrainerRWKVSSS, nnUNetTrainerRWKVSSS_SGD
from .variants import define_variant


@dataclass(frozen=True)
class Schedule:
    epochs: int
    iterations: int       # training iterations per epoch
    val_iterations: int   # pseudo-Dice iterations per epoch
    batch_3d: int
    batch_2d: int
    save_every: int       # checkpoint_latest every this many epochs: a crash loses at most this many
    test_time_mirroring: bool = True  # mirrored inference in validation and nnUNetv2_predict (8x in 3D)

    def batch_size(self, patch_dims: int) -> int:
        return self.batch_2d if patch_dims == 2 else self.batch_3d


SCHEDULES = MappingProxyType({
    # ../shared/protocols/hippocampus-cpu.md: the CPU-budget accuracy protocol
    "cpubudget": Schedule(epochs=20, iterations=50, val_iterations=5, batch_3d=2, batch_2d=32, save_every=1),
    # the same budget three times as long (issue: make the WKV earn its place): does a gap open with training?
    "cpubudget3x": Schedule(epochs=60, iterations=50, val_iterations=5, batch_3d=2, batch_2d=32, save_every=1),
    # tests: the end-to-end nnU-Net CLI run
    "smoke": Schedule(epochs=2, iterations=3, val_iterations=2, batch_3d=2, batch_2d=8, save_every=1,
                      test_time_mirroring=False),
    # the main job (`nnunet-sss demo`, issue 5 owns this row): both trainers and every other step
    # within 10 min on 2 CPU cores (docs/compare.md); the phantom is learnt in about 100 steps
    "demo": Schedule(epochs=8, iterations=15, val_iterations=2, batch_3d=2, batch_2d=16, save_every=1,
                     test_time_mirroring=False),
})


class ScheduledTrainer:
    """Mixin applying the class's `schedule`. The batch size is written into the configuration
    itself, so that everything nnU-Net derives from it (DDP split and oversampling, the logged
    hyperparameters, the plans.json saved with the results) sees the same number."""

    schedule: Schedule

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        plans = deepcopy(plans)
        patch_dims = len(PlansManager(plans).get_configuration(configuration).patch_size)
        plans["configurations"][configuration]["batch_size"] = self.schedule.batch_size(patch_dims)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.schedule.epochs
        self.num_iterations_per_epoch = self.schedule.iterations
        self.num_val_iterations_per_epoch = self.schedule.val_iterations
        self.save_every = self.schedule.save_every

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        # Training augmentation keeps its mirroring; only inference (stored in the checkpoint) drops it.
        result = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.schedule.test_time_mirroring:
            self.inference_allowed_mirroring_axes = None
        return result


# The package's own trainers (each also gets the schedule variants, as does nnU-Net's baseline).
PLUGIN_TRAINERS = (nnUNetTrainerRWKVSSS, nnUNetTrainerRWKVSSS_SGD, nnUNetTrainerAdamWWarmup, *ABLATION_TRAINERS)
SCHEDULED_BASES = (nnUNetTrainer, *PLUGIN_TRAINERS)

SCHEDULED_TRAINERS = tuple(
    define_variant(globals(), f"{base.__name__}_{suffix}", (ScheduledTrainer, base), {"schedule": schedule},
                   f"{base.__name__} on the {suffix!r} schedule: {schedule}.")
    for base in SCHEDULED_BASES
    for suffix, schedule in SCHEDULES.items()
)
