"""Thin re-export for nnU-Net's trainer lookup: export nnUNet_extTrainer=<this folder>
(`eval "$(nnunet-sss env)"`). nnU-Net imports this file as a top-level module and drops it
afterwards; the classes it hands back are the package's own, from nnunet_sss.training."""
from nnunet_sss.training import *  # noqa: F401,F403
