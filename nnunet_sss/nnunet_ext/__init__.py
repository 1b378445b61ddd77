"""The folder nnUNet_extTrainer points at. Keep it thin: nnU-Net imports every module here as
a top-level module, so each must only re-export classes defined in nnunet_sss.training."""
