"""The study's report, from a results folder alone: study.md, study.json and PNG plots.

Sections:
- per configuration, the three reference trainers pooled over the study's folds (every
  validation case of every fold, each case once): Dice per class and foreground mean with
  bootstrap intervals, the paired per-case differences of RWKV-SSS against each other trainer
  (mean, 95% paired bootstrap interval, Wilcoxon p; compare/stats.py), a per-fold table, cost
  (parameters, seconds per iteration from the training logs, optionally aten ops), and the
  ensembles of RWKV-SSS with nnU-Net and with the control that nnUNetv2_find_best_configuration
  made on the same folds, each paired against each of its members;
- per (configuration, folds) on which arms were trained: the arms and the references on those
  folds, each paired against the optimiser control (and the arms against RWKV-SSS), with cost
  and a Dice-against-cost plot;
- per section, the default that issue 25's rule picks from its numbers (`decide`): the candidate
  (RWKV-SSS or an arm) that beats the control with a paired interval above 0, else the cheapest
  one not below it;
- nnUNetv2_find_best_configuration over every configuration on the folds they all have, as
  nnU-Net scored it (crossval_results_folds_*/summary.json, ensembles/*/summary.json) and picked it
  (inference_information.json).

Everything is read through nnunet_sss.compare (results.py, summary.py, stats.py); nothing is
evaluated again. Every problem with the inputs is collected and raised as one ComparisonInputError
before anything is written.
"""
from __future__ import annotations

import json
import math
import shlex
import statistics
import time
from itertools import combinations
from pathlib import Path
from typing import Callable

from nnunet_sss.compare.comparison import ensure_ext_trainer_path
from nnunet_sss.compare.efficiency import build_trainer_network, training_time
from nnunet_sss.compare.plots import class_bar_plot, dice_cost_plot, paired_plot
from nnunet_sss.compare.report import markdown_table, number, write_json
from nnunet_sss.compare.results import (ComparisonInputError, check_same_cases, dataset_name, find_ensembles,
                                        folds_string, load_model, results_root)
from nnunet_sss.compare.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE
from nnunet_sss.compare.summary import FOREGROUND, build_group

from .study import (INFERENCE_INFORMATION, ROLE_NAMES, ROLES, Model, Study, crossval_summary, ensemble_folder,
                    inference_information_matches)

METRIC = "Dice"
COSTS = {"s_per_it": "seconds per training iteration (median epoch / iterations)", "params_M": "parameters (M)",
         "aten_ops": "aten ops per forward+backward"}


def iterations_per_epoch(fold_dir: Path, trainer: str) -> int:
    """As the trainer ran (debug.json, which nnU-Net writes per fold); else from the trainer's schedule;
    trainers without one keep nnU-Net's 250."""
    debug = Path(fold_dir) / "debug.json"
    if debug.is_file():
        value = json.loads(debug.read_text()).get("num_iterations_per_epoch")
        if value is not None:
            return int(value)
    from nnunet_sss.training import TRAINERS

    schedule = getattr(TRAINERS.get(trainer), "schedule", None)
    return schedule.iterations if schedule else 250


def _network_cost(folder: Path, trainer: str, configuration: str, ops: bool) -> dict:
    """Parameters (and aten ops) of the network nnU-Net builds for this trained model."""
    try:
        network, input_shape, batch_size = build_trainer_network(folder, trainer, configuration)
    except Exception as exc:  # the report says why; the Dice stands without it
        return {"error": f"network not built: {type(exc).__name__}: {exc}"}
    out = {"params_M": sum(p.numel() for p in network.parameters()) / 1e6, "input_shape": list(input_shape),
           "batch_size": batch_size}
    if ops:
        from nnunet_sss.step_ops import count_ops

        out["aten_ops"] = count_ops(network, input_shape, batch_size).total
    return out


def model_cost(entry, folds, ops: bool, networks: dict) -> dict:
    """Cost of one model on `folds`: its network's size (once per model) and, from nnU-Net's training
    logs, seconds per iteration (median over every epoch of these folds of epoch time / iterations;
    an epoch's few validation iterations included), training wall time and the machines (debug.json)."""
    key = (entry.trainer, entry.plans, entry.configuration)
    if key not in networks:
        networks[key] = _network_cost(entry.folder, entry.trainer, entry.configuration, ops)
    per_it, walls, hosts = [], [], set()
    for fold in folds:
        fold_dir = entry.folder / f"fold_{fold}"
        timing = training_time(fold_dir)
        per_it += [t / iterations_per_epoch(fold_dir, entry.trainer) for t in timing.get("epoch_times_s", [])]
        walls.append(timing.get("train_wall_s"))
        if (fold_dir / "debug.json").is_file():
            hosts.add(json.loads((fold_dir / "debug.json").read_text()).get("hostname", "?"))
    return {**networks[key], "s_per_it": statistics.median(per_it) if per_it else None, "epochs": len(per_it),
            "train_wall_s": sum(walls) if walls and None not in walls else None, "hosts": sorted(hosts)}


def _members(entry_name: str) -> list[str]:
    return entry_name[len("ensemble("):-1].split(" + ")


def _ensembles(root: Path, dataset: str, refs: list[Model], folds, problems: list[str], notes: list[str]) -> list:
    """find_best_configuration's ensembles of RWKV-SSS with each other reference model on exactly these
    folds; the one with nnU-Net must be there."""
    baseline, _, rwkv = refs
    entries, found_notes = find_ensembles(root, dataset, [m.identifier for m in refs], folds, problems)
    entries = [e for e in entries if rwkv.identifier in _members(e.name)]
    notes += found_notes
    if {baseline.identifier, rwkv.identifier} not in [set(_members(e.name)) for e in entries]:
        problems.append(f"no ensemble of {rwkv.identifier} and {baseline.identifier} over folds "
                        f"{folds_string(folds)}: expected {ensemble_folder(root / dataset, rwkv, baseline, folds)}/"
                        "summary.json (nnUNetv2_find_best_configuration writes it; the study command runs it), "
                        "or leave ensembles out with --no_ensembles")
    return entries


def _find_best(folder: Path, study: Study, problems: list[str], notes: list[str]) -> dict | None:
    """nnU-Net's own scores of the last find_best_configuration call (all configurations, common folds)."""
    if len(study.folds) > 1 and not study.common_folds():
        notes.append("no fold is in every configuration: no find_best_configuration across configurations")
        return None
    calls = study.find_best_calls()
    models, folds = calls[-1]
    rows = [{"name": m.identifier, "kind": "model", "file": crossval_summary(folder, m, folds)} for m in models]
    rows += [{"name": f"ensemble({a.identifier} + {b.identifier})", "kind": "ensemble",
              "file": ensemble_folder(folder, a, b, folds) / "summary.json"} for a, b in combinations(models, 2)]
    missing = [r["file"] for r in rows if not r["file"].is_file()]
    baseline, _, rwkv = study.reference_models(models[0].configuration)
    if missing and all(ensemble_folder(folder, rwkv, baseline, (f,)).is_dir() for f in folds):
        notes.append(f"nnUNetv2_find_best_configuration ran fold by fold here (a study spread over sessions, "
                     f"--archive), not over folds {folds_string(folds)} and configurations at once: no pooled "
                     "table or pick of nnU-Net's; the ensembles above pool its per-fold ensembles case by case")
        return None
    if missing:
        problems.append(f"nnUNetv2_find_best_configuration on {', '.join(dict.fromkeys(m.configuration for m in models))}"
                        f", folds {folds_string(folds)}, has not run or not finished: {len(missing)} of its "
                        f"{len(rows)} summaries missing, e.g. {missing[0]} (the study command runs it), or leave "
                        "ensembles out with --no_ensembles")
        return None
    for row in rows:
        row["foreground_dice"] = json.loads(row["file"].read_text())["foreground_mean"]["Dice"]
        row["file"] = str(row["file"])
    rows.sort(key=lambda r: -r["foreground_dice"])
    out = {"configurations": list(dict.fromkeys(m.configuration for m in models)), "folds": list(folds),
           "rows": rows, "nnunet_pick": None}
    if inference_information_matches(folder, models, folds):
        info = json.loads((folder / INFERENCE_INFORMATION).read_text())["best_model_or_ensemble"]
        out["nnunet_pick"] = {"models": [f"{m['trainer']}__{m['plans_identifier']}__{m['configuration']}"
                                         for m in info["selected_model_or_models"]],
                              "foreground_dice": info["result_on_crossval_pre_pp"],
                              "foreground_dice_postprocessed": info.get("result_on_crossval_post_pp")}
    return out


def _pairs(entries: list, roles: dict) -> list[tuple[int, int]]:
    """Which entries are paired: everything against the control, RWKV-SSS against nnU-Net, the arms
    against RWKV-SSS, each ensemble against each of its members."""
    index = {e.name: i for i, e in enumerate(entries)}
    baseline, control, rwkv = (index[roles[r]] for r in ROLES)
    pairs = [(baseline, rwkv), (control, rwkv), (control, baseline)]
    for j, e in enumerate(entries):
        if e.kind == "ensemble":
            pairs += [(index[m], j) for m in _members(e.name)]
        elif j not in (baseline, control, rwkv):
            pairs += [(control, j), (rwkv, j)]
    return pairs


def direction(pair: dict) -> int:
    """+1 where the paired interval lies above 0, -1 where it lies below, 0 where it holds 0."""
    return 1 if pair["ci_low"] > 0 else -1 if pair["ci_high"] < 0 else 0


def verdict(pair: dict) -> str:
    return {1: "better: interval above 0", -1: "worse: interval below 0",
            0: "no difference shown: interval includes 0"}[direction(pair)]


def _section(kind: str, configuration: str, folds, entries: list, roles: dict, ops: bool, networks: dict,
             resamples: int, seed: int) -> dict:
    group = build_group(entries, resamples, seed, paired_metrics=(METRIC,), pairs=_pairs(entries, roles))
    labels = {e.name: s["label"] for e, s in zip(entries, group["entries"])}
    group["title"] = f"{configuration}, folds {', '.join(map(str, folds))}"
    section = {"kind": kind, "configuration": configuration, "folds": list(folds), "group": group,
               "roles": {labels[name]: role for role, name in roles.items()},
               "cost": {labels[e.name]: model_cost(e, folds, ops, networks) for e in entries if e.kind == "model"}}
    section["decision"] = decide(section)
    return section


def decide(section: dict) -> dict:
    """Issue 25's rule on one section's folds. The candidates are RWKV-SSS and the arms. One whose
    paired interval against the control lies above 0 becomes the configuration's default; among
    several, the largest mean difference, and where that is equal to 4 decimals the lower cost.
    Where none is above, the default is the cheapest candidate whose interval does not lie below 0.
    Cost: seconds per iteration, then parameters (a candidate with no logged time ranks last)."""
    control = _label(section, "control")
    candidates = [label for label, role in section["roles"].items() if role == "rwkv"] + \
        [e["label"] for e in section["group"]["entries"] if e["kind"] == "model" and e["label"] not in section["roles"]]

    def cost(label):
        c = section["cost"].get(label, {})
        return (math.inf if c.get("s_per_it") is None else c["s_per_it"], c.get("params_M", math.inf))

    pairs = {label: _pair(section, control, label) for label in candidates}
    above = [label for label in candidates if direction(pairs[label]) > 0]
    if above:
        choice = min(above, key=lambda label: (-round(pairs[label]["mean_difference"], 4), cost(label)))
        rule = "beats the control (paired interval above 0)"
    else:
        not_worse = [label for label in candidates if direction(pairs[label]) >= 0]
        choice = min(not_worse, key=cost) if not_worse else None
        rule = "none beats the control: the cheapest that is not worse" if not_worse else \
            "every candidate is worse than the control"
    return {"rule": rule, "choice": choice, "candidates": candidates,
            "against_control": {label: {k: pairs[label][k] for k in ("mean_difference", "ci_low", "ci_high")}
                                for label in candidates}}


def load_sections(study: Study, root: Path, dataset: str, ensembles: bool) -> tuple[list, dict | None, list[str]]:
    """(sections to build, find_best_configuration's table, notes) from the results folder; raises
    ComparisonInputError naming every missing fold, folder, ensemble or mismatched case."""
    problems, notes, loaded = [], [], []

    def load(models: list[Model], folds) -> list:
        return [load_model(root, dataset, m.trainer, m.plans, m.configuration, folds, problems, crossval_fallback=False)
                for m in models]

    for configuration, folds in study.folds.items():
        refs = study.reference_models(configuration)
        entries = load(refs, folds)
        if ensembles and all(entries):
            entries += _ensembles(root, dataset, refs, folds, problems, notes)
        loaded.append(("main", configuration, folds, refs, entries))
    for (configuration, folds), arms in study.screens().items():
        refs = study.reference_models(configuration)
        loaded.append(("arms", configuration, folds, refs, load(refs + arms, folds)))
    find_best = _find_best(root / dataset, study, problems, notes) if ensembles else None
    for kind, configuration, folds, _, entries in loaded:
        if all(entries):
            check_same_cases(entries, f"{configuration} folds {folds_string(folds)}", problems)
    if problems:
        raise ComparisonInputError(list(dict.fromkeys(problems)))
    return loaded, find_best, notes


def _rebuild_command(study: Study, out: Path, results_dir, ensembles: bool, ops: bool, plots: bool, resamples: int,
                     seed: int) -> str:
    """The `report` command line that writes this report again."""
    options = [*(["--results_dir", str(results_dir)] if results_dir is not None else []),
               *([] if ensembles else ["--no_ensembles"]), *(["--ops"] if ops else []),
               *([] if plots else ["--no_plots"]),
               *([] if resamples == BOOTSTRAP_RESAMPLES else ["--bootstrap", str(resamples)]),
               *([] if seed == BOOTSTRAP_SEED else ["--seed", str(seed)])]
    return shlex.join(["python", "-m", "nnunet_sss.bench.protocol", "report", *study.as_args(), "-o", str(out),
                       *options])


def build_report(study: Study, output_folder, results_dir=None, *, ensembles: bool = True, ops: bool = False,
                 plots: bool = True, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 progress: Callable[[str], None] | None = print) -> dict:
    """Write study.md, study.json and the plots into output_folder; returns what study.json holds.
    Raises ComparisonInputError (before writing anything) where the results folder lacks something."""
    start = time.perf_counter()
    root = results_root(results_dir)
    dataset = dataset_name(root, study.dataset)
    loaded, find_best, notes = load_sections(study, root, dataset, ensembles)
    ensure_ext_trainer_path()  # the networks are rebuilt through nnU-Net's trainer lookup
    networks, sections = {}, []
    for kind, configuration, folds, refs, entries in loaded:
        if progress:
            progress(f"report: {configuration}, folds {folds_string(folds)}: {len(entries)} entries")
        roles = dict(zip(ROLES, (m.identifier for m in refs)))
        sections.append(_section(kind, configuration, folds, entries, roles, ops, networks, resamples, seed))
    out = Path(output_folder)
    out.mkdir(parents=True, exist_ok=True)
    for section in sections:
        section["plots"] = [str(p) for p in _plots(section, out)] if plots else []
    report = {"dataset": dataset, "results_folder": str(root), "study": study.as_dict(),
              "rebuild": _rebuild_command(study, out, results_dir, ensembles, ops, plots, resamples, seed),
              "settings": {"bootstrap_resamples": resamples, "seed": seed, "confidence": CONFIDENCE, "metric": METRIC},
              "notes": notes, "sections": sections, "find_best": find_best}
    write_json(report, out / "study.json")
    (out / "study.md").write_text("\n".join(markdown(report)))
    if progress:
        progress(f"report: wrote {out / 'study.md'}, study.json and plots ({time.perf_counter() - start:.1f} s)")
    return report


# ----------------------------------------------------------------------------------------------
# Plots and Markdown

def _key(section: dict) -> str:
    return f"{section['configuration']}_folds_{folds_string(section['folds'])}" + (
        "_arms" if section["kind"] == "arms" else "")


def _pair(section: dict, a: str, b: str, key: str = FOREGROUND) -> dict | None:
    for p in section["group"]["paired"]:
        if p["a"] == a and p["b"] == b and p["class"] == key:
            return p
    return None


def _label(section: dict, role: str) -> str:
    return next(label for label, r in section["roles"].items() if r == role)


def _plots(section: dict, out: Path) -> list[Path]:
    group, key = section["group"], _key(section)
    by_label = {e["label"]: e for e in group["entries"]}
    paths = [class_bar_plot(group, key, METRIC, out)]
    rwkv, control, baseline = (_label(section, r) for r in ("rwkv", "control", "baseline"))
    if section["kind"] == "main":  # per case: RWKV-SSS against the others, its ensemble with nnU-Net against each
        ensemble = f"ensemble({baseline} + {rwkv})" if f"ensemble({baseline} + {rwkv})" in by_label else \
            f"ensemble({rwkv} + {baseline})"
        shown = [(control, rwkv), (baseline, rwkv), (rwkv, ensemble), (baseline, ensemble)]
        paths += [paired_plot(group, key, by_label[a], by_label[b], METRIC, out) for a, b in shown
                  if a in by_label and b in by_label]
    points = []
    for label, cost in section["cost"].items():
        p = _pair(section, control, label)
        diff = p or {"mean_difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}
        short = ROLE_NAMES.get(section["roles"].get(label)) or \
            label.removeprefix("nnUNetTrainerRWKVSSS_").removesuffix("_cpubudget")
        points.append({"label": short, "difference": diff["mean_difference"],
                       "ci_low": diff["ci_low"], "ci_high": diff["ci_high"], **{k: cost.get(k) for k in COSTS}})
    costs = {k: v for k, v in COSTS.items() if any(p[k] is not None for p in points)}
    if costs:
        paths.append(dice_cost_plot(points, costs, ROLE_NAMES["control"], f"{group['title']}: Dice against cost",
                                    out / f"dice_cost_{key}.png"))
    return paths


def _signed(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.4f}"


def _pair_cells(p: dict) -> list[str]:
    return [_signed(p["mean_difference"]), f"[{_signed(p['ci_low'])}, {_signed(p['ci_high'])}]",
            number(p["p_value"], 4), f"{p['wins']} / {p['ties']} / {p['losses']}"]


def _class_title(group: dict, key: str) -> str:
    if key == FOREGROUND:
        return "fg mean"
    return f"{key} {group['entries'][0]['class_names'].get(key, '')}".strip()


def _cost_cells(cost: dict, reference: dict) -> list[str]:
    if "error" in cost:
        return [f"n/a ({cost['error']})", *_timing_cells(cost, reference), "n/a"]
    ops = cost.get("aten_ops")
    return [f"{cost['params_M']:.2f} M", *_timing_cells(cost, reference), "n/a" if ops is None else f"{ops:,}"]


def _timing_cells(cost: dict, reference: dict) -> list[str]:
    s, r = cost.get("s_per_it"), reference.get("s_per_it")
    wall = cost.get("train_wall_s")
    return [number(s, 3), f"{s / r:.2f}x" if s and r else "n/a", number(None if wall is None else wall / 60, 1),
            ", ".join(cost.get("hosts", [])) or "n/a"]


def _headline(report: dict) -> list[str]:
    lines = ["## In short", ""]
    for section in report["sections"]:
        if section["kind"] != "main":
            continue
        group = section["group"]
        rwkv, control, baseline = (_label(section, r) for r in ("rwkv", "control", "baseline"))
        lines.append(f"{group['title']} ({len(group['cases'])} cases), foreground Dice, paired per case:")
        lines.append("")
        for other in (control, baseline):
            p = _pair(section, other, rwkv)
            lines.append(f"- RWKV-SSS vs {ROLE_NAMES[section['roles'][other]]}: {number(p['mean_b'])} vs "
                         f"{number(p['mean_a'])}, {_signed(p['mean_difference'])} [95% CI {_signed(p['ci_low'])}, "
                         f"{_signed(p['ci_high'])}], Wilcoxon p = {number(p['p_value'], 4)}, better on {p['wins']} "
                         f"of {p['n']} cases: {verdict(p)}")
        for entry in group["entries"]:
            if entry["kind"] != "ensemble":
                continue
            for member in _members(entry["label"]):
                p = _pair(section, member, entry["label"])
                lines.append(f"- {entry['label']} vs {member} alone: {_signed(p['mean_difference'])} "
                             f"[{_signed(p['ci_low'])}, {_signed(p['ci_high'])}], p = {number(p['p_value'], 4)}: "
                             f"{verdict(p)}")
        lines.append("")
    lines += ["The default by issue 25's rule (candidates: RWKV-SSS and the arms; each against the optimiser "
              "control on the section's cases; among several above 0 the largest difference, then the lower "
              "s / it; with none above, the cheapest not below):", ""]
    for section in report["sections"]:
        decision = section["decision"]
        choice, title = decision["choice"], section["group"]["title"]
        if choice is None:
            lines.append(f"- {title}: none ({decision['rule']})")
            continue
        d, cost = decision["against_control"][choice], section["cost"][choice]
        lines.append(f"- {title}: {choice}, {_signed(d['mean_difference'])} [{_signed(d['ci_low'])}, "
                     f"{_signed(d['ci_high'])}] over the control, {number(cost.get('s_per_it'), 3)} s / it; "
                     f"{decision['rule']} (of {len(decision['candidates'])})")
    lines.append("")
    best = report.get("find_best")
    if best:
        top = best["rows"][0]
        lines += [f"find_best_configuration over {', '.join(best['configurations'])}, folds "
                  f"{', '.join(map(str, best['folds']))}: best {top['name']} ({top['foreground_dice']:.4f})"
                  + (f"; nnU-Net picked {' + '.join(best['nnunet_pick']['models'])}" if best["nnunet_pick"] else ""),
                  ""]
    return lines


def _main_markdown(section: dict) -> list[str]:
    group = section["group"]
    keys = [*group["classes"], FOREGROUND]
    control = _label(section, "control")
    lines = [f"## {group['title']}: {len(group['cases'])} cases", "", "### Dice pooled over the folds", "",
             "Mean ± std over cases [95% bootstrap CI of the mean]; foreground mean as nnU-Net defines it.", ""]
    rows = [[e["label"], ROLE_NAMES.get(section["roles"].get(e["label"]), e["kind"])]
            + [f"{number(e['summary'][k][METRIC]['mean'])} ± {number(e['summary'][k][METRIC]['std'])} "
               f"[{number(e['summary'][k][METRIC]['ci_low'])}, {number(e['summary'][k][METRIC]['ci_high'])}]"
               for k in keys] for e in group["entries"]]
    lines += markdown_table(["", "role"] + [f"Dice {_class_title(group, k)}" for k in keys], rows) + [""]
    lines += ["### Paired per case (difference = second − first, same cases)", ""]
    rows = [[f"{p['b']} − {p['a']}", _class_title(group, p["class"]), str(p["n"]), *_pair_cells(p), verdict(p)]
            for p in group["paired"]]
    lines += markdown_table(["second − first", "class", "n", "mean diff", "95% CI", "Wilcoxon p",
                             "better / tie / worse", "verdict"], rows) + [""]
    lines += ["### Per fold (each fold's validation/summary.json as nnU-Net wrote it)", ""]
    models = [e for e in group["entries"] if e["per_fold"]]
    by_label = {e["label"]: e for e in models}
    rows = []
    for fold in section["folds"]:
        for e in models:
            v = e["per_fold"][str(fold)]
            fg = v[FOREGROUND].get(METRIC)
            reference = by_label[control]["per_fold"][str(fold)][FOREGROUND].get(METRIC)
            rows.append([str(fold), e["label"], str(v["n_cases"])]
                        + [number(v["mean"].get(k, {}).get(METRIC)) for k in group["classes"]]
                        + [number(fg), _signed(fg - reference) if e["label"] != control else ""])
    lines += markdown_table(["fold", "model", "cases"] + [f"Dice {_class_title(group, k)}" for k in keys]
                            + ["fg − control"], rows) + [""]
    lines += _cost_markdown(section)
    return lines


def _cost_markdown(section: dict) -> list[str]:
    reference = section["cost"][_label(section, "control")]
    rows = [[label, *_cost_cells(cost, reference)] for label, cost in section["cost"].items()]
    return ["### Cost", ""] + markdown_table(
        ["", "parameters", "s / it", "s / it ÷ control", "training wall (min, sum of folds)", "machine(s)",
         "aten ops (fwd+bwd)"], rows) + [""]


def _arms_markdown(section: dict) -> list[str]:
    group = section["group"]
    control, rwkv = _label(section, "control"), _label(section, "rwkv")
    lines = [f"## Arms on {group['title']}: {len(group['cases'])} cases", "",
             "Foreground Dice pooled over these folds; differences are paired per case; cost as in the "
             "sections above.", ""]
    rows = []
    for e in group["entries"]:
        label, cost = e["label"], section["cost"][e["label"]]
        row = [label, number(e["summary"][FOREGROUND][METRIC]["mean"])]
        for reference in (control, rwkv):
            p = _pair(section, reference, label)
            row += [f"{_signed(p['mean_difference'])} [{_signed(p['ci_low'])}, {_signed(p['ci_high'])}] "
                    f"p = {number(p['p_value'], 3)}" if p else ""]
        cells = _cost_cells(cost, section["cost"][control])
        rows.append(row + [cells[0], cells[1], cells[2], cells[-1]])
    lines += markdown_table(["", "fg Dice", "− control [95% CI] p", "− RWKV-SSS [95% CI] p", "parameters", "s / it",
                             "s / it ÷ control", "aten ops"], rows) + [""]
    rows = [[f"{p['b']} − {p['a']}", _class_title(group, p["class"]), str(p["n"]), *_pair_cells(p)]
            for p in group["paired"] if p["class"] != FOREGROUND]
    lines += ["Per class:", ""] + markdown_table(["second − first", "class", "n", "mean diff", "95% CI",
                                                  "Wilcoxon p", "better / tie / worse"], rows) + [""]
    hosts = sorted({h for cost in section["cost"].values() for h in cost.get("hosts", [])})
    return lines + [f"Trained on: {', '.join(hosts) or 'n/a'} (debug.json).", ""]


def _find_best_markdown(best: dict) -> list[str]:
    lines = [f"## nnUNetv2_find_best_configuration: {', '.join(best['configurations'])}, folds "
             f"{', '.join(map(str, best['folds']))}", "",
             "Foreground Dice as nnU-Net scored the pooled cross-validation (crossval_results_folds_*) and its "
             "ensembles (ensembles/*), before postprocessing; these are the folds every configuration of the "
             "study has.", ""]
    lines += markdown_table(["", "model or ensemble", "foreground Dice"],
                            [[str(i + 1), r["name"], f"{r['foreground_dice']:.4f}"] for i, r in enumerate(best["rows"])])
    pick = best["nnunet_pick"]
    lines += ["", f"nnU-Net's pick (inference_information.json): {' + '.join(pick['models'])}, "
                  f"{pick['foreground_dice']:.4f} ({number(pick['foreground_dice_postprocessed'])} after its "
                  "postprocessing)." if pick else
              "inference_information.json is not from this call (another find_best_configuration ran after it).", ""]
    return lines


def markdown(report: dict) -> list[str]:
    study, settings = report["study"], report["settings"]
    lines = [f"# Study on {report['dataset']}: RWKV-SSS against nnU-Net and the optimiser control", "",
             "Trainers: " + "; ".join(f"{ROLE_NAMES[r]} `{study[r]}`" for r in ROLES) + ". Folds: "
             + "; ".join(f"{c} {', '.join(map(str, f))}" for c, f in study["folds"].items()) + "."
             + (" Arms: " + "; ".join(f"`{a}`" for a in study["arms"]) + "." if study["arms"] else ""), "",
             f"Results folder: `{report['results_folder']}`."
             + (f" Rebuilt by `{report['rebuild']}`." if report["rebuild"] else ""), ""]
    if report["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in report["notes"]] + [""]
    lines += _headline(report)
    for section in report["sections"]:
        lines += _main_markdown(section) if section["kind"] == "main" else _arms_markdown(section)
        if section["plots"]:
            lines += ["### Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in section["plots"]] + [""]
    if report.get("find_best"):
        lines += _find_best_markdown(report["find_best"])
    lines += ["## How the numbers are made", "",
              "- Scores come from the summary.json files nnU-Net wrote (nnUNetv2_train's final validation of each "
              "fold; nnUNetv2_find_best_configuration's pooled and ensembled cross-validation); nothing is "
              "re-evaluated. A section pools every validation case of its folds, each case once, and all its "
              "entries hold the same cases (checked).",
              f"- Paired differences are per case (second − first); the interval is the percentile bootstrap of "
              f"the mean difference, {settings['bootstrap_resamples']} resamples of cases, seed {settings['seed']}; "
              "Wilcoxon signed-rank, two-sided, zero differences dropped (nnunet_sss/compare/stats.py). The "
              "foreground mean of a case is the mean over its classes.",
              "- Ensembles pair models on the same folds: each configuration's section uses the ensembles "
              "nnUNetv2_find_best_configuration made over that configuration's folds ("
              + "; ".join(f"{c}: {', '.join(map(str, f))}" for c, f in study["folds"].items())
              + "); its table across configurations uses the folds every configuration has.",
              "- Seconds per iteration: the median over every epoch of the folds of the logged epoch time divided "
              "by the iterations per epoch (debug.json); it includes the epoch's validation iterations, and "
              "compares only folds trained on the same machine (column machine(s)).",
              "- Parameters and aten ops: the network each trainer's build_network_architecture makes from the "
              "results folder's plans.json; aten ops (optional) are counted by nnunet_sss.step_ops.count_ops "
              "for one forward+backward at the plans' batch size on the CPU.", ""]
    return lines
