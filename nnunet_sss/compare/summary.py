"""Turn loaded entries into the numbers of a comparison group (JSON-ready, NaN kept as float).

Per entry: for every foreground class and the foreground mean, every metric nnU-Net stores
described over cases (mean, std, ...; bootstrap CI for the overlap metrics); the per-fold
table straight from each fold's summary.json; the per-case values. Per pair of entries: the
paired comparison (stats.paired_comparison) of each overlap metric on the same cases.

Foreground mean, as nnU-Net defines it: the mean over foreground classes of the class means
(summary.json's foreground_mean). Its spread (std, CI, paired tests) uses the per-case
foreground mean, the mean over classes of that case's values (NaN classes left out).
"""
from __future__ import annotations

import warnings
from itertools import combinations
from typing import Sequence

import numpy as np

from .results import Entry, class_keys, class_names, metric_names
from .stats import describe, paired_comparison

FOREGROUND = "foreground_mean"
OVERLAP_METRICS = ("Dice", "IoU")


def short_labels(entries: Sequence[Entry]) -> dict[str, str]:
    """Entry name -> a short label: the trainer alone where that tells the models apart, else
    trainer__plans, else the full identifier; an ensemble of models is named by its members' labels."""
    models = [e for e in entries if e.kind == "model"]
    for key in (lambda e: e.trainer, lambda e: f"{e.trainer}__{e.plans}", lambda e: e.name):
        if len({key(e) for e in models}) == len(models):
            break
    labels = {e.name: key(e) for e in models}
    for e in entries:
        if e.kind == "model":
            continue
        members = e.name[len("ensemble("):-1].split(" + ") if e.name.startswith("ensemble(") else []
        known = members and all(m in labels for m in members)
        labels[e.name] = "ensemble(" + " + ".join(labels[m] for m in members) + ")" if known else e.name
    return labels


def _case_matrix(entry: Entry, cases: Sequence[str], classes: Sequence[str], metric: str) -> np.ndarray:
    """(cases, classes) values of one metric; NaN where absent."""
    return np.array([[entry.per_case[c].get(k, {}).get(metric, np.nan) for k in classes] for c in cases],
                    dtype=np.float64).reshape(len(cases), len(classes))


def case_values(entry: Entry, cases: Sequence[str], classes: Sequence[str], metric: str) -> dict[str, np.ndarray]:
    """class key (and FOREGROUND) -> per-case values in `cases` order."""
    matrix = _case_matrix(entry, cases, classes, metric)
    out = {k: matrix[:, i] for i, k in enumerate(classes)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN case -> NaN, as intended
        out[FOREGROUND] = np.nanmean(matrix, axis=1) if classes else np.full(len(cases), np.nan)
    return out


def summarise_entry(entry: Entry, label: str, resamples: int, seed: int) -> dict:
    cases = entry.cases
    classes = class_keys(entry)
    metrics = metric_names(entry)
    summary = {k: {} for k in (*classes, FOREGROUND)}
    for metric in metrics:
        values = case_values(entry, cases, classes, metric)
        for k in classes:
            summary[k][metric] = describe(values[k], resamples, seed, with_ci=metric in OVERLAP_METRICS)
        fg = describe(values[FOREGROUND], resamples, seed, with_ci=metric in OVERLAP_METRICS)
        class_means = [summary[k][metric]["mean"] for k in classes]
        fg["mean_of_cases"] = fg["mean"]
        fg["mean"] = float(np.mean(class_means)) if class_means else float("nan")
        summary[FOREGROUND][metric] = fg
    per_case = {c: {**{k: dict(entry.per_case[c].get(k, {})) for k in classes},
                    FOREGROUND: {m: float(case_values(entry, [c], classes, m)[FOREGROUND][0]) for m in metrics}}
                for c in cases}
    per_fold = {str(f): {"summary_file": v["summary_file"], "n_cases": v["n_cases"],
                         "mean": v["mean"], FOREGROUND: v["foreground_mean"]}
                for f, v in entry.per_fold.items()}
    out = {
        "name": entry.name, "label": label, "kind": entry.kind, "folder": str(entry.folder),
        "source": entry.source, "trainer": entry.trainer, "plans": entry.plans,
        "configuration": entry.configuration, "n_cases": len(cases), "cases": cases,
        "classes": classes, "class_names": {k: class_names(entry.folder).get(k, k) for k in classes},
        "metrics": metrics, "summary": summary, "per_fold": per_fold, "per_case": per_case,
    }
    if entry.case_fold:
        out["case_fold"] = {c: entry.case_fold[c] for c in cases}
    if per_fold:
        fold_dice = [v[FOREGROUND].get("Dice", np.nan) for v in per_fold.values()]
        out["per_fold_foreground_dice"] = describe(fold_dice, with_ci=False)
    if entry.nnunet_summary is not None:
        out["nnunet_summary"] = {"file": entry.nnunet_summary["file"],
                                 FOREGROUND: entry.nnunet_summary["foreground_mean"]}
    return out


def build_group(entries: Sequence[Entry], resamples: int, seed: int,
                paired_metrics: Sequence[str] = OVERLAP_METRICS,
                pairs: Sequence[tuple[int, int]] | None = None) -> dict:
    """Everything about one set of entries that share their cases (checked before this is called).

    `pairs` lists (i, j) entry indices to compare (difference = entries[j] - entries[i]); every
    pair in entry order when None."""
    labels = short_labels(entries)
    summaries = [summarise_entry(e, labels[e.name], resamples, seed) for e in entries]
    cases = entries[0].cases if entries else []
    classes = class_keys(entries[0]) if entries else []
    paired = []
    for i, j in combinations(range(len(entries)), 2) if pairs is None else pairs:
        a, b = entries[i], entries[j]
        for metric in paired_metrics:
            if metric not in metric_names(a):
                continue
            va, vb = case_values(a, cases, classes, metric), case_values(b, cases, classes, metric)
            for k in (*classes, FOREGROUND):
                paired.append({"a": labels[a.name], "b": labels[b.name], "metric": metric, "class": k,
                               **paired_comparison(va[k], vb[k], resamples, seed)})
    return {"entries": summaries, "cases": cases, "classes": classes, "paired": paired}
