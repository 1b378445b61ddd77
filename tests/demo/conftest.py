"""One run of the main job in its smallest form, shared by the demo and compare tests.

`nnunet-sss demo --budget tiny` runs nnU-Net's real command lines end to end (phantom dataset,
plan and preprocess, both trainers on fold 0, find_best_configuration's ensemble, test-set
prediction, evaluation and ensemble, and the comparison report), so the compare tests check
the report against summary.json files that nnU-Net itself wrote.
"""
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SUFFIX = "smoke"   # the schedule the tiny budget uses
TRAINERS = (f"nnUNetTrainer_{SUFFIX}", f"nnUNetTrainerRWKVSSS_{SUFFIX}")
DATASET = "Dataset990_Phantom"
CONFIGURATION = "3d_fullres"


@dataclass
class DemoRun:
    root: Path
    stdout: str

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def model_folder(self, trainer: str) -> Path:
        return self.results / DATASET / f"{trainer}__nnUNetPlans__{CONFIGURATION}"

    def trained_parameters(self, trainer: str) -> int:
        """Parameters of the network nnU-Net trained and saved (fold 0's checkpoint_final.pth),
        each counted once: a conv block of dynamic_network_architectures holds its modules
        twice, so the state dict names some tensors twice."""
        import torch

        checkpoint = torch.load(self.model_folder(trainer) / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                                weights_only=False)
        return sum({t.untyped_storage().data_ptr(): t.numel() for t in checkpoint["network_weights"].values()}.values())


def clean_env() -> dict:
    """os.environ without nnU-Net variables (the demo sets its own) and with one data-augmentation worker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_n_proc_DA="1", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRun:
    root = tmp_path_factory.mktemp("demo") / "work"
    proc = subprocess.run([str(BIN / "nnunet-sss"), "demo", "-o", str(root), "--budget", "tiny"],
                          capture_output=True, text=True, env=clean_env(), timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"nnunet-sss demo --budget tiny exited {proc.returncode}\n--- stdout ---\n"
                    f"{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return DemoRun(root=root, stdout=proc.stdout)
