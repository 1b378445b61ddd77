"""Shared test fixtures: a small real nnU-Net workspace built from Dataset004_Hippocampus.

The cases come from the repository itself (tests/fixtures/Dataset004_Hippocampus, 7 real cases of
the Medical Segmentation Decathlon's Task04; source, licence and choice in tests/fixtures/README.md),
so the suite needs nothing beside the clone. Expensive set-up (nnU-Net planning and preprocessing, smoke trainings) runs at most once per
test session, lazily, and only for the tests that ask for it.
"""
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
HIPPOCAMPUS_RAW = FIXTURES / "Dataset004_Hippocampus"  # committed: 7 cases in nnU-Net raw format
HIPPOCAMPUS_NAME = "Dataset004_Hippocampus"
N_TRAIN_CASES = 5  # fold 0 of nnU-Net's 5-fold split: 4 training cases, 1 validation case
N_TEST_CASES = 2    # further cases, for nnUNetv2_predict + nnUNetv2_evaluate_folder
BIN = Path(sys.executable).parent  # the nnU-Net and nnunet-sss console scripts of this environment


@dataclass
class NnUNetWorkspace:
    """A temporary nnU-Net workspace: nnUNet_raw, nnUNet_preprocessed and nnUNet_results folders.

    root: the workspace folder; raw, preprocessed, results: the three nnU-Net folders.
    dataset_id / dataset_name: 4 / "Dataset004_Hippocampus".
    train_cases: case ids in raw/imagesTr (planned and preprocessed for 3d_fullres and 2d with
        nnU-Net's default plans, nnUNetPlans, whose splits_final.json is nnU-Net's own).
    test_images / test_labels: folders holding N_TEST_CASES further cases (`<id>_0000.nii.gz`
        images, `<id>.nii.gz` labels), never seen in training.
    env: the environment for nnU-Net's CLIs (the three folders, nnUNet_extTrainer pointing at
        the package's re-export folder, one process for data augmentation and for workers).
    """

    root: Path
    raw: Path
    preprocessed: Path
    results: Path
    train_cases: List[str]
    test_images: Path
    test_labels: Path
    dataset_id: int = 4
    dataset_name: str = HIPPOCAMPUS_NAME
    env: Dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def dataset_preprocessed(self) -> Path:
        return self.preprocessed / self.dataset_name

    def results_folder(self, trainer: str, configuration: str, plans: str = "nnUNetPlans") -> Path:
        """nnU-Net's output folder for one trainer/plans/configuration (holding fold_0, ...)."""
        return self.results / self.dataset_name / f"{trainer}__{plans}__{configuration}"

    def run(self, command: str, *args: str, env: Dict[str, str] = None, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run a console script of this environment (e.g. "nnUNetv2_train") in the workspace.
        With check=True a non-zero exit fails the test and shows the command's output tail."""
        result = subprocess.run([str(BIN / command), *args], cwd=self.root, env=env or self.env,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            pytest.fail(f"{command} {' '.join(args)} exited {result.returncode}\n"
                        f"--- stdout (tail) ---\n{result.stdout[-4000:]}\n--- stderr (tail) ---\n{result.stderr[-4000:]}")
        return result


def nnunet_env(root: Path, **extra: str) -> Dict[str, str]:
    """os.environ without any nnUNet_* variable, plus nnU-Net folders under `root`, the
    package's nnUNet_extTrainer and small worker counts; `extra` is added last."""
    from nnunet_sss.env import ext_trainer_folder

    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_raw=str(root / "nnUNet_raw"), nnUNet_preprocessed=str(root / "nnUNet_preprocessed"),
               nnUNet_results=str(root / "nnUNet_results"), nnUNet_extTrainer=ext_trainer_folder(),
               nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _link_cases(cases: List[str], images: Path, labels: Path) -> None:
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for case in cases:
        (images / f"{case}_0000.nii.gz").symlink_to(HIPPOCAMPUS_RAW / "imagesTr" / f"{case}_0000.nii.gz")
        (labels / f"{case}.nii.gz").symlink_to(HIPPOCAMPUS_RAW / "labelsTr" / f"{case}.nii.gz")


@pytest.fixture(scope="session")
def hippocampus_subset(tmp_path_factory) -> NnUNetWorkspace:
    """A planned and preprocessed workspace of N_TRAIN_CASES real Hippocampus cases (see
    NnUNetWorkspace). Built once per session with `nnUNetv2_plan_and_preprocess -d 4 -c
    3d_fullres 2d`; tests may add plans or results but must not change what is there."""
    root = tmp_path_factory.mktemp("nnunet_hippocampus")
    cases = sorted(p.name[: -len(".nii.gz")] for p in (HIPPOCAMPUS_RAW / "labelsTr").glob("*.nii.gz"))
    train, test = cases[:N_TRAIN_CASES], cases[N_TRAIN_CASES:N_TRAIN_CASES + N_TEST_CASES]
    raw = root / "nnUNet_raw" / HIPPOCAMPUS_NAME
    _link_cases(train, raw / "imagesTr", raw / "labelsTr")
    _link_cases(test, root / "test" / "images", root / "test" / "labels")
    dataset_json = json.loads((HIPPOCAMPUS_RAW / "dataset.json").read_text())
    dataset_json["numTraining"] = len(train)
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2))

    workspace = NnUNetWorkspace(root=root, raw=root / "nnUNet_raw", preprocessed=root / "nnUNet_preprocessed",
                                results=root / "nnUNet_results", train_cases=train,
                                test_images=root / "test" / "images", test_labels=root / "test" / "labels",
                                env=nnunet_env(root))
    workspace.run("nnUNetv2_plan_and_preprocess", "-d", "4", "-c", "3d_fullres", "2d", "-np", "1", "-npfp", "1",
                  timeout=300)
    return workspace


SMOKE_TRAINER = "nnUNetTrainerRWKVSSS_smoke"


@pytest.fixture(scope="session")
def hippocampus_rwkvsss_smoke(hippocampus_subset) -> NnUNetWorkspace:
    """hippocampus_subset after `nnUNetv2_train 4 <c> 0 -tr nnUNetTrainerRWKVSSS_smoke -device cpu`
    for c = 3d_fullres and 2d (2 epochs x 3 iterations, nnU-Net's final validation included).
    Returns the same NnUNetWorkspace; results in workspace.results_folder(SMOKE_TRAINER, c)."""
    for configuration in ("3d_fullres", "2d"):
        hippocampus_subset.run("nnUNetv2_train", "4", configuration, "0", "-tr", SMOKE_TRAINER, "-device", "cpu")
    return hippocampus_subset
