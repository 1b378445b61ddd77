"""End to end through nnU-Net's own CLIs on real Hippocampus cases, on the CPU.

Plan and preprocess (conftest), train nnUNetTrainerRWKVSSS (smoke schedule) for 3d_fullres and
2d, predict unseen cases, evaluate them, crash a training and resume it with --c.
"""
import json
import re
import textwrap

import pytest
import SimpleITK as sitk
import torch

from dice_checks import dice_above_background

SMOKE_TRAINER = "nnUNetTrainerRWKVSSS_smoke"  # trained by the hippocampus_rwkvsss_smoke fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("configuration,batch_size", [("3d_fullres", 2), ("2d", 8)])
def test_train_rwkvsss_with_nnunet_train(hippocampus_rwkvsss_smoke, configuration, batch_size):
    ws = hippocampus_rwkvsss_smoke
    output = ws.results_folder(SMOKE_TRAINER, configuration)
    fold = output / "fold_0"
    checkpoint = _checkpoint(fold / "checkpoint_final.pth")
    assert checkpoint["trainer_name"] == SMOKE_TRAINER
    assert checkpoint["current_epoch"] == 2
    assert checkpoint["inference_allowed_mirroring_axes"] is None  # smoke: no test-time mirroring
    assert not (fold / "checkpoint_latest.pth").exists()  # nnU-Net removes it once training is done
    debug = json.loads((fold / "debug.json").read_text())
    assert debug["network"] == "RWKVSSSUNet" and debug["batch_size"] == str(batch_size)
    assert "AdamW" in debug["optimizer"]
    plans = json.loads((output / "plans.json").read_text())
    assert plans["configurations"][configuration]["batch_size"] == batch_size
    validation = sorted(p.name[: -len(".nii.gz")] for p in (fold / "validation").glob("*.nii.gz"))
    splits = json.loads((ws.dataset_preprocessed / "splits_final.json").read_text())
    assert validation == sorted(splits[0]["val"]) and validation  # nnU-Net's own fold 0
    dice_above_background(fold / "validation" / "summary.json")  # every class found (dice_checks.py)


def test_predict_and_evaluate_unseen_cases(hippocampus_rwkvsss_smoke, tmp_path):
    ws = hippocampus_rwkvsss_smoke
    predictions = tmp_path / "predictions"
    ws.run("nnUNetv2_predict", "-i", str(ws.test_images), "-o", str(predictions), "-d", "4", "-c", "3d_fullres",
           "-tr", SMOKE_TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar")
    cases = sorted(p.name for p in ws.test_labels.glob("*.nii.gz"))
    assert sorted(p.name for p in predictions.glob("*.nii.gz")) == cases
    output = ws.results_folder(SMOKE_TRAINER, "3d_fullres")
    evaluate = ("nnUNetv2_evaluate_folder", str(ws.test_labels))
    options = ("-djfile", str(output / "dataset.json"), "-pfile", str(output / "plans.json"), "-np", "1")
    ws.run(*evaluate, str(predictions), *options)
    dice_above_background(predictions / "summary.json")
    # the same evaluation scores background everywhere 0, which the check refuses
    background = tmp_path / "background"
    background.mkdir()
    for case in cases:
        label = sitk.ReadImage(str(ws.test_labels / case))
        empty = sitk.Image(label.GetSize(), label.GetPixelID())
        empty.CopyInformation(label)
        sitk.WriteImage(empty, str(background / case))
    ws.run(*evaluate, str(background), *options)
    assert json.loads((background / "summary.json").read_text())["foreground_mean"]["Dice"] == 0.0
    with pytest.raises(AssertionError, match="no better than background everywhere"):
        dice_above_background(background / "summary.json")


def test_train_without_the_variable_names_it(hippocampus_subset):
    env = {k: v for k, v in hippocampus_subset.env.items() if k != "nnUNet_extTrainer"}
    result = hippocampus_subset.run("nnUNetv2_train", "4", "2d", "0", "-tr", "nnUNetTrainerRWKVSSS", "-device", "cpu",
                                    env=env, check=False, timeout=300)
    assert result.returncode != 0
    assert "nnUNet_extTrainer" in result.stderr and "environment variable" in result.stderr


CRASHING_TRAINER = textwrap.dedent('''
    """Test only: dies right after epoch 0's checkpoint_latest, unless it was resumed; a resumed
    run saves the state it starts its first epoch from, for the test to compare."""
    import os

    import torch

    from nnunet_sss.training import nnUNetTrainerRWKVSSS_smoke


    class nnUNetTrainerRWKVSSS_smokeCrash(nnUNetTrainerRWKVSSS_smoke):
        def perform_actual_validation(self, save_probabilities=False):
            pass  # test_train_rwkvsss_with_nnunet_train covers validation; this test is about --c

        def on_train_start(self):
            super().on_train_start()
            self.resumed = self.current_epoch > 0
            if self.resumed:
                torch.save({"current_epoch": self.current_epoch, "network_weights": self.network.state_dict(),
                            "optimizer_state": self.optimizer.state_dict()},
                           os.path.join(self.output_folder, "state_at_resume.pth"))

        def on_epoch_end(self):
            super().on_epoch_end()
            if not self.resumed and self.current_epoch == 1:
                raise RuntimeError("simulated crash after epoch 0")
''')


def test_crashed_training_resumes_with_continue(hippocampus_subset, tmp_path):
    ws = hippocampus_subset
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "nnunet_sss_test_crashing_trainer.py").write_text(CRASHING_TRAINER)
    env = {**ws.env, "nnUNet_extTrainer": f"{ws.env['nnUNet_extTrainer']}:{ext}"}  # several folders, as nnU-Net allows
    trainer = "nnUNetTrainerRWKVSSS_smokeCrash"
    fold = ws.results_folder(trainer, "2d") / "fold_0"

    crashed = ws.run("nnUNetv2_train", "4", "2d", "0", "-tr", trainer, "-device", "cpu", env=env, check=False)
    assert crashed.returncode != 0 and "simulated crash after epoch 0" in crashed.stderr
    saved = _checkpoint(fold / "checkpoint_latest.pth")  # overwritten by the resumed run: keep it here
    assert saved["current_epoch"] == 1 and saved["optimizer_state"]["state"]  # AdamW's moments after epoch 0
    assert not (fold / "checkpoint_final.pth").exists()

    resumed = ws.run("nnUNetv2_train", "4", "2d", "0", "-tr", trainer, "-device", "cpu", "--c", env=env)
    assert re.search(r"Epoch 1\b", resumed.stdout) and not re.search(r"Epoch 0\b", resumed.stdout)
    # the resumed run starts its first epoch from the crashed run's weights and optimiser state, exactly
    start = _checkpoint(fold / "state_at_resume.pth")
    assert start["current_epoch"] == 1
    _assert_equal(start["network_weights"], saved["network_weights"], "network_weights")
    _assert_equal(start["optimizer_state"], saved["optimizer_state"], "optimizer_state")
    final = _checkpoint(fold / "checkpoint_final.pth")
    assert final["current_epoch"] == 2
    assert len(final["logging"]["train_losses"]) == 2  # epoch 0 from the crashed run, epoch 1 from the resumed one
    assert final["logging"]["train_losses"][0] == saved["logging"]["train_losses"][0]
    assert any(not torch.equal(final["network_weights"][k], v) for k, v in saved["network_weights"].items())


def _assert_equal(a, b, where):
    """Nested dicts, lists and tensors equal, value for value (tensors with torch.equal)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        same = a.dtype == b.dtype and torch.equal(a, b)
        assert same, where
    else:
        assert a == b, (where, a, b)
