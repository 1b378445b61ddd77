"""Bad input to `protocol study` / `protocol report` / `nnunet-sss compare`: one stderr line naming what
is missing, exit code 2, no traceback, nothing run or written."""
import json
import subprocess
import sys

import pytest

from nnunet_sss.bench import protocol
from nnunet_sss.bench import study as study_module
from nnunet_sss.cli import main as cli_main

from .fake_results import ABLATION, BASELINE, CONTROL, RWKV, FakeResults, identifier, write_study

FOLDS = ["--folds", "2d=0-4", "3d_fullres=0-2"]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    fake = FakeResults(tmp_path)
    write_study(fake)
    for name, value in fake.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(study_module, "_call", lambda command, env: pytest.fail(f"ran {command} on bad input"))
    return fake


def _error(capsys, argv, action=None) -> str:
    """The one stderr line of protocol.main(argv) (which must exit 2 and write no report)."""
    assert protocol.main(argv) == 2
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"protocol {action or argv[0]}: ")
    return err


def _report(fake, *extra):
    return ["report", "-o", str(fake.root / "out"), *FOLDS, "--no_plots", *extra]


def test_a_fold_without_validation_is_named(fake, capsys):
    (fake.dataset / identifier(RWKV, "2d") / "fold_3" / "validation" / "summary.json").unlink()
    err = _error(capsys, _report(fake))
    assert (f"{identifier(RWKV, '2d')}: fold 3: no validation/summary.json (training unfinished or final "
            "validation not run)") in err
    assert not (fake.root / "out").exists()


def test_a_trainer_folder_that_does_not_exist_is_named(fake, capsys):
    err = _error(capsys, _report(fake, "--control", "nnUNetTrainerNotTrained"))
    assert f"nnUNetTrainerNotTrained__nnUNetPlans__2d: no results folder {fake.dataset}" in err
    assert "nnUNetTrainerNotTrained__nnUNetPlans__3d_fullres: no results folder" in err


def test_folds_that_differ_between_trainers_are_named(fake, capsys):
    """RWKV-SSS's fold 1 validated on other cases (another splits_final.json)."""
    path = fake.dataset / identifier(RWKV, "2d") / "fold_1" / "validation" / "summary.json"
    summary = json.loads(path.read_text())
    summary["metric_per_case"][0]["prediction_file"] = "/x/hippocampus_999.nii.gz"
    path.write_text(json.dumps(summary))
    err = _error(capsys, _report(fake))
    rwkv, baseline = identifier(RWKV, "2d"), identifier(BASELINE, "2d")
    assert (f"2d folds 0_1_2_3_4: fold 1: {rwkv} validated on other cases than {baseline} (only in {rwkv}: "
            f"hippocampus_999; only in {baseline}: hippocampus_052); different splits_final.json?") in err


def test_an_arm_on_folds_the_references_lack_is_named(fake, capsys):
    err = _error(capsys, _report(fake, "--arm", f"{ABLATION}@3d_fullres=3"))
    assert f"arm {ABLATION}: 3d_fullres fold(s) 3 are not among the study's 3d_fullres folds (0, 1, 2)" in err


def test_a_missing_ensemble_is_named_and_can_be_left_out(fake, capsys):
    ensembles = fake.dataset / "ensembles"
    for folder in ensembles.glob(f"ensemble___{identifier(BASELINE, '2d')}___{identifier(RWKV, '2d')}___0_1_2_3_4"):
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    err = _error(capsys, _report(fake))
    assert f"no ensemble of {identifier(RWKV, '2d')} and {identifier(BASELINE, '2d')} over folds 0_1_2_3_4" in err
    assert "--no_ensembles" in err
    assert protocol.main(_report(fake, "--no_ensembles", "--bootstrap", "100")) == 0


def test_find_best_not_run_over_both_configurations_is_named(fake, capsys):
    (fake.dataset / identifier(CONTROL, "3d_fullres") / "crossval_results_folds_0_1_2" / "summary.json").unlink()
    err = _error(capsys, _report(fake))
    assert "nnUNetv2_find_best_configuration on 2d, 3d_fullres, folds 0_1_2, has not run or not finished" in err


def test_malformed_folds_are_named(fake, capsys):
    err = _error(capsys, _report(fake)[:4] + ["2d=0-x"])
    assert "folds must read CONFIGURATION=FOLDS (2d=0-4, 3d_fullres=0,1,2), got '2d=0-x'" in err


def test_study_names_a_finished_fold_without_npz_before_training(fake, capsys):
    fold = fake.dataset / identifier(BASELINE, "3d_fullres") / "fold_2"
    for npz in (fold / "validation").glob("*.npz"):
        npz.unlink()
    (fake.dataset / identifier(RWKV, "2d") / "fold_4" / "validation" / "summary.json").unlink()  # to train
    err = _error(capsys, ["study", "-o", str(fake.root / "out"), *FOLDS])
    assert f"{identifier(BASELINE, '3d_fullres')}: fold 2: no .npz for 52 validation case(s)" in err
    assert "--val --npz" in err


def test_study_names_unknown_trainers_and_plans_before_training(fake, capsys):
    err = _error(capsys, ["study", "-o", str(fake.root / "out"), *FOLDS, "--rwkv", "nnUNetTrainerNoSuchThing",
                          "--arm", f"{ABLATION}:nnUNetPlans_missing"])
    assert "trainer nnUNetTrainerNoSuchThing does not exist" in err
    assert f"plans nnUNetPlans_missing: no {fake.preprocessed / 'nnUNetPlans_missing.json'}" in err


def test_study_names_a_configuration_the_plans_lack(fake, capsys):
    err = _error(capsys, ["study", "-o", str(fake.root / "out"), "--folds", "3d_lowres_x=0"])
    assert "plans nnUNetPlans has no configuration 3d_lowres_x" in err


def test_study_needs_nnunet_folders(fake, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_results")
    err = _error(capsys, ["study", "-o", str(fake.root / "out")])
    assert "nnUNet_results not set" in err


def test_compare_over_pooled_folds_names_a_missing_fold_on_one_line(fake, capsys):
    (fake.dataset / identifier(CONTROL, "2d") / "fold_4" / "validation" / "summary.json").unlink()
    # (without find_best_configuration's pooled summary, which compare would take in the folds' place)
    (fake.dataset / identifier(CONTROL, "2d") / "crossval_results_folds_0_1_2_3_4" / "summary.json").unlink()
    code = cli_main(["compare", "-d", "4", "-c", "2d", "-tr", CONTROL, RWKV, "-o", str(fake.root / "out"),
                     "--results_dir", str(fake.results), "--no_benchmark"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nnunet-sss compare: cannot compare: ")
    assert f"{identifier(CONTROL, '2d')}: fold 4: no validation/summary.json" in err


def test_the_command_line_prints_no_traceback(fake):
    proc = subprocess.run([sys.executable, "-m", "nnunet_sss.bench.protocol", "report", "-o", str(fake.root / "out"),
                           "-d", "7"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("protocol report: no dataset 7 in the results folder") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
