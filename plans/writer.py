"""`nnunet-sss plans`: write an nnU-Net plans file whose networks are RWKV-SSS.

Every configuration's `architecture` entry is rewritten to build RWKVSSSUNet with all its
options stated, so any trainer given `-p <new plans>` (the stock nnUNetTrainer included) trains
RWKV-SSS. Each configuration keeps its `data_identifier`, so the new plans reuse the source
plans' preprocessed data: no second preprocessing. With a GPU memory target the plans are
planned afresh from the dataset's fingerprint instead, patch and batch sized to that GPU
(plans/planner.py). An existing plans file is replaced only with --overwrite.
"""
import argparse
import contextlib
import functools
import io
import json
import os
import sys
from copy import deepcopy
from pathlib import Path
from typing import Callable, Mapping, Optional

from nnunet_sss.checks import UsageError, dataset_folder, nnunet_folder, read_json

from .architecture import preset_options_for, rwkvsss_architecture
from .presets import DEFAULT_PRESET, MEMORY_PRESETS, NETWORK_DEFAULTS, PRESETS, preset_options

NNUNET_PLANS = "nnUNetPlans"  # nnU-Net's own plans: its baseline's, never replaced


def default_plans_name(source: str, size: str) -> str:
    """`nnUNetPlans` + size `S` -> `nnUNetPlans_RWKVSSS_S` (single underscores: nnU-Net
    splits result folder names on `__`)."""
    return f"{source}_RWKVSSS_{size}"


def memory_plans_name(size: str, target_gb: float) -> str:
    """Size `S`, 8 GB -> `nnUNetRWKVSSSPlans_S_8GB` (as nnU-Net's nnUNetResEncUNetMPlans)."""
    return f"nnUNetRWKVSSSPlans_{size}_{target_gb:g}GB"


OptionsFor = Callable[[Mapping], Mapping]  # a configuration's architecture entry -> its RWKV-SSS options


def size_options(size: str = DEFAULT_PRESET, overrides: Optional[Mapping] = None) -> OptionsFor:
    """The options of size preset `size` with `overrides`, per configuration (2d or 3d): checked
    once here, so that an unknown size or option is refused before any configuration is built."""
    overrides = dict(overrides or {})
    preset_options(size, **overrides)
    return functools.partial(preset_options_for, size=size, **overrides)


def rwkvsss_plans(plans: Mapping, plans_name: str, options_for: OptionsFor) -> dict:
    """A copy of `plans` named `plans_name` in which every architecture builds RWKV-SSS with the
    options that `options_for` gives for it."""
    new = deepcopy(dict(plans))
    new["plans_name"] = plans_name
    for configuration in new["configurations"].values():
        if "architecture" in configuration:  # inheriting configurations take their parent's
            architecture = configuration["architecture"]
            configuration["architecture"] = rwkvsss_architecture(architecture, options_for(architecture))
    return new


def write_rwkvsss_plans(dataset: str, source_plans: str = NNUNET_PLANS, plans_name: Optional[str] = None,
                        size: str = DEFAULT_PRESET, overrides: Optional[Mapping] = None,
                        preprocessed_folder: Optional[str] = None, overwrite: bool = False) -> str:
    """Write `<plans_name>.json` beside `<source_plans>.json` in the dataset's preprocessed
    folder and return its path. `dataset` is an ID (4) or a name (Dataset004_Hippocampus).
    Every configuration's network is built (on the meta device: no memory) before anything is
    written, so an option value the network refuses fails here, not at training time. What the
    user can fix raises a UsageError."""
    root = nnunet_folder("nnUNet_preprocessed") if preprocessed_folder is None else Path(preprocessed_folder)
    folder = dataset_folder(root, dataset, "nnUNet_preprocessed",
                            f"run nnUNetv2_plan_and_preprocess -d {dataset} first, or give the dataset's full name")
    plans_name = plans_name or default_plans_name(source_plans, size)
    if plans_name == source_plans:
        raise UsageError(f"the new plans must not overwrite the source plans {source_plans!r}: name them with -o")
    target = _new_plans_file(folder, plans_name, overwrite, default_plans_name(source_plans, size))
    source_file = folder / (source_plans + ".json")
    if not source_file.is_file():
        raise UsageError(f"no plans {source_file}: run nnUNetv2_plan_and_preprocess -d {dataset} first "
                         f"(or name the source plans with -p)")
    plans = read_json(source_file, "plans file")
    if not isinstance(plans.get("configurations"), dict):
        raise UsageError(f"{source_file} holds no 'configurations': not nnU-Net plans")
    try:
        new = rwkvsss_plans(plans, plans_name, size_options(size, overrides))
    except ValueError as error:  # an unknown size or option, or an architecture RWKV-SSS cannot take
        raise UsageError(f"{source_file}: {error}") from None
    _check_networks_build(new, dict(overrides or {}), source_file)
    _save(target, new)
    return str(target)


def write_gpu_memory_plans(dataset: str, target_gb: float, plans_name: Optional[str] = None,
                           size: str = DEFAULT_PRESET, overrides: Optional[Mapping] = None,
                           overwrite: bool = False) -> str:
    """Plan RWKV-SSS (size preset `size` with `overrides`) for a GPU of `target_gb` GiB from the
    dataset's nnU-Net fingerprint (nnUNet_raw and nnUNet_preprocessed as nnU-Net's planner reads
    them) and write `<plans_name>.json` in its preprocessed folder; returns the file's path."""
    folder = dataset_folder(nnunet_folder("nnUNet_preprocessed"), dataset, "nnUNet_preprocessed",
                            f"run nnUNetv2_plan_and_preprocess -d {dataset} first, or give the dataset's full name")
    if not (folder / "dataset_fingerprint.json").is_file():
        raise UsageError(f"{folder.name} has not been fingerprinted by nnU-Net: run nnUNetv2_plan_and_preprocess "
                         f"-d {dataset} first (or nnUNetv2_extract_fingerprint -d {dataset})")
    raw_json = nnunet_folder("nnUNet_raw") / folder.name / "dataset.json"
    if not raw_json.is_file():
        raise UsageError(f"no {raw_json}: the planner reads the raw dataset as nnUNetv2_plan_and_preprocess does; "
                         f"point nnUNet_raw at the folder that holds {folder.name}")
    options_for = size_options(size, overrides)
    plans_name = plans_name or memory_plans_name(size, target_gb)
    target = _new_plans_file(folder, plans_name, overwrite, memory_plans_name(size, target_gb))

    from .planner import RWKVSSSPlanner  # nnU-Net's planner: imported only when planning
    planner = RWKVSSSPlanner(folder.name, target_gb, plans_name=plans_name, options_for=options_for)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints every configuration it plans
            planner.plan_experiment()
    except (TypeError, ValueError) as error:  # the network refused the options: the user's if they gave any
        if not overrides:
            raise
        given = " ".join(f"--set {k}={json.dumps(v)}" for k, v in overrides.items())
        raise UsageError(f"{given}: the network refuses it for the plans of {folder.name} ({error}); see the "
                         f"options in docs/ARCHITECTURE.md") from None
    _save(target, rwkvsss_plans(planner.plans, plans_name, options_for))
    return str(target)


def _new_plans_file(folder: Path, plans_name: str, overwrite: bool, example: str) -> Path:
    """The file of new plans `plans_name` in `folder`. Refused, before any work so that nothing
    changes: nnU-Net's own plans, a name that is not a bare identifier, and without `overwrite`
    an existing plans file."""
    if plans_name == NNUNET_PLANS:
        raise UsageError(f"{NNUNET_PLANS} are nnU-Net's own plans (its baseline's and its preprocessed data's): "
                         f"name the new plans otherwise with -o")
    if "/" in plans_name or os.sep in plans_name or "__" in plans_name or plans_name.endswith(".json"):
        raise UsageError(f"plans identifier {plans_name!r}: give a bare name without '/', '.json' or '__' (nnU-Net "
                         f"splits result folder names on it), e.g. {example}")
    target = folder / (plans_name + ".json")
    if target.is_file() and not overwrite:
        raise UsageError(f"{target} exists: pass --overwrite to replace it, or name the new plans with -o")
    return target


def _save(target: Path, plans: Mapping) -> None:
    try:
        with open(target, "w") as f:
            json.dump(plans, f, indent=4)
    except OSError as error:
        raise UsageError(f"cannot write {target} ({error.strerror}): the dataset's folder in nnUNet_preprocessed "
                         f"must be writable") from None


def _check_networks_build(plans: Mapping, overrides: Mapping, source_file: Path) -> None:
    """Build each configuration's network. A failure that the same plans with the network's
    defaults in place of the user's overrides do not have is the overrides' fault (a UsageError);
    any other failure is a bug and propagates."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(deepcopy(dict(plans)))
    for name in plans["configurations"]:
        try:
            _build_on_meta(manager.get_configuration(name))
        except (TypeError, ValueError) as error:
            if not overrides:
                raise
            defaults = rwkvsss_plans(plans, plans["plans_name"], lambda _: {k: NETWORK_DEFAULTS[k] for k in overrides})
            _build_on_meta(PlansManager(defaults).get_configuration(name))
            given = " ".join(f"--set {k}={json.dumps(v)}" for k, v in overrides.items())
            raise UsageError(f"{given}: the network refuses it for configuration {name} of {source_file} "
                             f"({error}); see the options in docs/ARCHITECTURE.md") from None


def _build_on_meta(configuration) -> None:
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = configuration.configuration["architecture"]
    with torch.device("meta"):
        get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                               1, 2, allow_init=False, deep_supervision=True)


def _option(text: str):
    """`key=value` with a JSON value (`global_window=null`, `wkv_pool=[1]`, `scan=raster`)."""
    key, sep, value = text.partition("=")
    if not sep or key not in NETWORK_DEFAULTS:
        raise argparse.ArgumentTypeError(f"expected OPTION=VALUE with OPTION one of {sorted(NETWORK_DEFAULTS)}, "
                                         f"got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare word, such as raster


# `--preset` named the network size before it named the GPU memory; `S`, that size's old default
# spelling, is no memory preset and is still taken as `--size S`
OLD_SIZE_SPELLING = DEFAULT_PRESET
assert OLD_SIZE_SPELLING not in MEMORY_PRESETS


def register(subparsers) -> None:
    memory_presets = ", ".join(f"{k} = {v} GB" for k, v in MEMORY_PRESETS.items())
    parser = subparsers.add_parser(
        "plans", help="write nnU-Net plans that build RWKV-SSS (usable with any trainer, -p NAME), optionally "
                      "sized to a GPU", description=__doc__.splitlines()[0],
        epilog=f"--preset is the GPU memory preset ({memory_presets}), --size the network size (S, M, L). "
               f"--preset S, the old spelling of --size S, is still taken as --size S.")
    parser.add_argument("-d", "--dataset", required=True, help="dataset ID or name, as for nnUNetv2_train")
    parser.add_argument("-p", "--source-plans", default=None,
                        help=f"plans identifier to start from (default: {NNUNET_PLANS}); not with a memory target")
    parser.add_argument("-o", "--plans-name", default=None,
                        help="identifier of the new plans (default: <source>_RWKVSSS_<size>, or with a memory "
                             "target nnUNetRWKVSSSPlans_<size>_<GB>GB)")
    parser.add_argument("--size", default=None, choices=list(PRESETS),
                        help=f"network size preset: blocks, windows, widths (default: {DEFAULT_PRESET}); any size "
                             f"works at any GPU memory")
    parser.add_argument("--preset", default=None, type=_memory_preset, metavar="|".join(MEMORY_PRESETS),
                        help=f"GPU memory preset, named and sized as nnU-Net's ResEnc presets ({memory_presets}): "
                             f"plans patch and batch afresh for that GPU. Not the network size: that is --size")
    parser.add_argument("--gpu-memory-target", type=_gigabytes, default=None, metavar="GB",
                        help="plan patch and batch sizes afresh from the dataset's fingerprint so that training "
                             "fits a GPU with this much memory (GiB); wins over --preset")
    parser.add_argument("--set", dest="overrides", type=_option, action="append", default=[],
                        metavar="OPTION=VALUE", help="override one RWKV-SSS option (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace plans of that name if they exist")
    parser.set_defaults(func=_run)


def _memory_preset(text: str) -> str:
    if text not in MEMORY_PRESETS and text != OLD_SIZE_SPELLING:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r}: the GPU memory preset is one of {', '.join(MEMORY_PRESETS)} "
            f"({' / '.join(str(gb) for gb in MEMORY_PRESETS.values())} GB); the network size is --size "
            f"{'|'.join(PRESETS)}")
    return text


def _gigabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GB, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 GB, got {text}")
    return value


def _size_and_target(args) -> tuple:
    """The network size and the GPU memory target in GiB (None: keep the source plans' patch and
    batch) that `args` ask for."""
    size, memory_preset = args.size, args.preset
    if memory_preset == OLD_SIZE_SPELLING:
        if size not in (None, OLD_SIZE_SPELLING):
            raise UsageError(f"--preset {OLD_SIZE_SPELLING} (the old spelling of --size {OLD_SIZE_SPELLING}) "
                             f"contradicts --size {size}: give --size only")
        print(f"nnunet-sss plans: --preset {OLD_SIZE_SPELLING} is deprecated and taken as --size "
              f"{OLD_SIZE_SPELLING}; --preset now names the GPU memory ({'|'.join(MEMORY_PRESETS)})", file=sys.stderr)
        size, memory_preset = OLD_SIZE_SPELLING, None
    target_gb = args.gpu_memory_target if args.gpu_memory_target is not None else MEMORY_PRESETS.get(memory_preset)
    return size or DEFAULT_PRESET, target_gb


def _run(args) -> int:
    size, target_gb = _size_and_target(args)
    if target_gb is None:
        path = write_rwkvsss_plans(args.dataset, args.source_plans or NNUNET_PLANS, args.plans_name, size,
                                   dict(args.overrides), overwrite=args.overwrite)
    elif args.source_plans is not None:
        raise UsageError("-p converts existing plans, a memory target plans afresh from the dataset's fingerprint: "
                         "give one or the other")
    else:
        path = write_gpu_memory_plans(args.dataset, target_gb, args.plans_name, size, dict(args.overrides),
                                      args.overwrite)
    print(path)
    if target_gb is not None:
        print(f"sized for {target_gb:g} GB of GPU memory"
              + (f" (--preset {args.preset})" if args.gpu_memory_target is None else "")
              + f", network size {size} (--size)", file=sys.stderr)
        for line in _memory_summary(path, target_gb):
            print(line, file=sys.stderr)
    name = os.path.splitext(os.path.basename(path))[0]
    print(f"train with: nnUNetv2_train {args.dataset} 3d_fullres 0 -p {name}  "
          f"(or -tr nnUNetTrainerRWKVSSS -p {name})", file=sys.stderr)
    return 0


def _memory_summary(path: str, target_gb: float) -> list:
    """One line per configuration of memory plans: patch, batch, the GPU memory they are estimated to
    need; and what to preprocess if the plans name data that is not there yet."""
    from .memory import target_gib
    from .planner import architecture_cost

    folder = os.path.dirname(path)
    with open(path) as f:
        plans = json.load(f)
    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    lines, missing = [], []
    for name, conf in plans["configurations"].items():
        if "architecture" not in conf:
            continue
        cost = architecture_cost(conf["architecture"], {}, conf["patch_size"], len(dataset_json["channel_names"]),
                                 len(dataset_json["labels"]))
        lines.append(f"{name}: patch {'x'.join(map(str, conf['patch_size']))}, batch {conf['batch_size']}, "
                     f"{conf['architecture']['arch_kwargs']['n_stages']} stages: estimated to need "
                     f"{target_gib(cost.at(conf['batch_size'])):.1f} of {target_gb:g} GB in training")
        if not os.path.isdir(os.path.join(folder, conf["data_identifier"])):
            missing.append(name)
    if missing:
        lines.append(f"preprocess first: nnUNetv2_preprocess -d {plans['dataset_name']} -plans_name "
                     f"{plans['plans_name']} -c {' '.join(missing)}")
    return lines
