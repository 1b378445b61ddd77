"""Tiny "trained" nnU-Net model folders (random weights saved as nnU-Net checkpoints) and an image.

A model folder holds what nnU-Net's predictor reads: plans.json, dataset.json and
fold_0/checkpoint_final.pth (network_weights, trainer_name, init_args, mirroring axes). The
plans are the hand-written ones (patches of 16 x 24 x 16 and 32 x 24), so a forward is cheap;
the image (20 x 30 x 18) is larger than a 3D patch on every axis (several tiles).
"""
import json
from pathlib import Path

import numpy as np
import torch
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_sss.training import TRAINERS

from .handwritten_plans import DATASET_JSON, handwritten_plans

DATASET = "Dataset004_Hippocampus"
IMAGE_SHAPE = (20, 30, 18)


def write_model(results: Path, trainer: str, configuration: str, seed: int = 0) -> Path:
    plans = handwritten_plans()
    plans_manager = PlansManager(plans)
    manager = plans_manager.get_configuration(configuration)
    dataset_json = dict(DATASET_JSON)
    torch.manual_seed(seed)
    network = TRAINERS[trainer].build_network_architecture(
        plans_manager, manager, determine_num_input_channels(plans_manager, manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    folder = results / DATASET / f"{trainer}__nnUNetPlans__{configuration}"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    torch.save({"network_weights": network.state_dict(), "trainer_name": trainer,
                "init_args": {"configuration": configuration},
                "inference_allowed_mirroring_axes": tuple(range(len(manager.patch_size)))},
               folder / "fold_0" / "checkpoint_final.pth")
    return folder


def write_image(path: Path, seed: int = 0, shape=IMAGE_SHAPE) -> Path:
    """A positive noise volume with a bright ellipsoid (nonzero everywhere: nnU-Net crops nothing)."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    blob = ((grid / np.array([0.5, 0.4, 0.6])[:, None, None, None]) ** 2).sum(0) < 1
    image = 1.0 + 0.2 * rng.random(shape) + blob
    sitk.WriteImage(sitk.GetImageFromArray(image.astype(np.float32)), str(path))
    return path


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}
