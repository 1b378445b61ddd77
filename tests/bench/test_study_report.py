"""The study's report on a fake results folder whose per-case Dice differ by known shifts: pooled
paired differences, intervals, Wilcoxon, per-class rows, per-fold table, ensembles, cost, arms and
find_best_configuration's table."""
import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from nnunet_sss.bench.study import Study
from nnunet_sss.bench.study_report import build_report
from nnunet_sss.compare.efficiency import build_trainer_network

from .fake_results import (ABLATION, BASELINE, CASES_PER_FOLD, CONTROL, ENSEMBLE_GAIN, RWKV, SHIFT, FakeResults,
                           identifier, write_study)

FG = "foreground_mean"
RESAMPLES = 2000


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    fake = FakeResults(tmp_path_factory.mktemp("study"))
    write_study(fake, arms={ABLATION: {"2d": (0, 1)}})
    study = Study.from_text("4", BASELINE, CONTROL, RWKV, ["2d=0-4", "3d_fullres=0-2"], [ABLATION])
    out = fake.root / "report"
    built = build_report(study, out, fake.results, plots=False, resamples=RESAMPLES, progress=None)
    return fake, built, out


def _section(built, kind, configuration):
    return next(s for s in built["sections"] if s["kind"] == kind and s["configuration"] == configuration)


def _pair(section, a, b, key=FG):
    return next(p for p in section["group"]["paired"] if p["a"] == a and p["b"] == b and p["class"] == key)


def _pooled_dice(fake, trainer, configuration, folds):
    """case -> class -> Dice, read here from the fold summaries on disk (not through the report's code)."""
    out = {}
    for fold in folds:
        summary = json.loads((fake.dataset / identifier(trainer, configuration) / f"fold_{fold}" / "validation"
                              / "summary.json").read_text())
        for record in summary["metric_per_case"]:
            case = record["prediction_file"].rsplit("/", 1)[1][: -len(".nii.gz")]
            assert case not in out
            out[case] = {k: v["Dice"] for k, v in record["metrics"].items()}
    return out


def test_paired_differences_pool_every_case_of_the_five_folds(report):
    fake, built, _ = report
    section = _section(built, "main", "2d")
    assert len(section["group"]["cases"]) == 5 * CASES_PER_FOLD == 260
    a, b = _pooled_dice(fake, CONTROL, "2d", range(5)), _pooled_dice(fake, RWKV, "2d", range(5))
    cases = sorted(a)
    for key in ("1", "2", FG):
        value = (lambda d, c: np.mean(list(d[c].values()))) if key == FG else (lambda d, c: d[c][key])
        diff = np.array([value(b, c) - value(a, c) for c in cases])
        pair = _pair(section, CONTROL, RWKV, key)
        assert pair["n"] == 260
        assert pair["mean_difference"] == pytest.approx(diff.mean(), abs=1e-12)
        assert pair["p_value"] == pytest.approx(scipy_stats.wilcoxon(diff).pvalue, rel=1e-9)
        assert (pair["wins"], pair["losses"]) == ((diff > 0).sum(), (diff < 0).sum())


def test_known_shifts_lie_in_the_intervals_and_the_p_values_follow_them(report):
    _, built, _ = report
    for configuration in ("2d", "3d_fullres"):
        section = _section(built, "main", configuration)
        for key, shift in (("1", SHIFT[RWKV]["1"]), ("2", SHIFT[RWKV]["2"]), (FG, np.mean(list(SHIFT[RWKV].values())))):
            pair = _pair(section, CONTROL, RWKV, key)
            assert pair["mean_difference"] == pytest.approx(shift, abs=1e-12)
            assert pair["ci_low"] < shift < pair["ci_high"]
        assert _pair(section, CONTROL, RWKV, "1")["ci_low"] > 0 and _pair(section, CONTROL, RWKV, "1")["p_value"] < 1e-6
        assert _pair(section, CONTROL, RWKV, "2")["ci_low"] < 0 < _pair(section, CONTROL, RWKV, "2")["ci_high"]
        assert _pair(section, CONTROL, RWKV, "2")["p_value"] > 0.5
        worse = _pair(section, CONTROL, BASELINE)  # nnU-Net below the control: negative, significant
        assert worse["mean_difference"] == pytest.approx(SHIFT[BASELINE]["1"], abs=1e-12)
        assert worse["ci_high"] < 0 and worse["p_value"] < 1e-6


def test_ensemble_of_rwkvsss_and_nnunet_is_paired_against_each_alone(report):
    _, built, out = report
    section = _section(built, "main", "2d")
    ensemble = f"ensemble({BASELINE} + {RWKV})"
    assert ensemble in [e["label"] for e in section["group"]["entries"]]
    against_rwkv = _pair(section, RWKV, ensemble)
    assert against_rwkv["mean_difference"] == pytest.approx(ENSEMBLE_GAIN, abs=1e-12) and against_rwkv["ci_low"] > 0
    assert _pair(section, BASELINE, ensemble)["ci_low"] > 0
    level = _pair(section, RWKV, f"ensemble({CONTROL} + {RWKV})")   # no gain: the interval holds 0
    assert level["ci_low"] < 0 < level["ci_high"]
    # the ensemble without RWKV-SSS is not part of this report
    assert f"ensemble({BASELINE} + {CONTROL})" not in [e["label"] for e in section["group"]["entries"]]
    text = (out / "study.md").read_text()
    assert f"- {ensemble} vs {RWKV} alone: +0.0100" in text and "better: interval above 0" in text
    assert f"- ensemble({CONTROL} + {RWKV}) vs {RWKV} alone: +0.0000" in text
    assert "no difference shown: interval includes 0" in text


def test_per_fold_rows_are_each_folds_summary(report):
    fake, built, out = report
    section = _section(built, "main", "3d_fullres")
    for entry in section["group"]["entries"]:
        if entry["kind"] != "model":
            continue
        assert sorted(entry["per_fold"]) == ["0", "1", "2"]
        for fold, values in entry["per_fold"].items():
            summary = json.loads((fake.dataset / identifier(entry["label"], "3d_fullres") / f"fold_{fold}"
                                  / "validation" / "summary.json").read_text())
            assert values[FG]["Dice"] == summary["foreground_mean"]["Dice"]
            assert values["n_cases"] == CASES_PER_FOLD
    text = (out / "study.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| 2 | {RWKV} | 52 |"))
    assert row.rstrip(" |").endswith("+0.0100")   # fg − control on that fold


def test_cost_columns_come_from_the_logs_and_the_stored_plans(report):
    fake, built, out = report
    cost = _section(built, "main", "2d")["cost"]
    assert cost[CONTROL]["s_per_it"] == pytest.approx(30.0 / 40)   # median epoch / iterations (debug.json)
    assert cost[RWKV]["s_per_it"] == pytest.approx(60.0 / 40)
    assert cost[RWKV]["epochs"] == 5 * 3 and cost[RWKV]["hosts"] == ["machine-a"]
    for trainer in (BASELINE, RWKV):
        network, _, _ = build_trainer_network(fake.dataset / identifier(trainer, "2d"), trainer, "2d")
        assert cost[trainer]["params_M"] == pytest.approx(sum(p.numel() for p in network.parameters()) / 1e6)
    assert cost[RWKV]["params_M"] != cost[BASELINE]["params_M"] == cost[CONTROL]["params_M"]
    assert "aten_ops" not in cost[RWKV]  # optional (--ops)
    assert f"| {RWKV} | {cost[RWKV]['params_M']:.2f} M | 1.500 | 2.00x |" in (out / "study.md").read_text()


def test_arms_are_paired_with_the_control_and_rwkvsss_on_their_folds(report):
    _, built, out = report
    section = _section(built, "arms", "2d")
    assert section["folds"] == [0, 1] and len(section["group"]["cases"]) == 2 * CASES_PER_FOLD
    against_control = _pair(section, CONTROL, ABLATION)
    assert against_control["mean_difference"] == pytest.approx(0.01, abs=1e-12) and against_control["ci_low"] > 0
    against_rwkv = _pair(section, RWKV, ABLATION, "1")
    assert against_rwkv["mean_difference"] == pytest.approx(SHIFT[ABLATION]["1"] - SHIFT[RWKV]["1"], abs=1e-12)
    assert section["cost"][ABLATION]["s_per_it"] == pytest.approx(33.0 / 40)
    assert f"| {ABLATION} | 0.8162 | +0.0100 [" in (out / "study.md").read_text()


def test_find_best_table_is_nnunets_over_both_configurations_on_the_common_folds(report):
    _, built, out = report
    best = built["find_best"]
    assert best["configurations"] == ["2d", "3d_fullres"] and best["folds"] == [0, 1, 2]
    assert len(best["rows"]) == 6 + 15
    dice = [r["foreground_dice"] for r in best["rows"]]
    assert dice == sorted(dice, reverse=True)
    assert best["rows"][0]["kind"] == "ensemble"
    assert best["nnunet_pick"]["models"] == [identifier(RWKV, "2d"), identifier(BASELINE, "2d")]
    assert json.loads((out / "study.json").read_text())["find_best"]["rows"][0]["name"] == best["rows"][0]["name"]


def test_plots_and_markdown_of_a_small_study(tmp_path):
    fake = FakeResults(tmp_path)
    write_study(fake, folds={"2d": (0, 1)})
    study = Study.from_text("4", BASELINE, CONTROL, RWKV, ["2d=0,1"])
    built = build_report(study, tmp_path / "report", fake.results, resamples=200, progress=None)
    plots = built["sections"][0]["plots"]
    names = {p.rsplit("/", 1)[1] for p in plots}
    assert "dice_cost_2d_folds_0_1.png" in names and "classes_2d_folds_0_1_Dice.png" in names
    assert sum(n.startswith("paired_") for n in names) == 4
    for p in plots:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "report" / "study.md").read_text()
    assert "- RWKV-SSS vs optimiser control: 0.8162 vs 0.8062, +0.0100" in text
    assert "python -m nnunet_sss.bench.protocol report -d 4 " in built["rebuild"]


def test_the_default_by_issue_25s_rule_prefers_a_winner_then_the_cheaper(report):
    _, built, out = report
    decision = _section(built, "arms", "2d")["decision"]
    # RWKV-SSS and the ablation both beat the control by +0.0100 on folds 0-1: the cheaper one
    # (0.825 s / it against 1.5) becomes the default
    assert sorted(decision["candidates"]) == sorted([RWKV, ABLATION])
    assert decision["choice"] == ABLATION and decision["rule"].startswith("beats the control")
    assert decision["against_control"][ABLATION]["ci_low"] > 0
    assert _section(built, "main", "3d_fullres")["decision"]["choice"] == RWKV
    assert f"- 2d, folds 0, 1: {ABLATION}, +0.0100 [" in (out / "study.md").read_text()


@pytest.mark.parametrize("rwkv_shift, expected", [(0.0, RWKV), (-0.02, None)])
def test_the_default_by_issue_25s_rule_without_a_winner(tmp_path, monkeypatch, rwkv_shift, expected):
    """No candidate above the control: the cheapest that is not below it, or none at all."""
    monkeypatch.setitem(SHIFT, RWKV, {"1": rwkv_shift, "2": rwkv_shift})
    monkeypatch.setitem(SHIFT, ABLATION, {"1": -0.02, "2": -0.02})   # cheaper, but worse
    fake = FakeResults(tmp_path)
    write_study(fake, folds={"2d": (0, 1)}, arms={ABLATION: {"2d": (0, 1)}}, ensembles=False)
    study = Study.from_text("4", BASELINE, CONTROL, RWKV, ["2d=0,1"], [ABLATION])
    built = build_report(study, tmp_path / "report", fake.results, ensembles=False, plots=False, resamples=500,
                         progress=None)
    decision = _section(built, "arms", "2d")["decision"]
    assert decision["choice"] == expected
    assert decision["rule"] == ("none beats the control: the cheapest that is not worse" if expected else
                                "every candidate is worse than the control")
