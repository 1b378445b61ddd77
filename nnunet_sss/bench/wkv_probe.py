"""How much each RWKV layer mixes, at init for every arm or in trained models (nnunet_sss.network.probe).

    python -m nnunet_sss.bench.wkv_probe --plans hippocampus2d [--arms wkvIdentity tokenDecay ...]
    python -m nnunet_sss.bench.wkv_probe --model $nnUNet_results/Dataset004_Hippocampus/TRAINER__PLANS__2d/fold_0

Per RWKV layer: `spread` (within-window variance of the mixer's output over its input's: 0 = a
window mean, 1 = no mixing), `local` (share of channels whose WKV weight falls by e within 8
tokens), the two residual branches' norms over their residual's, and whether the layer's windows
repeat the other layer's of its block. At init the networks are built from the bench's plans
(seed 0) for the design defaults and each arm named (the ablation trainers' options); a trained
model is read from its fold folder (checkpoint_final.pth, else checkpoint_best.pth) with the
network its trainer builds. The input is `--cases` preprocessed training cases of the plans'
configuration, centre-cropped to the patch, where `--data` names their folder (or, for a trained
model, nnU-Net's preprocessed folder holds them), else standard normal noise (noise has no
spatial correlation: its spread understates what a real image keeps).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch

from nnunet_sss.network import RWKVSSSUNet
from nnunet_sss.network.probe import LOCAL_TOKENS, layer_facts
from nnunet_sss.training.ablations import ABLATIONS

from .network import LAYOUTS
from .trained import load_fold, preprocessed_cases, probe_main


def _table(title: str, facts) -> str:
    lines = [f"\n## {title}", "",
             f"| layer | mixer | WKV map | window | windows | spread | local (e within {LOCAL_TOKENS}) "
             "| spatial branch | channel branch | repeats the block's other layer |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for f in facts:
        name = f.name.replace("encoder.stages.", "stage ").replace(".blocks.", " block ")
        local = "-" if f.local_channels is None else f"{f.local_channels:.2f}"
        lines.append(f"| {name} | {f.mixer} | {'x'.join(map(str, f.wkv_size))} | {'x'.join(map(str, f.window))} "
                     f"| {f.n_windows} | {f.spread:.3f} | {local} | {f.spatial_branch:.3f} | {f.channel_branch:.3f} "
                     f"| {'yes' if f.same_window else ''} |")
    return "\n".join(lines)


def _input(patch, channels: int, data: Optional[Path], n_cases: int) -> torch.Tensor:
    if data is not None:
        return preprocessed_cases(data, patch, n_cases)
    generator = torch.Generator().manual_seed(0)
    return torch.randn((n_cases, channels, *patch), generator=generator)


def network_at_init(plan: dict, arm: str):
    """(options, network): RWKV-SSS from a bench plan with the design defaults ("defaults") or an arm's
    options (ABLATIONS), from seed 0, as its trainer would build it."""
    options = {} if arm == "defaults" else dict(ABLATIONS[arm][0])
    if options.get("merge_equal_windows") or options.get("wkv_decay") == "token":
        options["patch_size"] = tuple(plan["patch"])  # what the trainer fills in from the configuration
    torch.manual_seed(0)
    return options, RWKVSSSUNet(**plan["kwargs"], **options)


def at_init(plan_name: str, arms: List[str], data: Optional[Path], n_cases: int) -> str:
    plan = LAYOUTS[plan_name]
    x = _input(plan["patch"], plan["kwargs"]["input_channels"], data, n_cases)
    out = []
    for arm in ["defaults", *arms]:
        options, network = network_at_init(plan, arm)
        out.append(_table(f"{plan_name} at init, {arm} {options or ''} "
                          f"({'preprocessed cases' if data else 'noise'} x{len(x)})", layer_facts(network, x)))
    return "\n".join(out)


def trained(fold_folder: Path, data: Optional[Path], n_cases: int) -> str:
    """The facts of a trained fold, its network built as its trainer builds it."""
    fold = load_fold(fold_folder)
    data = data if data is not None else fold.data
    x = _input(fold.patch, fold.input_channels, data, n_cases)
    title = f"{fold.model} {Path(fold_folder).name} ({fold.checkpoint}; {'preprocessed cases' if data else 'noise'} x{len(x)})"
    return _table(title, layer_facts(fold.network, x))


def _run(args) -> None:
    for name in args.plans:
        print(at_init(name, args.arms, args.data, args.cases))
    for folder in args.model:
        print(trained(folder, args.data, args.cases))


def main(argv=None) -> int:
    return probe_main("python -m nnunet_sss.bench.wkv_probe", __doc__.split("\n\n")[0], _run, argv, default_cases=4,
                      arms_help="ablation/candidate arms to probe at init beside the defaults",
                      data_help="an nnU-Net preprocessed folder of the configuration")


if __name__ == "__main__":
    raise SystemExit(main())
