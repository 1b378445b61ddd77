"""The memory-target planner (`nnunet-sss plans --gpu-memory-target`, plans/planner.py): plans that
fit the GPU they are written for and grow with it, and one-line refusals of what it cannot plan.

The datasets are known by their fingerprints alone (phantom.write_fingerprinted_dataset): the
planner reads nothing else of them."""
import json
import math
import os
import re
from unittest import mock

import pytest

from nnunet_sss.cli import main
from nnunet_sss.phantom import write_fingerprinted_dataset
from nnunet_sss.plans import RWKVSSS_CLASS_NAME, preset_options, rwkvsss_options
from nnunet_sss.plans.memory import usable_bytes
from nnunet_sss.plans.planner import architecture_cost
from nnunet_sss.plans.writer import write_gpu_memory_plans

from .handwritten_plans import handwritten_plans

LARGE = 902  # 301 images of about 96x128x96 at 1 mm: below ~16 GB the memory limits the 3d patch
SMALL = 903  # median image 16x24x16: its search reaches the smallest patch quickly
UNPLANNED = 904  # in nnUNet_preprocessed, not fingerprinted
TARGETS = (4, 8, 16)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory_planner")
    folders = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed")}
    for dataset_id, name, shape, cases in ((LARGE, "Large", (96, 128, 96), 301), (SMALL, "Small", (16, 24, 16), 51)):
        write_fingerprinted_dataset(folders["nnUNet_raw"], folders["nnUNet_preprocessed"], dataset_id, name, shape,
                                    (1.0, 1.0, 1.0), num_train=cases)
    os.makedirs(os.path.join(folders["nnUNet_preprocessed"], f"Dataset{UNPLANNED}_Unplanned"))
    return folders


@pytest.fixture(scope="module")
def sized_plans(folders):
    """Plans of the large dataset for each GPU size in TARGETS."""
    with mock.patch.dict(os.environ, folders):
        return {gb: json.load(open(write_gpu_memory_plans(str(LARGE), gb))) for gb in TARGETS}


@pytest.fixture
def nnunet_folders(folders, monkeypatch):
    for key, value in folders.items():
        monkeypatch.setenv(key, value)
    return folders


def _plans_command(capsys, *args):
    """`nnunet-sss plans ARGS` in this process: (exit status, stdout, stderr)."""
    status = main(["plans", *args])
    out, err = capsys.readouterr()
    return status, out, err


def _refused(capsys, *args) -> str:
    """The one line on stderr of a refused `nnunet-sss plans ARGS` (exit status 2, no traceback)."""
    status, out, err = _plans_command(capsys, *args)
    assert status == 2 and out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnunet-sss plans: "), err
    return lines[0]


def test_more_gpu_memory_never_plans_less(sized_plans):
    """patch x batch grows with the GPU in every configuration; in 3d the patch itself does,
    where the median image does not fit a small GPU."""
    for configuration in ("2d", "3d_fullres"):
        voxels = [math.prod(sized_plans[gb]["configurations"][configuration]["patch_size"]) *
                  sized_plans[gb]["configurations"][configuration]["batch_size"] for gb in TARGETS]
        assert voxels[0] < voxels[1] < voxels[2], (configuration, voxels)
    patches = [sized_plans[gb]["configurations"]["3d_fullres"]["patch_size"] for gb in TARGETS]
    assert all(a <= b for small, large in zip(patches, patches[1:]) for a, b in zip(small, large)), patches
    assert patches[0] != patches[-1]
    assert patches[-1] == [96, 128, 96]  # 16 GB: the whole median image


def test_where_the_dataset_caps_the_plans_more_memory_changes_nothing(nnunet_folders):
    """The small dataset's median image fits 4 GB with room to spare, and nnU-Net's cap (5% of the
    dataset's voxels in one batch) holds the batch: 4, 8 and 16 GB plan alike, never less."""
    plans = [json.load(open(write_gpu_memory_plans(str(SMALL), gb, plans_name=f"small{gb}GB")))["configurations"]
             for gb in TARGETS]
    for configuration in ("2d", "3d_fullres"):
        sizes = [(conf[configuration]["patch_size"], conf[configuration]["batch_size"]) for conf in plans]
        assert sizes[0] == sizes[1] == sizes[2], (configuration, sizes)
    assert plans[0]["3d_fullres"]["patch_size"] == [16, 24, 16]


def test_plans_fit_their_gpu_with_the_largest_batch(sized_plans):
    """Each configuration's estimated training memory fits the target's usable memory, and one
    more sample would not; the plans build RWKV-SSS with the preset's options and reuse nnU-Net's
    preprocessed data for 2d and 3d_fullres."""
    for gb, plans in sized_plans.items():
        assert plans["plans_name"] == f"nnUNetRWKVSSSPlans_S_{gb}GB"
        for name, conf in plans["configurations"].items():
            arch = conf["architecture"]
            options = json.loads(json.dumps(preset_options(n_dims=len(conf["patch_size"]))))  # 2d: its own setting
            assert arch["network_class_name"] == RWKVSSS_CLASS_NAME and rwkvsss_options(arch) == options
            assert conf["data_identifier"] == f"nnUNetPlans_{name}"
            cost = architecture_cost(arch, {}, conf["patch_size"], 1, 3)
            assert cost.at(conf["batch_size"]) <= usable_bytes(gb) < cost.at(conf["batch_size"] + 1), (gb, name)


def test_memory_presets_name_the_gpu_and_the_target_wins(nnunet_folders, capsys):
    """--preset M|L|XL is the GPU (8 / 24 / 40 GB, as nnU-Net's ResEnc presets), --size the network;
    the output says which is which."""
    status, out, err = _plans_command(capsys, "-d", str(SMALL), "--preset", "M", "--set", "hidden_ratio=1")
    assert status == 0
    path = out.strip()
    assert path.endswith("nnUNetRWKVSSSPlans_S_8GB.json")
    options = rwkvsss_options(json.load(open(path))["configurations"]["3d_fullres"]["architecture"])
    assert options == {**json.loads(json.dumps(preset_options("S"))), "hidden_ratio": 1}
    assert "sized for 8 GB of GPU memory (--preset M), network size S (--size)" in err
    assert re.search(r"3d_fullres: patch 16x24x16, batch \d+, \d stages: estimated to need [\d.]+ of 8 GB", err)
    for preset, gb in (("L", 24), ("XL", 40)):
        status, out, _ = _plans_command(capsys, "-d", str(SMALL), "--preset", preset, "--size", "L")
        assert status == 0 and out.strip().endswith(f"nnUNetRWKVSSSPlans_L_{gb}GB.json")
    status, out, err = _plans_command(capsys, "-d", str(SMALL), "--preset", "L", "--gpu-memory-target", "10",
                                      "--size", "M")
    assert status == 0 and out.strip().endswith("nnUNetRWKVSSSPlans_M_10GB.json")
    assert "sized for 10 GB of GPU memory, network size M (--size)" in err
    options = rwkvsss_options(json.load(open(out.strip()))["configurations"]["3d_fullres"]["architecture"])
    assert options == json.loads(json.dumps(preset_options("M")))


def test_a_gpu_below_the_smallest_patch_is_refused_naming_the_minimum(nnunet_folders, capsys):
    line = _refused(capsys, "-d", str(SMALL), "--gpu-memory-target", "0.3")
    minimum = float(re.search(r"needs for its smallest valid 3D patch \([\dx]+, batch 2\): ([\d.]+) GB", line)[1])
    assert minimum > 0.3
    _refused(capsys, "-d", str(SMALL), "--gpu-memory-target", f"{minimum - 0.1:g}", "-o", "tooSmall")
    status, _, _ = _plans_command(capsys, "-d", str(SMALL), "--gpu-memory-target", f"{minimum:g}", "-o", "justEnough")
    assert status == 0


def test_a_dataset_nnunet_has_not_planned_is_refused_naming_the_command(nnunet_folders, capsys):
    for dataset in (UNPLANNED, 905):  # not fingerprinted; not in nnUNet_preprocessed at all
        line = _refused(capsys, "-d", str(dataset), "--gpu-memory-target", "8")
        assert f"nnUNetv2_plan_and_preprocess -d {dataset}" in line


def test_existing_plans_are_refused_without_overwrite_and_left_unchanged(nnunet_folders, capsys):
    folder = os.path.join(nnunet_folders["nnUNet_preprocessed"], f"Dataset{SMALL:03d}_Small")
    path = os.path.join(folder, "taken.json")
    with open(path, "w") as f:
        f.write("{}")
    before = os.stat(path).st_mtime_ns
    assert "taken.json exists: pass --overwrite" in _refused(capsys, "-d", str(SMALL), "--gpu-memory-target", "8",
                                                             "-o", "taken")
    with open(os.path.join(folder, "nnUNetPlans.json"), "w") as f:  # the conversion of existing plans too
        json.dump(handwritten_plans(), f)
    assert "exists" in _refused(capsys, "-d", str(SMALL), "-o", "taken")
    assert open(path).read() == "{}" and os.stat(path).st_mtime_ns == before
    assert "nnU-Net's own plans" in _refused(capsys, "-d", str(SMALL), "--gpu-memory-target", "8", "-o", "nnUNetPlans")
    assert _plans_command(capsys, "-d", str(SMALL), "--gpu-memory-target", "8", "-o", "taken", "--overwrite")[0] == 0
    assert json.load(open(path))["plans_name"] == "taken"


def test_source_plans_with_a_memory_target_and_options_the_network_refuses_are_refused(nnunet_folders, capsys):
    assert "give one or the other" in _refused(capsys, "-d", str(SMALL), "-p", "nnUNetPlans", "--preset", "M")
    assert "--set scan=\"zigzag\": the network refuses it" in _refused(
        capsys, "-d", str(SMALL), "--preset", "M", "--set", "scan=zigzag", "-o", "zigzag")
