"""The nnU-Net trainer family for RWKV-SSS (layer 3). nnU-Net finds these classes by name
through nnUNet_extTrainer (see nnunet_sss/nnunet_ext/); they live here, in the package."""
from .ablations import ABLATIONS
from .schedules import PLUGIN_TRAINERS, SCHEDULED_TRAINERS, SCHEDULES, Schedule

# Every trainer nnU-Net may be asked for by name (the baseline's schedule variants included).
TRAINERS = {cls.__name__: cls for cls in (*PLUGIN_TRAINERS, *SCHEDULED_TRAINERS)}
globals().update(TRAINERS)

__all__ = ["ABLATIONS", "SCHEDULES", "Schedule", "TRAINERS", *TRAINERS]
