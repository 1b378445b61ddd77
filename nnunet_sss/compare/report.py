"""Write a comparison: comparison.json (every number; NaN as null) and comparison.md (the tables)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .stats import BOOTSTRAP_RESAMPLES
from .summary import FOREGROUND, OVERLAP_METRICS


def _json_ready(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalars
        return _json_ready(obj.item())
    return obj


def write_json(comparison: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(_json_ready(comparison), indent=1, allow_nan=False))


def number(x, digits=4) -> str:
    """A table cell: n/a for None or NaN, no decimals for counts."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if abs(x) >= 100:  # voxel counts (TP, FP, ...): decimals say nothing
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


def _score(stat: dict) -> str:
    text = f"{number(stat['mean'])} ± {number(stat['std'])}"
    if "ci_low" in stat:
        text += f" [{number(stat['ci_low'])}, {number(stat['ci_high'])}]"
    return text


def _class_header(entry: dict, key: str) -> str:
    return "fg mean" if key == FOREGROUND else f"{key} {entry['class_names'].get(key, '')}".strip()


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _group_markdown(name: str, group: dict, settings: dict) -> list[str]:
    entries = group["entries"]
    if not entries:
        return []
    keys = [FOREGROUND, *group["classes"]]
    first = entries[0]
    lines = [f"## {name}: {len(group['cases'])} cases", ""]
    metrics = [m for m in OVERLAP_METRICS if m in first["metrics"]]
    header = ["", "kind"] + [f"{m} {_class_header(first, k)}" for m in metrics for k in keys]
    rows = [[e["label"], e["kind"]] + [_score(e["summary"][k][m]) for m in metrics for k in keys] for e in entries]
    lines += ["Mean ± std over cases [95% bootstrap CI of the mean]. Foreground mean as nnU-Net defines it "
              "(mean of the class means).", ""] + markdown_table(header, rows) + [""]

    lines += ["### Every metric nnU-Net stores (mean ± std over cases)", ""]
    for e in entries:
        header = [e["label"]] + [_class_header(e, k) for k in keys]
        rows = [[m] + [f"{number(e['summary'][k][m]['mean'])} ± {number(e['summary'][k][m]['std'])}" for k in keys]
                for m in e["metrics"]]
        lines += markdown_table(header, rows) + [""]

    with_folds = [e for e in entries if e["per_fold"]]
    if with_folds:
        lines += ["### Per fold (each fold's validation/summary.json as nnU-Net wrote it)", ""]
        header = ["", "fold", "cases"] + [f"Dice {_class_header(first, k)}" for k in keys]
        rows = []
        for e in with_folds:
            for fold, v in e["per_fold"].items():
                rows.append([e["label"], fold, str(v["n_cases"])] +
                            [number((v[FOREGROUND] if k == FOREGROUND else v["mean"].get(k, {})).get("Dice"))
                             for k in keys])
            if len(e["per_fold"]) > 1:
                d = e["per_fold_foreground_dice"]
                rows.append([e["label"], "mean ± std of folds", "", f"{number(d['mean'])} ± {number(d['std'])}"]
                            + [""] * (len(keys) - 1))
        lines += markdown_table(header, rows) + [""]

    if group["paired"]:
        lines += ["### Paired per-case comparison (difference = second − first, same cases)", "",
                  f"Bootstrap: {settings['bootstrap_resamples']} resamples of cases, seed {settings['seed']}, "
                  f"{int(settings['confidence'] * 100)}% percentile interval of the mean difference. "
                  "Wilcoxon signed-rank (scipy.stats.wilcoxon, two-sided, zero differences dropped); "
                  "p = 1 where every difference is zero.", ""]
        header = ["second − first", "metric", "class", "n", "mean diff", "95% CI", "median diff",
                  "second better / tie / worse", "Wilcoxon p"]
        rows = []
        for p in group["paired"]:
            rows.append([f"{p['b']} − {p['a']}", p["metric"], _class_header(first, p["class"]), str(p["n"]),
                         number(p["mean_difference"]), f"[{number(p['ci_low'])}, {number(p['ci_high'])}]",
                         number(p["median_difference"]), f"{p['wins']} / {p['ties']} / {p['losses']}",
                         number(p["p_value"], 4) + (f" ({p['note']})" if p["note"] else "")])
        lines += markdown_table(header, rows) + [""]

    lines += ["Sources:", ""] + [f"- {e['label']}: `{e['folder']}` ({e['source']})" for e in entries] + [""]
    if group.get("plots"):
        lines += ["### Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in group["plots"]] + [""]
    return lines


def _efficiency_markdown(efficiency: dict) -> list[str]:
    if not efficiency:
        return []
    lines = ["## Efficiency", ""]
    header = ["", "params (M)", "GFLOPs fwd", "GFLOPs fwd+bwd", "train step (s)", "train step CPU (s)",
              "peak train memory (MiB)", "training wall (min)", "epochs", "median epoch (s)"]
    rows, base = [], None
    for label, eff in efficiency.items():
        net = eff.get("network") or {}
        tr = eff.get("training") or {}
        folds = tr.get("folds", {})
        epochs = sum((f.get("epochs") or 0) for f in folds.values())
        medians = [f["epoch_time_median_s"] for f in folds.values() if f.get("epoch_time_median_s") is not None]
        wall = tr.get("train_wall_s_total")
        values = {
            "params": net.get("params"), "flops_forward": net.get("flops_forward"),
            "flops_train": net.get("flops_train"), "step_time_s": net.get("step_time_s"),
            "cpu_time_s": net.get("cpu_time_s"),
            "peak_memory_bytes": net.get("peak_memory_bytes"), "wall": wall,
        }
        if "error" in net:
            cells = [f"n/a ({net['error']})"] + ["n/a"] * 5
        else:
            cells = [number(values["params"] / 1e6 if values["params"] is not None else None, 3),
                     number(values["flops_forward"] / 1e9 if values["flops_forward"] is not None else None, 2),
                     number(values["flops_train"] / 1e9 if values["flops_train"] is not None else None, 2),
                     number(values["step_time_s"], 3), number(values["cpu_time_s"], 3),
                     number(values["peak_memory_bytes"] / 2 ** 20 if values["peak_memory_bytes"] is not None
                          else None, 0)]
        fold_errors = [f"fold {k}: {f['error']}" for k, f in folds.items() if "error" in f]
        cells += [number(wall / 60 if wall is not None else None, 2) + (f" ({'; '.join(fold_errors)})"
                                                                         if fold_errors else ""),
                  str(epochs), number(sum(medians) / len(medians) if medians else None, 2)]
        rows.append([label] + cells)
        if base is None:
            base = (label, values)
        else:
            ratio = []
            for key in ("params", "flops_forward", "flops_train", "step_time_s", "cpu_time_s", "peak_memory_bytes",
                        "wall"):
                b, v = base[1][key], values[key]
                ratio.append(number(v / b, 2) + "x" if b and v is not None else "n/a")
            rows.append([f"{label} / {base[0]}"] + ratio + ["", ""])
    lines += markdown_table(header, rows) + [""]
    measured = [e["network"] for e in efficiency.values() if e.get("network") and "error" not in e["network"]]
    if measured:
        m = measured[0]
        lines += [f"Network numbers: nnunet_sss.measure.measure_network on {m['device']}, batch "
                  f"{m['batch_size']}, input {tuple(m['input_shape'])}, amp {m['amp']}, median of "
                  f"{len(m['step_times_s'])} train steps; peak memory by {m['memory_method']}. Each network is "
                  "built by its trainer's build_network_architecture from the results folder's plans.json. "
                  "Training wall time: nnU-Net's training_log_*.txt, first line to 'Training done.' "
                  "(without the final validation), summed over folds.", ""]
    return lines


def _sortable(x) -> float:
    return x if x is not None and math.isfinite(x) else float("-inf")


def _find_pair(group: dict, a: str, b: str) -> dict | None:
    for p in group["paired"]:
        if p["a"] == a and p["b"] == b and p["metric"] == "Dice" and p["class"] == FOREGROUND:
            return p
    return None


def _pair_line(p: dict, what: str) -> str:
    return (f"- {what}: {number(p['mean_b'])} vs {number(p['mean_a'])}, difference {p['mean_difference']:+.4f} "
            f"[95% CI {p['ci_low']:+.4f}, {p['ci_high']:+.4f}], Wilcoxon p = {number(p['p_value'], 3)}, "
            f"better on {p['wins']} of {p['n']} cases")


def _headline(comparison: dict) -> list[str]:
    """The answer first: each model against the first (the baseline), each ensemble against the best
    single model, and the cost ratios."""
    lines = ["## In short", ""]
    for group in comparison["groups"].values():
        entries = group["entries"]
        singles = [e for e in entries if e["kind"] != "ensemble"]
        ensembles = [e for e in entries if e not in singles]
        if not singles:
            continue
        n = len(group["cases"])
        lines += [f"{group['title']} ({n} cases), foreground Dice:", ""]
        if n <= 10:
            lines += [f"(With {n} cases a two-sided Wilcoxon p-value cannot go below {2 / 2 ** n:.3g}: "
                      "read the interval and the per-case plot.)", ""]
        base = singles[0]
        for other in singles[1:]:
            p = _find_pair(group, base["label"], other["label"])
            if p:
                lines.append(_pair_line(p, f"{other['label']} vs {base['label']}"))
        best = max(singles, key=lambda e: _sortable(e["summary"][FOREGROUND]["Dice"]["mean"]))
        for ens in ensembles:
            p = _find_pair(group, best["label"], ens["label"])
            if p:
                lines.append(_pair_line(p, f"{ens['label']} vs the best single model ({best['label']})"))
        lines.append("")
    efficiency = comparison.get("efficiency", {})
    if len(efficiency) > 1:
        (base_label, base), *others = efficiency.items()
        for label, eff in others:
            ratios = []
            for name, key in (("parameters", "params"), ("FLOPs", "flops_forward"), ("train step", "step_time_s"),
                              ("peak training memory", "peak_memory_bytes")):
                a, b = (base.get("network") or {}).get(key), (eff.get("network") or {}).get(key)
                if a and b is not None:
                    ratios.append(f"{name} {b / a:.2f}x")
            a, b = base["training"].get("train_wall_s_total"), eff["training"].get("train_wall_s_total")
            if a and b is not None:
                ratios.append(f"training wall time {b / a:.2f}x")
            if ratios:
                lines += [f"Cost of {label} relative to {base_label}: {', '.join(ratios)}.", ""]
    return lines


def write_markdown(comparison: dict, path: Path) -> None:
    settings = comparison["settings"]
    lines = [f"# Comparison on {comparison['dataset']}", "",
             f"Trainers: {', '.join(comparison['trainers'])}; configurations: "
             f"{', '.join(comparison['configurations'])}; plans: {', '.join(comparison['plans'])}; "
             f"folds: {', '.join(map(str, comparison['folds']))}.", ""]
    if comparison.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in comparison["notes"]] + [""]
    lines += _headline(comparison)
    for group in comparison["groups"].values():
        lines += _group_markdown(group["title"], group, settings)
    lines += _efficiency_markdown(comparison.get("efficiency", {}))
    lines += ["## How the numbers are made", "",
              "- Every score comes from a summary.json written by nnU-Net (nnUNetv2_train's final validation, "
              "nnUNetv2_find_best_configuration, nnUNetv2_evaluate_folder); nothing is re-evaluated.",
              "- Cases are matched by file name; all entries of a section hold exactly the same cases "
              "(checked; a mismatch is an error, not a partial comparison).",
              "- NaN values (a class absent from reference and prediction) are left out, as in nnU-Net's means.",
              f"- std: sample standard deviation over cases (ddof=1). CIs: percentile bootstrap of the mean, "
              f"{settings['bootstrap_resamples']} resamples (default {BOOTSTRAP_RESAMPLES}), seed "
              f"{settings['seed']}.",
              "- Every number is in comparison.json.", ""]
    Path(path).write_text("\n".join(lines))
