"""`nnunet-sss plans`: write an nnU-Net plans file whose networks are RWKV-SSS.

Every configuration's `architecture` entry is rewritten to build RWKVSSSUNet with all its
options stated, so any trainer given `-p <new plans>` (the stock nnUNetTrainer included) trains
RWKV-SSS. Each configuration keeps its `data_identifier`, so the new plans reuse the source
plans' preprocessed data: no second preprocessing.
"""
import argparse
import json
import os
import sys
from copy import deepcopy
from pathlib import Path
from typing import Mapping, Optional

from nnunet_sss.checks import UsageError, dataset_folder, nnunet_folder, read_json

from .architecture import rwkvsss_architecture
from .presets import DEFAULT_PRESET, NETWORK_DEFAULTS, PRESETS, preset_options


def default_plans_name(source: str, preset: str) -> str:
    """`nnUNetPlans` + preset `S` -> `nnUNetPlans_RWKVSSS_S` (single underscores: nnU-Net
    splits result folder names on `__`)."""
    return f"{source}_RWKVSSS_{preset}"


def rwkvsss_plans(plans: Mapping, plans_name: str, options: Mapping) -> dict:
    """A copy of `plans` named `plans_name` in which every architecture builds RWKV-SSS."""
    new = deepcopy(dict(plans))
    new["plans_name"] = plans_name
    for configuration in new["configurations"].values():
        if "architecture" in configuration:  # inheriting configurations take their parent's
            configuration["architecture"] = rwkvsss_architecture(configuration["architecture"], options)
    return new


def write_rwkvsss_plans(dataset: str, source_plans: str = "nnUNetPlans", plans_name: Optional[str] = None,
                        preset: str = DEFAULT_PRESET, overrides: Optional[Mapping] = None,
                        preprocessed_folder: Optional[str] = None) -> str:
    """Write `<plans_name>.json` beside `<source_plans>.json` in the dataset's preprocessed
    folder and return its path. `dataset` is an ID (4) or a name (Dataset004_Hippocampus).
    Every configuration's network is built (on the meta device: no memory) before anything is
    written, so an option value the network refuses fails here, not at training time. What the
    user can fix raises a UsageError."""
    root = nnunet_folder("nnUNet_preprocessed") if preprocessed_folder is None else Path(preprocessed_folder)
    folder = dataset_folder(root, dataset, "nnUNet_preprocessed",
                            f"run nnUNetv2_plan_and_preprocess -d {dataset} first, or give the dataset's full name")
    plans_name = plans_name or default_plans_name(source_plans, preset)
    if plans_name == source_plans:
        raise UsageError(f"the new plans must not overwrite the source plans {source_plans!r}: name them with -o")
    if "/" in plans_name or os.sep in plans_name or "__" in plans_name or plans_name.endswith(".json"):
        raise UsageError(f"plans identifier {plans_name!r}: give a bare name without '/', '.json' or '__' (nnU-Net "
                         f"splits result folder names on it), e.g. {default_plans_name(source_plans, preset)}")
    source_file = folder / (source_plans + ".json")
    if not source_file.is_file():
        raise UsageError(f"no plans {source_file}: run nnUNetv2_plan_and_preprocess -d {dataset} first "
                         f"(or name the source plans with -p)")
    plans = read_json(source_file, "plans file")
    if not isinstance(plans.get("configurations"), dict):
        raise UsageError(f"{source_file} holds no 'configurations': not nnU-Net plans")
    try:
        new = rwkvsss_plans(plans, plans_name, preset_options(preset, **dict(overrides or {})))
    except ValueError as error:  # an unknown preset or option, or an architecture RWKV-SSS cannot take
        raise UsageError(f"{source_file}: {error}") from None
    _check_networks_build(new, dict(overrides or {}), source_file)
    target = folder / (plans_name + ".json")
    try:
        with open(target, "w") as f:
            json.dump(new, f, indent=4)
    except OSError as error:
        raise UsageError(f"cannot write {target} ({error.strerror}): the dataset's folder in nnUNet_preprocessed "
                         f"must be writable") from None
    return str(target)


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
            defaults = rwkvsss_plans(plans, plans["plans_name"], {k: NETWORK_DEFAULTS[k] for k in overrides})
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


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plans", help="write nnU-Net plans that build RWKV-SSS (usable with any trainer, -p NAME)",
        description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--dataset", required=True, help="dataset ID or name, as for nnUNetv2_train")
    parser.add_argument("-p", "--source-plans", default="nnUNetPlans",
                        help="plans identifier to start from (default: nnUNetPlans)")
    parser.add_argument("-o", "--plans-name", default=None,
                        help="identifier of the new plans (default: <source>_RWKVSSS_<preset>)")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), help="size preset")
    parser.add_argument("--set", dest="overrides", type=_option, action="append", default=[],
                        metavar="OPTION=VALUE", help="override one RWKV-SSS option (repeatable)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    path = write_rwkvsss_plans(args.dataset, args.source_plans, args.plans_name, args.preset,
                               dict(args.overrides))
    print(path)
    name = os.path.splitext(os.path.basename(path))[0]
    print(f"train with: nnUNetv2_train {args.dataset} 3d_fullres 0 -p {name}  "
          f"(or -tr nnUNetTrainerRWKVSSS -p {name})", file=sys.stderr)
    return 0
