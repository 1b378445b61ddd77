"""`nnunet-sss demo`: the main job, baseline nnU-Net against RWKV-SSS, end to end.

On a fresh machine: make (or link) an nnU-Net raw dataset, plan and preprocess it, train the
baseline and RWKV-SSS on the same fold under a short schedule, predict and evaluate the test
set, ensemble the two (cross-validation and test set), and write the comparison report. Every
step is nnU-Net's own command line, run as a subprocess in a workspace under the output
folder (nnUNet_raw, nnUNet_preprocessed, nnUNet_results, logs); the report is
OUT/report/comparison.md. Finished steps are skipped when the demo is rerun on the same folder.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nnunet_sss.checks import UsageError, int_at_least, read_json, writable_folder

BASELINE = "nnUNetTrainer"
RWKVSSS = "nnUNetTrainerRWKVSSS"
PHANTOM_ID, PHANTOM_NAME = 990, "Phantom"


@dataclass(frozen=True)
class Budget:
    schedule: str                       # suffix of a schedule in nnunet_sss.training.schedules
    num_train: int                      # phantom cases (ignored for --dataset)
    num_test: int
    shape: tuple | None                 # phantom volume (z, y, x); None: the phantom's default
    bench_steps: int                    # timed train steps per network in the report
    bench_warmup: int
    bench_memory: bool = True           # peak memory costs a subprocess per network


BUDGETS = {
    # CI: proves the pipeline end to end, not the networks (smaller volumes: fewer, cheaper steps)
    "tiny": Budget("smoke", 10, 2, (24, 28, 24), bench_steps=1, bench_warmup=0, bench_memory=False),
    # the main job: < 10 min on 2 CPU cores
    "demo": Budget("demo", 24, 6, None, bench_steps=2, bench_warmup=1),
    # ../shared/protocols/hippocampus-cpu.md's schedule
    "cpubudget": Budget("cpubudget", 24, 6, None, bench_steps=5, bench_warmup=2),
}
_DATASET_NAME = re.compile(r"^Dataset(\d{3})_\S+$")


class DemoError(UsageError):
    """The demo cannot go on: the message names the step or input, what is wrong and the log."""


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of every finished subprocess, their workers included."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Progress:
    """Stage names, elapsed wall time and CPU time on stdout. CPU time bounds the wall time a
    stage needs on an otherwise idle machine (more cores only shorten it), which makes the run
    comparable across busy and idle machines."""

    def __init__(self, total: int):
        self.start, self.cpu_start = time.perf_counter(), cpu_seconds()
        self.total = total
        self.index = 0

    def elapsed(self) -> str:
        seconds = int(time.perf_counter() - self.start)
        return f"{seconds // 60:d}:{seconds % 60:02d}"

    def cpu(self) -> float:
        return cpu_seconds() - self.cpu_start

    def stage(self, name: str) -> tuple[float, float]:
        self.index += 1
        print(f"[{self.elapsed()}] ({self.index}/{self.total}) {name}", flush=True)
        return time.perf_counter(), cpu_seconds()

    def done(self, started: tuple[float, float], what: str = "done") -> None:
        wall, cpu = time.perf_counter() - started[0], cpu_seconds() - started[1]
        print(f"[{self.elapsed()}]     {what} in {wall:.0f} s (CPU {cpu:.0f} s)", flush=True)

    def say(self, text: str) -> None:
        print(f"[{self.elapsed()}]     {text}", flush=True)


class _TrainingEcho:
    """One progress line per nnU-Net epoch, from the lines nnUNetv2_train prints."""

    def __init__(self, progress: Progress, epochs: int):
        self.progress, self.epochs, self.state = progress, epochs, {}

    def __call__(self, line: str) -> None:
        text = line.split(": ", 1)[-1].strip()
        if text.startswith("Epoch ") and text[6:].isdigit():
            self.state = {"epoch": int(text[6:])}
        elif text.startswith("train_loss"):
            self.state["loss"] = text.split()[-1]
        elif text.startswith("Pseudo dice"):
            self.state["dice"] = ", ".join(re.findall(r"[-+]?\d*\.\d+|\d+", text.replace("float32", "")))
        elif text.startswith("Epoch time"):
            epoch = self.state.get("epoch")
            self.progress.say(f"epoch {'?' if epoch is None else epoch + 1}/{self.epochs}: train loss "
                              f"{self.state.get('loss', '?')}, pseudo Dice [{self.state.get('dice', '?')}], "
                              f"{text.split(':', 1)[1].strip()}")
        elif text.startswith("Mean Validation Dice"):
            self.progress.say(f"final validation: mean Dice {text.split(':', 1)[1].strip()}")


def run_tool(command: list[str], env: dict, log: Path, echo=None) -> None:
    """Run one nnU-Net command; its output goes to `log` (lines passed to `echo` too). Raise on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    executable = shutil.which(command[0], path=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""))
    if executable is None:
        raise DemoError(f"{command[0]} not found: is nnU-Net v2 installed in this environment?")
    with open(log, "a") as f:
        f.write(f"$ {' '.join(command)}\n")
        f.flush()
        proc = subprocess.Popen([executable, *command[1:]], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            f.write(line)
            if echo is not None:
                echo(line)
        code = proc.wait()
    if code != 0:
        last = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        raise DemoError(f"{command[0]} exited with {code} ({last[0] if last else 'no output'}); "
                        f"the command and its whole output: {log}")


def nnunet_environment(work: Path, processes: int) -> dict:
    """os.environ with the workspace's nnU-Net folders, the trainer lookup and small worker counts."""
    from nnunet_sss.env import VARIABLE, export_value

    env = dict(os.environ)
    env.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"), PYTHONUNBUFFERED="1")
    env[VARIABLE] = export_value(os.environ)
    env.setdefault("nnUNet_n_proc_DA", "1")
    env["nnUNet_def_n_proc"] = str(processes)
    return env


def check_dataset(dataset: Path) -> tuple[int, str]:
    """(id, name) of a user's nnU-Net raw dataset folder, or a DemoError naming what is wrong."""
    dataset = dataset.resolve()
    if not dataset.is_dir():
        raise DemoError(f"--dataset {dataset}: no such folder; give an nnU-Net raw dataset folder (DatasetXXX_Name)")
    match = _DATASET_NAME.match(dataset.name)
    if not match:
        raise DemoError(f"--dataset {dataset}: the folder must be named DatasetXXX_Name (nnU-Net raw format)")
    for required in ("dataset.json", "imagesTr", "labelsTr"):
        if not (dataset / required).exists():
            raise DemoError(f"--dataset {dataset}: no {required} (not an nnU-Net raw dataset)")
    description = read_json(dataset / "dataset.json", "dataset description")
    missing = [k for k in ("labels", "numTraining", "file_ending") if k not in description]
    missing += [] if "channel_names" in description or "modality" in description else ["channel_names"]
    if missing:
        raise DemoError(f"--dataset {dataset}: dataset.json lacks {', '.join(missing)} (see nnU-Net's "
                        f"dataset_format.md)")
    return int(match.group(1)), dataset.name


def link_dataset(raw_root: Path, dataset: Path) -> None:
    """Symlink a user's raw dataset into the workspace's nnUNet_raw (nothing is copied)."""
    dataset = dataset.resolve()
    target = raw_root / dataset.name
    raw_root.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        if target.resolve() != dataset:
            raise DemoError(f"{target} already holds another dataset ({target.resolve()}); use another -o")
    else:
        target.symlink_to(dataset, target_is_directory=True)


def check_workspace(record: Path, settings: dict) -> None:
    """A workspace is reused (finished steps skipped) only for the same dataset, budget and seed."""
    if record.is_file():
        before = json.loads(record.read_text())
        changed = {k: (before.get(k), v) for k, v in settings.items() if k != "configuration" and before.get(k) != v}
        if changed:
            raise DemoError(f"{record.parent.parent} holds a demo run with other settings "
                            f"({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
                            "use another -o or delete it")
    else:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(settings, indent=1))


def _done(marker: Path) -> bool:
    return marker.is_file()


def _mark(marker: Path) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_demo(output: str | os.PathLike, dataset: str | os.PathLike | None = None, budget: str = "demo",
             configuration: str = "3d_fullres", fold: int = 0, trainers: tuple[str, str] = (BASELINE, RWKVSSS),
             device: str = "auto", processes: int | None = None, benchmark: bool = True, seed: int = 0) -> Path:
    """The main job; returns the path of comparison.md. Input the user can fix is refused (a
    DemoError or UsageError) before anything is written or imported that takes long."""
    if budget not in BUDGETS:
        raise DemoError(f"unknown budget {budget!r}; choose one of {sorted(BUDGETS)}")
    plan = BUDGETS[budget]
    suffix, num_train, num_test = plan.schedule, plan.num_train, plan.num_test
    if dataset is None:
        dataset_id, dataset_name, has_test = PHANTOM_ID, f"Dataset{PHANTOM_ID:03d}_{PHANTOM_NAME}", num_test > 0
    else:
        dataset_id, dataset_name = check_dataset(Path(dataset))
        has_test = all((Path(dataset) / sub).is_dir() and any((Path(dataset) / sub).iterdir())
                       for sub in ("imagesTs", "labelsTs"))
    work = writable_folder(Path(output).resolve(), "output folder (-o)")
    from nnunet_sss.training import SCHEDULES, TRAINERS

    schedule = SCHEDULES[suffix]
    names = [f"{t}_{suffix}" for t in trainers]
    missing = [n for n in names if n not in TRAINERS]
    if missing:
        raise DemoError(f"no trainer {', '.join(missing)} in nnunet_sss.training (budget {budget!r})")
    # nnU-Net's worker pools start by spawning (a fresh interpreter importing torch each): on the
    # small phantom that costs more than it saves, so one worker; a real dataset gets up to four
    processes = processes or (1 if dataset is None else max(1, min(4, os.cpu_count() or 1)))
    device = _device(device)
    env = nnunet_environment(work, processes)
    logs = work / "logs"
    raw = work / "nnUNet_raw"
    raw_dataset = raw / dataset_name
    progress = Progress(total=6 + (3 if has_test else 0))
    print(f"nnunet-sss demo: {names[0]} vs {names[1]}, {configuration}, fold {fold}, {schedule.epochs} epochs x "
          f"{schedule.iterations} iterations, device {device}, workspace {work}", flush=True)

    def step(name: str, key: str, commands: list[list[str]], echo=None) -> None:
        started = progress.stage(name)
        if _done(logs / f"{key}.done"):
            progress.say("already done, skipped")
            return
        for command in commands:
            run_tool(command, env, logs / f"{key}.log", echo)
        _mark(logs / f"{key}.done")
        progress.done(started)

    settings = {"dataset": str(Path(dataset).resolve()) if dataset is not None else "phantom",
                "budget": budget, "seed": seed, "configuration": configuration}
    check_workspace(logs / "demo_settings.json", settings)

    started = progress.stage("dataset")
    if dataset is not None:
        link_dataset(raw, Path(dataset))
        progress.say(f"using {dataset_name} from {Path(dataset).resolve()}")
    elif _done(logs / "dataset.done"):
        progress.say(f"{dataset_name} already written")
    else:
        from nnunet_sss.phantom import DEFAULT_SHAPE, write_phantom_dataset

        if raw_dataset.exists():
            shutil.rmtree(raw_dataset)  # half-written by an interrupted run
        shape = plan.shape or DEFAULT_SHAPE
        write_phantom_dataset(raw, PHANTOM_ID, PHANTOM_NAME, num_train=num_train, num_test=num_test,
                              shape=shape, seed=seed)
        _mark(logs / "dataset.done")
        progress.say(f"synthetic phantom {dataset_name}: {num_train} training + {num_test} test cases of "
                     f"{'x'.join(map(str, shape))} voxels")
    if not has_test:
        progress.say("no imagesTs/labelsTs: the report compares the cross-validation fold only")
    progress.done(started)

    step("nnUNetv2_plan_and_preprocess", f"plan_and_preprocess_{configuration}",
         [["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", configuration, "-np", str(processes),
           "-npfp", str(processes), "--verify_dataset_integrity"]])
    for name in names:
        step(f"nnUNetv2_train {name} (fold {fold})", f"train_{name}_{configuration}_{fold}",
             [["nnUNetv2_train", str(dataset_id), configuration, str(fold), "-tr", name, "-device", device,
               "--npz"]], echo=_TrainingEcho(progress, schedule.epochs))
    step("nnUNetv2_find_best_configuration (cross-validation ensemble)", f"find_best_{'_'.join(names)}_{fold}",
         [["nnUNetv2_find_best_configuration", str(dataset_id), "-c", configuration, "-tr", *names,
           "-f", str(fold), "-np", str(processes)]])

    test_folders = []
    if has_test:
        predictions = work / "test_predictions"

        def evaluate(folder: Path, plans_folder: Path) -> list[str]:
            return ["nnUNetv2_evaluate_folder", str(raw_dataset / "labelsTs"), str(folder), "-djfile",
                    str(folder / "dataset.json"), "-pfile", str(plans_folder / "plans.json"), "-np", str(processes)]

        for name in names:
            out = predictions / name
            step(f"nnUNetv2_predict + nnUNetv2_evaluate_folder: {name}, test set", f"predict_{name}_{fold}",
                 [["nnUNetv2_predict", "-i", str(raw_dataset / "imagesTs"), "-o", str(out), "-d", str(dataset_id),
                   "-c", configuration, "-tr", name, "-f", str(fold), "--save_probabilities", "-device", device,
                   "-npp", "1", "-nps", "1", "--disable_progress_bar"], evaluate(out, out)])
            test_folders.append((name, str(out)))
        ensemble = predictions / "ensemble"
        step("nnUNetv2_ensemble + nnUNetv2_evaluate_folder: test-set ensemble", f"ensemble_{'_'.join(names)}_{fold}",
             [["nnUNetv2_ensemble", "-i", *(f for _, f in test_folders), "-o", str(ensemble), "-np",
               str(processes)], evaluate(ensemble, Path(test_folders[0][1]))])
        test_folders.append((f"ensemble({' + '.join(names)})", str(ensemble)))

    started = progress.stage("nnunet-sss compare")
    from nnunet_sss.compare.comparison import run_comparison

    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    comparison = run_comparison(dataset_id, [configuration], names, [fold], work / "report",
                                results_dir=work / "nnUNet_results", test_folders=test_folders,
                                benchmark=benchmark, bench_device=device, bench_steps=plan.bench_steps,
                                bench_warmup=plan.bench_warmup, bench_memory=plan.bench_memory,
                                progress=progress.say)
    progress.done(started)
    print_summary(comparison, work / "report" / "comparison.md", progress)
    return work / "report" / "comparison.md"


def print_summary(comparison: dict, report: Path, progress: Progress) -> None:
    """The answer in a few lines: Dice per entry, the paired difference, the cost ratios."""
    print(f"\n=== {comparison['dataset']}: foreground Dice (mean over cases) ===")
    for group in comparison["groups"].values():
        print(f"{group['title']}:")
        for e in group["entries"]:
            dice = e["summary"]["foreground_mean"]["Dice"]
            print(f"  {e['label']:<60} {dice['mean']:.4f} ± {dice['std']:.4f}  ({e['n_cases']} cases)")
        for p in group["paired"]:
            if p["metric"] == "Dice" and p["class"] == "foreground_mean":
                print(f"  {p['b']} − {p['a']}: {p['mean_difference']:+.4f} "
                      f"[{p['ci_low']:+.4f}, {p['ci_high']:+.4f}], Wilcoxon p = {p['p_value']:.3g}")
    eff = comparison.get("efficiency", {})
    if eff:
        print("cost:")
        for label, e in eff.items():
            net = e.get("network") or {}
            wall = e["training"].get("train_wall_s_total")
            parts = []
            if net.get("params") is not None:
                parts.append(f"{net['params'] / 1e6:.2f} M params")
            if net.get("step_time_s") is not None:
                parts.append(f"{net['step_time_s']:.2f} s/step")
            if wall is not None:
                parts.append(f"training {wall / 60:.1f} min")
            print(f"  {label:<60} {', '.join(parts) or net.get('error', 'n/a')}")
    print(f"\nreport: {report} (total {progress.elapsed()} wall, {progress.cpu() / 60:.1f} min CPU)", flush=True)


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the main job: baseline nnU-Net vs RWKV-SSS end to end, with a report",
                              description=__doc__.splitlines()[0])
    p.add_argument("-o", dest="output", required=True, help="workspace and output folder")
    p.add_argument("--dataset", default=None,
                   help="an nnU-Net raw dataset folder (DatasetXXX_Name); default: a synthetic phantom")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="demo",
                   help="training schedule: tiny (CI smoke), demo (default, < 10 min on 2 CPU cores), cpubudget")
    p.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration (default: 3d_fullres)")
    p.add_argument("-f", dest="fold", type=int, default=0, help="fold (default: 0)")
    p.add_argument("-tr", dest="trainers", nargs=2, default=[BASELINE, RWKVSSS], metavar=("BASELINE", "OTHER"),
                   help=f"the two trainers; the budget's schedule suffix is appended (default: {BASELINE} {RWKVSSS})")
    p.add_argument("-device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")
    p.add_argument("-np", dest="processes", type=int_at_least(1), default=None,
                   help="worker processes of nnU-Net's pools (default: 1 for the phantom, else min(4, cores))")
    p.add_argument("--no_benchmark", action="store_true", help="skip measuring the networks in the report")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic phantom (default: 0)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """A DemoError (or the comparison's input error) is the user's to fix: nnunet-sss prints it in one line."""
    run_demo(args.output, args.dataset, args.budget, args.configuration, args.fold, tuple(args.trainers),
             args.device, args.processes, not args.no_benchmark, args.seed)
    return 0
