"""The trainer family: networks from every kind of configuration, ablations, schedules, optimiser."""
import json
import math
from copy import deepcopy

import pytest
import torch
import torch.distributed
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_sss.plans import DEFAULT_PRESET_BY_DIMS, PRESETS, preset_options, rwkvsss_options
from nnunet_sss.training import (ABLATIONS, SCHEDULES, TRAINERS, nnUNetTrainerAdamWWarmup, nnUNetTrainerRWKVSSS,
                                 nnUNetTrainerRWKVSSS_SGD)
from nnunet_sss.training.optim import WarmupPolyLRScheduler, adamw_param_groups, warmup_poly_lr

from .handwritten_plans import DATASET_JSON, handwritten_plans

CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres", "3d_resenc")


def _build(trainer_class, configuration, deep_supervision=True):
    plans_manager = PlansManager(handwritten_plans())
    conf = plans_manager.get_configuration(configuration)
    n_in = determine_num_input_channels(plans_manager, conf, DATASET_JSON)
    n_out = plans_manager.get_label_manager(DATASET_JSON).num_segmentation_heads
    return trainer_class.build_network_architecture(plans_manager, conf, n_in, n_out, deep_supervision), conf, n_in


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_builds_rwkvsss_for_every_kind_of_configuration(configuration, rwkvsss_network):
    network, conf, n_in = _build(nnUNetTrainerRWKVSSS, configuration)
    assert type(network) is rwkvsss_network
    assert n_in == (3 if configuration == "3d_cascade_fullres" else 1)  # cascade: image + 2 foreground labels
    x = torch.randn(1, n_in, *conf.patch_size)
    with torch.no_grad():
        outputs = network(x)
        assert isinstance(outputs, (list, tuple)) and len(outputs) == len(conf.pool_op_kernel_sizes) - 1
        assert outputs[0].shape == (1, 3, *conf.patch_size)  # deep supervision: full resolution first
        network.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled does
        assert network(x).shape == (1, 3, *conf.patch_size)


@pytest.mark.parametrize("configuration, n_dims", [("2d", 2), ("3d_fullres", 3), ("3d_lowres", 3)])
def test_default_trainer_uses_the_default_presets_setting_for_its_dimensionality(configuration, n_dims):
    """Stock plans, no -p: 2d builds the measured 2d setting, 3d the design's defaults."""
    _, conf, _ = _build(nnUNetTrainerRWKVSSS, configuration)
    options = rwkvsss_options(nnUNetTrainerRWKVSSS.network_architecture(conf))
    assert options == json.loads(json.dumps(preset_options(n_dims=n_dims)))
    expected = {**PRESETS["S"], **DEFAULT_PRESET_BY_DIMS.get(n_dims, {})}
    assert (options["rwkv_first_stage"], options["hidden_ratio"]) == \
        (expected["rwkv_first_stage"], expected["hidden_ratio"])
    assert (options["rwkv_first_stage"], options["hidden_ratio"]) == ((1, 1) if n_dims == 2 else (0, 2))


@pytest.mark.parametrize("suffix", sorted(ABLATIONS))
def test_each_ablation_changes_exactly_its_option(suffix, rwkvsss_network):
    option, _ = ABLATIONS[suffix]
    for name in (f"nnUNetTrainerRWKVSSS_{suffix}", f"nnUNetTrainerRWKVSSS_{suffix}_cpubudget"):
        trainer_class = TRAINERS[name]
        _, conf, _ = _build(trainer_class, "3d_fullres")
        default = rwkvsss_options(nnUNetTrainerRWKVSSS.network_architecture(conf))
        ablated = rwkvsss_options(trainer_class.network_architecture(conf))
        changed = {k: v for k, v in ablated.items() if default[k] != v}
        if "merge_equal_windows" in option:
            assert changed.pop("patch_size") == list(conf.patch_size), name
        assert changed == {k: list(v) if isinstance(v, tuple) else v for k, v in option.items()}, name
    # the network itself was built with that one switch turned
    network, _, _ = _build(TRAINERS[f"nnUNetTrainerRWKVSSS_{suffix}"], "3d_fullres")
    reference, _, _ = _build(nnUNetTrainerRWKVSSS, "3d_fullres")
    assert type(network) is rwkvsss_network
    changed = {k for k, v in network.options.items() if reference.options[k] != v}
    consequences = {"rwkv_depths"} if "use_rwkv" in option else set()  # no blocks: depth 0 everywhere
    if "merge_equal_windows" in option:
        consequences.add("patch_size")  # the trainer hands the configuration's patch to the network
    assert set(option) <= changed <= set(option) | consequences


def test_no_generated_name_shadows_or_is_shadowed_by_nnunet():
    """nnU-Net searches its own package before nnUNet_extTrainer: a clash would hide ours."""
    import os
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    folder = os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer")
    for name in TRAINERS:
        assert "__" not in name
        assert recursive_find_python_class(folder, name, "nnunetv2.training.nnUNetTrainer") is None, name
    expected = {f"{base}_{suffix}" for base in ("nnUNetTrainer", "nnUNetTrainerAdamWWarmup", "nnUNetTrainerRWKVSSS",
                                                 "nnUNetTrainerRWKVSSS_SGD",
                                                 *(f"nnUNetTrainerRWKVSSS_{a}" for a in ABLATIONS))
                for suffix in SCHEDULES}
    assert expected <= set(TRAINERS)


@pytest.fixture
def results_env(monkeypatch, tmp_path):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))


def _trainer(trainer_class, configuration, plans=None):
    if plans is None:
        plans = handwritten_plans()
        plans["continue_training"] = False
    return trainer_class(plans, configuration, 0, DATASET_JSON, device=torch.device("cpu"))


@pytest.mark.parametrize("name,configuration,batch", [
    ("nnUNetTrainer_cpubudget", "3d_fullres", 2), ("nnUNetTrainerRWKVSSS_cpubudget", "2d", 32),
    ("nnUNetTrainerRWKVSSS_noRWKV_cpubudget", "3d_cascade_fullres", 2), ("nnUNetTrainerRWKVSSS_SGD_smoke", "2d", 8),
    ("nnUNetTrainerAdamWWarmup_cpubudget3x", "2d", 32),
])
def test_schedule_reaches_everything_derived_from_it(name, configuration, batch, results_env, monkeypatch):
    trainer = _trainer(TRAINERS[name], configuration)
    schedule = SCHEDULES[name.rsplit("_", 1)[1]]
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch,
            trainer.save_every) == (schedule.epochs, schedule.iterations, schedule.val_iterations, schedule.save_every)
    assert trainer.configuration_manager.batch_size == batch  # logged as hparas, used for the DDP split
    assert PlansManager(trainer.plans_manager.plans).get_configuration(configuration).batch_size == batch  # plans.json
    assert trainer.my_init_kwargs["plans"]["configurations"][configuration]["batch_size"] == batch  # checkpoint
    trainer._set_batch_size_and_oversample()
    assert trainer.batch_size == batch
    # Under DDP nnU-Net splits the configuration's batch size over the workers.
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 2)
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, r=rank: r)
        trainer = _trainer(TRAINERS[name], configuration)
        trainer.is_ddp = True
        trainer._set_batch_size_and_oversample()
        per_rank.append(trainer.batch_size)
    assert sum(per_rank) == batch
    # the plans handed in are not changed (nnU-Net reuses them, e.g. for the next fold), even
    # where they ask for another batch size than the schedule's
    plans = handwritten_plans()
    plans["continue_training"] = False
    plans["configurations"][configuration]["batch_size"] = batch + 1
    handed_in = deepcopy(plans)
    assert _trainer(TRAINERS[name], configuration, plans).configuration_manager.batch_size == batch
    assert plans == handed_in


def test_only_the_smoke_schedule_drops_test_time_mirroring(results_env):
    for name, axes in (("nnUNetTrainerRWKVSSS_smoke", None), ("nnUNetTrainerRWKVSSS_cpubudget", (0, 1, 2)),
                       ("nnUNetTrainer_cpubudget", (0, 1, 2))):
        trainer = _trainer(TRAINERS[name], "3d_fullres")
        *_, training_mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        assert training_mirror_axes == (0, 1, 2)  # augmentation unchanged
        assert trainer.inference_allowed_mirroring_axes == axes, name  # saved in checkpoints, used by predict


def test_long_schedule_checkpoints_for_resume(results_env):
    """A 1000-epoch run keeps nnU-Net's checkpoint_latest every 50 epochs, so a crash in epoch 80
    resumes from epoch 50 with --c (the schedule is a function of the epoch)."""
    trainer = _trainer(nnUNetTrainerRWKVSSS, "3d_fullres")
    assert trainer.num_epochs == 1000 and trainer.save_every == 50
    assert not trainer.disable_checkpointing


@pytest.mark.parametrize("name", ["nnUNetTrainerRWKVSSS", "nnUNetTrainerRWKVSSS_cpubudget",
                                  "nnUNetTrainerRWKVSSS_noShift_cpubudget"])
def test_trainer_pins_its_network_into_the_plans_nnunet_saves(name, results_env, rwkvsss_network):
    """The plans the trainer keeps (nnU-Net saves them as the results folder's plans.json, and its
    predictor rebuilds from them) state every option of the network trained, so a later default
    cannot change what a trained model rebuilds into; the plans handed in stay as they were."""
    trainer_class = TRAINERS[name]
    plans = handwritten_plans()
    plans["continue_training"] = False
    trainer = _trainer(trainer_class, "2d", plans)
    assert plans["configurations"]["2d"]["architecture"]["network_class_name"].endswith("PlainConvUNet")
    saved = deepcopy(trainer.plans_manager.plans)
    trained = rwkvsss_options(saved["configurations"]["2d"]["architecture"])
    assert trained == rwkvsss_options(trainer_class.network_architecture(_build(trainer_class, "2d")[1]))
    assert (trained["rwkv_first_stage"], trained["hidden_ratio"]) == (1, 1)
    # another default later (here: preset M for plans that are not RWKV-SSS's) rebuilds the same network
    later = type("Later", (trainer_class,), {"network_preset": "M"})
    manager = PlansManager(saved)
    network = later.build_network_architecture(manager, manager.get_configuration("2d"), 1, 3, True)
    assert type(network) is rwkvsss_network and network.options == trainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, 3, True).options
    assert rwkvsss_options(later.network_architecture(PlansManager(handwritten_plans()).get_configuration("2d"))) \
        != trained  # (the stock plans would have changed)


def test_weights_of_other_options_are_refused_naming_the_cause():
    """A 2d model trained from stock plans before the 2d default changed (the design's defaults)
    does not load into today's default network: the error says so and what to state; the network
    with the design's defaults stated loads it."""
    design = {**preset_options(n_dims=3)}
    old, conf, _ = _build(type("Design", (nnUNetTrainerRWKVSSS,), {"network_overrides": design}), "2d")
    new, _, _ = _build(nnUNetTrainerRWKVSSS, "2d")
    with pytest.raises(RuntimeError, match=r"trained with other RWKV-SSS options.*rwkv_first_stage=1, "
                                           r"hidden_ratio=1 has the design's defaults"):
        new.load_state_dict(old.state_dict())
    stated = PlansManager(handwritten_plans())
    stated.plans["configurations"]["2d"]["architecture"] = nnUNetTrainerRWKVSSS.network_architecture(conf)
    stated.plans["configurations"]["2d"]["architecture"]["arch_kwargs"].update(rwkv_first_stage=0, hidden_ratio=2)
    rebuilt = nnUNetTrainerRWKVSSS.build_network_architecture(stated, stated.get_configuration("2d"), 1, 3, True)
    rebuilt.load_state_dict(old.state_dict())


def test_adamw_groups_exempt_norms_biases_and_bare_parameters():
    network, _, _ = _build(nnUNetTrainerRWKVSSS, "3d_fullres")
    network.register_parameter("wkv_decay_like", torch.nn.Parameter(torch.zeros(8)))  # a bare per-channel parameter
    decay, no_decay = adamw_param_groups(network, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert sorted(ids) == sorted(id(p) for p in network.parameters())  # each exactly once
    convs_and_linears = {id(m.weight) for m in network.modules()
                         if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))}
    assert {id(p) for p in decay["params"]} == convs_and_linears
    assert id(network.wkv_decay_like) in {id(p) for p in no_decay["params"]}
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.instancenorm._InstanceNorm)]
    assert norms and all(id(m.weight) not in convs_and_linears for m in norms)


def test_warmup_poly_curve():
    lrs = [warmup_poly_lr(e, 1e-3, 20, 2.0) for e in (0, 0.5, 1, 2, 11, 19, 20)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[0] < lrs[1] < lrs[2] < lrs[3] == pytest.approx(1e-3)
    assert lrs[3] > lrs[4] > lrs[5] > lrs[6] == 0.0
    assert lrs[4] == pytest.approx(1e-3 * 0.5 ** 0.9)


def _lrs_of_epoch(trainer, monkeypatch):
    """Run the trainer's epoch start and train steps with nnU-Net's step replaced by an lr probe."""
    seen = []
    monkeypatch.setattr(nnUNetTrainer, "train_step", lambda self, batch: seen.append(
        self.optimizer.param_groups[0]["lr"]) or {})
    monkeypatch.setattr(type(trainer.logger), "log", lambda *a, **k: None)
    trainer.on_train_epoch_start()
    for _ in range(trainer.num_iterations_per_epoch):
        trainer.train_step({})
    return seen


def test_trainer_warms_up_per_iteration_and_resumes_on_the_same_curve(results_env, monkeypatch):
    def fresh(epoch):
        trainer = _trainer(TRAINERS["nnUNetTrainerRWKVSSS_cpubudget"], "3d_fullres")
        trainer.network, _, _ = _build(nnUNetTrainerRWKVSSS, "3d_fullres")
        trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
        trainer.current_epoch = epoch
        return trainer

    trainer = fresh(0)
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and len(trainer.optimizer.param_groups) == 2
    assert trainer.lr_scheduler.warmup_epochs == 1.0  # 5 % of 20 epochs, at least one
    run = []
    for epoch in range(3):
        run.append(_lrs_of_epoch(trainer, monkeypatch))
        trainer.current_epoch += 1
    iters = trainer.num_iterations_per_epoch
    assert run[0] == pytest.approx([warmup_poly_lr(i / iters, 1e-3, 20, 1.0) for i in range(iters)])
    assert run[0] == sorted(run[0]) and run[0][0] < run[0][-1] < 1e-3
    assert len(set(run[1])) == 1 and run[1][0] == pytest.approx(1e-3)  # poly decay steps per epoch
    assert run[2][0] == pytest.approx(warmup_poly_lr(2, 1e-3, 20, 1.0))
    resumed = fresh(2)  # what --c rebuilds: a new trainer at the checkpoint's epoch
    assert _lrs_of_epoch(resumed, monkeypatch) == pytest.approx(run[2])


def test_fast_decay_arm_trains_only_the_wkv_decay_and_bonus_faster(results_env):
    """`wkvFastDecay`: a third AdamW group, exactly the spatial mixes' decay and bonus, at 10x the
    scheduled rate through warm-up and decay; the default trainer keeps its two groups."""
    from nnunet_sss.network.spatial_mix import SpatialMix

    trainer = _trainer(TRAINERS["nnUNetTrainerRWKVSSS_wkvFastDecay_cpubudget"], "3d_fullres")
    trainer.network, _, _ = _build(type(trainer), "3d_fullres")
    optimizer, scheduler = trainer.configure_optimizers()
    *_, fast = optimizer.param_groups
    mixes = [m for m in trainer.network.modules() if isinstance(m, SpatialMix)]
    assert mixes and {id(p) for p in fast["params"]} == {id(p) for m in mixes for p in (m.decay, m.bonus)}
    assert fast["weight_decay"] == 0.0
    for epoch in (0.5, 3):
        scheduler.step(epoch)
        rates = [group["lr"] for group in optimizer.param_groups]
        assert rates[0] == rates[1] == pytest.approx(warmup_poly_lr(epoch, 1e-3, 20, 1.0))
        assert rates[2] == pytest.approx(10 * rates[0]) and scheduler.get_last_lr() == rates
    with pytest.raises(ValueError, match="no WKV decay"):
        adamw_param_groups(torch.nn.Linear(2, 2), 0.05, 10.0)
    default = _trainer(TRAINERS["nnUNetTrainerRWKVSSS_cpubudget"], "3d_fullres")
    default.network = trainer.network
    assert len(default.configure_optimizers()[0].param_groups) == 2


def test_sgd_variant_keeps_nnunets_schedule(results_env):
    trainer = _trainer(nnUNetTrainerRWKVSSS_SGD, "2d")
    trainer.network, _, _ = _build(nnUNetTrainerRWKVSSS_SGD, "2d")
    optimizer, scheduler = trainer.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and isinstance(scheduler, PolyLRScheduler)
    assert optimizer.param_groups[0]["lr"] == 1e-2 and optimizer.param_groups[0]["momentum"] == 0.99
    assert not isinstance(scheduler, WarmupPolyLRScheduler)
    assert math.isclose(trainer.weight_decay, 3e-5)


def test_adamw_control_trains_nnunets_own_network_with_the_rwkvsss_schedule(results_env, monkeypatch):
    """The optimiser control: the baseline's network (as nnUNetTrainer builds it) under the
    RWKV-SSS trainer's AdamW, warm-up and poly decay, for the same (epoch, iteration)."""
    control = _trainer(TRAINERS["nnUNetTrainerAdamWWarmup_cpubudget"], "3d_fullres")
    rwkvsss = _trainer(TRAINERS["nnUNetTrainerRWKVSSS_cpubudget"], "3d_fullres")
    control.network, _, _ = _build(nnUNetTrainerAdamWWarmup, "3d_fullres")
    baseline, _, _ = _build(nnUNetTrainer, "3d_fullres")
    assert type(control.network) is type(baseline)
    assert control.network.state_dict().keys() == baseline.state_dict().keys()
    rwkvsss.network, _, _ = _build(nnUNetTrainerRWKVSSS, "3d_fullres")
    for trainer in (control, rwkvsss):
        trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
        assert isinstance(trainer.optimizer, torch.optim.AdamW)
        assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [5e-2, 0.0]
    assert _lrs_of_epoch(control, monkeypatch) == pytest.approx(_lrs_of_epoch(rwkvsss, monkeypatch))


def test_the_long_budget_is_the_protocol_budget_three_times_as_long():
    from dataclasses import replace

    budget = SCHEDULES["cpubudget"]
    assert SCHEDULES["cpubudget3x"] == replace(budget, epochs=3 * budget.epochs)
