"""PNG plots of a comparison: per-case paired values of each pair, per-class bars with CIs."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .summary import FOREGROUND


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _class_title(key: str, entry: dict) -> str:
    return "foreground mean" if key == FOREGROUND else f"{key}: {entry['class_names'].get(key, key)}"


def paired_plot(group: dict, key: str, a: dict, b: dict, metric: str, out_dir: Path) -> Path:
    """Scatter of per-case values, b against a, one panel per class and the foreground mean."""
    plt = _pyplot()
    keys = [*group["classes"], FOREGROUND]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 4), squeeze=False)
    for ax, k in zip(axes[0], keys):
        xa = np.array([a["per_case"][c][k].get(metric, np.nan) for c in group["cases"]], dtype=float)
        xb = np.array([b["per_case"][c][k].get(metric, np.nan) for c in group["cases"]], dtype=float)
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        ax.scatter(xa, xb, s=14, alpha=0.75)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel(f"{a['label']}")
        ax.set_ylabel(f"{b['label']}")
        above = int(np.sum(xb > xa))
        ax.set_title(f"{_class_title(k, a)}\n{metric}, {above}/{len(xa)} cases above the diagonal",
                     fontsize=9)
    fig.suptitle(f"{group['title']}: per-case {metric}", fontsize=10)
    return _save(plt, fig, out_dir / f"paired_{key}_{metric}_{_slug(a['label'])}_vs_{_slug(b['label'])}.png")


def class_bar_plot(group: dict, key: str, metric: str, out_dir: Path) -> Path:
    """Mean per class (and foreground mean) per entry, with the bootstrap CI of the mean as error bars."""
    plt = _pyplot()
    keys = [*group["classes"], FOREGROUND]
    entries = group["entries"]
    width = 0.8 / max(len(entries), 1)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(keys) * max(len(entries), 1) * 0.6, 4))
    x = np.arange(len(keys))
    for i, e in enumerate(entries):
        stats = [e["summary"][k][metric] for k in keys]
        means = np.array([s["mean"] for s in stats], dtype=float)
        low = np.array([s.get("ci_low", np.nan) for s in stats], dtype=float)
        high = np.array([s.get("ci_high", np.nan) for s in stats], dtype=float)
        err = np.vstack([np.clip(means - low, 0, None), np.clip(high - means, 0, None)])
        err = np.nan_to_num(err)
        ax.bar(x + (i - (len(entries) - 1) / 2) * width, np.nan_to_num(means), width, yerr=err, capsize=3,
               label=e["label"])
    ax.set_xticks(x)
    ax.set_xticklabels([_class_title(k, entries[0]) if entries else k for k in keys], fontsize=8)
    ax.set_ylabel(f"mean {metric} (95% bootstrap CI)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(entries), 2), frameon=False)
    ax.set_title(f"{group['title']}: {metric} per class", fontsize=10)
    return _save(plt, fig, out_dir / f"classes_{key}_{metric}.png")


def plot_group(group: dict, key: str, out_dir: Path, metric: str = "Dice") -> list[Path]:
    """The group's plots (group["title"] heads them, `key` names the files)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = group["entries"]
    paths = [class_bar_plot(group, key, metric, out_dir)]
    for i, a in enumerate(entries):
        for b in entries[i + 1:]:
            paths.append(paired_plot(group, key, a, b, metric, out_dir))
    return paths


def dice_cost_plot(points: list[dict], costs: dict[str, str], reference: str, title: str, path: Path) -> Path:
    """One panel per cost: each model's paired foreground-Dice difference to `reference` on the same
    cases (95% bootstrap CI as error bars) against its cost. points: {"label", "difference", "ci_low",
    "ci_high", <cost key>: value or None}; costs: cost key -> axis title."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(costs), figsize=(5 * len(costs), 4.2), squeeze=False)
    for ax, (key, axis_title) in zip(axes[0], costs.items()):
        for p in points:
            if p.get(key) is None:
                continue
            low, high = p["difference"] - p["ci_low"], p["ci_high"] - p["difference"]
            ax.errorbar([p[key]], [p["difference"]], yerr=np.nan_to_num([[max(low, 0)], [max(high, 0)]]), fmt="o",
                        capsize=3)
            ax.annotate(p["label"], (p[key], p["difference"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(0.0, color="0.6", lw=1, ls="--")
        ax.set_xlabel(axis_title)
        ax.set_ylabel(f"foreground Dice − {reference} (95% CI)")
    fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)
