"""`nnunet-sss attention`: what each Bi-WKV layer of a trained RWKV-SSS model weighs, for one voxel.

    nnunet-sss attention -d 4 -c 3d_fullres -tr nnUNetTrainerRWKVSSS -f 0 -i case_0000.nii.gz [--at Z,Y,X] [-o DIR]

The model is loaded with nnU-Net's predictor, IMAGE preprocessed as nnU-Net does (transpose,
crop, resample, normalise) and the voxel picked: --at (indices of the image array as nnU-Net's
reader returns it, Z,Y,X; Y,X for a 2D image), or by default the voxel of the largest foreground
label the model predicts on IMAGE that lies nearest that label's centroid. One forward of the
tile of nnU-Net's sliding window that holds the voxel nearest its centre then gives, for every
spatial mix (global and local layer of every stage), the exact weight each token of the voxel's
partition gets in that layer's WKV output (nnunet_sss.network.attention). Written to DIR:

    stage<s>_block<b>_<global|local>.npz   per layer: `low_weights` (C, *WKV map) per channel;
        `weights` (*layer map) their channel mean at the layer's resolution (sums to 1 over the
        partition); `partition`; `image` / `image_partition` the same in the input image's
        voxels (each voxel shows the weight of the token covering it); and the layer's facts
    stage<s>_block<b>_<global|local>.nii.gz  `image` with the input's geometry (3D images)
    stage<s>.png                            the input slices through the voxel, each layer's map
                                            overlaid, the partition outlined
    attention.json                          the voxel, the tile, the files

Bad input (a voxel outside the image, a model without Bi-WKV layers, a fold without its
checkpoint, an image whose channels do not match the dataset, ...) is an AttentionError (a
UsageError: one line naming it, exit status 2) raised before any model is run; nothing is
ever written into the model folder.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
from copy import deepcopy
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from nnunet_sss.checks import UsageError, dataset_folder, nnunet_folder


class AttentionError(UsageError):
    """Bad input to `nnunet-sss attention`; the message names the problem in one line."""


def _quiet():
    """nnU-Net's trainer lookup prints every folder it searches: keep stdout for our own lines."""
    return contextlib.redirect_stdout(io.StringIO())


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "attention", help="the exact WKV weights each Bi-WKV layer of a trained model gives around one voxel",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="dataset name or id")
    parser.add_argument("-c", "--configuration", required=True, help="e.g. 2d, 3d_fullres")
    parser.add_argument("-tr", "--trainer", default="nnUNetTrainerRWKVSSS")
    parser.add_argument("-p", "--plans", default="nnUNetPlans")
    parser.add_argument("-f", "--fold", default="0", help="fold (or 'all')")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    parser.add_argument("-i", "--image", nargs="+", required=True, metavar="IMAGE",
                        help="the image, one file per channel in the dataset's order (e.g. case_0000.nii.gz)")
    parser.add_argument("--at", help="the voxel, Z,Y,X (Y,X for a 2D image), indices of the image array as "
                                     "nnU-Net reads it; default: the centre of the largest predicted label")
    parser.add_argument("-o", "--output", help="output folder (default: <case>_attention)")
    parser.add_argument("-device", "--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.set_defaults(func=run)


def run(args) -> int:
    report = attention(args)  # bad input: an AttentionError, printed by cli.main in one line (exit 2)
    print(f"wrote {len(report['layers'])} layer maps and {len(report['figures'])} figures to {report['output']}")
    return 0


# ---------------------------------------------------------------- checks (before any work)
def parse_voxel(text: Optional[str]) -> Optional[Tuple[int, ...]]:
    if text is None:
        return None
    try:
        voxel = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise AttentionError(f"--at takes voxel indices Z,Y,X (or Y,X for a 2D image), got {text!r}") from None
    if len(voxel) not in (2, 3):
        raise AttentionError(f"--at takes 3 indices Z,Y,X (or 2, Y,X, for a 2D image), got {len(voxel)}: {text!r}")
    return voxel


def image_voxel(voxel: Tuple[int, ...], shape: Tuple[int, ...]) -> Tuple[int, int, int]:
    """--at in the reader's (Z, Y, X) array; a 2D image reads as (1, Y, X) and takes Y,X."""
    if len(voxel) == 2:
        if shape[0] != 1:
            raise AttentionError(f"--at {','.join(map(str, voxel))} gives Y,X but the image is 3D "
                                 f"(Z, Y, X) = {tuple(shape)}: give Z,Y,X")
        voxel = (0, *voxel)
    if not all(0 <= v < s for v, s in zip(voxel, shape)):
        shown = voxel if shape[0] != 1 else voxel[1:]
        raise AttentionError(f"voxel {tuple(shown)} is outside the image of shape "
                             f"{tuple(shape if shape[0] != 1 else shape[1:])} (indices start at 0)")
    return tuple(int(v) for v in voxel)


@dataclass
class Model:
    folder: str
    plans: dict
    dataset_json: dict
    trainer_class: type
    fold: object


def find_model(args) -> Model:
    """The model folder, fold checkpoint and trainer, checked; nothing loaded yet."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_sss.training.lookup import find_trainer_class

    results = nnunet_folder("nnUNet_results")
    dataset = dataset_folder(results, args.dataset, "nnUNet_results", "train a model of it first (nnUNetv2_train)")
    folder = str(dataset / f"{args.trainer}__{args.plans}__{args.configuration}")
    if not os.path.isdir(folder):
        raise AttentionError(f"no trained model {folder} (trainer {args.trainer}, plans {args.plans}, "
                             f"configuration {args.configuration})")
    fold = args.fold if args.fold == "all" else _int(args.fold, "-f")
    checkpoint = os.path.join(folder, f"fold_{fold}", args.checkpoint)
    if not os.path.isfile(checkpoint):
        raise AttentionError(f"fold {fold} has no checkpoint: {checkpoint} does not exist")
    for name in ("plans.json", "dataset.json"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise AttentionError(f"{folder} has no {name}: not an nnU-Net model folder")
    plans, dataset_json = (_load(os.path.join(folder, n)) for n in ("plans.json", "dataset.json"))
    if args.configuration not in plans["configurations"]:
        raise AttentionError(f"configuration {args.configuration!r} is not in {folder}/plans.json")
    if PlansManager(plans).get_configuration(args.configuration).previous_stage_name is not None:
        raise AttentionError(f"configuration {args.configuration} is a cascade stage (it needs the previous "
                             "stage's segmentation): map its previous stage or a single-stage configuration")
    try:
        trainer_class = find_trainer_class(args.trainer)
    except RuntimeError:
        raise AttentionError(f"trainer {args.trainer} not found (for RWKV-SSS trainers: eval \"$(nnunet-sss env)\")") \
            from None
    return Model(folder, plans, dataset_json, trainer_class, fold)


def _int(text, flag):
    try:
        return int(text)
    except ValueError:
        raise AttentionError(f"{flag} takes an integer or 'all', got {text!r}") from None


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def check_has_wkv(model: Model, configuration: str) -> None:
    """The trainer's network (built from the plans, no weights) must hold a Bi-WKV layer."""
    from nnunet_sss.network.attention import spatial_mixes
    from nnunet_sss.training.lookup import build_network

    network, _, _ = build_network(model.trainer_class, model.plans, configuration, model.dataset_json, False)
    if not spatial_mixes(network):
        raise AttentionError(f"{model.trainer_class.__name__}'s network ({type(network).__name__}) has no Bi-WKV "
                             "layer: there is no WKV attention to map (the no-RWKV ablation and nnU-Net's own "
                             "network have none)")


def read_image(files: List[str], model: Model):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    channels = model.dataset_json["channel_names"]
    for f in files:
        if not os.path.isfile(f):
            raise AttentionError(f"image file {f} does not exist")
    if len(files) != len(channels):
        raise AttentionError(f"the image has {len(files)} channel file(s), the dataset has {len(channels)} "
                             f"({', '.join(channels.values())}): give one file per channel, in that order")
    reader = PlansManager(model.plans).image_reader_writer_class()
    try:
        data, properties = reader.read_images(files)
    except Exception as err:  # the readers raise RuntimeError, AssertionError, ...
        raise AttentionError(f"cannot read {' '.join(files)}: {str(err).splitlines()[0] if str(err) else err!r}") \
            from None
    if data.shape[0] != len(channels):
        raise AttentionError(f"the image holds {data.shape[0]} channels, the dataset has {len(channels)} "
                             f"({', '.join(channels.values())})")
    return data, properties


def output_folder(args, model: Model) -> str:
    case = os.path.basename(args.image[0])
    for ending in (model.dataset_json.get("file_ending", ""), ".nii.gz", ".nii"):
        if ending and case.endswith(ending):
            case = case[: -len(ending)]
            break
    if case.endswith("_0000"):
        case = case[:-5]
    out = os.path.abspath(args.output or f"{case}_attention")
    folder = os.path.realpath(model.folder)
    if os.path.commonpath([os.path.realpath(out), folder]) == folder:
        raise AttentionError(f"output folder {out} is inside the model folder {model.folder}: choose another -o")
    return out


# ---------------------------------------------------------------- coordinates
def to_preprocessed(voxel, properties: dict, transpose_forward, shape) -> Tuple[int, ...]:
    """Image voxel (reader's order) -> index in the preprocessed array (transposed, cropped, resampled)."""
    bbox = properties["bbox_used_for_cropping"]
    cropped = properties["shape_after_cropping_and_before_resampling"]
    out = []
    for axis, (v, (lo, hi), old, new) in enumerate(zip([voxel[i] for i in transpose_forward], bbox, cropped, shape)):
        if not lo <= v < hi:
            raise AttentionError(f"voxel {tuple(voxel)} lies outside the part of the image nnU-Net keeps "
                                 f"(its nonzero bounding box, axis {transpose_forward[axis]}: {lo} to {hi - 1})")
        out.append(min(new - 1, int(math.floor((v - lo + 0.5) * new / old))))
    return tuple(out)


def to_image(array: np.ndarray, properties: dict, transpose_backward) -> np.ndarray:
    """Preprocessed-grid array -> the input image's array: each image voxel takes the value of the
    preprocessed voxel it falls in (nearest, the inverse of to_preprocessed); 0 where cropped."""
    bbox = properties["bbox_used_for_cropping"]
    cropped = properties["shape_after_cropping_and_before_resampling"]
    before = properties["shape_before_cropping"]
    index, inside = [], []
    for (lo, hi), old, new, full in zip(bbox, cropped, array.shape, before):
        x = np.arange(full)
        index.append(np.clip(np.floor((x - lo + 0.5) * new / old).astype(int), 0, new - 1))
        inside.append((x >= lo) & (x < hi))
    out = array[np.ix_(*index)] * np.logical_and.outer(np.logical_and.outer(inside[0], inside[1]), inside[2])
    return out.transpose(transpose_backward)


def pick_tile(voxel, shape, patch, step) -> Tuple[tuple, Tuple[int, ...]]:
    """The tile of nnU-Net's sliding window (over the padded preprocessed array of `shape`) that
    holds `voxel` nearest its centre: (index into the array's spatial axes, voxel in the tile)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    lead = len(shape) - len(patch)  # 2D configurations tile each slice of axis 0
    steps = compute_steps_for_sliding_window(tuple(shape[lead:]), tuple(patch), step)
    index, inside = [int(v) for v in voxel[:lead]], []
    for v, size, starts in zip(voxel[lead:], patch, steps):
        start = int(min((s for s in starts if s <= v < s + size), key=lambda s: abs(s + (size - 1) / 2 - v)))
        index.append(slice(start, start + size))
        inside.append(int(v) - start)
    return tuple(index), tuple(inside)


# ---------------------------------------------------------------- the work
def default_voxel(segmentation: np.ndarray) -> Tuple[Optional[Tuple[int, ...]], str]:
    """The voxel of the largest predicted foreground label nearest that label's centroid."""
    labels, counts = np.unique(segmentation[segmentation > 0], return_counts=True)
    if len(labels) == 0:
        return None, "the model predicts no foreground on this image"
    label = int(labels[np.argmax(counts)])
    coords = np.argwhere(segmentation == label)
    centroid = coords.mean(0)
    voxel = tuple(int(c) for c in coords[np.argmin(((coords - centroid) ** 2).sum(1))])
    return voxel, f"the voxel of label {label} ({int(counts.max())} voxels, the largest) nearest its centroid"


def attention(args) -> dict:
    """Check everything, then load, preprocess, pick the voxel and tile, map, and write."""
    voxel = parse_voxel(args.at)
    model = find_model(args)
    check_has_wkv(model, args.configuration)
    image, properties = read_image(args.image, model)
    if voxel is not None:
        voxel = image_voxel(voxel, image.shape[1:])
    out = output_folder(args, model)

    import torch
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_sss.network.attention import attention_maps, to_input_grid

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with _quiet():
        predictor = nnUNetPredictor(device=device, verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(model.folder, (model.fold,), args.checkpoint)
    manager = predictor.configuration_manager
    data, _, properties = manager.preprocessor_class(verbose=False).run_case_npy(
        image, None, deepcopy(properties), predictor.plans_manager, manager, predictor.dataset_json)
    voxel, how = (voxel, "--at") if voxel is not None else predicted_voxel(predictor, data, properties)
    at = to_preprocessed(voxel, properties, predictor.plans_manager.transpose_forward, data.shape[1:])
    padded, unpad = pad_nd_image(data, manager.patch_size, "constant", {"constant_values": 0}, True, None)
    tile, in_tile = pick_tile(tuple(v + s.start for v, s in zip(at, unpad[1:])), padded.shape[1:],
                              manager.patch_size, predictor.tile_step_size)
    x = torch.from_numpy(np.ascontiguousarray(padded[(slice(None), *tile)]))[None].to(device)
    maps = attention_maps(predictor.network, x, in_tile)  # the network holds the fold's weights
    print(f"voxel {voxel} ({how}); preprocessed {at}; "
          f"tile {[(s.start, s.stop) if isinstance(s, slice) else s for s in tile]}")

    def on_image(token_map, stride):
        """A layer's token map -> the input image's voxels (via the tile and the preprocessed grid)."""
        return to_image(_place(to_input_grid(token_map, stride), tile, padded.shape[1:], unpad), properties,
                        predictor.plans_manager.transpose_backward)

    report = dict(model=model.folder, fold=model.fold, checkpoint=args.checkpoint, image=args.image,
                  voxel=list(voxel), voxel_from=how, preprocessed_voxel=list(at), output=out)
    return write_maps(out, maps, on_image, image, properties, report)


def predicted_voxel(predictor, data: np.ndarray, properties: dict):
    """nnU-Net's prediction of the whole image, back on the image's grid, and its default voxel."""
    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data))
    segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, properties)
    voxel, how = default_voxel(segmentation)
    if voxel is None:
        return tuple(s // 2 for s in segmentation.shape), how + ": the image centre instead"
    return voxel, how


def write_maps(out: str, maps, on_image, image: np.ndarray, properties: dict, report: dict) -> dict:
    """Per layer an npz (and a NIfTI for 3D images), per stage a figure, and attention.json."""
    os.makedirs(out, exist_ok=True)
    voxel = tuple(report["voxel"])
    report.update(layers=[], figures=[])
    by_stage = {}
    for m in maps:
        mean = m.map.weights.mean(0)
        image_map, image_partition = on_image(mean, m.stride), on_image(m.map.partition, m.stride) > 0
        stem = f"stage{m.stage}_block{m.block}_{m.layer}"
        np.savez_compressed(
            os.path.join(out, stem + ".npz"), low_weights=m.map.low_weights.numpy(), weights=mean.numpy(),
            partition=m.map.partition.numpy(), image=image_map.astype(np.float32), image_partition=image_partition,
            token=np.array(m.map.token), stride=np.array(m.stride), pool=np.array(m.pool),
            scan_weights=m.scan_weights.numpy(), voxel=np.array(voxel), layer=m.name)
        files = [stem + ".npz"]
        if image.shape[1] > 1 and "sitk_stuff" in properties:
            _write_nifti(os.path.join(out, stem + ".nii.gz"), image_map.astype(np.float32), properties)
            files.append(stem + ".nii.gz")
        report["layers"].append(dict(layer=m.name, stage=m.stage, block=m.block, kind=m.layer, token=list(m.map.token),
                                     stride=list(m.stride), window=list(m.window), pool=list(m.pool),
                                     scan_weights=m.scan_weights.tolist(), files=files))
        by_stage.setdefault(m.stage, []).append((m, image_map, image_partition))
    for stage, layers in by_stage.items():
        path = os.path.join(out, f"stage{stage}.png")
        stage_figure(path, image[0], voxel, properties["spacing"], layers,
                     f"stage {stage}: WKV weights at voxel {voxel} (channel mean), "
                     f"{os.path.basename(report['model'])}, fold {report['fold']}")
        report["figures"].append(os.path.basename(path))
    with open(os.path.join(out, "attention.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def _place(patch_map, tile, padded_shape, unpad) -> np.ndarray:
    """A tile-sized map into the preprocessed array's grid (zeros elsewhere; padding removed)."""
    patch_map = patch_map.numpy()
    full = np.zeros(padded_shape, dtype=patch_map.dtype)
    full[tile] = patch_map
    return full[tuple(unpad[1:])]


def _write_nifti(path: str, array: np.ndarray, properties: dict) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    stuff = properties["sitk_stuff"]
    image.SetSpacing(stuff["spacing"])
    image.SetOrigin(stuff["origin"])
    image.SetDirection(stuff["direction"])
    sitk.WriteImage(image, path, True)


def stage_figure(path: str, image: np.ndarray, voxel, spacing, layers, title: str) -> None:
    """Rows: the stage's layers; columns: the planes through the voxel (one for a 2D image); each
    the input slice in grey, the layer's weights over it (inside the partition), the partition
    outlined and the voxel marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    planes = [0] if image.shape[0] == 1 else [0, 1, 2]
    names = "ZYX"
    fig, axes = plt.subplots(len(layers), len(planes), figsize=(3.2 * len(planes) + 0.6, 3.0 * len(layers)),
                             squeeze=False)
    for row, (m, weights, partition) in enumerate(layers):
        for col, axis in enumerate(planes):
            ax = axes[row][col]
            take = lambda a: np.take(a, voxel[axis], axis=axis)  # noqa: E731
            shown = [a for a in range(3) if a != axis]
            ax.imshow(take(image), cmap="gray", aspect=spacing[shown[0]] / spacing[shown[1]], interpolation="nearest")
            w, inside = take(weights), take(partition)
            if inside.any():
                heat = ax.imshow(np.ma.masked_where(~inside, w), cmap="inferno", alpha=0.65, vmin=0,
                                 vmax=w[inside].max(), aspect=spacing[shown[0]] / spacing[shown[1]],
                                 interpolation="nearest")
                ax.contour(inside.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
                fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.02)
            ax.plot(voxel[shown[1]], voxel[shown[0]], "+", color="lime", markersize=9, markeredgewidth=1.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0 and len(planes) > 1:
                ax.set_title(f"{names[axis]} = {voxel[axis]}", fontsize=9)
            if col == 0:
                window = "map" if all(w is None for w in m.window) else "x".join(str(w) for w in m.window)
                ax.set_ylabel(f"block {m.block}, {m.layer}\nwindow {window}, pool {'x'.join(map(str, m.pool))}\n"
                              f"scan weights {', '.join(f'{s:.2f}' for s in m.scan_weights.tolist())}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
