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
from typing import Mapping, Optional

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
    folder and return its path. `dataset` is an ID (4) or a name (Dataset004_Hippocampus)."""
    if preprocessed_folder is None:
        from nnunetv2.paths import nnUNet_preprocessed
        if not nnUNet_preprocessed.is_set():
            raise RuntimeError("nnUNet_preprocessed is not set: export nnUNet_preprocessed=/path/to/"
                               "nnUNet_preprocessed (the folder nnUNetv2_plan_and_preprocess wrote)")
        preprocessed_folder = nnUNet_preprocessed.get()
    folder = _dataset_folder(preprocessed_folder, str(dataset))
    source_file = os.path.join(folder, source_plans + ".json")
    if not os.path.isfile(source_file):
        raise FileNotFoundError(f"no plans {source_file}: run nnUNetv2_plan_and_preprocess -d {dataset} "
                                f"first (or name the source plans with -p)")
    plans_name = plans_name or default_plans_name(source_plans, preset)
    if plans_name == source_plans:
        raise ValueError(f"the new plans must not overwrite the source plans {source_plans!r}")
    with open(source_file) as f:
        plans = json.load(f)
    new = rwkvsss_plans(plans, plans_name, preset_options(preset, **dict(overrides or {})))
    target = os.path.join(folder, plans_name + ".json")
    with open(target, "w") as f:
        json.dump(new, f, indent=4)
    return target


def _dataset_folder(preprocessed_folder: str, dataset: str) -> str:
    """The dataset's folder in nnUNet_preprocessed, from its name or its ID."""
    if not dataset.startswith("Dataset"):
        prefix = f"Dataset{int(dataset):03d}_"
        names = sorted(n for n in os.listdir(preprocessed_folder) if n.startswith(prefix))
        if len(names) != 1:
            raise FileNotFoundError(f"{len(names)} datasets with ID {dataset} in {preprocessed_folder} "
                                    f"({names}); run nnUNetv2_plan_and_preprocess -d {dataset} first, "
                                    f"or give the dataset's full name")
        dataset = names[0]
    return os.path.join(preprocessed_folder, dataset)


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
