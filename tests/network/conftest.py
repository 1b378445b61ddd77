"""Fixtures for the network tests: nnU-Net's Hippocampus plans (helpers: network_cases.py)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"  # committed: see tests/fixtures/README.md
HIPPOCAMPUS_RAW = FIXTURES / "Dataset004_Hippocampus"
HIPPOCAMPUS_FINGERPRINT = FIXTURES / "Dataset004_Hippocampus_fingerprint.json"


@pytest.fixture(scope="session")
def hippocampus_plans(tmp_path_factory):
    """The plans nnU-Net 2.8 writes for the whole Dataset004_Hippocampus (all 260 cases).

    nnU-Net's own planner (plan_experiments, the default ExperimentPlanner) runs here, in a
    fresh process, on the whole dataset's fingerprint as nnU-Net's fingerprint extraction wrote
    it (committed beside the fixture) and on the committed 7-case raw folder, which gives the
    planner its dataset.json and an example image. The planner caps the batch size by the
    dataset's size, read from dataset.json's numTraining, so that is set to the number of cases
    the fingerprint describes: the plans are then exactly those planned on all 260 cases
    (3d_fullres: patch 40x56x40, 4 stages, batch 9; 2d: patch 56x40, 4 stages, batch 366).
    """
    fingerprint = json.loads(HIPPOCAMPUS_FINGERPRINT.read_text())
    root = tmp_path_factory.mktemp("nnunet")
    raw, pre = root / "raw" / "Dataset004_Hippocampus", root / "preprocessed" / "Dataset004_Hippocampus"
    raw.mkdir(parents=True)
    pre.mkdir(parents=True)
    for folder in ("imagesTr", "labelsTr"):
        (raw / folder).symlink_to(HIPPOCAMPUS_RAW / folder, target_is_directory=True)
    dataset_json = json.loads((HIPPOCAMPUS_RAW / "dataset.json").read_text())
    dataset_json["numTraining"] = len(fingerprint["shapes_after_crop"])
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    shutil.copy(HIPPOCAMPUS_FINGERPRINT, pre / "dataset_fingerprint.json")
    # nnunetv2.paths reads the variables at import time: plan in a fresh process
    env = dict(os.environ, nnUNet_raw=str(raw.parent), nnUNet_preprocessed=str(pre.parent),
               nnUNet_results=str(root / "results"))
    code = ("from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiments\n"
            "if __name__ == '__main__':\n"
            "    plan_experiments([4])\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"nnU-Net planning failed:\n{proc.stderr[-3000:]}")
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    shutil.rmtree(root, ignore_errors=True)
    return plans


@pytest.fixture(autouse=True)
def one_thread():
    """The network tests use tiny tensors: one intra-op thread is faster than two on the shared
    2-core CI machine (no OpenMP spin contention), and results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
