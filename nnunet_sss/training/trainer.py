"""nnUNetTrainerRWKVSSS: nnU-Net's trainer with the RWKV-SSS network and an AdamW schedule
(and nnUNetTrainerAdamWWarmup: nnU-Net's network with that schedule, the optimiser control).

Everything else - data loading, augmentation, loss, deep supervision, checkpoints, validation,
prediction - is nnU-Net's own. The network is built from whatever the configuration's plans
say (2d, 3d_fullres, 3d_lowres, cascade; PlainConvUNet-, ResEnc- or RWKV-SSS-style entries)
through nnU-Net's get_network_from_plans, so prediction rebuilds it the same way.
"""
from copy import deepcopy
from types import MappingProxyType

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_sss.plans import DEFAULT_PRESET, is_rwkvsss, preset_options_for, rwkvsss_architecture

from .optim import WarmupPolyLRScheduler, adamw_param_groups


class AdamWWarmupMixin:
    """AdamW, linear warm-up then poly decay (optim.py), for any nnUNetTrainer: put it first in
    the bases. The RWKV-SSS trainer's optimiser; nnUNetTrainerAdamWWarmup gives it to nnU-Net's
    own network, so that the optimiser and the architecture can be measured apart."""

    default_initial_lr = 1e-3
    default_weight_decay = 5e-2
    warmup_fraction = 0.05                   # of num_epochs; 50 of 1000, one of 20
    wkv_lr_scale = 1.0                       # the WKV decay and bonus's rate over the others' (optim.py)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.default_initial_lr
        self.weight_decay = self.default_weight_decay
        self.iteration_in_epoch = 0

    def configure_optimizers(self):
        groups = adamw_param_groups(self.network, self.weight_decay, self.wkv_lr_scale)
        optimizer = torch.optim.AdamW(groups, lr=self.initial_lr)
        warmup_epochs = max(1.0, self.warmup_fraction * self.num_epochs)
        return optimizer, WarmupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, warmup_epochs)

    def on_train_epoch_start(self):
        self.iteration_in_epoch = 0
        super().on_train_epoch_start()

    def train_step(self, batch: dict) -> dict:
        # Warm-up rises per iteration (a one-epoch warm-up is otherwise no warm-up at all); the
        # rate depends only on (epoch, iteration), so --c resumes on the same curve.
        epoch = self.current_epoch + self.iteration_in_epoch / self.num_iterations_per_epoch
        if isinstance(self.lr_scheduler, WarmupPolyLRScheduler) and self.lr_scheduler.in_warmup(epoch):
            self.lr_scheduler.step(epoch)
        self.iteration_in_epoch += 1
        return super().train_step(batch)


class nnUNetTrainerAdamWWarmup(AdamWWarmupMixin, nnUNetTrainer):
    """nnU-Net's own network with the RWKV-SSS trainer's optimiser and schedule: the control that
    tells how much of a difference to nnUNetTrainer comes with the optimiser alone."""


class nnUNetTrainerRWKVSSS(AdamWWarmupMixin, nnUNetTrainer):
    """RWKV-SSS trained with AdamW, linear warm-up then poly decay."""

    network_preset = DEFAULT_PRESET          # options used when the plans are not RWKV-SSS plans
    network_overrides = MappingProxyType({})  # set by ablation variants, win over plans and preset

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pin_network_options()

    def pin_network_options(self) -> None:
        """State every RWKV-SSS option of the trained configuration in the trainer's plans, which
        nnU-Net saves as the results folder's plans.json and its predictor rebuilds the network
        from: a model predicts with the network it was trained with, whatever later versions make
        the default. The caller's plans are not changed."""
        plans = deepcopy(self.plans_manager.plans)
        plans["configurations"][self.configuration_name]["architecture"] = \
            self.network_architecture(self.configuration_manager)
        self.plans_manager = PlansManager(plans)
        self.configuration_manager = self.plans_manager.get_configuration(self.configuration_name)

    @classmethod
    def network_options(cls, architecture: dict) -> dict:
        """RWKV-SSS options for a plans entry: the plans' own if they already build RWKV-SSS,
        else the class's preset (for the default preset, its 2d or 3d setting); then the class's
        overrides."""
        base = {} if is_rwkvsss(architecture) else preset_options_for(architecture, cls.network_preset)
        return {**base, **cls.network_overrides}

    @classmethod
    def network_architecture(cls, configuration_manager: ConfigurationManager) -> dict:
        """The plans-style architecture entry (class, arch_kwargs, imports) this trainer builds."""
        architecture = configuration_manager.configuration["architecture"]
        options = cls.network_options(architecture)
        if options.get("merge_equal_windows") and options.get("patch_size") is None:
            options["patch_size"] = list(configuration_manager.patch_size)  # which stages' windows coincide
        return rwkvsss_architecture(architecture, options)

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> torch.nn.Module:
        # A classmethod, not nnU-Net's staticmethod: variants differ only in class attributes,
        # and nnU-Net's predictor calls this on the class found by name.
        arch = cls.network_architecture(configuration_manager)
        return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                      num_input_channels, num_output_channels, allow_init=True,
                                      deep_supervision=enable_deep_supervision)


class nnUNetTrainerRWKVSSS_SGD(nnUNetTrainerRWKVSSS):
    """RWKV-SSS with nnU-Net's own optimiser and schedule (SGD, Nesterov momentum 0.99, lr 1e-2,
    poly decay), to measure against the AdamW default on the same data."""

    default_initial_lr = 1e-2
    default_weight_decay = 3e-5
    configure_optimizers = nnUNetTrainer.configure_optimizers
