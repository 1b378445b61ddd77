"""`nnunet-sss compare` checked against the summary.json files nnU-Net wrote in the demo run."""
import json
import math
import shutil

import numpy as np
import pytest
from scipy import stats as scipy_stats

from nnunet_sss.cli import main as cli_main
from nnunet_sss.compare.comparison import run_comparison
from nnunet_sss.compare.results import ComparisonInputError
from nnunet_sss.training import SCHEDULES

from .conftest import CONFIGURATION, DATASET, SUFFIX, TRAINERS

FG = "foreground_mean"


def _load(path):
    return json.loads(path.read_text())


def _comparison(demo_run):
    return _load(demo_run.report / "comparison.json")


def _per_case(summary):
    """case name -> class -> metric, straight from nnU-Net's metric_per_case."""
    return {r["prediction_file"].split("/")[-1][: -len(".nii.gz")]: r["metrics"] for r in summary["metric_per_case"]}


def _close(a, b):
    if a is None or b is None or (isinstance(b, float) and math.isnan(b)):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return a == pytest.approx(b, rel=1e-12, abs=1e-12)


def _copy_results(demo_run, tmp_path):
    """The demo's results without checkpoints and probabilities (not needed to compare)."""
    target = tmp_path / "nnUNet_results"
    shutil.copytree(demo_run.results, target, ignore=shutil.ignore_patterns("*.pth", "*.npz", "*.pkl"))
    return target


def test_scores_and_per_fold_table_are_the_summary_json_values(demo_run):
    entries = {e["label"]: e for e in _comparison(demo_run)["groups"]["validation"]["entries"]}
    for trainer in TRAINERS:
        summary = _load(demo_run.model_folder(trainer) / "fold_0" / "validation" / "summary.json")
        per_case = _per_case(summary)
        entry = entries[trainer]
        assert entry["cases"] == sorted(per_case)
        classes = sorted(summary["mean"])
        assert sorted(entry["classes"]) == classes == ["1", "2"]
        for k in classes:
            for metric, value in summary["mean"][k].items():
                values = np.array([per_case[c][k][metric] for c in per_case], dtype=float)
                got = entry["summary"][k][metric]
                assert _close(got["mean"], float(np.nanmean(values)))          # recomputed here
                assert _close(got["mean"], value)                               # and as nnU-Net stored it
                assert _close(got["std"], float(np.nanstd(values, ddof=1)))
                assert entry["per_fold"]["0"]["mean"][k][metric] == value
        for metric, value in summary[FG].items():
            assert _close(entry["summary"][FG][metric]["mean"], value)
            assert entry["per_fold"]["0"][FG][metric] == value
        # the per-case table holds nnU-Net's numbers unchanged
        for case, metrics in per_case.items():
            for k in classes:
                assert entry["per_case"][case][k]["Dice"] == metrics[k]["Dice"] or (
                    math.isnan(metrics[k]["Dice"]) and entry["per_case"][case][k]["Dice"] is None)


def test_paired_statistics_are_scipys_on_the_same_cases(demo_run):
    comparison = _comparison(demo_run)
    a, b = (_per_case(_load(demo_run.model_folder(t) / "fold_0" / "validation" / "summary.json")) for t in TRAINERS)
    assert sorted(a) == sorted(b)
    cases = sorted(a)
    paired = {(p["a"], p["b"], p["metric"], p["class"]): p for p in comparison["groups"]["validation"]["paired"]}
    for metric in ("Dice", "IoU"):
        for k in ("1", "2", FG):
            if k == FG:
                va = np.array([np.nanmean([a[c][j][metric] for j in ("1", "2")]) for c in cases])
                vb = np.array([np.nanmean([b[c][j][metric] for j in ("1", "2")]) for c in cases])
            else:
                va = np.array([a[c][k][metric] for c in cases], dtype=float)
                vb = np.array([b[c][k][metric] for c in cases], dtype=float)
            keep = ~(np.isnan(va) | np.isnan(vb))
            d = vb[keep] - va[keep]
            got = paired[(TRAINERS[0], TRAINERS[1], metric, k)]
            assert got["n"] == keep.sum()
            assert got["mean_difference"] == pytest.approx(d.mean(), abs=1e-12)
            if np.all(d == 0):
                assert got["p_value"] == 1.0 and got["note"] == "all differences are zero"
            else:
                assert got["p_value"] == pytest.approx(scipy_stats.wilcoxon(d).pvalue, rel=1e-12)
            assert got["ci_low"] <= got["mean_difference"] <= got["ci_high"]


def test_plots_are_valid_png_images_linked_from_the_report(demo_run):
    from PIL import Image

    comparison = _comparison(demo_run)
    md = (demo_run.report / "comparison.md").read_text()
    plots = [p for g in comparison["groups"].values() for p in g["plots"]]
    # per group: one per-class bar chart, one paired plot per pair of entries (3 entries -> 3 pairs)
    assert len(plots) == 2 * (1 + 3)
    for path in plots:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 200
            image.verify()
        assert f"({path.split('/')[-1]})" in md


def test_ensemble_rows_are_find_best_configurations_ensemble(demo_run):
    entries = _comparison(demo_run)["groups"]["validation"]["entries"]
    ensembles = [e for e in entries if e["kind"] == "ensemble"]
    assert len(ensembles) == 1
    folder = demo_run.results / DATASET / "ensembles" / (
        "ensemble___" + "___".join(f"{t}__nnUNetPlans__{CONFIGURATION}" for t in TRAINERS) + "___0")
    summary = _load(folder / "summary.json")
    assert ensembles[0]["folder"] == str(folder)
    assert _close(ensembles[0]["summary"][FG]["Dice"]["mean"], summary[FG]["Dice"])
    assert ensembles[0]["label"] == f"ensemble({TRAINERS[0]} + {TRAINERS[1]})"


def test_test_set_section_is_the_evaluated_prediction_folders(demo_run):
    group = _comparison(demo_run)["groups"]["test"]
    labels = [e["label"] for e in group["entries"]]
    assert labels == [*TRAINERS, f"ensemble({TRAINERS[0]} + {TRAINERS[1]})"]
    test_cases = sorted(p.name[: -len(".nii.gz")] for p in
                        (demo_run.root / "nnUNet_raw" / DATASET / "labelsTs").glob("*.nii.gz"))
    for entry, folder in zip(group["entries"], (*TRAINERS, "ensemble")):
        summary = _load(demo_run.root / "test_predictions" / folder / "summary.json")
        assert entry["cases"] == test_cases
        assert _close(entry["summary"][FG]["Dice"]["mean"], summary[FG]["Dice"])
        assert entry["per_fold"] == {}


def test_efficiency_from_the_networks_and_the_training_logs(demo_run):
    efficiency = _comparison(demo_run)["efficiency"]
    assert list(efficiency) == list(TRAINERS)
    for trainer in TRAINERS:
        net, training = efficiency[trainer]["network"], efficiency[trainer]["training"]
        assert "error" not in net, net
        assert net["params"] == demo_run.trained_parameters(trainer)  # the very network nnU-Net trained
        assert 0 < net["flops_forward"] < net["flops_train"] and net["step_time_s"] > 0
        assert net["batch_size"] == SCHEDULES[SUFFIX].batch_3d
        fold = training["folds"]["0"]
        assert fold["finished"] and fold["epochs"] == SCHEDULES[SUFFIX].epochs
        assert 0 < training["train_wall_s_total"] <= fold["total_wall_s"]
    # different networks, measured on the same input
    assert efficiency[TRAINERS[0]]["network"]["params"] != efficiency[TRAINERS[1]]["network"]["params"]
    assert efficiency[TRAINERS[0]]["network"]["input_shape"] == efficiency[TRAINERS[1]]["network"]["input_shape"]


def test_missing_folds_are_one_error_listing_each(demo_run, tmp_path):
    with pytest.raises(ComparisonInputError) as info:
        run_comparison(990, [CONFIGURATION], TRAINERS, [0, 1, 3], tmp_path / "out", results_dir=demo_run.results,
                       benchmark=False, progress=None)
    problems = info.value.problems
    for trainer in TRAINERS:
        for fold in (1, 3):
            assert any(p.startswith(f"{trainer}__nnUNetPlans__{CONFIGURATION}: fold {fold}: fold folder missing")
                       for p in problems), problems
    assert len(problems) == 4
    assert not (tmp_path / "out" / "comparison.json").exists()


def test_mismatched_cases_are_an_error_naming_them(demo_run, tmp_path):
    results = _copy_results(demo_run, tmp_path)
    model = results / DATASET / f"{TRAINERS[1]}__nnUNetPlans__{CONFIGURATION}"
    summary_file = model / "fold_0" / "validation" / "summary.json"
    summary = _load(summary_file)
    dropped = summary["metric_per_case"].pop(0)["prediction_file"].split("/")[-1][: -len(".nii.gz")]
    summary_file.write_text(json.dumps(summary))
    with pytest.raises(ComparisonInputError) as info:
        run_comparison(DATASET, [CONFIGURATION], TRAINERS, [0], tmp_path / "out", results_dir=results,
                       benchmark=False, progress=None)
    text = str(info.value)
    assert f"{TRAINERS[1]}__nnUNetPlans__{CONFIGURATION} lacks 1 case(s) the others have: {dropped}" in text
    assert "validated on other cases" in text  # the fold-level check names it too


def test_cli_reports_the_error_and_exits_non_zero(demo_run, tmp_path, capsys):
    code = cli_main(["compare", "-d", "990", "-c", CONFIGURATION, "-tr", *TRAINERS, "-f", "0", "1",
                     "-o", str(tmp_path / "out"), "--results_dir", str(demo_run.results), "--no_benchmark"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot compare" in err and "fold 1" in err and TRAINERS[1] in err


def test_folds_pool_into_one_comparison_with_a_row_per_fold(demo_run, tmp_path):
    """Two real folds: fold 0's validation predictions split in two, each evaluated by nnU-Net."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    results = _copy_results(demo_run, tmp_path)
    gt = demo_run.root / "nnUNet_preprocessed" / DATASET / "gt_segmentations"
    summaries = {}
    for trainer in TRAINERS:
        model = results / DATASET / f"{trainer}__nnUNetPlans__{CONFIGURATION}"
        predictions = sorted((model / "fold_0" / "validation").glob("*.nii.gz"))
        assert len(predictions) >= 2
        (model / "fold_1" / "validation").mkdir(parents=True)
        for p in predictions[len(predictions) // 2:]:
            p.rename(model / "fold_1" / "validation" / p.name)
        for fold in (0, 1):
            folder = model / f"fold_{fold}" / "validation"
            summaries[trainer, fold] = compute_metrics_on_folder(
                str(gt), str(folder), str(folder / "summary.json"), SimpleITKIO(), ".nii.gz", [1, 2],
                num_processes=1)
    comparison = run_comparison(DATASET, [CONFIGURATION], TRAINERS, [0, 1], tmp_path / "out",
                                results_dir=results, benchmark=False, progress=None)
    group = comparison["groups"]["validation"]
    assert [e["kind"] for e in group["entries"]] == ["model", "model"]  # fold-0 ensemble is not for folds 0 1
    for entry, trainer in zip(group["entries"], TRAINERS):
        assert sorted(entry["per_fold"]) == ["0", "1"]
        pooled = []
        for fold in (0, 1):
            s = summaries[trainer, fold]
            assert entry["per_fold"][str(fold)]["n_cases"] == len(s["metric_per_case"])
            assert _close(entry["per_fold"][str(fold)][FG]["Dice"], float(s[FG]["Dice"]))
            pooled += [r["metrics"][1]["Dice"] for r in s["metric_per_case"]]
            assert all(entry["case_fold"][c] == fold for c in
                       (r["prediction_file"].split("/")[-1][:-7] for r in s["metric_per_case"]))
        assert _close(entry["summary"]["1"]["Dice"]["mean"], float(np.nanmean(pooled)))
        fold_fg = [float(summaries[trainer, f][FG]["Dice"]) for f in (0, 1)]
        assert _close(entry["per_fold_foreground_dice"]["mean"], float(np.mean(fold_fg)))
    assert "| 1 |" in (tmp_path / "out" / "comparison.md").read_text()


def test_crossval_summary_stands_in_for_missing_fold_summaries(demo_run, tmp_path):
    results = _copy_results(demo_run, tmp_path)
    for trainer in TRAINERS:
        (results / DATASET / f"{trainer}__nnUNetPlans__{CONFIGURATION}" / "fold_0" / "validation"
         / "summary.json").unlink()
    comparison = run_comparison(DATASET, [CONFIGURATION], TRAINERS, [0], tmp_path / "out", results_dir=results,
                                benchmark=False, progress=None)
    reference = {e["label"]: e for e in _comparison(demo_run)["groups"]["validation"]["entries"]}
    for entry in comparison["groups"]["validation"]["entries"][:2]:
        assert "crossval_results_folds_0" in entry["source"] and entry["per_fold"] == {}
        assert _close(entry["summary"][FG]["Dice"]["mean"], reference[entry["label"]]["summary"][FG]["Dice"]["mean"])
