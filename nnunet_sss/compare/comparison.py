"""`run_comparison`: from nnU-Net results folders to OUT/comparison.{md,json} and PNG plots."""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Sequence

from nnunet_sss.checks import writable_folder

from . import efficiency as eff
from .plots import plot_group
from .report import write_json, write_markdown
from .results import (ComparisonInputError, check_same_cases, dataset_name, find_ensembles,
                      load_model, load_prediction_folder, model_identifier, model_specs, results_root)
from .stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE
from .summary import FOREGROUND, build_group, short_labels

VALIDATION = "validation"
TEST = "test"


def _log(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


def ensure_ext_trainer_path() -> None:
    """Let nnU-Net find this package's trainers by name (nnUNet_extTrainer), keeping any user paths."""
    from nnunet_sss.env import VARIABLE, export_value

    os.environ[VARIABLE] = export_value(os.environ)


def _check_foreground_matches(entry_summary: dict, notes: list[str]) -> None:
    """A pooled summary nnU-Net wrote should agree with the pooled fold summaries; say so when not."""
    nn = entry_summary.get("nnunet_summary")
    if not nn or entry_summary["kind"] != "model" or not entry_summary["per_fold"]:
        return
    ours = entry_summary["summary"][FOREGROUND]["Dice"]["mean"]
    theirs = nn[FOREGROUND].get("Dice")
    if theirs is not None and ours is not None and math.isfinite(ours) and abs(ours - theirs) > 1e-6:
        notes.append(f"{entry_summary['label']}: nnU-Net's cross-validation summary {nn['file']} has foreground "
                     f"Dice {theirs:.6f}, the fold summaries pool to {ours:.6f}; it is stale "
                     "(rerun nnUNetv2_find_best_configuration)")


def run_comparison(dataset: str | int, configurations: Sequence[str], trainers: Sequence[str],
                   folds: Sequence[int | str], output_folder: str | os.PathLike,
                   plans: Sequence[str] = ("nnUNetPlans",), results_dir: str | os.PathLike | None = None,
                   ensembles: bool = True, test_folders: Sequence[tuple[str, str]] = (),
                   benchmark: bool = True, bench_device: str = "cpu", bench_steps: int = 5,
                   bench_warmup: int = 2, bench_memory: bool = True, resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = BOOTSTRAP_SEED,
                   progress: Callable[[str], None] | None = print) -> dict:
    """Compare trained models (trainers x configurations x plans; a trainer given as TRAINER:PLANS
    has its own plans) on `folds`, with their ensembles and optional test-set prediction folders
    ((label, folder) pairs evaluated by nnUNetv2_evaluate_folder).

    Raises ComparisonInputError listing every missing fold, results folder or mismatched case.
    Returns the comparison dict that is also written to output_folder/comparison.json.
    """
    start = time.perf_counter()
    folds = [int(f) if str(f).isdigit() else str(f) for f in folds]
    if len(set(map(str, folds))) != len(folds) or not folds:
        raise ComparisonInputError([f"folds must be distinct and at least one, got {folds}"])
    specs = model_specs(trainers, plans, configurations)
    if len(set(specs)) < 2:
        raise ComparisonInputError([f"need at least two models to compare (trainers x configurations x plans), "
                                    f"got {[model_identifier(*s) for s in specs]}"])
    out = writable_folder(output_folder, "output folder (-o)")  # before the work that would be lost
    root = results_root(results_dir)
    dataset = dataset_name(root, dataset)
    problems: list[str] = []
    notes: list[str] = []
    models = [load_model(root, dataset, t, p, c, folds, problems) for t, p, c in specs]
    models = [m for m in models if m is not None]
    ens = []
    if ensembles and not problems:
        ens, ens_notes = find_ensembles(root, dataset, [m.name for m in models], folds, problems)
        notes += ens_notes
    validation = models + ens
    if not problems:
        check_same_cases(validation, f"cross-validation folds {', '.join(map(str, folds))}", problems)
    tests = [load_prediction_folder(label, folder, problems) for label, folder in test_folders]
    tests = [t for t in tests if t is not None]
    check_same_cases(tests, "test set", problems)
    if problems:
        raise ComparisonInputError(problems)
    _log(progress, f"compare: {len(models)} models, {len(ens)} ensemble(s), {len(tests)} test folder(s) "
                   f"on {len(validation[0].per_case)} cross-validation cases")

    settings = {"bootstrap_resamples": resamples, "seed": seed, "confidence": CONFIDENCE,
                "std": "sample std over cases, ddof=1",
                "wilcoxon": "scipy.stats.wilcoxon(b - a, zero_method='wilcox', two-sided); p = 1 when all "
                            "differences are zero; NaN pairs dropped"}
    groups = {VALIDATION: build_group(validation, resamples, seed)}
    groups[VALIDATION]["title"] = f"Cross-validation, fold(s) {', '.join(map(str, folds))}"
    if tests:
        groups[TEST] = build_group(tests, resamples, seed)
        groups[TEST]["title"] = "Test set"
    for name, group in groups.items():
        group["plots"] = [str(p) for p in plot_group(group, name, out)]
        for entry in group["entries"]:
            _check_foreground_matches(entry, notes)

    labels = short_labels(models)
    efficiency = {}
    for m in models:
        label = labels[m.name]
        efficiency[label] = {"model": m.name, "training": eff.training_times(m.folder, folds)}
        if benchmark:
            _log(progress, f"compare: measuring the network of {label} ({bench_device}, {bench_steps} steps)")
            ensure_ext_trainer_path()
            try:
                efficiency[label]["network"] = eff.measure_trainer_network(
                    m.folder, m.trainer, m.configuration, device=bench_device, steps=bench_steps,
                    warmup=bench_warmup, memory=bench_memory)
            except Exception as exc:  # the report says why, the rest of the comparison stands
                efficiency[label]["network"] = {"error": f"{type(exc).__name__}: {exc}"}
                notes.append(f"{label}: network not measured: {type(exc).__name__}: {exc}")

    comparison = {
        "dataset": dataset, "results_folder": str(root), "trainers": list(trainers),
        "configurations": list(configurations), "plans": list(plans), "folds": folds,
        "settings": settings, "notes": notes, "groups": groups, "efficiency": efficiency,
    }
    write_json(comparison, out / "comparison.json")
    write_markdown(comparison, out / "comparison.md")
    _log(progress, f"compare: wrote {out / 'comparison.md'} and comparison.json "
                   f"({time.perf_counter() - start:.1f} s)")
    return comparison
