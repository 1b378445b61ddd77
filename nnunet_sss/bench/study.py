"""The study of issue "Five folds of evidence": what it trains and how, resumably.

A study is three reference trainers (nnU-Net, the optimiser control, RWKV-SSS), each with its
own plans, on the same folds of each configuration, plus optional arms (ablation trainers)
on folds of their own. `run_study` trains every missing fold with nnUNetv2_train, one after
the other, then runs nnUNetv2_find_best_configuration (pooled cross-validation and the
pairwise ensembles); the report (study_report.py) reads the results folder alone. The command
line is `python -m nnunet_sss.bench.protocol study` (see protocol.py).

Resuming: a fold whose validation/summary.json exists is finished and never trained again; a
fold with a checkpoint is continued with --c; a find_best_configuration call whose outputs are
all newer than its folds' validation is not repeated.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Callable, Iterable, Sequence

from nnunet_sss.compare.comparison import ensure_ext_trainer_path
from nnunet_sss.compare.results import (ENSEMBLE_FOLDER, ComparisonInputError, case_name, dataset_name,
                                        folds_string, model_identifier)

from .archive import archive

ROLES = ("baseline", "control", "rwkv")
ROLE_NAMES = {"baseline": "nnU-Net", "control": "optimiser control", "rwkv": "RWKV-SSS"}
DEFAULT_TRAINERS = {"baseline": "nnUNetTrainer_cpubudget", "control": "nnUNetTrainerAdamWWarmup_cpubudget",
                    "rwkv": "nnUNetTrainerRWKVSSS_cpubudget"}
DEFAULT_PLANS = "nnUNetPlans"
DEFAULT_FOLDS = ("2d=0-4", "3d_fullres=0-2")
DEFAULT_ARM_FOLDS = ("2d=0,1",)
INFERENCE_INFORMATION = "inference_information.json"  # written by find_best_configuration, last call wins


@dataclass(frozen=True)
class Model:
    trainer: str
    plans: str
    configuration: str

    @property
    def identifier(self) -> str:
        return model_identifier(self.trainer, self.plans, self.configuration)


@dataclass(frozen=True)
class Arm:
    """A trainer with its plans, and the folds it is trained on per configuration."""

    trainer: str
    plans: str
    folds: dict = field(hash=False)    # configuration -> sorted tuple of folds

    def model(self, configuration: str) -> Model:
        return Model(self.trainer, self.plans, configuration)


def parse_folds(text: str) -> tuple[str, tuple[int, ...]]:
    """'2d=0-4' or '3d_fullres=0,1,2' (ranges and lists mix: '2d=0,2-4') -> (configuration, folds)."""
    configuration, sep, spec = text.partition("=")
    folds = []
    for part in spec.split(",") if sep and configuration else ["?"]:
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ComparisonInputError([f"folds must read CONFIGURATION=FOLDS (2d=0-4, 3d_fullres=0,1,2), got {text!r}"])
        folds += range(int(low), int(high) + 1) if dash else [int(low)]
    if not folds or len(set(folds)) != len(folds):
        raise ComparisonInputError([f"{text!r}: folds must be distinct and at least one"])
    return configuration, tuple(sorted(folds))


def parse_placements(texts: Iterable[str], what: str) -> dict:
    placements = {}
    for text in texts:
        configuration, folds = parse_folds(text)
        if configuration in placements:
            raise ComparisonInputError([f"{what}: configuration {configuration} given twice"])
        placements[configuration] = folds
    return placements


def parse_trainer(text: str, default_plans: str) -> tuple[str, str]:
    """'TRAINER' or 'TRAINER:PLANS' -> (trainer, plans)."""
    trainer, _, plans = text.partition(":")
    if not trainer or "__" in trainer or "__" in plans or "@" in text:
        raise ComparisonInputError([f"expected TRAINER or TRAINER:PLANS (names without '__'), got {text!r}"])
    return trainer, plans or default_plans


def parse_arm(text: str, default_plans: str, default_folds: dict) -> Arm:
    """'TRAINER[:PLANS][@CONFIGURATION=FOLDS]...'; without @ the arm gets `default_folds`."""
    head, *placements = text.split("@")
    trainer, plans = parse_trainer(head, default_plans)
    return Arm(trainer, plans, parse_placements(placements, f"arm {text!r}") if placements else dict(default_folds))


def arm_text(arm: Arm, with_folds: bool = True) -> str:
    """TRAINER:PLANS[@CONFIGURATION=FOLDS...], as parse_arm reads it."""
    text = f"{arm.trainer}:{arm.plans}"
    return text + "".join(f"@{c}={','.join(map(str, f))}" for c, f in arm.folds.items()) if with_folds else text


@dataclass
class Study:
    dataset: str
    references: dict    # role -> Arm (on the study's folds)
    arms: list          # extra Arms

    @classmethod
    def from_text(cls, dataset: str, baseline: str, control: str, rwkv: str, folds: Sequence[str],
                  arms: Sequence[str] = (), arm_folds: Sequence[str] = DEFAULT_ARM_FOLDS) -> "Study":
        """From the command line's texts; an arm without :PLANS takes RWKV-SSS's plans (arms are its
        variants). Raises ComparisonInputError naming every problem."""
        placements = parse_placements(folds, "--folds")
        references = {role: Arm(*parse_trainer(text, DEFAULT_PLANS), dict(placements))
                      for role, text in zip(ROLES, (baseline, control, rwkv))}
        default_arm_folds = parse_placements(arm_folds, "--arm_folds")
        study = cls(str(dataset), references,
                    [parse_arm(text, references["rwkv"].plans, default_arm_folds) for text in arms])
        study.check()
        return study

    def as_args(self) -> list[str]:
        """The command-line arguments that describe this study."""
        args = ["-d", self.dataset]
        for role in ROLES:
            args += [f"--{role}", arm_text(self.references[role], with_folds=False)]
        args += ["--folds", *(f"{c}={','.join(map(str, f))}" for c, f in self.folds.items())]
        return args + (["--arm", *map(arm_text, self.arms)] if self.arms else [])

    def as_dict(self) -> dict:
        return {"dataset": self.dataset, **{r: arm_text(self.references[r], with_folds=False) for r in ROLES},
                "folds": {c: list(f) for c, f in self.folds.items()}, "arms": [arm_text(a) for a in self.arms]}

    @property
    def folds(self) -> dict:
        return self.references["rwkv"].folds

    def reference_models(self, configuration: str) -> list[Model]:
        return [self.references[role].model(configuration) for role in ROLES]

    def check(self) -> None:
        """Each arm's folds must be folds of the references (it is compared with them case by case)."""
        problems = []
        pairs = [(a.trainer, a.plans) for a in (*self.references.values(), *self.arms)]
        for i, pair in enumerate(pairs):
            if pair in pairs[:i]:
                problems.append(f"{pair[0]}:{pair[1]} is given twice (as a reference trainer or an arm)")
        for arm in self.arms:
            for configuration, folds in arm.folds.items():
                extra = [f for f in folds if f not in self.folds.get(configuration, ())]
                if extra:
                    problems.append(
                        f"arm {arm.trainer}: {configuration} fold(s) {', '.join(map(str, extra))} are not among the "
                        f"study's {configuration} folds ({', '.join(map(str, self.folds.get(configuration, ()))) or 'none'}"
                        f"); the arm is compared with the references on its folds: add them to --folds")
        if problems:
            raise ComparisonInputError(problems)

    def trainings(self) -> list[tuple[Model, int]]:
        """Every (model, fold) to train, in order: configuration by configuration, fold by fold, the
        three references on a fold and then the arms on it, before the next fold. So each fold's
        comparison is whole, and trained back to back on one machine, before the next begins: a study
        spread over sessions (--archive) ends each session with whole folds."""
        out = [(m, f) for c, folds in self.folds.items() for f in folds
               for m in [*self.reference_models(c), *(arm.model(c) for arm in self.arms if f in arm.folds.get(c, ()))]]
        return list(dict.fromkeys(out))

    def screens(self) -> dict:
        """(configuration, folds) -> the arms trained on exactly those folds."""
        out = {}
        for arm in self.arms:
            for configuration, folds in arm.folds.items():
                out.setdefault((configuration, folds), []).append(arm.model(configuration))
        return out

    def common_folds(self) -> tuple[int, ...]:
        sets = [set(f) for f in self.folds.values()]
        return tuple(sorted(set.intersection(*sets))) if sets else ()

    def find_best_calls(self) -> list[tuple[list[Model], tuple[int, ...]]]:
        """The nnUNetv2_find_best_configuration calls: each configuration alone on all its folds where
        they are more than the folds every configuration has, then all configurations on those common
        folds (last, so that its inference_information.json stays)."""
        common = self.common_folds()
        calls = [(self.reference_models(c), folds) for c, folds in self.folds.items()
                 if folds != common or len(self.folds) == 1]
        if len(self.folds) > 1 and common:
            trainers = [self.references[r] for r in ROLES]
            calls.append(([a.model(c) for a in trainers for c in self.folds], common))
        return calls


# ----------------------------------------------------------------------------------------------
# Where things are, and what is there

def results_dataset_folder(dataset: str) -> tuple[str, Path]:
    """(DatasetXXX_Name, $nnUNet_results/DatasetXXX_Name) for a dataset planned in $nnUNet_preprocessed."""
    missing = [v for v in ("nnUNet_preprocessed", "nnUNet_results") if not os.environ.get(v)]
    if missing:
        raise ComparisonInputError([f"{' and '.join(missing)} not set (nnU-Net's folders; see nnU-Net's "
                                    "documentation/setting_up_paths.md)"])
    preprocessed = Path(os.environ["nnUNet_preprocessed"])
    if not preprocessed.is_dir():
        raise ComparisonInputError([f"nnUNet_preprocessed={preprocessed} does not exist"])
    name = dataset_name(preprocessed, dataset, "nnUNet_preprocessed", f"run nnUNetv2_plan_and_preprocess -d {dataset} first")
    return name, Path(os.environ["nnUNet_results"]) / name


def archived(archive_dataset: Path, model: Model, fold: int) -> bool:
    """Whether the archive (nnunet_sss/bench/archive.py) holds this fold finished: its evidence is kept."""
    return fold_state(archive_dataset / model.identifier / f"fold_{fold}") == "finished"


def fold_state(fold_dir: Path) -> str:
    """'finished' (validation/summary.json), 'interrupted' (a checkpoint) or 'new'."""
    if (fold_dir / "validation" / "summary.json").is_file():
        return "finished"
    if any((fold_dir / name).is_file() for name in ("checkpoint_latest.pth", "checkpoint_final.pth")):
        return "interrupted"
    return "new"


def missing_npz(fold_dir: Path) -> list[str]:
    """Validation cases of a finished fold without the .npz probabilities an ensemble needs."""
    validation = fold_dir / "validation"
    records = json.loads((validation / "summary.json").read_text()).get("metric_per_case", [])
    return [c for c in (case_name(r["prediction_file"], None) for r in records)
            if not (validation / f"{c}.npz").is_file()]


def _npz_problem(folder: Path, model: Model, fold: int) -> str | None:
    """What is wrong with a finished fold for the ensembles (None for an unfinished fold: it will be
    trained with --npz)."""
    fold_dir = folder / model.identifier / f"fold_{fold}"
    missing = missing_npz(fold_dir) if fold_state(fold_dir) == "finished" else []
    if not missing:
        return None
    return (f"{model.identifier}: fold {fold}: no .npz for {len(missing)} validation case(s) ({missing[0]}, ...), "
            f"which the ensembles need; trained without --npz? (nnUNetv2_train ... {fold} -tr {model.trainer} "
            f"-p {model.plans} --val --npz redoes its validation), or leave ensembles out with --no_ensembles")


def _trainer_problem(trainer: str) -> str | None:
    from nnunet_sss.training.lookup import find_trainer_class

    try:
        find_trainer_class(trainer)
    except (RuntimeError, AssertionError):
        return f"trainer {trainer} does not exist (neither in nnunetv2.training nor in nnUNet_extTrainer)"
    return None


def _plans_problems(preprocessed: Path, models: Iterable[Model]) -> list[str]:
    problems = []
    for plans in dict.fromkeys(m.plans for m in models):
        path = preprocessed / f"{plans}.json"
        if not path.is_file():
            problems.append(f"plans {plans}: no {path} (nnUNetv2_plan_and_preprocess or nnunet-sss plans writes it)")
            continue
        available = json.loads(path.read_text()).get("configurations", {})
        for configuration in dict.fromkeys(m.configuration for m in models if m.plans == plans):
            if configuration not in available:
                problems.append(f"plans {plans} has no configuration {configuration} "
                                f"(it has {', '.join(available)})")
    return problems


def check_before_training(study: Study, ensembles: bool) -> tuple[str, Path]:
    """Everything the study needs that can be checked before training, as one ComparisonInputError."""
    name, folder = results_dataset_folder(study.dataset)
    models = [m for m, _ in study.trainings()]
    problems = _plans_problems(Path(os.environ["nnUNet_preprocessed"]) / name, models)
    ensure_ext_trainer_path()
    problems += [p for p in map(_trainer_problem, dict.fromkeys(m.trainer for m in models)) if p]
    if ensembles:
        for configuration, folds in study.folds.items():
            for model in study.reference_models(configuration):
                for fold in folds:
                    problems += [p for p in [_npz_problem(folder, model, fold)] if p]
    if problems:
        raise ComparisonInputError(problems)
    return name, folder


# ----------------------------------------------------------------------------------------------
# Running nnU-Net's commands

def _call(command: list[str], env: dict) -> int:
    """Run one nnU-Net command with its output on this terminal (the one place a study starts processes)."""
    print("$ " + shlex.join(command), flush=True)
    start = time.time()
    code = subprocess.call(command, env=env)
    print(f"exit {code} after {time.time() - start:.0f} s", flush=True)
    return code


def nnunet_env() -> dict:
    """The protocol's environment: one augmentation worker, this package's trainers findable, and
    this interpreter's nnU-Net scripts first on PATH."""
    ensure_ext_trainer_path()
    return dict(os.environ, nnUNet_n_proc_DA="1",
                PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def train_command(dataset: str, model: Model, fold: int, device: str, resume: bool) -> list[str]:
    command = ["nnUNetv2_train", str(dataset), model.configuration, str(fold), "-tr", model.trainer,
               "-p", model.plans, "-device", device, "--npz"]
    return command + ["--c"] if resume else command


def train_folds(dataset: str, folder: Path, trainings: Sequence[tuple[Model, int]], device: str = "cpu",
                dry_run: bool = False, archive_dir: Path | None = None,
                after_fold: Callable[[Model, int], int] | None = None) -> int:
    """nnUNetv2_train for every (model, fold) not finished yet, one after the other; the first
    failure stops the run (its exit code is returned). With `archive_dir` (nnunet_sss/bench/archive.py)
    a fold the archive holds counts as finished, and each fold is archived as soon as it finishes.
    `after_fold(model, fold)` runs after each of them (a non-zero return stops the run)."""
    env = nnunet_env()
    for model, fold in trainings:
        code = _train_fold(dataset, folder, model, fold, device, dry_run, archive_dir, env)
        if code == 0 and after_fold is not None:
            code = after_fold(model, fold)
        if code != 0:
            return code
    return 0


def _train_fold(dataset: str, folder: Path, model: Model, fold: int, device: str, dry_run: bool,
                archive_dir: Path | None, env: dict) -> int:
    """One (model, fold) of train_folds: skipped if finished (or archived), else trained or continued."""
    fold_dir = folder / model.identifier / f"fold_{fold}"
    state = fold_state(fold_dir)
    if archive_dir is not None and state != "finished" and archived(archive_dir / folder.name, model, fold):
        print(f"archived already: {archive_dir / folder.name / model.identifier / f'fold_{fold}'}", flush=True)
        return 0
    if state == "finished":
        print(f"done already: {fold_dir}", flush=True)
        if archive_dir is not None and not dry_run:
            archive(dataset, archive_dir, folder.parent, only=(model.identifier, fold_dir.name))
        return 0
    command = train_command(dataset, model, fold, device, resume=state == "interrupted")
    if dry_run:
        print(f"would run ({state}): {shlex.join(command)}", flush=True)
        return 0
    code = _call(command, env)
    if code != 0:
        print(f"stopped: {shlex.join(command)} exited {code}; rerun the same command to continue "
              "(finished folds are kept)", file=sys.stderr, flush=True)
        return code
    if fold_state(fold_dir) != "finished":
        print(f"stopped: {shlex.join(command)} exited 0 but wrote no {fold_dir / 'validation' / 'summary.json'}",
              file=sys.stderr, flush=True)
        return 1
    if archive_dir is not None:
        archive(dataset, archive_dir, folder.parent, only=(model.identifier, fold_dir.name))
        print(f"archived: {archive_dir / folder.name / model.identifier / fold_dir.name}", flush=True)
    return 0


_FIND_BEST = ("import json, sys\n"
              "from nnunetv2.configuration import default_num_processes\n"
              "from nnunetv2.evaluation.find_best_configuration import find_best_configuration\n"
              "a = json.loads(sys.argv[1])\n"
              "find_best_configuration(a['dataset'], a['models'], folds=tuple(a['folds']),\n"
              "                        num_processes=a['np'] or default_num_processes)\n")


def find_best_command(dataset: str, models: Sequence[Model], folds: Sequence[int],
                      num_processes: int | None = None) -> list[str]:
    """nnUNetv2_find_best_configuration where its trainers x configurations x plans product is exactly
    `models`; else the function behind it, given the models themselves (trainers with plans of their own)."""
    trainers = list(dict.fromkeys(m.trainer for m in models))
    configurations = list(dict.fromkeys(m.configuration for m in models))
    plans = list(dict.fromkeys(m.plans for m in models))
    if list(models) == [Model(t, p, c) for t in trainers for c in configurations for p in plans]:
        command = ["nnUNetv2_find_best_configuration", str(dataset), "-c", *configurations, "-tr", *trainers,
                   "-p", *plans, "-f", *map(str, folds)]
        return command + (["-np", str(num_processes)] if num_processes else [])
    payload = {"dataset": str(dataset), "folds": list(folds), "np": num_processes,
               "models": [{"trainer": m.trainer, "plans": m.plans, "configuration": m.configuration} for m in models]}
    return [sys.executable, "-c", _FIND_BEST, json.dumps(payload)]


def ensemble_folder(folder: Path, a: Model, b: Model, folds: Sequence[int]) -> Path:
    """find_best_configuration's folder for the ensemble of a and b (either member order)."""
    names = [f"ensemble___{x.identifier}___{y.identifier}___{folds_string(folds)}" for x, y in ((a, b), (b, a))]
    existing = [n for n in names if (folder / ENSEMBLE_FOLDER / n).is_dir()]
    return folder / ENSEMBLE_FOLDER / (existing or names)[0]


def crossval_summary(folder: Path, model: Model, folds: Sequence[int]) -> Path:
    return folder / model.identifier / f"crossval_results_folds_{folds_string(folds)}" / "summary.json"


def find_best_outputs(folder: Path, models: Sequence[Model], folds: Sequence[int]) -> list[Path]:
    return ([crossval_summary(folder, m, folds) for m in models]
            + [ensemble_folder(folder, a, b, folds) / "summary.json" for a, b in combinations(models, 2)])


def inference_information_matches(folder: Path, models: Sequence[Model], folds: Sequence[int]) -> bool:
    """Whether the dataset's inference_information.json is from find_best_configuration on these models and folds."""
    path = folder / INFERENCE_INFORMATION
    if not path.is_file():
        return False
    info = json.loads(path.read_text())
    considered = {(m["trainer"], m["plans"], m["configuration"]) for m in info.get("considered_models", [])}
    return (list(info.get("folds", [])) == list(folds)
            and considered == {(m.trainer, m.plans, m.configuration) for m in models})


def find_best_is_fresh(folder: Path, models: Sequence[Model], folds: Sequence[int]) -> bool:
    """All of a call's outputs exist and are newer than every fold summary they pool."""
    outputs = find_best_outputs(folder, models, folds)
    if not all(p.is_file() for p in outputs):
        return False
    inputs = [folder / m.identifier / f"fold_{f}" / "validation" / "summary.json" for m in models for f in folds]
    return min(p.stat().st_mtime for p in outputs) >= max((p.stat().st_mtime for p in inputs if p.is_file()),
                                                            default=0.0)


def fold_ensembles(dataset: str, folder: Path, study: Study, configuration: str, fold: int, archive_dir: Path,
                   num_processes: int | None = None, dry_run: bool = False) -> int:
    """A study spread over sessions (--archive) cannot ensemble folds trained in other sessions (their .npz
    are gone), so each fold is ensembled as soon as its references are finished here:
    find_best_configuration on that fold alone, its ensembles then archived. RWKV-SSS and nnU-Net, whose
    ensemble the report needs, must both be here; the control joins where it is (its fold may come from
    the archive). Skipped where the archive holds that fold's ensemble of RWKV-SSS and nnU-Net already;
    named (the study goes on) where one of the two came from the archive."""
    refs = study.reference_models(configuration)
    baseline, _, rwkv = refs
    archive_dataset = archive_dir / folder.name
    if (ensemble_folder(archive_dataset, rwkv, baseline, (fold,)) / "summary.json").is_file():
        return 0
    here = [m for m in refs if fold_state(folder / m.identifier / f"fold_{fold}") == "finished"]
    elsewhere = [m for m in refs if m not in here and archived(archive_dataset, m, fold)]
    if rwkv not in here or baseline not in here:
        gone = [m.identifier for m in (baseline, rwkv) if m in elsewhere]
        if gone:
            print(f"note: {configuration} fold {fold} cannot be ensembled: {', '.join(gone)} was trained in an "
                  "earlier session (archived, its validation .npz gone)", file=sys.stderr, flush=True)
        return 0
    if len(here) + len(elsewhere) < len(refs):
        return 0  # the control is still to come
    problems = [p for m in here for p in [_npz_problem(folder, m, fold)] if p]
    if problems:
        print(f"note: {configuration} fold {fold} cannot be ensembled: {'; '.join(problems)}", file=sys.stderr,
              flush=True)
        return 0
    if elsewhere:
        print(f"note: {configuration} fold {fold}: {elsewhere[0].identifier} came from the archive; its ensembles "
              "are left out", file=sys.stderr, flush=True)
    code = _find_best(dataset, here, (fold,), num_processes, dry_run, nnunet_env())
    if code != 0 or dry_run:
        return code
    for a, b in combinations(here, 2):
        archive(dataset, archive_dir, folder.parent, only=(ENSEMBLE_FOLDER, ensemble_folder(folder, a, b, (fold,)).name))
    print(f"archived: the ensembles of {configuration} fold {fold}", flush=True)
    return 0


def run_find_best(dataset: str, folder: Path, study: Study, num_processes: int | None = None,
                  dry_run: bool = False) -> int:
    """The study's find_best_configuration calls; a call whose outputs are fresh is skipped, unless an
    earlier call ran (it rewrites inference_information.json, which the last call must own)."""
    env = nnunet_env()
    calls = study.find_best_calls()
    rerun = False
    for i, (models, folds) in enumerate(calls):
        fresh = find_best_is_fresh(folder, models, folds) and (
            i < len(calls) - 1 or inference_information_matches(folder, models, folds))
        if fresh and not rerun:
            print(f"done already: find_best_configuration on {', '.join(m.identifier for m in models)}, "
                  f"folds {folds_string(folds)}", flush=True)
            continue
        problems = [p for m in models for f in folds for p in [_npz_problem(folder, m, f)] if p]
        if problems:
            raise ComparisonInputError(problems)
        rerun = not dry_run
        code = _find_best(dataset, models, folds, num_processes, dry_run, env)
        if code != 0:
            return code
    return 0


def _find_best(dataset: str, models: Sequence[Model], folds: Sequence[int], num_processes: int | None,
               dry_run: bool, env: dict) -> int:
    """One find_best_configuration call (printed only, under dry_run); its exit code."""
    command = find_best_command(dataset, models, folds, num_processes)
    if dry_run:
        print(f"would run: {shlex.join(command)}", flush=True)
        return 0
    code = _call(command, env)
    if code != 0:
        print(f"stopped: nnUNetv2_find_best_configuration exited {code}", file=sys.stderr, flush=True)
    return code
