"""`nnunet-sss compare`: trainers and their ensembles, compared from nnU-Net results folders.

Flags follow nnU-Net (-d -c -tr -p -f); output in -o.
"""
from __future__ import annotations

import argparse

from nnunet_sss.checks import int_at_least

from .stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

EPILOG = """example:
  nnunet-sss compare -d 4 -c 3d_fullres -tr nnUNetTrainer nnUNetTrainerRWKVSSS -f 0 1 2 3 4 -o OUT
  nnunet-sss compare -d 4 -c 2d -tr nnUNetTrainer_cpubudget nnUNetTrainerRWKVSSS_cpubudget:nnUNetPlans_RWKVSSS_S -o OUT
Reads $nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>/fold_X/validation/summary.json,
the ensembles nnUNetv2_find_best_configuration wrote for these models and folds, and optional
test-set prediction folders (--test LABEL=FOLDER, evaluated by nnUNetv2_evaluate_folder).
Writes OUT/comparison.md, OUT/comparison.json and PNG plots."""


def _test_folder(text: str) -> tuple[str, str]:
    label, sep, folder = text.partition("=")
    if not sep:
        from pathlib import Path

        return Path(text).name, text
    if not label or not folder:
        raise argparse.ArgumentTypeError(f"--test takes LABEL=FOLDER or FOLDER, got {text!r}")
    return label, folder


def register(subparsers) -> None:
    p = subparsers.add_parser("compare", help="compare trainers (and their ensembles) from nnU-Net results folders",
                              description=__doc__.splitlines()[0], epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name, as for nnUNetv2_train")
    p.add_argument("-c", dest="configurations", nargs="+", default=["3d_fullres"],
                   help="configuration(s) (default: 3d_fullres)")
    p.add_argument("-tr", dest="trainers", nargs="+", required=True, metavar="TRAINER[:PLANS]",
                   help="two or more trainers, baseline first (differences are later minus earlier); "
                        "TRAINER:PLANS gives that trainer its own plans instead of -p")
    p.add_argument("-p", dest="plans", nargs="+", default=["nnUNetPlans"],
                   help="plans identifier(s), each combined with every trainer that has no :PLANS")
    p.add_argument("-f", dest="folds", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default: 0 1 2 3 4)")
    p.add_argument("-o", dest="output", required=True, help="output folder")
    p.add_argument("--results_dir", default=None, help="nnU-Net results folder (default: $nnUNet_results)")
    p.add_argument("--test", dest="test_folders", nargs="+", type=_test_folder, default=[],
                   metavar="LABEL=FOLDER", help="test-set prediction folders holding nnUNetv2_evaluate_folder's "
                                                "summary.json, compared as a second section")
    p.add_argument("--no_ensembles", action="store_true", help="leave out find_best_configuration's ensembles")
    p.add_argument("--no_benchmark", action="store_true",
                   help="skip measuring the networks (parameters, FLOPs, step time, memory)")
    p.add_argument("--bench_device", default="cpu", help="device for the network measurement (default: cpu)")
    p.add_argument("--bench_steps", type=int_at_least(1), default=5, help="timed train steps per network (default: 5)")
    p.add_argument("--bench_warmup", type=int_at_least(0), default=2, help="untimed warm-up steps (default: 2)")
    p.add_argument("--bench_no_memory", action="store_true",
                   help="skip the peak-memory measurement (a subprocess per network)")
    p.add_argument("--bootstrap", type=int_at_least(1), default=BOOTSTRAP_RESAMPLES,
                   help=f"bootstrap resamples (default: {BOOTSTRAP_RESAMPLES})")
    p.add_argument("--seed", type=int, default=BOOTSTRAP_SEED, help=f"bootstrap seed (default: {BOOTSTRAP_SEED})")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Inputs that do not match raise ComparisonInputError (a UsageError): nnunet-sss prints it in one line."""
    from .comparison import run_comparison

    run_comparison(args.dataset, args.configurations, args.trainers, args.folds, args.output,
                   plans=args.plans, results_dir=args.results_dir, ensembles=not args.no_ensembles,
                   test_folders=args.test_folders, benchmark=not args.no_benchmark,
                   bench_device=args.bench_device, bench_steps=args.bench_steps,
                   bench_warmup=args.bench_warmup, bench_memory=not args.bench_no_memory,
                   resamples=args.bootstrap, seed=args.seed)
    return 0
