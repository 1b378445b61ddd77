"""Tiny stand-ins for what nnU-Net writes, with per-case Dice chosen by the test.

A FakeResults writes, under one nnUNet_results (and the nnUNet_preprocessed it was planned in):
each model's plans.json and dataset.json (hand-written plans small enough to build networks
quickly), per fold validation/summary.json in nnU-Net's layout, the validation .npz files (empty:
only their presence is read), training_log_*.txt with epoch times and debug.json; the outputs
of nnUNetv2_find_best_configuration (crossval_results_folds_*/summary.json, ensembles/*/summary.json,
inference_information.json).

Cases: fold f validates hippocampus_{52 f + i:03d}, i < CASES_PER_FOLD, as Hippocampus's 260 cases.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.integration.handwritten_plans import DATASET_JSON, handwritten_plans

DATASET = "Dataset004_Hippocampus"
CASES_PER_FOLD = 52
CLASSES = ("1", "2")


def fold_cases(fold: int) -> list[str]:
    return [f"hippocampus_{CASES_PER_FOLD * fold + i:03d}" for i in range(CASES_PER_FOLD)]


def summary_json(dice: dict) -> dict:
    """nnU-Net's summary.json layout for per-case Dice {case: {class: value}} (IoU from Dice)."""
    def metrics(d):
        return {"Dice": d, "IoU": d / (2 - d)}

    per_case = [{"prediction_file": f"/somewhere/validation/{case}.nii.gz", "reference_file": f"/gt/{case}.nii.gz",
                 "metrics": {k: metrics(v) for k, v in values.items()}} for case, values in dice.items()]
    mean = {k: {m: float(np.mean([r["metrics"][k][m] for r in per_case])) for m in ("Dice", "IoU")} for k in CLASSES}
    foreground = {m: float(np.mean([mean[k][m] for k in CLASSES])) for m in ("Dice", "IoU")}
    return {"metric_per_case": per_case, "mean": mean, "foreground_mean": foreground}


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    return path


@dataclass
class FakeResults:
    root: Path  # holds nnUNet_results and nnUNet_preprocessed

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"

    @property
    def dataset(self) -> Path:
        return self.results / DATASET

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed" / DATASET

    def env(self) -> dict:
        return {"nnUNet_results": str(self.results), "nnUNet_preprocessed": str(self.root / "nnUNet_preprocessed"),
                "nnUNet_raw": str(self.root / "nnUNet_raw")}

    def plan(self, *plans: str) -> None:
        """Plans files in nnUNet_preprocessed, as nnUNetv2_plan_and_preprocess (or nnunet-sss plans) writes them."""
        for name in plans:
            write_json(self.preprocessed / f"{name}.json", {**handwritten_plans(), "plans_name": name})

    def model(self, trainer: str, configuration: str, plans: str = "nnUNetPlans") -> Path:
        folder = self.dataset / f"{trainer}__{plans}__{configuration}"
        if not (folder / "plans.json").is_file():
            write_json(folder / "plans.json", {**handwritten_plans(), "plans_name": plans})
            write_json(folder / "dataset.json", DATASET_JSON)
        return folder

    def fold(self, trainer: str, configuration: str, fold: int, dice: dict, plans: str = "nnUNetPlans",
             epoch_times=(30.0, 31.0, 29.0), iterations: int = 40, host: str = "machine-a", npz: bool = True) -> Path:
        """A finished fold: validation summary (+ .npz), training log and debug.json (its iterations per
        epoch differ from the _cpubudget schedule's 50 on purpose: the report must read them there)."""
        fold_dir = self.model(trainer, configuration, plans) / f"fold_{fold}"
        write_json(fold_dir / "validation" / "summary.json", summary_json(dice))
        if npz:
            for case in dice:
                (fold_dir / "validation" / f"{case}.npz").write_bytes(b"")
        lines = ["2026-01-01 00:00:00.000000: Epoch 0"]
        for i, t in enumerate(epoch_times):
            lines.append(f"2026-01-01 00:{i + 1:02d}:00.000000: Epoch time: {t:.2f} s")
        lines.append(f"2026-01-01 00:{len(epoch_times) + 1:02d}:00.000000: Training done.")
        (fold_dir / "training_log_2026_1_1_00_00_00.txt").write_text("\n".join(lines) + "\n")
        write_json(fold_dir / "debug.json", {"num_iterations_per_epoch": str(iterations), "hostname": host})
        return fold_dir

    def crossval(self, trainer: str, configuration: str, folds, dice: dict, plans: str = "nnUNetPlans") -> Path:
        name = "_".join(map(str, folds))
        return write_json(self.model(trainer, configuration, plans) / f"crossval_results_folds_{name}" / "summary.json",
                          summary_json(dice))

    def ensemble(self, members: list[str], folds, dice: dict) -> Path:
        """members: model identifiers (trainer__plans__configuration), in find_best_configuration's order."""
        name = "ensemble___" + "___".join(members) + "___" + "_".join(map(str, folds))
        write_json(self.dataset / "ensembles" / name / "dataset.json", DATASET_JSON)
        return write_json(self.dataset / "ensembles" / name / "summary.json", summary_json(dice))

    def inference_information(self, models: list[tuple[str, str, str]], folds, best: list[tuple[str, str, str]],
                              dice: float) -> Path:
        """models, best: (trainer, plans, configuration)."""
        return write_json(self.dataset / "inference_information.json", {
            "folds": list(folds), "dataset_name_or_id": "4",
            "considered_models": [{"trainer": t, "plans": p, "configuration": c} for t, p, c in models],
            "best_model_or_ensemble": {
                "result_on_crossval_pre_pp": dice, "result_on_crossval_post_pp": dice,
                "selected_model_or_models": [{"trainer": t, "plans_identifier": p, "configuration": c}
                                             for t, p, c in best]}})


BASELINE, CONTROL, RWKV = "nnUNetTrainer_cpubudget", "nnUNetTrainerAdamWWarmup_cpubudget", "nnUNetTrainerRWKVSSS_cpubudget"
ABLATION = "nnUNetTrainerRWKVSSS_noRWKV_cpubudget"
# Each model's Dice is the control's plus a known shift per class, plus +-NOISE alternating from case
# to case (so that over an even number of cases the pooled mean difference is exactly the shift).
SHIFT = {BASELINE: {"1": -0.03, "2": -0.03}, CONTROL: {"1": 0.0, "2": 0.0}, RWKV: {"1": 0.02, "2": 0.0},
         ABLATION: {"1": 0.01, "2": 0.01}}
NOISE = 0.005
ENSEMBLE_GAIN = 0.01   # the ensemble of RWKV-SSS and nnU-Net: RWKV-SSS + this (+-NOISE / 2)
EPOCH_TIMES = {BASELINE: (28.0, 30.0, 29.0), CONTROL: (30.0, 31.0, 29.0), RWKV: (60.0, 62.0, 58.0),
               ABLATION: (33.0, 36.0, 30.0)}


def control_dice(case: str) -> dict:
    i = int(case.rsplit("_", 1)[1])
    return {"1": 0.78 + 0.1 * ((i * 37) % 17) / 17, "2": 0.74 + 0.1 * ((i * 53) % 13) / 13}


def model_dice(trainer: str, cases, gain: float = 0.0, noise: float = NOISE) -> dict:
    out = {}
    for n, case in enumerate(cases):
        sign = 0.0 if trainer == CONTROL and not gain else (1.0 if n % 2 == 0 else -1.0)
        out[case] = {k: v + SHIFT[trainer][k] + gain + sign * noise for k, v in control_dice(case).items()}
    return out


def identifier(trainer: str, configuration: str, plans: str = "nnUNetPlans") -> str:
    return f"{trainer}__{plans}__{configuration}"


def write_study(fake: FakeResults, folds=None, arms=None, ensembles: bool = True) -> None:
    """The three references on `folds` ({configuration: folds}; default 2d 0-4, 3d_fullres 0-2), arms
    ({trainer: {configuration: folds}}), and find_best_configuration's outputs as the study runs it:
    each configuration alone where its folds are more than the common ones, then all on the common."""
    folds = folds or {"2d": (0, 1, 2, 3, 4), "3d_fullres": (0, 1, 2)}
    refs = (BASELINE, CONTROL, RWKV)
    fake.plan("nnUNetPlans")
    for configuration, fs in folds.items():
        for fold in fs:
            for trainer in refs:
                fake.fold(trainer, configuration, fold, model_dice(trainer, fold_cases(fold)),
                          epoch_times=EPOCH_TIMES[trainer])
    for trainer, placements in (arms or {}).items():
        for configuration, fs in placements.items():
            for fold in fs:
                fake.fold(trainer, configuration, fold, model_dice(trainer, fold_cases(fold)),
                          epoch_times=EPOCH_TIMES[trainer])
    if not ensembles:
        return
    common = tuple(sorted(set.intersection(*(set(f) for f in folds.values()))))
    calls = [([(t, "nnUNetPlans", c) for t in refs], fs) for c, fs in folds.items()
             if tuple(fs) != common or len(folds) == 1]
    if len(folds) > 1:
        calls.append(([(t, "nnUNetPlans", c) for t in refs for c in folds], common))
    for models, fs in calls:
        find_best(fake, models, fs)


def find_best(fake: FakeResults, models, folds) -> None:
    """What nnUNetv2_find_best_configuration writes for models [(trainer, plans, configuration)] on folds:
    each model's pooled validation, every pair's ensemble (RWKV-SSS with nnU-Net gains ENSEMBLE_GAIN),
    inference_information.json."""
    cases = [c for f in folds for c in fold_cases(f)]
    for trainer, plans, configuration in models:
        fake.crossval(trainer, configuration, folds, model_dice(trainer, cases), plans=plans)
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            pair = {a[0], b[0]}
            dice = (model_dice(RWKV, cases, gain=ENSEMBLE_GAIN, noise=NOISE / 2) if pair == {RWKV, BASELINE}
                    else model_dice(RWKV, cases, noise=NOISE / 2) if pair == {RWKV, CONTROL}
                    else model_dice(CONTROL, cases))
            fake.ensemble([identifier(a[0], a[2], a[1]), identifier(b[0], b[2], b[1])], folds, dice)
    rwkv = next(m for m in models if m[0] == RWKV)
    baseline = next(m for m in models if m[0] == BASELINE)
    fake.inference_information(models, folds, [rwkv, baseline], 0.9)
