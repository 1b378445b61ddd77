"""The CPU-budget accuracy protocol (../shared/protocols/hippocampus-cpu.md), run and tabulated.

    python -m nnunet_sss.bench.protocol run -d 4 -c 3d_fullres -f 0 \\
        -tr nnUNetTrainer_cpubudget nnUNetTrainerRWKVSSS_cpubudget [-p nnUNetPlans ...]
    python -m nnunet_sss.bench.protocol table -d 4 -c 3d_fullres 2d -f 0 1 \\
        -tr nnUNetTrainer_cpubudget nnUNetTrainerRWKVSSS_cpubudget [-p ...]

`run` trains each (trainer, plans, configuration, fold) with nnU-Net's own CLI, one after the
other on the same machine, with the protocol's settings (`-device cpu`, `nnUNet_n_proc_DA=1`,
`--npz`). A model whose `validation/summary.json` exists is skipped; one with a
`checkpoint_latest.pth` is continued with `--c`: an interrupted sweep is rerun as is.
`-p` gives one plans identifier per trainer (or one for all).

`table` prints the protocol's score per model as a Markdown table: Dice per class and
foreground mean (nnU-Net's final validation, all cases of the fold, mirroring as the trainer
says), parameters (the network nnU-Net builds from the plans.json stored with the results),
seconds per training iteration (the last epoch's logged time / the trainer's iterations per
epoch: includes the epoch's few validation iterations) and training wall time (log start
to "Training done.").
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from nnunet_sss.compare.efficiency import build_trainer_network, training_time
from nnunet_sss.compare.comparison import ensure_ext_trainer_path
from nnunet_sss.compare.results import model_identifier, results_root


def _specs(args):
    plans = args.plans if len(args.plans) > 1 else args.plans * len(args.trainers)
    if len(plans) != len(args.trainers):
        raise SystemExit(f"-p takes one plans identifier or one per trainer ({len(args.trainers)}), "
                         f"got {len(args.plans)}")
    return [(t, p, c, f) for c in args.configurations for f in args.folds for t, p in zip(args.trainers, plans)]


def _fold_dir(args, trainer, plans, configuration, fold) -> Path:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    dataset = maybe_convert_to_dataset_name(args.dataset)  # finds it in raw/preprocessed, before any results
    return results_root(None) / dataset / model_identifier(trainer, plans, configuration) / f"fold_{fold}"


def run(args) -> int:
    ensure_ext_trainer_path()
    env = dict(os.environ, nnUNet_n_proc_DA="1")
    for trainer, plans, configuration, fold in _specs(args):
        fold_dir = _fold_dir(args, trainer, plans, configuration, fold)
        if (fold_dir / "validation" / "summary.json").is_file():
            print(f"done already: {fold_dir}", flush=True)
            continue
        command = ["nnUNetv2_train", str(args.dataset), configuration, str(fold), "-tr", trainer, "-p", plans,
                   "-device", "cpu", "--npz"]
        if (fold_dir / "checkpoint_latest.pth").is_file() or (fold_dir / "checkpoint_final.pth").is_file():
            command.append("--c")
        print("$ " + " ".join(command), flush=True)
        start = time.time()
        code = subprocess.call(command, env=env)
        print(f"exit {code} after {time.time() - start:.0f} s", flush=True)
        if code != 0:
            return code
    return 0


def _cell(x, fmt):
    return "?" if x is None else format(x, fmt)


def table(args) -> int:
    ensure_ext_trainer_path()  # the networks are rebuilt through nnU-Net's trainer lookup
    print("| configuration | fold | trainer | plans | Dice 1 | Dice 2 | foreground mean | parameters | s / it | "
          "training wall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for trainer, plans, configuration, fold in _specs(args):
        fold_dir = _fold_dir(args, trainer, plans, configuration, fold)
        summary = fold_dir / "validation" / "summary.json"
        if not summary.is_file():
            print(f"| {configuration} | {fold} | {trainer} | {plans} | not finished: no {summary} | | | | | |")
            continue
        scores = json.loads(summary.read_text())
        dice = {k: v["Dice"] for k, v in scores["mean"].items()}
        network, _, _ = build_trainer_network(fold_dir.parent, trainer, configuration)
        params = sum(p.numel() for p in network.parameters())
        timing = training_time(fold_dir)
        epochs, wall = timing.get("epoch_times_s"), timing.get("train_wall_s")
        per_it = epochs[-1] / _iterations_per_epoch(trainer) if epochs else None
        print(f"| {configuration} | {fold} | {trainer} | {plans} | {_cell(dice.get('1'), '.4f')} | "
              f"{_cell(dice.get('2'), '.4f')} | {scores['foreground_mean']['Dice']:.4f} | {params / 1e6:.2f} M | "
              f"{_cell(per_it, '.2f')} | {_cell(None if wall is None else wall / 60, '.1f')} min |")
    return 0


def _iterations_per_epoch(trainer: str) -> int:
    """From the trainer's schedule; trainers without one keep nnU-Net's 250."""
    from nnunet_sss.training import TRAINERS

    schedule = getattr(TRAINERS.get(trainer), "schedule", None)
    return schedule.iterations if schedule else 250


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "table"])
    parser.add_argument("-d", dest="dataset", default="4")
    parser.add_argument("-c", dest="configurations", nargs="+", default=["3d_fullres"])
    parser.add_argument("-f", dest="folds", nargs="+", default=["0"])
    parser.add_argument("-tr", dest="trainers", nargs="+", required=True)
    parser.add_argument("-p", dest="plans", nargs="+", default=["nnUNetPlans"])
    args = parser.parse_args(argv)
    return run(args) if args.action == "run" else table(args)


if __name__ == "__main__":
    sys.exit(main())
