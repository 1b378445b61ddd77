"""`nnunet-sss compare` over five folds pooled (fake results with known per-case shifts), with a trainer
pinned to plans of its own (TRAINER:PLANS)."""
import json

import numpy as np
import pytest

from nnunet_sss.cli import main as cli_main

from tests.bench.fake_results import (BASELINE, CASES_PER_FOLD, CONTROL, RWKV, SHIFT, FakeResults, find_best,
                                      fold_cases, model_dice)

OWN_PLANS = "nnUNetPlans_RWKVSSS_S"


def test_compare_pools_five_folds_and_takes_plans_per_trainer(tmp_path):
    fake = FakeResults(tmp_path)
    models = [(BASELINE, "nnUNetPlans", "2d"), (CONTROL, "nnUNetPlans", "2d"), (RWKV, OWN_PLANS, "2d")]
    for trainer, plans, configuration in models:
        for fold in range(5):
            fake.fold(trainer, configuration, fold, model_dice(trainer, fold_cases(fold)), plans=plans)
    find_best(fake, models, (0, 1, 2, 3, 4))
    out = tmp_path / "out"
    assert cli_main(["compare", "-d", "4", "-c", "2d", "-tr", CONTROL, f"{RWKV}:{OWN_PLANS}", BASELINE, "-o", str(out),
                     "--results_dir", str(fake.results), "--no_benchmark", "--bootstrap", "500"]) == 0
    group = json.loads((out / "comparison.json").read_text())["groups"]["validation"]
    assert len(group["cases"]) == 5 * CASES_PER_FOLD
    labels = [e["label"] for e in group["entries"]]
    assert labels[:3] == [CONTROL, RWKV, BASELINE]          # short labels although the plans differ
    assert f"ensemble({BASELINE} + {RWKV})" in labels
    rwkv = group["entries"][1]
    assert rwkv["plans"] == OWN_PLANS and sorted(rwkv["per_fold"]) == ["0", "1", "2", "3", "4"]
    pair = next(p for p in group["paired"] if (p["a"], p["b"], p["metric"], p["class"]) == (CONTROL, RWKV, "Dice", "1"))
    assert pair["n"] == 260
    assert pair["mean_difference"] == pytest.approx(SHIFT[RWKV]["1"], abs=1e-12)
    assert pair["ci_low"] < SHIFT[RWKV]["1"] < pair["ci_high"] and pair["ci_low"] > 0
    fold_fg = [e["per_fold"][str(f)]["foreground_mean"]["Dice"] for e in [rwkv] for f in range(5)]
    assert rwkv["per_fold_foreground_dice"]["mean"] == pytest.approx(np.mean(fold_fg))
