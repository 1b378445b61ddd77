"""The main job in its smallest form: it runs end to end and its report answers the question."""
import json

import pytest

from dice_checks import dice_above_image_blind
from nnunet_sss.demo import DemoError, run_demo
from nnunet_sss.training import SCHEDULES

from .conftest import SUFFIX, TRAINERS


def test_report_shows_both_trainers_beating_an_image_blind_prediction(demo_run):
    """Each trainer's validation and test-set Dice, as nnU-Net evaluated it and as the report
    shows it, is above what a prediction that ignores the image scores (dice_checks): the smoke
    schedule's six steps learn the phantom a little, and nothing on the way lost it."""
    comparison = json.loads((demo_run.report / "comparison.json").read_text())
    md = (demo_run.report / "comparison.md").read_text()
    summaries = {"validation": lambda trainer: demo_run.model_folder(trainer) / "fold_0" / "validation",
                 "test": lambda trainer: demo_run.root / "test_predictions" / trainer}
    for group, folder in summaries.items():
        entries = {e["label"]: e for e in comparison["groups"][group]["entries"]}
        for trainer in TRAINERS:
            dice = dice_above_image_blind(folder(trainer) / "summary.json")
            assert entries[trainer]["summary"]["foreground_mean"]["Dice"]["mean"] == pytest.approx(dice, rel=1e-12)
            assert trainer in md
    assert "Paired per-case comparison" in md and "## Efficiency" in md


def test_progress_names_every_stage_with_elapsed_time(demo_run):
    out = demo_run.stdout
    for stage in ("dataset", "nnUNetv2_plan_and_preprocess", f"nnUNetv2_train {TRAINERS[0]}",
                  f"nnUNetv2_train {TRAINERS[1]}", "nnUNetv2_find_best_configuration", "nnUNetv2_predict",
                  "nnUNetv2_ensemble", "nnunet-sss compare"):
        assert stage in out, stage
    epochs = SCHEDULES[SUFFIX].epochs
    assert out.count(f"epoch {epochs}/{epochs}:") == 2  # one line per epoch, per trainer
    assert "(9/9) nnunet-sss compare" in out and "report:" in out


def test_a_workspace_is_not_reused_with_other_settings(demo_run):
    with pytest.raises(DemoError, match="other settings"):
        run_demo(demo_run.root, budget="tiny", seed=1)


def test_a_folder_that_is_not_an_nnunet_dataset_is_refused(tmp_path):
    bad = tmp_path / "my_images"
    bad.mkdir()
    with pytest.raises(DemoError, match="DatasetXXX_Name"):
        run_demo(tmp_path / "out", dataset=bad, budget="tiny")
    named = tmp_path / "Dataset123_Mine"
    named.mkdir()
    with pytest.raises(DemoError, match="no dataset.json"):
        run_demo(tmp_path / "out2", dataset=named, budget="tiny")


def test_a_users_dataset_is_linked_not_copied(tmp_path):
    from nnunet_sss.demo import check_dataset, link_dataset
    from nnunet_sss.phantom import write_phantom_dataset

    dataset = write_phantom_dataset(tmp_path / "mine", dataset_id=42, name="Mine", num_train=5, num_test=0,
                                    shape=(16, 16, 16))
    assert check_dataset(dataset) == (42, "Dataset042_Mine")
    raw = tmp_path / "work" / "nnUNet_raw"
    link_dataset(raw, dataset)
    link_dataset(raw, dataset)  # a rerun finds its own link
    assert (raw / "Dataset042_Mine").is_symlink() and (raw / "Dataset042_Mine").resolve() == dataset.resolve()
    other = write_phantom_dataset(tmp_path / "other", dataset_id=42, name="Mine", num_train=5, num_test=0,
                                  shape=(16, 16, 16))
    with pytest.raises(DemoError, match="already holds another dataset"):
        link_dataset(raw, other)
