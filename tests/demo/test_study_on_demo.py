"""`protocol study` on the demo run's real nnU-Net results, without training: the demo's folds are
finished, so the study only runs nnU-Net's find_best_configuration (through the function behind it,
as RWKV-SSS has plans of its own here) and builds its report from what nnU-Net wrote."""
import json
import shutil

import numpy as np
import pytest

from nnunet_sss.bench import protocol
from nnunet_sss.bench import study as study_module
from nnunet_sss.bench.study import Model, ensemble_folder, find_best_is_fresh, inference_information_matches

from .conftest import CONFIGURATION, DATASET, TRAINERS

BASELINE, RWKV = TRAINERS
CONTROL = "nnUNetTrainerAdamWWarmup_smoke"   # stands in: a copy of the baseline's results
OWN_PLANS = "nnUNetPlansOwn"                  # RWKV-SSS's results moved under plans of their own
FG = "foreground_mean"


def _fg_per_case(summary_file):
    summary = json.loads(summary_file.read_text())
    return {r["prediction_file"].rsplit("/", 1)[1]: np.mean([m["Dice"] for m in r["metrics"].values()])
            for r in summary["metric_per_case"]}


@pytest.fixture
def workspace(demo_run, tmp_path, monkeypatch):
    """The demo's results (with the validation .npz) and plans, copied; the demo's own files stay as they are."""
    results = tmp_path / "nnUNet_results" / DATASET
    results.mkdir(parents=True)
    for trainer, plans, target in ((BASELINE, "nnUNetPlans", BASELINE), (BASELINE, "nnUNetPlans", CONTROL),
                                   (RWKV, OWN_PLANS, RWKV)):
        shutil.copytree(demo_run.model_folder(trainer), results / f"{target}__{plans}__{CONFIGURATION}",
                        ignore=shutil.ignore_patterns("*.pth", "crossval_results_folds_*"))
    preprocessed = tmp_path / "nnUNet_preprocessed" / DATASET
    source = demo_run.root / "nnUNet_preprocessed" / DATASET
    shutil.copytree(source / "gt_segmentations", preprocessed / "gt_segmentations")
    for name in ("dataset.json", "splits_final.json", "nnUNetPlans.json"):
        shutil.copy(source / name, preprocessed / name)
    own = json.loads((source / "nnUNetPlans.json").read_text())
    (preprocessed / f"{OWN_PLANS}.json").write_text(json.dumps({**own, "plans_name": OWN_PLANS}))
    for name, value in (("nnUNet_results", tmp_path / "nnUNet_results"), ("nnUNet_preprocessed", preprocessed.parent),
                        ("nnUNet_raw", demo_run.root / "nnUNet_raw")):
        monkeypatch.setenv(name, str(value))
    return results


def test_study_runs_find_best_on_finished_folds_and_reports_nnunets_numbers(workspace, tmp_path, monkeypatch):
    commands = []
    real_call = study_module._call

    def record(command, env):
        commands.append(command)
        return real_call(command, env)

    monkeypatch.setattr(study_module, "_call", record)
    argv = ["study", "-d", "990", "--baseline", BASELINE, "--control", CONTROL, "--rwkv", f"{RWKV}:{OWN_PLANS}",
            "--folds", f"{CONFIGURATION}=0", "-o", str(tmp_path / "report"), "--no_plots", "--bootstrap", "200",
            "-np", "1"]
    assert protocol.main(argv) == 0
    assert len(commands) == 1 and "find_best_configuration(" in commands[0][2]   # no training; the function form

    models = [Model(BASELINE, "nnUNetPlans", CONFIGURATION), Model(CONTROL, "nnUNetPlans", CONFIGURATION),
              Model(RWKV, OWN_PLANS, CONFIGURATION)]
    assert find_best_is_fresh(workspace, models, (0,)) and inference_information_matches(workspace, models, (0,))
    ensemble = ensemble_folder(workspace, models[2], models[0], (0,)) / "summary.json"

    report = json.loads((tmp_path / "report" / "study.json").read_text())
    (section,) = report["sections"]
    pair = next(p for p in section["group"]["paired"] if (p["a"], p["b"], p["class"]) == (BASELINE, RWKV, FG))
    a = _fg_per_case(workspace / f"{BASELINE}__nnUNetPlans__{CONFIGURATION}" / "fold_0" / "validation" / "summary.json")
    b = _fg_per_case(workspace / f"{RWKV}__{OWN_PLANS}__{CONFIGURATION}" / "fold_0" / "validation" / "summary.json")
    assert pair["n"] == len(a) and pair["mean_difference"] == pytest.approx(np.mean([b[c] - a[c] for c in a]))
    entry = next(e for e in section["group"]["entries"] if e["kind"] == "ensemble" and BASELINE in e["label"])
    assert entry["summary"][FG]["Dice"]["mean"] == pytest.approx(
        json.loads(ensemble.read_text())["foreground_mean"]["Dice"])

    commands.clear()
    assert protocol.main(argv) == 0 and commands == []   # finished: nothing runs again
