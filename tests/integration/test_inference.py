"""RWKV-SSS under nnU-Net's own predictor (sliding window) on a tiny saved model:
the inference path skips what only training needs, builds nothing per tile, and the cached
sampling grid leaves the predictions as they were."""
import json

import numpy as np
import pytest
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

import nnunet_sss.network.block as block
import nnunet_sss.network.scan as scan
import nnunet_sss.network.upsample as upsample
from nnunet_sss.bench import inference as bench
from nnunet_sss.env import ext_trainer_folder

from .tiny_models import write_image, write_model


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    (root / "images").mkdir()
    write_image(root / "images" / "case_0000.nii.gz")
    return write_model(root / "results", "nnUNetTrainerRWKVSSS", "3d_fullres"), root / "images"


@pytest.fixture(scope="module")
def predictor_and_image(model_folder):
    folder, images = model_folder
    image, properties = SimpleITKIO().read_images([str(images / "case_0000.nii.gz")])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("nnUNet_extTrainer", ext_trainer_folder())
        # mirroring off: the same tile shapes, an eighth of the forwards
        predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(folder), (0,), "checkpoint_final.pth")
    return predictor, image, properties


def _predict(predictor, image, properties):
    return predictor.predict_single_npy_array(image, properties, None, None, False)


def _dice(a, b, labels=(1, 2)):
    return [2 * np.logical_and(a == c, b == c).sum() / max(1, (a == c).sum() + (b == c).sum()) for c in labels]


def test_predictions_with_the_cached_grid_equal_the_uncached(predictor_and_image, monkeypatch):
    predictor, image, properties = predictor_and_image
    cached = _predict(predictor, image, properties)
    monkeypatch.setattr(upsample, "base_grid", upsample.base_grid.__wrapped__)  # rebuilt on every call, as before
    fresh = _predict(predictor, image, properties)
    assert min(_dice(cached, fresh)) >= 1 - 1e-3
    assert np.array_equal(cached, fresh)


def test_inference_builds_nothing_per_tile_and_skips_training_only_work(predictor_and_image, monkeypatch):
    """8 tiles: scan plans and sampling grids come from their caches after the first forward; no
    layer is checkpointed; only the full-resolution segmentation head runs."""
    predictor, image, properties = predictor_and_image
    _predict(predictor, image, properties)  # fills the caches
    plans, grids = scan._build_plan.cache_info().misses, upsample.base_grid.cache_info().misses
    device_plans = dict(scan._DEVICE_PLANS)

    def no_checkpoint(*args, **kwargs):
        raise AssertionError("a layer was checkpointed during inference")

    monkeypatch.setattr(block, "checkpoint", no_checkpoint)  # the rebuild under torch.compile
    monkeypatch.setattr(block._Rebuild, "apply", no_checkpoint)  # the eager rebuild
    heads = predictor.network.decoder.seg_layers
    calls = [0] * len(heads)
    hooks = [h.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1)) for i, h in enumerate(heads)]
    forwards = [0]
    hooks.append(predictor.network.register_forward_hook(lambda *a: forwards.__setitem__(0, forwards[0] + 1)))
    try:
        _predict(predictor, image, properties)
    finally:
        for h in hooks:
            h.remove()
    assert forwards[0] == 8  # 2 x 2 x 2 tiles of 16 x 24 x 16 in 20 x 30 x 18
    assert calls == [0] * (len(heads) - 1) + [forwards[0]]
    assert scan._build_plan.cache_info().misses == plans and upsample.base_grid.cache_info().misses == grids
    assert scan._DEVICE_PLANS.keys() == device_plans.keys()
    assert all(scan._DEVICE_PLANS[key] is plan for key, plan in device_plans.items())  # the same tensors


def test_bench_times_both_predictors_per_case_and_profiles_a_tile(model_folder, monkeypatch, tmp_path, capsys):
    folder, images = model_folder
    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_folder())
    out = tmp_path / "bench.json"
    assert bench.main(["-m", str(folder), str(folder), "-f", "0", "-i", str(images), "--cases", "1", "--repeats", "2",
                       "--disable_tta", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (run,) = report.values()
    assert run["models"] == ["nnUNetTrainerRWKVSSS #1", "nnUNetTrainerRWKVSSS #2"]
    assert [c["case"] for c in run["cases"]] == ["case_0000.nii.gz"] and run["cases"][0]["shape"] == [20, 30, 18]
    assert all(t > 0 for c in run["cases"] for t in c["wall"] + c["cpu"]) and len(run["wall_ratio"]) == 1
    assert "per case: wall" in capsys.readouterr().out
    assert bench.main(["-m", str(folder), str(folder), "-f", "0", "--profile", "--repeats", "1", "--threads", "1",
                       "--json", str(out)]) == 0
    (profile,) = json.loads(out.read_text()).values()
    for parts in profile.values():
        assert parts["ops dispatched"] > 100 and parts["Bi-WKV"] > 0 and parts["forward (untimed)"] > 0
