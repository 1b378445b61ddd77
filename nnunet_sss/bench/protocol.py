"""The CPU-budget accuracy protocol (../shared/protocols/hippocampus-cpu.md): run, tabulate, study.

    python -m nnunet_sss.bench.protocol run -d 4 -c 3d_fullres -f 0 \\
        -tr nnUNetTrainer_cpubudget nnUNetTrainerRWKVSSS_cpubudget [-p nnUNetPlans ...] [--archive DIR]
    python -m nnunet_sss.bench.protocol table -d 4 -c 3d_fullres 2d -f 0 1 \\
        -tr nnUNetTrainer_cpubudget nnUNetTrainerRWKVSSS_cpubudget [-p ...]
    python -m nnunet_sss.bench.protocol study -o REPORT [-d 4] [--rwkv TRAINER[:PLANS]] \\
        [--control TRAINER[:PLANS]] [--baseline TRAINER[:PLANS]] [--folds 2d=0-4 3d_fullres=0-2] \\
        [--arm TRAINER[:PLANS][@CONFIGURATION=FOLDS...] ...] [--arm_folds 2d=0,1] \\
        [-device cpu] [-np N] [--no_ensembles] [--ops] [--dry_run]
    python -m nnunet_sss.bench.protocol report -o REPORT [the same study arguments] [--results_dir DIR]
    python -m nnunet_sss.bench.protocol archive -d 4 -o ARCHIVE [--results_dir DIR] [--dry_run]

`run` trains each (trainer, plans, configuration, fold) with nnU-Net's own CLI, one after the
other on the same machine, with the protocol's settings (`-device cpu`, `nnUNet_n_proc_DA=1`,
`--npz`). A model whose `validation/summary.json` exists is skipped; one with a
`checkpoint_latest.pth` is continued with `--c`: an interrupted sweep is rerun as is. With
`--archive DIR` each fold is archived as soon as it finishes, and a fold that DIR holds already
is skipped too (its evidence is kept; see `archive`).
`-p` gives one plans identifier per trainer (or one for all).

`table` prints the protocol's score per model as a Markdown table: Dice per class and
foreground mean (nnU-Net's final validation, all cases of the fold, mirroring as the trainer
says), parameters (the network nnU-Net builds from the plans.json stored with the results),
seconds per training iteration (the last epoch's logged time / the trainer's iterations per
epoch: includes the epoch's few validation iterations) and training wall time (log start
to "Training done.").

`study` runs the study of issue "Five folds of evidence" into one $nnUNet_results, back to back:
the three reference trainers, nnU-Net (--baseline, default nnUNetTrainer_cpubudget), the
optimiser control (--control, nnUNetTrainerAdamWWarmup_cpubudget) and RWKV-SSS (--rwkv,
nnUNetTrainerRWKVSSS_cpubudget), each TRAINER:PLANS with plans of its own (default nnUNetPlans),
on the folds of --folds (CONFIGURATION=FOLDS, FOLDS like 0-4 or 0,1,2; default 2d=0-4
3d_fullres=0-2), fold by fold: all three on a fold, then each --arm placed on that fold (an
ablation or any other trainer; without :PLANS it takes RWKV-SSS's plans; without @ it is trained
on --arm_folds, default 2d=0,1, the screen of issue 25), before the next fold. An arm's folds
must be among the references' (it is compared with them on its folds). Then nnUNetv2_find_best_configuration:
each configuration on all its folds where these are more than the folds every configuration
has, and all configurations on the common folds (with 3d_fullres on 0-2: 2d alone on 0-4, then
2d + 3d_fullres on 0-2); it pools each model's validation and ensembles every pair from the
validation .npz. Last, the report (below) into -o. Resumable: a finished fold (its
validation/summary.json exists) is never trained again, an interrupted one is continued with
--c, a find_best_configuration call whose outputs are newer than its folds is skipped; rerun the
same command after an interruption. --dry_run checks the inputs and prints what would run.

`report` writes the study's report from a results folder alone (no training): -o REPORT/study.md,
study.json and PNG plots (nnunet_sss/bench/study_report.py says what is in them).

`archive` copies what the report reads of every finished fold (summary, logs, debug.json, the
model's plans.json and dataset.json; no checkpoint, no prediction) into ARCHIVE in nnU-Net's
layout, so that a study run over several sessions keeps its evidence: `report --results_dir
ARCHIVE --no_ensembles` reads it (nnunet_sss/bench/archive.py). It never overwrites: a fold
trained again is a conflict and nothing is copied.

Bad input (a trainer, plans or configuration that does not exist, a fold without validation, a
finished fold without the .npz an ensemble needs, folds or cases that differ between the models
compared, a missing ensemble) is named on one stderr line before any work; exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nnunet_sss.compare.comparison import ensure_ext_trainer_path
from nnunet_sss.compare.efficiency import build_trainer_network, training_time
from nnunet_sss.checks import UsageError
from nnunet_sss.compare.results import model_identifier
from nnunet_sss.compare.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

from .archive import archive as archive_folds
from .study import (DEFAULT_ARM_FOLDS, DEFAULT_FOLDS, DEFAULT_TRAINERS, Model, Study, check_before_training,
                    fold_ensembles, results_dataset_folder, run_find_best, train_folds)
from .study_report import build_report, iterations_per_epoch


def _specs(args):
    plans = args.plans if len(args.plans) > 1 else args.plans * len(args.trainers)
    if len(plans) != len(args.trainers):
        raise SystemExit(f"-p takes one plans identifier or one per trainer ({len(args.trainers)}), "
                         f"got {len(args.plans)}")
    return [(t, p, c, f) for c in args.configurations for f in args.folds for t, p in zip(args.trainers, plans)]


def _fold_dir(args, trainer, plans, configuration, fold) -> Path:
    return results_dataset_folder(args.dataset)[1] / model_identifier(trainer, plans, configuration) / f"fold_{fold}"


def _archive_dir(args) -> Path | None:
    return None if args.archive is None else Path(args.archive)


def run(args) -> int:
    trainings = [(Model(t, p, c), f) for t, p, c, f in _specs(args)]
    return train_folds(args.dataset, results_dataset_folder(args.dataset)[1], trainings,
                       archive_dir=_archive_dir(args))


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
        per_it = epochs[-1] / iterations_per_epoch(fold_dir, trainer) if epochs else None
        print(f"| {configuration} | {fold} | {trainer} | {plans} | {_cell(dice.get('1'), '.4f')} | "
              f"{_cell(dice.get('2'), '.4f')} | {scores['foreground_mean']['Dice']:.4f} | {params / 1e6:.2f} M | "
              f"{_cell(per_it, '.2f')} | {_cell(None if wall is None else wall / 60, '.1f')} min |")
    return 0


def _study(args) -> Study:
    return Study.from_text(args.dataset, args.baseline, args.control, args.rwkv, args.folds, args.arms, args.arm_folds)


def study(args) -> int:
    spec = _study(args)
    archive_dir = _archive_dir(args)
    _, folder = check_before_training(spec, ensembles=not args.no_ensembles and archive_dir is None)
    per_fold = archive_dir is not None and not args.no_ensembles  # ensembled fold by fold, as each fold is whole

    def ensemble_fold(model, fold):
        return fold_ensembles(args.dataset, folder, spec, model.configuration, fold, archive_dir, args.np, args.dry_run)
    code = train_folds(args.dataset, folder, spec.trainings(), args.device, args.dry_run, archive_dir,
                       ensemble_fold if per_fold else None)
    if code == 0 and not args.no_ensembles and archive_dir is None:
        code = run_find_best(args.dataset, folder, spec, args.np, args.dry_run)
    if code == 0 and not args.dry_run:
        build_report(spec, args.output, args.archive, ensembles=not args.no_ensembles, ops=args.ops,
                     plots=not args.no_plots, resamples=args.bootstrap, seed=args.seed)  # with --archive: from there
    return code


def report(args) -> int:
    build_report(_study(args), args.output, args.results_dir, ensembles=not args.no_ensembles, ops=args.ops,
                 plots=not args.no_plots, resamples=args.bootstrap, seed=args.seed)
    return 0


def archive(args) -> int:
    plan = archive_folds(args.dataset, args.output, args.results_dir, args.dry_run)
    verb = "would copy" if args.dry_run else "copied"
    print(f"archive {args.output}: {verb} {len(plan.new_folds)} fold(s), {len(plan.kept_folds)} already there, "
          f"{len(plan.unfinished)} unfinished left out")
    for what in plan.new_folds:
        print(f"  {verb}: {what}")
    return 0


ARCHIVE_HELP = ("archive each fold as it finishes into DIR (see `archive`); a fold DIR holds is not trained "
                "again, so runs spread over sessions go on where the last stopped")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nnunet_sss.bench.protocol", description=__doc__.splitlines()[0],
                                     epilog="python -m nnunet_sss.bench.protocol ACTION -h: that action's arguments")
    actions = parser.add_subparsers(dest="action", required=True)
    for func, help_text in ((run, "train models with nnUNetv2_train, skipping finished folds"),
                            (table, "print the protocol's table of trained models")):
        p = actions.add_parser(func.__name__, help=help_text)
        p.add_argument("-d", dest="dataset", default="4")
        p.add_argument("-c", dest="configurations", nargs="+", default=["3d_fullres"])
        p.add_argument("-f", dest="folds", nargs="+", default=["0"])
        p.add_argument("-tr", dest="trainers", nargs="+", required=True)
        p.add_argument("-p", dest="plans", nargs="+", default=["nnUNetPlans"])
        if func is run:
            p.add_argument("--archive", default=None, metavar="DIR", help=ARCHIVE_HELP)
        p.set_defaults(func=func)
    for func, help_text in ((study, "train the whole study (resumably), find_best_configuration, then the report"),
                            (report, "the study's report from a results folder, no training")):
        p = actions.add_parser(func.__name__, help=help_text, description=help_text)
        p.add_argument("-o", dest="output", required=True, help="report folder (study.md, study.json, plots)")
        p.add_argument("-d", dest="dataset", default="4", help="dataset id or name (default: 4)")
        for role, who in (("rwkv", "RWKV-SSS"), ("control", "the optimiser control"), ("baseline", "nnU-Net")):
            p.add_argument(f"--{role}", default=DEFAULT_TRAINERS[role], metavar="TRAINER[:PLANS]",
                           help=f"{who} (default: {DEFAULT_TRAINERS[role]}, plans nnUNetPlans)")
        p.add_argument("--folds", nargs="+", default=list(DEFAULT_FOLDS), metavar="CONFIGURATION=FOLDS",
                       help=f"the reference trainers' folds per configuration (default: {' '.join(DEFAULT_FOLDS)})")
        p.add_argument("--arm", dest="arms", nargs="+", action="extend", default=[],
                       metavar="TRAINER[:PLANS][@CONFIGURATION=FOLDS...]",
                       help="extra trainers (ablations), compared with the references on their folds; "
                            "without :PLANS RWKV-SSS's plans, without @ --arm_folds")
        p.add_argument("--arm_folds", nargs="+", default=list(DEFAULT_ARM_FOLDS), metavar="CONFIGURATION=FOLDS",
                       help=f"folds of an arm given without @ (default: {' '.join(DEFAULT_ARM_FOLDS)})")
        p.add_argument("--no_ensembles", action="store_true",
                       help="no find_best_configuration, no ensembles in the report")
        p.add_argument("--ops", action="store_true",
                       help="count aten ops per forward+backward of each network (slow for 3D RWKV-SSS networks)")
        p.add_argument("--no_plots", action="store_true", help="no PNG plots (they take seconds each)")
        p.add_argument("--bootstrap", type=int, default=BOOTSTRAP_RESAMPLES,
                       help=f"bootstrap resamples (default: {BOOTSTRAP_RESAMPLES})")
        p.add_argument("--seed", type=int, default=BOOTSTRAP_SEED, help=f"bootstrap seed (default: {BOOTSTRAP_SEED})")
        if func is study:
            p.add_argument("-device", default="cpu", help="nnUNetv2_train's -device (default: cpu, the protocol's)")
            p.add_argument("-np", type=int, default=None, help="find_best_configuration's processes (default: nnU-Net's)")
            p.add_argument("--dry_run", action="store_true", help="check the inputs, print what would run, run nothing")
            p.add_argument("--archive", default=None, metavar="DIR",
                           help=ARCHIVE_HELP + "; ensembles are then made fold by fold, and the report reads DIR")
        else:
            p.add_argument("--results_dir", default=None, help="nnU-Net results folder (default: $nnUNet_results)")
        p.set_defaults(func=func)
    p = actions.add_parser("archive", help="copy each finished fold's summary, logs and plans into an archive",
                           description="copy each finished fold's summary, logs and plans into an archive")
    p.add_argument("-d", dest="dataset", default="4", help="dataset id or name (default: 4)")
    p.add_argument("-o", dest="output", required=True, help="archive folder (nnU-Net's results layout)")
    p.add_argument("--results_dir", default=None, help="nnU-Net results folder (default: $nnUNet_results)")
    p.add_argument("--dry_run", action="store_true", help="say what would be copied, copy nothing")
    p.set_defaults(func=archive)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:  # the inputs' fault: one line naming it, no traceback
        print(f"protocol {args.action}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
