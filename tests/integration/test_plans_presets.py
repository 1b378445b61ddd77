"""plans/: presets, the architecture conversion and the plans writer."""
import argparse
import json

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

import nnunet_sss
from nnunet_sss.checks import UsageError
from nnunet_sss.cli import main
from nnunet_sss.plans import (NETWORK_DEFAULTS, PRESETS, RWKVSSS_CLASS_NAME, preset_options, preset_options_for,
                              rwkvsss_architecture, rwkvsss_options)
from nnunet_sss.plans import writer
from nnunet_sss.plans.architecture import SHARED_KWARGS
from nnunet_sss.training import nnUNetTrainerRWKVSSS, nnUNetTrainerRWKVSSS_rasterScan

from .handwritten_plans import handwritten_plans, plain_architecture, resenc_architecture


def test_presets_state_every_option_and_differ():
    for name, options in PRESETS.items():
        assert set(options) == set(NETWORK_DEFAULTS), name
    assert dict(PRESETS["S"]) == dict(NETWORK_DEFAULTS)
    assert len({json.dumps(dict(o), sort_keys=True) for o in PRESETS.values()}) == len(PRESETS)
    assert preset_options("M", scan="raster")["scan"] == "raster"
    with pytest.raises(ValueError, match="XL"):
        preset_options("XL")
    with pytest.raises(ValueError, match="windoww"):
        preset_options("S", windoww=3)


def test_the_default_preset_takes_its_measured_setting_per_dimensionality():
    """Only the default preset depends on 2d/3d, the user's overrides win over it, and a
    dimensionality other than 2 or 3 is refused by name."""
    assert preset_options(n_dims=3) == preset_options() == dict(PRESETS["S"])
    assert preset_options(n_dims=2) == {**PRESETS["S"], "rwkv_first_stage": 1, "hidden_ratio": 1}
    assert preset_options(n_dims=2, hidden_ratio=2)["hidden_ratio"] == 2
    assert preset_options("M", n_dims=2) == preset_options("M", n_dims=3) == dict(PRESETS["M"])
    with pytest.raises(ValueError, match="n_dims must be 2 or 3"):
        preset_options(n_dims=4)
    with pytest.raises(ValueError, match="cannot tell whether it is 2d or 3d"):
        preset_options_for({"network_class_name": "X", "arch_kwargs": {}})
    assert preset_options_for(plain_architecture(2, [(1, 1), (2, 2)])) == preset_options(n_dims=2)


def test_network_defaults_are_the_networks_own(rwkvsss_network):
    """Every keyword-only option of RWKVSSSUNet, with its default: plans state the whole network."""
    import inspect

    options = {name: p.default for name, p in inspect.signature(rwkvsss_network).parameters.items()
               if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert options == dict(NETWORK_DEFAULTS)


def test_plain_architecture_keeps_layout_and_adds_options():
    source = plain_architecture(3, [(1, 1, 1), (1, 2, 2), (2, 2, 2)])
    arch = rwkvsss_architecture(source, preset_options("L"))
    assert arch["network_class_name"] == RWKVSSS_CLASS_NAME
    kwargs = arch["arch_kwargs"]
    for key in source["arch_kwargs"]:
        assert kwargs[key] == source["arch_kwargs"][key], key
    assert rwkvsss_options(arch) == json.loads(json.dumps(preset_options("L")))
    assert list(kwargs)[: len(source["arch_kwargs"])] == [k for k in SHARED_KWARGS if k in kwargs]
    assert arch["_kw_requires_import"] == source["_kw_requires_import"]
    assert json.loads(json.dumps(arch)) == arch  # what is built in memory equals what plans files hold


def test_resenc_architecture_maps_encoder_depth():
    source = resenc_architecture(3, [(1, 1, 1), (2, 2, 2), (2, 2, 2)])
    kwargs = rwkvsss_architecture(source, preset_options())["arch_kwargs"]
    assert kwargs["n_conv_per_stage"] == source["arch_kwargs"]["n_blocks_per_stage"]
    assert "n_blocks_per_stage" not in kwargs


def test_rwkvsss_architecture_keeps_its_options_under_new_ones():
    first = rwkvsss_architecture(plain_architecture(2, [(1, 1), (2, 2)]), preset_options("M"))
    again = rwkvsss_architecture(first, {"scan": "raster"})
    assert rwkvsss_options(again) == {**rwkvsss_options(first), "scan": "raster"}


def test_unknown_architecture_is_refused_by_name():
    source = plain_architecture(2, [(1, 1), (2, 2)])
    source["network_class_name"] = "somewhere.Primus"
    source["arch_kwargs"]["embed_dim"] = 864
    with pytest.raises(ValueError, match="embed_dim"):
        rwkvsss_architecture(source, {})
    with pytest.raises(ValueError, match="wkv_pol"):
        rwkvsss_architecture(plain_architecture(2, [(1, 1), (2, 2)]), {"wkv_pol": (1,)})


def _dataset_json(workspace):
    return json.loads((workspace.dataset_preprocessed / "dataset.json").read_text())


def test_plans_command_writes_rwkvsss_plans_that_reuse_preprocessed_data(hippocampus_subset, rwkvsss_network,
                                                                         monkeypatch, tmp_path):
    folder = hippocampus_subset.dataset_preprocessed
    monkeypatch.setenv("nnUNet_preprocessed", str(hippocampus_subset.preprocessed))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    parser = argparse.ArgumentParser()
    writer.register(parser.add_subparsers())
    args = parser.parse_args(["plans", "-d", "4", "--size", "M", "--set", "global_window=16",
                              "--set", "wkv_pool=[1]", "-o", "nnUNetPlans_test_M"])
    assert args.func(args) == 0

    source = json.loads((folder / "nnUNetPlans.json").read_text())
    plans = json.loads((folder / "nnUNetPlans_test_M.json").read_text())
    assert plans["plans_name"] == "nnUNetPlans_test_M"
    expected_options = {**json.loads(json.dumps(preset_options("M"))), "global_window": 16, "wkv_pool": [1]}
    for name, conf in plans["configurations"].items():
        src = source["configurations"][name]
        assert conf["data_identifier"] == src["data_identifier"]  # same preprocessed folder: no re-preprocessing
        assert (folder / conf["data_identifier"]).is_dir()
        arch = conf["architecture"]
        assert arch["network_class_name"] == RWKVSSS_CLASS_NAME
        assert rwkvsss_options(arch) == expected_options  # every option stated
        assert {k: arch["arch_kwargs"][k] for k in src["architecture"]["arch_kwargs"]} == \
            src["architecture"]["arch_kwargs"]
        assert {k: v for k, v in conf.items() if k != "architecture"} == \
            {k: v for k, v in src.items() if k != "architecture"}

    # The stock trainer builds RWKV-SSS from these plans, and finds their preprocessed data.
    plans["continue_training"] = False
    trainer = nnUNetTrainer(plans, "2d", 0, _dataset_json(hippocampus_subset), device=torch.device("cpu"))
    assert trainer.preprocessed_dataset_folder == str(folder / "nnUNetPlans_2d")
    network = nnUNetTrainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 3,
                                                       True)
    assert type(network) is rwkvsss_network
    # RWKV-SSS trainers keep the plans' options; an ablation changes only its own.
    conf = PlansManager(plans).get_configuration("3d_fullres")
    assert rwkvsss_options(nnUNetTrainerRWKVSSS.network_architecture(conf)) == expected_options
    assert rwkvsss_options(nnUNetTrainerRWKVSSS_rasterScan.network_architecture(conf)) == \
        {**expected_options, "scan": "raster"}


def test_size_flag_and_the_old_preset_s_spelling(tmp_path, monkeypatch, capsys):
    """--size names the network size. --preset S, its spelling before --preset named the GPU memory,
    still writes the same plans under the same name (the names scripts use), with a one-line note."""
    folder = tmp_path / "Dataset004_Hippocampus"
    folder.mkdir()
    (folder / "nnUNetPlans.json").write_text(json.dumps(handwritten_plans()))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    path = folder / "nnUNetPlans_RWKVSSS_S.json"
    assert main(["plans", "-d", "4"]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    default = path.read_bytes()
    assert rwkvsss_options(json.loads(default)["configurations"]["3d_fullres"]["architecture"]) == \
        json.loads(json.dumps(preset_options("S")))
    note = ("nnunet-sss plans: --preset S is deprecated and taken as --size S; --preset now names the GPU memory "
            "(M|L|XL)")
    for args in (["--size", "S"], ["--preset", "S"], ["--preset", "S", "--size", "S"]):
        assert main(["plans", "-d", "4", *args, "--overwrite"]) == 0, args
        out, err = capsys.readouterr()
        assert out.strip() == str(path) and path.read_bytes() == default, args
        assert [line for line in err.splitlines() if "deprecated" in line] == ([note] if "--preset" in args else [])
    assert main(["plans", "-d", "4", "--size", "L"]) == 0
    plans = json.loads((folder / "nnUNetPlans_RWKVSSS_L.json").read_text())
    assert rwkvsss_options(plans["configurations"]["3d_fullres"]["architecture"]) == \
        json.loads(json.dumps(preset_options("L")))


def test_default_size_writes_each_configurations_measured_setting(tmp_path, monkeypatch, capsys):
    """`nnunet-sss plans -d 4`: 2d gets the default preset's measured 2d setting, 3d the design's
    defaults; --set wins over both, so the design's defaults stay one command away in 2d; a size
    other than the default is the same in 2d and 3d."""
    folder = tmp_path / "Dataset004_Hippocampus"
    folder.mkdir()
    (folder / "nnUNetPlans.json").write_text(json.dumps(handwritten_plans()))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))

    def options(name, configuration):
        plans = json.loads((folder / f"{name}.json").read_text())
        return rwkvsss_options(plans["configurations"][configuration]["architecture"])

    assert main(["plans", "-d", "4"]) == 0
    assert (options("nnUNetPlans_RWKVSSS_S", "2d")["rwkv_first_stage"],
            options("nnUNetPlans_RWKVSSS_S", "2d")["hidden_ratio"]) == (1, 1)
    for configuration in ("3d_fullres", "3d_lowres", "3d_resenc"):
        assert options("nnUNetPlans_RWKVSSS_S", configuration) == json.loads(json.dumps(dict(PRESETS["S"])))
    assert main(["plans", "-d", "4", "-o", "design", "--set", "rwkv_first_stage=0", "--set", "hidden_ratio=2"]) == 0
    assert options("design", "2d") == options("design", "3d_fullres") == json.loads(json.dumps(dict(PRESETS["S"])))
    assert main(["plans", "-d", "4", "--size", "M"]) == 0
    assert options("nnUNetPlans_RWKVSSS_M", "2d") == options("nnUNetPlans_RWKVSSS_M", "3d_fullres")
    capsys.readouterr()


def test_plans_writer_refuses_missing_plans_and_overwriting(tmp_path):
    (tmp_path / "Dataset004_Hippocampus").mkdir()
    with pytest.raises(UsageError, match="nnUNetv2_plan_and_preprocess"):
        writer.write_rwkvsss_plans("4", preprocessed_folder=str(tmp_path))
    (tmp_path / "Dataset004_Hippocampus" / "nnUNetPlans.json").write_text(json.dumps(handwritten_plans()))
    with pytest.raises(UsageError, match="overwrite"):
        writer.write_rwkvsss_plans("4", plans_name="nnUNetPlans", preprocessed_folder=str(tmp_path))
    with pytest.raises(UsageError, match="unknown scan 'zigzag'"):  # refused before anything is written
        writer.write_rwkvsss_plans("4", overrides={"scan": "zigzag"}, preprocessed_folder=str(tmp_path))
    assert sorted(p.name for p in (tmp_path / "Dataset004_Hippocampus").iterdir()) == ["nnUNetPlans.json"]
    path = writer.write_rwkvsss_plans("Dataset004_Hippocampus", size="L", preprocessed_folder=str(tmp_path))
    plans = json.loads(open(path).read())
    assert path.endswith("nnUNetPlans_RWKVSSS_L.json")
    # the cascade inherits its architecture from 3d_fullres, so it is RWKV-SSS too
    assert "architecture" not in plans["configurations"]["3d_cascade_fullres"]
    cascade = PlansManager(plans).get_configuration("3d_cascade_fullres")
    assert cascade.network_arch_class_name == RWKVSSS_CLASS_NAME
