"""Inference time per case with nnU-Net's own predictor: nnU-Net's network against RWKV-SSS.

    python -m nnunet_sss.bench.inference -d 4 -c 2d 3d_fullres --untrained     # networks built from the plans
    python -m nnunet_sss.bench.inference -d 4 -c 2d -f 0 -tr nnUNetTrainer_cpubudget nnUNetTrainerRWKVSSS_cpubudget
    python -m nnunet_sss.bench.inference -m RESULTS/A__nnUNetPlans__2d RESULTS/B__nnUNetPlans__2d -f 0
    python -m nnunet_sss.bench.inference -d 4 -c 2d 3d_fullres --untrained --profile   # one tile, per kind of op
    python -m nnunet_sss.bench.inference -d 4 -c 2d --untrained --profile --patch 16,16  # the per-op floor

Each case goes through `nnUNetPredictor.predict_single_npy_array` (preprocessing, sliding
window with nnU-Net's tile step and test-time mirroring, resampling back), what
`nnUNetv2_predict` does per case minus the file writing. Both predictors get the same tile step
and the same mirroring axes; the two alternate, case by case (A B A B ...), after one untimed
case each, so that both see the same machine load. Printed per case: the median wall and CPU
time of each over the repeats and their ratio B / A; then the median and range of the per-case
ratios. Weights do not change the time, so `--untrained` builds both networks from the plans
(each trainer's own `build_network_architecture`, random weights): the same figures without a
trained model. Threads: as nnUNetv2_predict uses them unless --threads.

`--profile` instead runs one tile (the configuration's patch, batch 1, eval, inference_mode) of
each network: on the CPU the CPU time of its ops per kind of op (nnunet_sss.measure.
STEP_PARTS), the forward's own CPU time and the aten ops it dispatches; on CUDA the profiler's
GPU time per kind of op.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch

RWKVSSS, BASELINE = "nnUNetTrainerRWKVSSS", "nnUNetTrainer"


@dataclass
class Model:
    label: str                 # trainer name (or the model folder's)
    predictor: object          # an initialised nnUNetPredictor


def _predictor(args):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    device = torch.device(args.device)
    return nnUNetPredictor(tile_step_size=args.step, use_gaussian=True, use_mirroring=not args.disable_tta,
                           perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                           allow_tqdm=False)


def trained_model(folder: str, args) -> Model:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: F401  (import order)

    checkpoint = os.path.join(folder, f"fold_{args.fold}", args.checkpoint)
    if not os.path.isfile(checkpoint):
        raise SystemExit(f"error: no checkpoint {checkpoint}: train fold {args.fold} first, or use --untrained")
    predictor = _predictor(args)
    predictor.initialize_from_trained_model_folder(folder, (args.fold,), args.checkpoint)
    return Model(os.path.basename(os.path.normpath(folder)).split("__")[0], predictor)


def untrained_model(trainer: str, plans: dict, configuration: str, dataset_json: dict, args) -> Model:
    """The network `trainer` builds from the plans, random weights, mirroring on every axis
    (nnUNetTrainer's default)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_sss.training.lookup import build_network, find_trainer_class

    try:
        trainer_class = find_trainer_class(trainer)
    except RuntimeError:
        raise SystemExit(f"error: trainer {trainer} not found (for RWKV-SSS trainers: eval \"$(nnunet-sss env)\")") \
            from None
    plans_manager = PlansManager(plans)
    manager = plans_manager.get_configuration(configuration)
    network, _, _ = build_network(trainer_class, plans_manager, configuration, dataset_json, False)
    predictor = _predictor(args)
    predictor.manual_initialization(network, plans_manager, manager, [network.state_dict()], dataset_json, trainer,
                                    tuple(range(len(manager.patch_size))))
    return Model(trainer, predictor)


def _load_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _two(values: Sequence[str], name: str) -> List[str]:
    values = list(values)
    if len(values) == 1:
        return values * 2
    if len(values) != 2:
        raise SystemExit(f"error: {name} takes one value (for both) or two (A then B), got {values}")
    return values


def models_for(configuration: str, args) -> List[Model]:
    """(A, B) for one configuration, from -m folders, from nnUNet_results, or --untrained."""
    if args.model_folders:
        return [trained_model(folder, args) for folder in args.model_folders]
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    dataset = maybe_convert_to_dataset_name(args.dataset)
    trainers, plans = _two(args.trainers, "-tr"), _two(args.plans, "-p")
    if not args.untrained:
        return [trained_model(get_output_folder(dataset, t, p, configuration), args) for t, p in zip(trainers, plans)]
    folder = os.path.join(nnUNet_preprocessed, dataset)
    dataset_json = _load_json(os.path.join(folder, "dataset.json"))
    return [untrained_model(t, _load_json(os.path.join(folder, f"{p}.json")), configuration, dataset_json, args)
            for t, p in zip(trainers, plans)]


def case_files(models: List[Model], args) -> List[List[str]]:
    """The first --cases cases of -i (nnU-Net raw naming), by default the dataset's imagesTs or imagesTr."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    dataset_json = models[0].predictor.dataset_json
    folder = args.images
    if folder is None:
        from nnunetv2.paths import nnUNet_raw

        name = models[0].predictor.plans_manager.dataset_name
        candidates = [os.path.join(nnUNet_raw or "", name, sub) for sub in ("imagesTs", "imagesTr")]
        folder = next((c for c in candidates if os.path.isdir(c) and os.listdir(c)), None)
        if folder is None:
            raise SystemExit(f"error: no images in {' or '.join(candidates)}: give a folder with -i")
    cases = create_lists_from_splitted_dataset_folder(folder, dataset_json["file_ending"])[:args.cases]
    if not cases:
        raise SystemExit(f"error: no {dataset_json['file_ending']} images in {folder}")
    return cases


def _check_same_inference(models: List[Model]) -> None:
    axes = [m.predictor.allowed_mirroring_axes if m.predictor.use_mirroring else None for m in models]
    if axes[0] != axes[1]:
        raise SystemExit(f"error: the models mirror along different axes ({axes[0]} vs {axes[1]}): "
                         "compare them with --disable_tta")
    patches = [tuple(m.predictor.configuration_manager.patch_size) for m in models]
    if patches[0] != patches[1]:
        print(f"note: different patch sizes {patches[0]} vs {patches[1]}: each predictor tiles with its own")


def _timed_case(model: Model, image: np.ndarray, properties: dict, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    wall, cpu = time.perf_counter(), time.process_time()
    model.predictor.predict_single_npy_array(image, properties, None, None, False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return time.perf_counter() - wall, time.process_time() - cpu, peak


def _range(values):
    return f"{statistics.median(values):.2f}x (range {min(values):.2f}-{max(values):.2f}x)"


def time_cases(models: List[Model], cases: List[List[str]], args) -> dict:
    device = torch.device(args.device)
    reader = models[0].predictor.plans_manager.image_reader_writer_class()
    loaded = [(os.path.basename(files[0]), *reader.read_images(files)) for files in cases]
    for model in models:  # untimed: first-call set-up (C++ kernels, scan plans, allocator)
        _timed_case(model, loaded[0][1], loaded[0][2], device)
    times = {(m, i): [] for m in (0, 1) for i in range(len(loaded))}
    peaks = [0, 0]
    for _ in range(args.repeats):
        for i, (_, image, properties) in enumerate(loaded):
            for m, model in enumerate(models):
                wall, cpu, peak = _timed_case(model, image, properties, device)
                times[(m, i)].append((wall, cpu))
                peaks[m] = max(peaks[m], peak or 0)
    a, b = models[0].label, models[1].label
    print(f"| case | {a} wall | {b} wall | ratio | {a} CPU | {b} CPU | ratio |")
    print("|---|---|---|---|---|---|---|")
    rows, wall_ratios, cpu_ratios = [], [], []
    for i, (name, image, _) in enumerate(loaded):
        wa, wb = (statistics.median(t[0] for t in times[(m, i)]) for m in (0, 1))
        ca, cb = (statistics.median(t[1] for t in times[(m, i)]) for m in (0, 1))
        wall_ratios.append(wb / wa)
        cpu_ratios.append(cb / ca)
        rows.append(dict(case=name, shape=list(image.shape[1:]), wall=[wa, wb], cpu=[ca, cb]))
        print(f"| {name} {tuple(image.shape[1:])} | {wa:.2f} s | {wb:.2f} s | {wb / wa:.2f}x | {ca:.2f} s | "
              f"{cb:.2f} s | {cb / ca:.2f}x |", flush=True)
    print(f"{b} / {a} per case: wall {_range(wall_ratios)}, CPU {_range(cpu_ratios)}")
    if device.type == "cuda":
        print(f"peak GPU memory per case: {a} {peaks[0] / 2**20:.0f} MiB, {b} {peaks[1] / 2**20:.0f} MiB "
              f"({peaks[1] / max(peaks[0], 1):.2f}x)")
    return dict(models=[a, b], cases=rows, wall_ratio=wall_ratios, cpu_ratio=cpu_ratios,
                peak_memory_bytes=peaks if device.type == "cuda" else None)


def profile_tile(models: List[Model], args) -> dict:
    """One tile of each network: on the CPU its forward's CPU time per kind of op and between
    ops (measure.forward_breakdown), on CUDA the profiler's GPU time per kind of op."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    from nnunet_sss.measure import forward_breakdown, step_breakdown

    out = {}
    for model in models:
        predictor = model.predictor
        network = predictor.network.to(args.device).eval()
        patch = args.patch or predictor.configuration_manager.patch_size
        shape = (determine_num_input_channels(predictor.plans_manager, predictor.configuration_manager,
                                              predictor.dataset_json), *patch)
        out[model.label] = forward_breakdown(network, shape, 1, args.repeats * 5) if args.device == "cpu" else \
            step_breakdown(network, shape, 1, args.device, inference=True)
    a, b = (m.label for m in models)
    clock = f"CPU time, median of {args.repeats * 5}" if args.device == "cpu" else "GPU time, profiler"
    print(f"one tile {tuple(args.patch or models[0].predictor.configuration_manager.patch_size)}, batch 1, "
          f"{torch.get_num_threads()} thread(s), {clock}, ms")
    print(f"| {'':26s} | {a:>14s} | {b:>14s} | {'difference':>10s} |")
    print(f"|{'-' * 28}|{'-' * 16}|{'-' * 16}|{'-' * 12}|")
    for part, value in out[a].items():
        ours = out[b][part]
        cells = (f"{value:14d} | {ours:14d} | {ours - value:+10d}" if isinstance(value, int) else
                 f"{value:14.2f} | {ours:14.2f} | {ours - value:+10.2f}")
        print(f"| {part:26s} | {cells} |", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnunet_sss.bench.inference", description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--dataset", help="dataset name or id (with -c, -tr, -p)")
    parser.add_argument("-c", "--configurations", nargs="+", default=["2d", "3d_fullres"])
    parser.add_argument("-tr", "--trainers", nargs="+", default=[BASELINE, RWKVSSS], help="A B (A is the reference)")
    parser.add_argument("-p", "--plans", nargs="+", default=["nnUNetPlans"], help="one for both, or one each")
    parser.add_argument("-f", "--fold", default="0")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    parser.add_argument("-m", "--model_folders", nargs=2, metavar=("A", "B"),
                        help="two trained model folders (instead of -d/-c/-tr/-p)")
    parser.add_argument("--untrained", action="store_true",
                        help="build both networks from the preprocessed plans with random weights")
    parser.add_argument("-i", "--images", help="folder of images in nnU-Net raw naming (default: the dataset's "
                                               "imagesTs, else imagesTr)")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over the cases")
    parser.add_argument("-step_size", "--step", type=float, default=0.5, help="nnU-Net's tile step")
    parser.add_argument("--disable_tta", action="store_true", help="no test-time mirroring (for both)")
    parser.add_argument("-device", "--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default: what nnUNetv2_predict uses)")
    parser.add_argument("--profile", action="store_true", help="only profile one tile of each network")
    parser.add_argument("--patch", type=lambda t: tuple(int(v) for v in t.split(",")),
                        help="with --profile: this tile size instead of the plans' (e.g. 16,16: the fixed cost)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    if args.fold != "all":
        args.fold = int(args.fold)
    if not args.model_folders and args.dataset is None:
        parser.error("give -d DATASET (with -c/-tr/-p, trained or --untrained) or -m FOLDER_A FOLDER_B")
    from nnunetv2.configuration import default_num_processes

    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.device == "cpu":  # nnUNetv2_predict: all cores, capped at nnU-Net's process count during the forward
        torch.set_num_threads(min(os.cpu_count() or 1, default_num_processes))
    configurations = [None] if args.model_folders else args.configurations
    report = {}
    for configuration in configurations:
        models = models_for(configuration, args)
        if models[0].label == models[1].label:
            for model, tag in zip(models, ("#1", "#2")):
                model.label += f" {tag}"
        _check_same_inference(models)
        name = configuration or models[0].predictor.configuration_manager.configuration.get("data_identifier", "")
        mirror = models[0].predictor.allowed_mirroring_axes if models[0].predictor.use_mirroring else None
        print(f"\n## {name}: {models[0].label} (A) vs {models[1].label} (B), {args.device}, "
              f"{torch.get_num_threads()} threads, tile step {args.step}, mirroring axes {mirror}, "
              f"{'untrained' if args.untrained else 'trained'}", flush=True)
        if args.profile:
            report[name] = profile_tile(models, args)
        else:
            report[name] = time_cases(models, case_files(models, args), args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
