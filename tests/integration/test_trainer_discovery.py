"""nnU-Net finds the package's trainers through nnUNet_extTrainer; `nnunet-sss env` sets it up."""
import os
import pickle
import subprocess
import sys

import pytest
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from nnunet_sss import env as sss_env
from nnunet_sss.checks import NNUNET_FOLDERS, UsageError
from nnunet_sss.training import TRAINERS

BIN = os.path.dirname(sys.executable)


def test_ext_lookup_returns_the_package_classes(monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_extTrainer", sss_env.ext_trainer_folder())
    for name, cls in TRAINERS.items():
        found = recursive_find_trainer_class_by_name(name)
        assert found is cls, name  # the very class of nnunet_sss.training, not a copy from the ext folder
        assert found.__module__.startswith("nnunet_sss.training.")
        assert pickle.loads(pickle.dumps(found)) is cls
    # nnU-Net drops what it imported from the ext folder; the package's classes are unaffected
    assert "nnunet_sss_trainers" not in sys.modules
    assert recursive_find_trainer_class_by_name("nnUNetTrainerRWKVSSS") is TRAINERS["nnUNetTrainerRWKVSSS"]


def test_stock_trainers_still_resolve_with_the_variable_set(monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", sss_env.ext_trainer_folder())
    for name in ("nnUNetTrainer", "nnUNetTrainerNoMirroring", "nnUNetTrainer_5epochs"):
        found = recursive_find_trainer_class_by_name(name)
        assert found.__name__ == name and found.__module__.startswith("nnunetv2.training.nnUNetTrainer")


def test_lookup_without_the_variable_names_it(monkeypatch):
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    with pytest.raises(RuntimeError, match="nnUNet_extTrainer"):
        recursive_find_trainer_class_by_name("nnUNetTrainerRWKVSSS")
    with pytest.raises(UsageError, match="nnUNet_extTrainer is not set.*export nnUNet_extTrainer="):
        sss_env.require_ext_trainer({})


def test_ext_folder_holds_only_thin_reexports():
    folder = sss_env.ext_trainer_folder()
    modules = sorted(f for f in os.listdir(folder) if f.endswith(".py"))
    assert modules == ["__init__.py", "nnunet_sss_trainers.py"]
    text = open(os.path.join(folder, "nnunet_sss_trainers.py")).read()
    assert "class " not in text and "from nnunet_sss.training import *" in text


def _env_command(*args, **environ):
    """`nnunet-sss env ...` as a user runs it, in an environment without any nnU-Net variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(environ)
    return subprocess.run([os.path.join(BIN, "nnunet-sss"), "env", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_env_prints_only_the_export_line_and_eval_sets_it():
    result = _env_command()
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"export nnUNet_extTrainer={sss_env.ext_trainer_folder()}\n"
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    shell = subprocess.run(["bash", "-c", f'eval "$({BIN}/nnunet-sss env)" && echo "$nnUNet_extTrainer"'],
                           env=env, capture_output=True, text=True, timeout=300)
    assert shell.stdout.strip() == sss_env.ext_trainer_folder()


def test_env_check_fails_naming_the_variable_when_unset_or_elsewhere(tmp_path):
    folders = {variable: str(tmp_path) for variable in NNUNET_FOLDERS}
    for environ in ({}, {"nnUNet_extTrainer": str(tmp_path)}):
        result = _env_command("--check", **environ, **folders)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and "nnUNet_extTrainer" in result.stderr
        assert f"export nnUNet_extTrainer={sss_env.ext_trainer_folder()}" in result.stderr
    ok = _env_command("--check", nnUNet_extTrainer=os.pathsep.join([str(tmp_path), sss_env.ext_trainer_folder()]),
                      **folders)
    assert ok.returncode == 0, ok.stderr
    # the three folders too: one line for each that is unset or not a folder
    result = _env_command("--check", nnUNet_extTrainer=sss_env.ext_trainer_folder(), nnUNet_raw=str(tmp_path / "x"))
    assert result.returncode == 1
    assert [line.split(":")[1].split()[0] for line in result.stderr.splitlines()] == \
        [f"nnUNet_raw={tmp_path / 'x'}", "nnUNet_preprocessed", "nnUNet_results"], result.stderr


def test_export_line_keeps_other_trainer_folders(tmp_path):
    ours = sss_env.ext_trainer_folder()
    assert sss_env.export_value({"nnUNet_extTrainer": str(tmp_path)}) == os.pathsep.join([ours, str(tmp_path)])
    both = os.pathsep.join([str(tmp_path), ours])
    assert sss_env.export_value({"nnUNet_extTrainer": both}) == both  # already listed: unchanged
    assert sss_env.problem({"nnUNet_extTrainer": both}) is None
    spaced = tmp_path / "a folder"
    assert sss_env.export_line({"nnUNet_extTrainer": str(spaced)}).endswith(f"'{ours}{os.pathsep}{spaced}'")


def test_tools_find_and_build_a_trainer_network_as_nnunet_does(monkeypatch):
    """The one lookup the tools share: this package's classes without a search, nnU-Net's own by
    its search, a missing name as nnU-Net's RuntimeError; the network the trainer builds from plans."""
    from nnunet_sss.network.unet import RWKVSSSUNet
    from nnunet_sss.training.lookup import build_network, find_trainer_class

    from .handwritten_plans import handwritten_plans

    monkeypatch.setenv("nnUNet_extTrainer", sss_env.ext_trainer_folder())
    assert find_trainer_class("nnUNetTrainerRWKVSSS") is TRAINERS["nnUNetTrainerRWKVSSS"]
    assert find_trainer_class("nnUNetTrainer").__module__.startswith("nnunetv2.training.nnUNetTrainer")
    with pytest.raises(RuntimeError):
        find_trainer_class("nnUNetTrainerDoesNotExist")
    dataset_json = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2},
                    "file_ending": ".nii.gz", "numTraining": 1}
    for configuration, deep in (("2d", False), ("3d_fullres", True)):
        network, shape, batch = build_network(TRAINERS["nnUNetTrainerRWKVSSS"], handwritten_plans(), configuration,
                                              dataset_json, deep)
        conf = handwritten_plans()["configurations"][configuration]
        assert isinstance(network, RWKVSSSUNet) and network.decoder.deep_supervision is deep
        assert shape == (1, *conf["patch_size"]) and batch == conf["batch_size"]
