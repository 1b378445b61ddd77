"""Keep a study's evidence after its machine is gone: the few files its report reads, per finished fold.

    python -m nnunet_sss.bench.protocol archive -d 4 -o ARCHIVE [--results_dir DIR]

Trainings take hours and a CPU session holds a few of them, so a five-fold study is run over
several sessions. What the report and `nnunet-sss compare` read of a trained model is small:
per model folder `plans.json` and `dataset.json` (the network is rebuilt from them for its
cost), per finished fold (its `validation/summary.json` exists) that summary, `debug.json` and
the `training_log_*.txt` files, a few hundred kB; per ensemble that nnU-Net scored
(ensembles/ensemble___A___B___FOLDS) its summary.json and dataset.json. No checkpoint, prediction
or image is copied.
ARCHIVE keeps nnU-Net's layout (ARCHIVE/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION/fold_F/...),
so `protocol report --results_dir ARCHIVE --no_ensembles` and `nnunet-sss compare --results_dir
ARCHIVE --no_ensembles` read it as they read nnUNet_results. Making an ensemble needs the
validation .npz files, which stay behind: so `protocol study --archive` ensembles each fold
right after its trainings (find_best_configuration on that fold), and the report pools those
per-fold ensembles case by case (nnunet_sss/compare/results.py, find_ensembles).

Nothing in ARCHIVE is ever overwritten: a fold already there with the same bytes is left as it
is; one whose files differ (the fold was trained again) is a conflict, named, and then nothing at
all is copied, so that an archive never mixes two trainings of one fold.
"""
from __future__ import annotations

import filecmp
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

from nnunet_sss.checks import UsageError, dataset_folder
from nnunet_sss.compare.results import ENSEMBLE_FOLDER, results_root

MODEL_FILES = ("plans.json", "dataset.json")
FOLD_FILES = ("validation/summary.json", "debug.json")
FOLD_PATTERNS = ("training_log_*.txt",)
ENSEMBLE_FILES = ("summary.json", "dataset.json")


def fold_files(fold_dir: Path) -> list[str]:
    """The files of one finished fold that the archive keeps, relative to the fold folder."""
    names = [name for name in FOLD_FILES if (fold_dir / name).is_file()]
    names += sorted(p.name for pattern in FOLD_PATTERNS for p in fold_dir.glob(pattern))
    return names


@dataclass
class ArchivePlan:
    """What `archive` would do: files to copy, folds already archived, unfinished folds, conflicts."""
    copies: list[tuple[Path, Path]] = field(default_factory=list)
    new_folds: list[str] = field(default_factory=list)
    kept_folds: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def _plan_files(source: Path, target: Path, names, what: str, plan: ArchivePlan) -> bool:
    """Queue the copies of `names`; False (and a conflict) if a file in the archive differs."""
    differ = [n for n in names if (target / n).exists() and not filecmp.cmp(source / n, target / n, shallow=False)]
    if differ:
        plan.conflicts.append(f"{what}: {', '.join(differ)} differ from the archive's copy in {target}")
        return False
    plan.copies += [(source / n, target / n) for n in names if not (target / n).exists()]
    return True


def _plan_unit(source: Path, target: Path, names, what: str, plan: ArchivePlan) -> None:
    """Queue one fold's (or ensemble's) files: new, kept (all there, same bytes) or a conflict."""
    queued = len(plan.copies)
    if _plan_files(source, target, names, what, plan):
        (plan.new_folds if len(plan.copies) > queued else plan.kept_folds).append(what)


def plan_archive(results_dataset: Path, archive_dataset: Path, only: Optional[Tuple[str, str]] = None) -> ArchivePlan:
    """`only`: (model folder name, fold folder name) of the one fold to archive, or ("ensembles", name) of
    one ensemble; every fold and ensemble when None."""
    plan = ArchivePlan()
    for model in sorted(p for p in results_dataset.iterdir() if p.is_dir() and p.name.count("__") == 2):
        if only is not None and model.name != only[0]:
            continue
        folds = sorted(p for p in model.glob("fold_*") if p.is_dir() and (only is None or p.name == only[1]))
        finished = [f for f in folds if (f / "validation" / "summary.json").is_file()]
        plan.unfinished += [f"{model.name}/{f.name}" for f in folds if f not in finished]
        if not finished:
            continue
        if not _plan_files(model, archive_dataset / model.name, [n for n in MODEL_FILES if (model / n).is_file()],
                           model.name, plan):
            continue
        for fold in finished:
            target, names = archive_dataset / model.name / fold.name, fold_files(fold)
            what = f"{model.name}/{fold.name}"
            extra = sorted({p.name for p in target.glob("training_log_*.txt")} - set(names))
            if extra:
                plan.conflicts.append(f"{what}: the archive holds logs this fold has not ({', '.join(extra)})")
            else:
                _plan_unit(fold, target, names, what, plan)
    ensembles = results_dataset / ENSEMBLE_FOLDER
    if (only is None or only[0] == ENSEMBLE_FOLDER) and ensembles.is_dir():
        for ensemble in sorted(p for p in ensembles.iterdir() if (p / "summary.json").is_file()):
            if only is None or ensemble.name == only[1]:
                _plan_unit(ensemble, archive_dataset / ENSEMBLE_FOLDER / ensemble.name,
                           [n for n in ENSEMBLE_FILES if (ensemble / n).is_file()],
                           f"{ENSEMBLE_FOLDER}/{ensemble.name}", plan)
    return plan


def archive(dataset: str, output: str | Path, results_dir: str | Path | None = None, dry_run: bool = False,
            only: Optional[Tuple[str, str]] = None) -> ArchivePlan:
    """Copy every finished fold's evidence of `dataset` (or `only` that one) from the results folder into `output`."""
    source = dataset_folder(results_root(results_dir), dataset, "the results folder", "train it first")
    plan_target = Path(output) / source.name
    if plan_target.resolve() == source.resolve():
        raise UsageError(f"the archive {plan_target} is the results folder itself")
    plan = plan_archive(source, plan_target, only)
    if plan.conflicts:
        raise UsageError("nothing archived; these folds were trained again or differ: " + "; ".join(plan.conflicts))
    if not dry_run:
        for src, dst in plan.copies:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return plan
