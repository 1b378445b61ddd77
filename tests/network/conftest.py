"""Fixtures for the network tests: nnU-Net's Hippocampus plans (helpers: network_cases.py)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
HIPPOCAMPUS = (REPO / ".." / "shared" / "data" / "Dataset004_Hippocampus").resolve()


@pytest.fixture(scope="session")
def hippocampus_plans(tmp_path_factory):
    """The plans nnU-Net 2.8 writes for Dataset004_Hippocampus (fingerprint + default planner)."""
    if not (HIPPOCAMPUS / "dataset.json").is_file():
        raise FileNotFoundError(f"the Hippocampus dataset is missing at {HIPPOCAMPUS}")
    root = tmp_path_factory.mktemp("nnunet")
    raw, pre = root / "raw", root / "preprocessed"
    raw.mkdir()
    pre.mkdir()
    (raw / "Dataset004_Hippocampus").symlink_to(HIPPOCAMPUS)
    # nnunetv2.paths reads the variables at import time: plan in a fresh process
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(root / "results"))
    code = ("from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments\n"
            "if __name__ == '__main__':\n"
            "    extract_fingerprints([4], num_processes=2, check_dataset_integrity=False, clean=True, verbose=False)\n"
            "    plan_experiments([4])\n")
    script = root / "plan.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nnU-Net planning failed:\n{proc.stderr[-3000:]}")
    plans = json.loads((pre / "Dataset004_Hippocampus" / "nnUNetPlans.json").read_text())
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
