"""A trained fold's network as its trainer builds it, preprocessed cases cropped to its patch, and the
command line the probes share (wkv_probe, erf): networks at init from the bench's plans, or trained folds."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from nnunet_sss.checks import UsageError
from nnunet_sss.training.ablations import ABLATIONS

from .network import LAYOUTS


def _centre_crop(array: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """(C, *S) -> (C, *patch): the centre, zero-padded where S is smaller."""
    out = np.zeros((array.shape[0], *patch), dtype=array.dtype)
    src, dst = [], []
    for n, p in zip(array.shape[1:], patch):
        take = min(n, p)
        a, b = (n - take) // 2, (p - take) // 2
        src.append(slice(a, a + take))
        dst.append(slice(b, b + take))
    out[(slice(None), *dst)] = array[(slice(None), *src)]
    return out


def preprocessed_cases(folder: Path, patch: Sequence[int], n_cases: int,
                       with_labels: bool = False, cases: Optional[Sequence[str]] = None):
    """(n, C, *patch) centre crops (zero-padded where smaller) of the first n cases (or of `cases`) in an
    nnU-Net preprocessed folder; a 2D patch takes each case's middle slice. With `with_labels`, also their
    (n, *patch) label maps (int64; nnU-Net's -1 outside the crop's image is kept)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    if not folder.is_dir():
        raise UsageError(f"no preprocessed folder {folder}: run nnUNetv2_plan_and_preprocess first")
    dataset = infer_dataset_class(str(folder))(str(folder))
    ids = sorted(dataset.identifiers)[:n_cases] if cases is None else list(cases)[:n_cases]
    if not ids:
        raise UsageError(f"{folder} holds no preprocessed case")
    images, labels = [], []
    for case in ids:
        data, seg = dataset.load_case(case)[:2]
        data, seg = np.asarray(data, dtype=np.float32), np.asarray(seg, dtype=np.int64)  # (C, *S)
        if len(patch) == 2:
            data, seg = data[:, data.shape[1] // 2], seg[:, seg.shape[1] // 2]
        images.append(_centre_crop(data, patch))
        labels.append(_centre_crop(seg, patch)[0])
    x = torch.from_numpy(np.stack(images))
    return (x, torch.from_numpy(np.stack(labels))) if with_labels else x


@dataclass
class TrainedFold:
    network: nn.Module
    model: str            # TRAINER__PLANS__CONFIGURATION
    configuration: str
    patch: Tuple[int, ...]
    input_channels: int
    spacing: Tuple[float, ...]
    checkpoint: str       # the checkpoint's file name
    data: Optional[Path]  # the configuration's preprocessed folder, where nnUNet_preprocessed holds it
    validation: Optional[Tuple[str, ...]] = None  # the fold's validation cases (splits_final.json), where known


def load_fold(fold_folder: Path) -> TrainedFold:
    """The network of a trained fold (checkpoint_final.pth, else checkpoint_best.pth), in eval mode."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_sss.compare.efficiency import build_trainer_network

    fold_folder = Path(fold_folder)
    model = fold_folder.parent
    parts = model.name.split("__")
    checkpoints = [fold_folder / n for n in ("checkpoint_final.pth", "checkpoint_best.pth")]
    checkpoint = next((c for c in checkpoints if c.is_file()), None)
    if len(parts) != 3 or not (model / "plans.json").is_file():
        raise UsageError(f"{fold_folder} is not a fold folder of an nnU-Net model (TRAINER__PLANS__CONFIGURATION/fold_N)")
    if checkpoint is None:
        raise UsageError(f"{fold_folder} has no checkpoint_final.pth or checkpoint_best.pth")
    trainer_name, _, configuration = parts
    try:
        network, (n_inputs, *patch), _ = build_trainer_network(model, trainer_name, configuration)
    except RuntimeError:  # nnU-Net's lookup found no such trainer
        raise UsageError(f"trainer {trainer_name} not found among nnU-Net's and nnunet-sss's trainers") from None
    weights = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    network.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in weights.items()})
    plans_configuration = PlansManager(str(model / "plans.json")).get_configuration(configuration)
    data, validation = None, None
    if os.environ.get("nnUNet_preprocessed"):
        preprocessed = Path(os.environ["nnUNet_preprocessed"]) / model.parent.name
        candidate = preprocessed / plans_configuration.data_identifier
        data = candidate if candidate.is_dir() else None
        validation = _validation_cases(preprocessed / "splits_final.json", fold_folder.name)
    return TrainedFold(network.eval(), model.name, configuration, tuple(patch), n_inputs,
                       tuple(float(s) for s in plans_configuration.spacing), checkpoint.name, data, validation)


def _validation_cases(splits_file: Path, fold_name: str) -> Optional[Tuple[str, ...]]:
    fold = fold_name.removeprefix("fold_")
    if not splits_file.is_file() or not fold.isdigit():
        return None
    splits = json.loads(splits_file.read_text())
    return tuple(sorted(splits[int(fold)]["val"])) if int(fold) < len(splits) else None


def probe_main(prog: str, description: str, run: Callable[[argparse.Namespace], None], argv=None, *,
               default_cases: int, arms_help: str, data_help: str) -> int:
    """Parse a probe's arguments (--plans/--arms at init, --model trained folds, --data, --cases) and
    run it; a UsageError is one stderr line and exit code 2."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--plans", nargs="*", default=[], choices=sorted(LAYOUTS), help="networks at init, from these layouts")
    parser.add_argument("--arms", nargs="*", default=[], choices=list(ABLATIONS), help=arms_help)
    parser.add_argument("--model", nargs="*", default=[], type=Path, help="trained fold folders (…/fold_0)")
    parser.add_argument("--data", type=Path, default=None, help=data_help)
    parser.add_argument("--cases", type=int, default=default_cases, help=f"input cases (default {default_cases})")
    args = parser.parse_args(argv)
    if not args.plans and not args.model:
        parser.error("give --plans (networks at init) or --model (trained folds)")
    if args.cases < 1:
        parser.error("--cases must be >= 1")
    try:
        run(args)
    except UsageError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    return 0
