"""`nnunet-sss attention` through the console script: maps for a tiny model, and each bad input
stopped with a one-line error (exit 2, no traceback) before anything is written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnunet_sss.env import ext_trainer_folder

from .tiny_models import DATASET, IMAGE_SHAPE, snapshot, write_image, write_model

BIN = Path(sys.executable).parent
RWKV, NO_RWKV = "nnUNetTrainerRWKVSSS", "nnUNetTrainerRWKVSSS_noRWKV"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention")
    results = root / "nnUNet_results"
    for trainer, configuration in ((RWKV, "3d_fullres"), (RWKV, "2d"), (NO_RWKV, "3d_fullres")):
        write_model(results, trainer, configuration)
    write_image(root / "case_0000.nii.gz")
    write_image(root / "case_0001.nii.gz", seed=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(results), nnUNet_extTrainer=ext_trainer_folder(), nnUNet_def_n_proc="1")
    return root, results, env


def _attention(workspace, *args, configuration="3d_fullres", trainer=RWKV):
    root, results, env = workspace
    before = snapshot(results)
    proc = subprocess.run([str(BIN / "nnunet-sss"), "attention", "-d", "4", "-c", configuration, "-tr", trainer,
                           *args], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert snapshot(results) == before, "something was written into the model folder"
    return proc


def _npz(folder, name):
    with np.load(folder / name) as f:
        return {k: f[k] for k in f.files}


def test_3d_maps_per_layer_and_figures_per_stage(workspace):
    root = workspace[0]
    out = root / "out3d"
    proc = _attention(workspace, "-f", "0", "-i", "case_0000.nii.gz", "--at", "7,20,5", "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "attention.json").read_text())
    assert report["voxel"] == [7, 20, 5] and report["voxel_from"] == "--at"
    assert sorted(report["figures"]) == ["stage0.png", "stage1.png", "stage2.png"]
    assert [(l["stage"], l["kind"]) for l in report["layers"]] == [(s, k) for s in range(3) for k in ("global", "local")]
    for layer in report["layers"]:
        stem = f"stage{layer['stage']}_block{layer['block']}_{layer['kind']}"
        assert layer["files"] == [stem + ".npz", stem + ".nii.gz"]
        maps = _npz(out, stem + ".npz")
        assert maps["image"].shape == IMAGE_SHAPE and maps["image_partition"][7, 20, 5]
        assert maps["image"][7, 20, 5] > 0 and np.all(maps["image"][~maps["image_partition"]] == 0)
        assert abs(maps["weights"].sum() - 1) < 1e-6 and np.all(maps["weights"][~maps["partition"]] == 0)
        assert (out / (stem + ".nii.gz")).stat().st_size > 0
    for figure in report["figures"]:
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_2d_configuration_default_voxel(workspace):
    root = workspace[0]
    out = root / "out2d"
    proc = _attention(workspace, "-i", "case_0000.nii.gz", "-o", str(out), configuration="2d")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "attention.json").read_text())
    assert report["voxel_from"].startswith(("the voxel of label", "the model predicts no foreground"))
    z = report["voxel"][0]
    for layer in report["layers"]:
        maps = _npz(out, f"stage{layer['stage']}_block{layer['block']}_{layer['kind']}.npz")
        # a 2d model sees one slice: the map lives in the voxel's slice only
        assert maps["image_partition"][z].any() and not np.delete(maps["image_partition"], z, axis=0).any()


@pytest.mark.parametrize("args, trainer, message", [
    (["-i", "case_0000.nii.gz", "--at", "20,0,0"], RWKV, "voxel (20, 0, 0) is outside the image of shape (20, 30, 18)"),
    (["-i", "case_0000.nii.gz", "--at", "3,4"], RWKV, "gives Y,X but the image is 3D"),
    (["-i", "case_0000.nii.gz"], NO_RWKV, "has no Bi-WKV layer"),
    (["-i", "case_0000.nii.gz", "-f", "1"], RWKV, "fold 1 has no checkpoint"),
    (["-i", "case_0000.nii.gz", "case_0001.nii.gz"], RWKV, "the image has 2 channel file(s), the dataset has 1"),
    (["-i", "missing_0000.nii.gz"], RWKV, "image file missing_0000.nii.gz does not exist"),
])
def test_bad_input_is_one_named_line_before_any_work(workspace, args, trainer, message):
    root = workspace[0]
    out = root / "never"
    proc = _attention(workspace, *args, "-o", str(out), trainer=trainer)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("nnunet-sss attention: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert not out.exists()


def test_output_inside_the_model_folder_is_refused(workspace):
    root, results = workspace[:2]
    inside = results / DATASET / f"{RWKV}__nnUNetPlans__3d_fullres" / "maps"
    proc = _attention(workspace, "-i", "case_0000.nii.gz", "--at", "1,1,1", "-o", str(inside))
    assert proc.returncode == 2 and "inside the model folder" in proc.stderr
