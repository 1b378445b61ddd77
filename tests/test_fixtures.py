"""The committed fixture (tests/fixtures/README.md) is what the suite and its README say it is."""
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HIPPOCAMPUS_RAW = FIXTURES / "Dataset004_Hippocampus"


def test_fixture_stays_under_one_megabyte():
    assert sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file()) < 1_000_000


def test_seven_real_cases_in_nnunet_raw_format():
    description = json.loads((HIPPOCAMPUS_RAW / "dataset.json").read_text())
    cases = sorted(p.name[: -len(".nii.gz")] for p in (HIPPOCAMPUS_RAW / "labelsTr").glob("*.nii.gz"))
    images = sorted(p.name for p in (HIPPOCAMPUS_RAW / "imagesTr").iterdir())
    assert len(cases) == description["numTraining"] == 7  # tests/conftest.py: 5 to train on, 2 unseen
    assert images == [f"{case}_0000.nii.gz" for case in cases]
    for case in cases:
        image = sitk.ReadImage(str(HIPPOCAMPUS_RAW / "imagesTr" / f"{case}_0000.nii.gz"))
        label = sitk.ReadImage(str(HIPPOCAMPUS_RAW / "labelsTr" / f"{case}.nii.gz"))
        assert image.GetSize() == label.GetSize() and image.GetSpacing() == label.GetSpacing() == (1.0, 1.0, 1.0)
        assert set(np.unique(sitk.GetArrayFromImage(label))) == set(description["labels"].values()) == {0, 1, 2}


def test_fingerprint_is_the_whole_datasets():
    fingerprint = json.loads((FIXTURES / "Dataset004_Hippocampus_fingerprint.json").read_text())
    assert len(fingerprint["spacings"]) == len(fingerprint["shapes_after_crop"]) == 260  # all of MSD Task04
