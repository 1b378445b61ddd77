"""End to end through nnU-Net's own CLIs on real Hippocampus cases, on the CPU.

Plan and preprocess (conftest), train nnUNetTrainerRWKVSSS (smoke schedule) for 3d_fullres and
2d, predict unseen cases, evaluate them, crash a training and resume it with --c.
"""
import json
import math
import re
import textwrap

import pytest
import torch

SMOKE_TRAINER = "nnUNetTrainerRWKVSSS_smoke"  # trained by the hippocampus_rwkvsss_smoke fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _finite_dice(summary_file):
    summary = json.loads(summary_file.read_text())
    dice = summary["foreground_mean"]["Dice"]
    assert isinstance(dice, float) and math.isfinite(dice) and 0.0 <= dice <= 1.0, summary["foreground_mean"]
    return dice


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
    _finite_dice(fold / "validation" / "summary.json")


def test_predict_and_evaluate_unseen_cases(hippocampus_rwkvsss_smoke, tmp_path):
    ws = hippocampus_rwkvsss_smoke
    predictions = tmp_path / "predictions"
    ws.run("nnUNetv2_predict", "-i", str(ws.test_images), "-o", str(predictions), "-d", "4", "-c", "3d_fullres",
           "-tr", SMOKE_TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar")
    cases = sorted(p.name for p in ws.test_labels.glob("*.nii.gz"))
    assert sorted(p.name for p in predictions.glob("*.nii.gz")) == cases
    output = ws.results_folder(SMOKE_TRAINER, "3d_fullres")
    ws.run("nnUNetv2_evaluate_folder", str(ws.test_labels), str(predictions), "-djfile", str(output / "dataset.json"),
           "-pfile", str(output / "plans.json"), "-np", "1")
    _finite_dice(predictions / "summary.json")


def test_train_without_the_variable_names_it(hippocampus_subset):
    env = {k: v for k, v in hippocampus_subset.env.items() if k != "nnUNet_extTrainer"}
    result = hippocampus_subset.run("nnUNetv2_train", "4", "2d", "0", "-tr", "nnUNetTrainerRWKVSSS", "-device", "cpu",
                                    env=env, check=False, timeout=300)
    assert result.returncode != 0
    assert "nnUNet_extTrainer" in result.stderr and "environment variable" in result.stderr


CRASHING_TRAINER = textwrap.dedent('''
    """Test only: dies right after epoch 0's checkpoint_latest, unless it was resumed."""
    from nnunet_sss.training import nnUNetTrainerRWKVSSS_smoke


    class nnUNetTrainerRWKVSSS_smokeCrash(nnUNetTrainerRWKVSSS_smoke):
        def perform_actual_validation(self, save_probabilities=False):
            pass  # test_train_rwkvsss_with_nnunet_train covers validation; this test is about --c

        def on_train_start(self):
            super().on_train_start()
            self.resumed = self.current_epoch > 0

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
    assert _checkpoint(fold / "checkpoint_latest.pth")["current_epoch"] == 1
    assert not (fold / "checkpoint_final.pth").exists()

    resumed = ws.run("nnUNetv2_train", "4", "2d", "0", "-tr", trainer, "-device", "cpu", "--c", env=env)
    assert re.search(r"Epoch 1\b", resumed.stdout) and not re.search(r"Epoch 0\b", resumed.stdout)
    final = _checkpoint(fold / "checkpoint_final.pth")
    assert final["current_epoch"] == 2
    assert len(final["logging"]["train_losses"]) == 2  # epoch 0 from the crashed run, epoch 1 from the resumed one
    assert final["optimizer_state"]["param_groups"][0]["weight_decay"] > 0  # AdamW state carried over
    assert final["optimizer_state"]["state"]  # with its moments
