"""Read nnU-Net's results folders: what each trained model, ensemble or prediction folder scored.

Nothing is evaluated here; every number comes from a summary.json that nnU-Net wrote
(nnunetv2.evaluation.evaluate_predictions layout: metric_per_case[i].metrics[class][metric],
mean[class][metric], foreground_mean[metric]). Sources, in nnU-Net's folder naming
(nnunetv2.utilities.file_path_utilities):

- a trained model  RESULTS/DatasetXXX/<trainer>__<plans>__<configuration>/fold_<f>/validation/summary.json
  (written by nnUNetv2_train at the end of training); where a fold's summary is missing the
  cross-validation summary <model>/crossval_results_folds_<f_g_...>/summary.json that
  nnUNetv2_find_best_configuration writes is used instead, and the report says so.
- an ensemble      RESULTS/DatasetXXX/ensembles/ensemble___<model1>___<model2>___<folds>/summary.json
  (nnUNetv2_find_best_configuration)
- any prediction folder evaluated by nnUNetv2_evaluate_folder (summary.json inside), e.g. a
  test set predicted with nnUNetv2_predict and merged with nnUNetv2_ensemble.

Cases are matched by file name (the prediction file's name without the file ending).
Everything that is missing or does not match is collected and raised at once, as one
ComparisonInputError listing every problem: never a silent partial comparison.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from nnunet_sss.checks import UsageError, dataset_folder, read_json

ENSEMBLE_FOLDER = "ensembles"


class ComparisonInputError(UsageError):
    """The requested comparison cannot be made; `problems` lists every reason (one line in all)."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("cannot compare: " + "; ".join(self.problems))

    def one_line(self) -> str:
        """Every problem on one line, for a command's stderr."""
        return "; ".join(self.problems)


@dataclass
class Entry:
    """One row of a comparison: a trained model (pooled over folds), an ensemble or a prediction folder."""

    name: str
    kind: str                                   # "model" | "ensemble" | "predictions"
    folder: Path
    source: str = ""                            # which summary files the per-case values come from
    per_case: dict = field(default_factory=dict)    # case -> class key -> metric -> value
    case_fold: dict = field(default_factory=dict)   # case -> fold (models from fold summaries)
    per_fold: dict = field(default_factory=dict)    # fold -> {"summary_file", "n_cases", "mean", "foreground_mean"}
    nnunet_summary: dict | None = None          # the pooled summary nnU-Net wrote, if any: mean, foreground_mean, file
    trainer: str | None = None
    plans: str | None = None
    configuration: str | None = None

    @property
    def cases(self) -> list[str]:
        return sorted(self.per_case)


def results_root(results_dir: str | os.PathLike | None) -> Path:
    """The nnUNet_results folder: the argument, else the environment variable."""
    root = results_dir if results_dir is not None else os.environ.get("nnUNet_results")
    if root is None:
        raise ComparisonInputError(["no results folder: pass --results_dir or set nnUNet_results"])
    root = Path(root)
    if not root.is_dir():
        raise ComparisonInputError([f"results folder {root} is not a folder: pass --results_dir or set "
                                    f"nnUNet_results to the folder nnUNetv2_train wrote"])
    return root


def dataset_name(root: Path, dataset: str | int, where: str = "the results folder",
                 hint: str = "train it first, or pass --results_dir") -> str:
    """DatasetXXX_Name from an id or a name, looked up in `root` (`where`, for the message)."""
    return dataset_folder(root, dataset, where, hint).name


def model_identifier(trainer: str, plans: str, configuration: str) -> str:
    return f"{trainer}__{plans}__{configuration}"


def model_specs(trainers: Sequence[str], plans: Sequence[str],
                configurations: Sequence[str]) -> list[tuple[str, str, str]]:
    """(trainer, plans, configuration) of every model: each trainer with each plans identifier and
    configuration, except that `TRAINER:PLANS` pins that trainer to its own plans."""
    specs = []
    for text in trainers:
        trainer, _, own = text.partition(":")
        for configuration in configurations:
            specs += [(trainer, p, configuration) for p in ([own] if own else plans)]
    return specs


def folds_string(folds: Sequence[int | str]) -> str:
    return "_".join(str(f) for f in folds)


def _load_json(path: Path) -> dict:
    return read_json(path, "nnU-Net file")


def _file_ending(folder: Path) -> str | None:
    for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
        if candidate.is_file():
            return _load_json(candidate).get("file_ending")
    return None


def case_name(path: str, file_ending: str | None) -> str:
    base = os.path.basename(path)
    if file_ending and base.endswith(file_ending):
        return base[: -len(file_ending)]
    for ending in (".nii.gz", ".nrrd", ".mha", ".nii", ".png", ".tif", ".tiff", ".npz"):
        if base.endswith(ending):
            return base[: -len(ending)]
    return base


def read_summary(path: Path, file_ending: str | None, problems: list[str]) -> tuple[dict, dict] | None:
    """(per_case, {"mean", "foreground_mean"}) from one summary.json; None (and a problem) if unreadable."""
    if not path.is_file():
        problems.append(f"missing {path}")
        return None
    try:
        summary = _load_json(path)
        per_case = {}
        for record in summary["metric_per_case"]:
            name = case_name(record["prediction_file"], file_ending)
            if name in per_case:
                problems.append(f"{path}: case {name} appears twice")
            per_case[name] = {str(k): {m: float(v) for m, v in metrics.items()}
                              for k, metrics in record["metrics"].items()}
        means = {"mean": summary["mean"], "foreground_mean": summary["foreground_mean"]}
    except UsageError as exc:  # not valid JSON
        problems.append(str(exc))
        return None
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"{path} is not an nnU-Net summary.json ({type(exc).__name__}: {exc})")
        return None
    if not per_case:
        problems.append(f"{path} holds no cases")
        return None
    return per_case, means


def load_model(root: Path, dataset: str, trainer: str, plans: str, configuration: str,
               folds: Sequence[int | str], problems: list[str], crossval_fallback: bool = True) -> Entry | None:
    """A trained model's validation results pooled over `folds`; problems are appended, not raised.
    Without crossval_fallback every fold summary must be there."""
    identifier = model_identifier(trainer, plans, configuration)
    folder = root / dataset / identifier
    if not folder.is_dir():
        problems.append(f"{identifier}: no results folder {folder} (not trained?)")
        return None
    file_ending = _file_ending(folder)
    entry = Entry(name=identifier, kind="model", folder=folder, trainer=trainer, plans=plans,
                  configuration=configuration)
    crossval = folder / f"crossval_results_folds_{folds_string(folds)}" / "summary.json"
    missing = [f for f in folds if not (folder / f"fold_{f}" / "validation" / "summary.json").is_file()]
    if missing and crossval_fallback and crossval.is_file():
        loaded = read_summary(crossval, file_ending, problems)
        if loaded is None:
            return None
        entry.per_case, means = loaded
        entry.nnunet_summary = {**means, "file": str(crossval)}
        entry.source = (f"{crossval.relative_to(root)} (fold summaries missing for fold(s) "
                        f"{', '.join(map(str, missing))}: no per-fold table)")
        return entry
    fold_problems = []
    for f in folds:
        summary = folder / f"fold_{f}" / "validation" / "summary.json"
        if f in missing:
            fold_dir = folder / f"fold_{f}"
            why = ("fold folder missing (not trained)" if not fold_dir.is_dir()
                   else "no validation/summary.json (training unfinished or final validation not run)")
            fold_problems.append(f"{identifier}: fold {f}: {why}; expected {summary}")
            continue
        loaded = read_summary(summary, file_ending, fold_problems)
        if loaded is None:
            continue
        per_case, means = loaded
        for case, metrics in per_case.items():
            if case in entry.per_case:
                fold_problems.append(f"{identifier}: case {case} is in fold {entry.case_fold[case]} and fold {f}")
            entry.per_case[case] = metrics
            entry.case_fold[case] = f
        entry.per_fold[f] = {"summary_file": str(summary), "n_cases": len(per_case), "cases": sorted(per_case),
                             **means}
    if fold_problems:
        problems.extend(fold_problems)
        return None
    entry.source = ", ".join(f"fold_{f}/validation/summary.json" for f in folds)
    if crossval.is_file():
        loaded = read_summary(crossval, file_ending, [])
        if loaded is not None:
            entry.nnunet_summary = {**loaded[1], "file": str(crossval)}
    return entry


def _ensemble_folders(folder: Path, wanted: set) -> dict:
    """For find_best_configuration's ensembles of `wanted` models: member set -> (the members in the
    order of the first folder named, {fold text: folder}); an ensemble named in either member order is one."""
    out = {}
    if not folder.is_dir():
        return out
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        parts = sub.name.split("___")
        if len(parts) >= 4 and parts[0] == "ensemble" and set(parts[1:-1]) <= wanted:
            out.setdefault(frozenset(parts[1:-1]), (parts[1:-1], {}))[1].setdefault(parts[-1], sub)
    return out


def find_ensembles(root: Path, dataset: str, identifiers: Iterable[str], folds: Sequence[int | str],
                   problems: list[str]) -> tuple[list[Entry], list[str]]:
    """Ensembles of the given models over exactly these folds (as find_best_configuration names them);
    where there is none over all of them but one per fold (find_best_configuration run fold by fold, as
    `protocol study --archive` does), those are pooled case by case: the same per-case predictions,
    since an ensemble averages each case's probabilities from its own fold's models.

    Returns (entries, notes); an ensemble folder without summary.json is skipped with a note.
    """
    entries, notes = [], []
    for members, by_folds in _ensemble_folders(root / dataset / ENSEMBLE_FOLDER, set(identifiers)).values():
        if folds_string(folds) in by_folds:
            subs = [by_folds[folds_string(folds)]]
        elif len(folds) > 1 and all(str(f) in by_folds for f in folds):
            subs = [by_folds[str(f)] for f in folds]
        else:
            continue
        missing = [sub for sub in subs if not (sub / "summary.json").is_file()]
        if missing:
            notes.append(f"ensemble {missing[0].name} skipped: no summary.json in {missing[0]}")
            continue
        entry = Entry(name="ensemble(" + " + ".join(members) + ")", kind="ensemble", folder=subs[0],
                      source=", ".join(str((sub / "summary.json").relative_to(root)) for sub in subs))
        for sub in subs:
            loaded = read_summary(sub / "summary.json", _file_ending(sub), problems)
            if loaded is None:
                break
            per_case, means = loaded
            duplicated = sorted(set(per_case) & set(entry.per_case))
            if duplicated:
                problems.append(f"ensemble {sub.name}: case {duplicated[0]} is in another fold's ensemble too")
                break
            entry.per_case.update(per_case)
            if len(subs) == 1:
                entry.nnunet_summary = {**means, "file": str(sub / "summary.json")}
        else:
            entries.append(entry)
    return entries, notes


def load_prediction_folder(label: str, folder: str | os.PathLike, problems: list[str]) -> Entry | None:
    """A folder of predictions (nnUNetv2_predict or nnUNetv2_ensemble) evaluated by
    nnUNetv2_evaluate_folder (summary.json inside)."""
    folder = Path(folder)
    if not folder.is_dir():
        problems.append(f"{label}: prediction folder {folder} does not exist")
        return None
    loaded = read_summary(folder / "summary.json", _file_ending(folder), problems)
    if loaded is None:
        return None
    per_case, means = loaded
    # nnUNetv2_predict leaves predict_from_raw_data_args.json next to its output, nnUNetv2_ensemble does not
    kind = "predictions" if (folder / "predict_from_raw_data_args.json").is_file() else "ensemble"
    return Entry(name=label, kind=kind, folder=folder, source=str(folder / "summary.json"),
                 per_case=per_case, nnunet_summary={**means, "file": str(folder / "summary.json")})


def check_same_cases(entries: Sequence[Entry], group: str, problems: list[str]) -> None:
    """Every entry must hold the same cases, classes and metrics (and models the same cases per fold)."""
    if not entries:
        return
    union = set().union(*(e.per_case for e in entries))
    for e in entries:
        absent = sorted(union - set(e.per_case))
        if absent:
            problems.append(f"{group}: {e.name} lacks {len(absent)} case(s) the others have: {', '.join(absent)}")
    models = [e for e in entries if e.per_fold]
    for e in models[1:]:
        for fold in [f for f in models[0].per_fold if f in e.per_fold]:
            ref_cases, cases = set(models[0].per_fold[fold]["cases"]), set(e.per_fold[fold]["cases"])
            if ref_cases != cases:
                problems.append(
                    f"{group}: fold {fold}: {e.name} validated on other cases than {models[0].name} "
                    f"(only in {e.name}: {', '.join(sorted(cases - ref_cases)) or '-'}; only in "
                    f"{models[0].name}: {', '.join(sorted(ref_cases - cases)) or '-'}); "
                    f"different splits_final.json?")
    reference = entries[0]
    ref_classes = class_keys(reference)
    ref_metrics = metric_names(reference)
    for e in entries[1:]:
        if class_keys(e) != ref_classes:
            problems.append(f"{group}: {e.name} has classes {class_keys(e)}, {reference.name} has {ref_classes}")
        if metric_names(e) != ref_metrics:
            problems.append(f"{group}: {e.name} has metrics {metric_names(e)}, {reference.name} has {ref_metrics}")


def class_keys(entry: Entry) -> list[str]:
    """Foreground class (or region) keys as nnU-Net writes them ("1", "2", "(1, 2)"), in file order."""
    keys = []
    for metrics in entry.per_case.values():
        keys.extend(k for k in metrics if k not in keys and k != "0")
    return keys


def metric_names(entry: Entry) -> list[str]:
    names = []
    for metrics in entry.per_case.values():
        for per_metric in metrics.values():
            names.extend(m for m in per_metric if m not in names)
    return names


def class_names(folder: Path) -> dict[str, str]:
    """Class key -> name from the dataset.json stored with the results ({} when absent)."""
    for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
        if candidate.is_file():
            labels = _load_json(candidate).get("labels", {})
            out = {}
            for name, value in labels.items():
                key = str(value) if not isinstance(value, (list, tuple)) else (
                    str(value[0]) if len(value) == 1 else str(tuple(value)))
                out[key] = name
            return out
    return {}

