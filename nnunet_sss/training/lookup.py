"""A trainer class by name and the network it builds from plans, as nnU-Net's predictor and
trainer do: one place for every tool that needs a trained or untrained model's network."""
from __future__ import annotations

import contextlib
import io


def find_trainer_class(trainer: str):
    """This package's trainer of that name, else nnU-Net's lookup (which imports every trainer module it
    has: seconds) through nnunetv2.training and nnUNet_extTrainer. Raises RuntimeError if none has it."""
    from nnunet_sss.training import TRAINERS

    if trainer in TRAINERS:
        return TRAINERS[trainer]
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its class search
        return recursive_find_trainer_class_by_name(trainer)


def build_network(trainer_class, plans, configuration: str, dataset_json: dict, deep_supervision: bool):
    """(network, input_shape, batch_size): `trainer_class.build_network_architecture` on `plans` (a dict,
    a plans.json path or a PlansManager), input_shape = (input channels, *patch size)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = plans if isinstance(plans, PlansManager) else PlansManager(plans)
    manager = plans_manager.get_configuration(configuration)
    num_inputs = determine_num_input_channels(plans_manager, manager, dataset_json)
    num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    network = trainer_class.build_network_architecture(plans_manager, manager, num_inputs, num_outputs,
                                                       deep_supervision)
    return network, (num_inputs, *manager.patch_size), manager.batch_size
