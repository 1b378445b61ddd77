"""`python -m nnunet_sss.bench.protocol`: its table against the demo run's own files, and its
refusals."""
import json
import re
import subprocess
import sys

import pytest

from nnunet_sss.bench import protocol
from nnunet_sss.bench.study_report import iterations_per_epoch
from nnunet_sss.training import SCHEDULES

from .conftest import CONFIGURATION, SUFFIX, TRAINERS, clean_env


def _table(demo_run, *extra):
    env = dict(clean_env(), nnUNet_raw=str(demo_run.root / "nnUNet_raw"),
               nnUNet_preprocessed=str(demo_run.root / "nnUNet_preprocessed"), nnUNet_results=str(demo_run.results))
    return subprocess.run([sys.executable, "-m", "nnunet_sss.bench.protocol", "table", "-d", "990", "-c",
                           CONFIGURATION, "-tr", *TRAINERS, *extra], capture_output=True, text=True, env=env, timeout=300)


def test_table_rows_are_the_summary_json_scores(demo_run):
    proc = _table(demo_run, "-f", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(f"| {CONFIGURATION} | 0 |")]
    assert len(rows) == len(TRAINERS)
    for trainer, row in zip(TRAINERS, rows):
        cells = [c.strip() for c in row.strip("|").split("|")]
        summary = json.loads((demo_run.model_folder(trainer) / "fold_0" / "validation" / "summary.json").read_text())
        assert cells[2] == trainer
        assert float(cells[4]) == pytest.approx(summary["mean"]["1"]["Dice"], abs=5e-5)
        assert float(cells[5]) == pytest.approx(summary["mean"]["2"]["Dice"], abs=5e-5)
        assert float(cells[6]) == pytest.approx(summary["foreground_mean"]["Dice"], abs=5e-5)
        assert cells[7] == f"{demo_run.trained_parameters(trainer) / 1e6:.2f} M"
        log = sorted((demo_run.model_folder(trainer) / "fold_0").glob("training_log_*.txt"))[-1].read_text()
        last_epoch = float(re.findall(r"Epoch time: ([0-9.]+) s", log)[-1])
        assert float(cells[8]) == pytest.approx(last_epoch / SCHEDULES[SUFFIX].iterations, abs=0.005)  # s / it
    # the two networks differ, so the parameter cells must too
    assert rows[0].split("|")[8] != rows[1].split("|")[8]


def test_table_says_which_fold_is_missing(demo_run):
    proc = _table(demo_run, "-f", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("not finished: no ") == len(TRAINERS)
    assert "fold_3" in proc.stdout


def test_plans_must_pair_with_trainers():
    with pytest.raises(SystemExit, match="one per trainer"):
        protocol.main(["run", "-tr", "a", "b", "c", "-p", "p1", "p2"])


def test_iterations_per_epoch_follow_debug_json_else_the_schedule_table(tmp_path):
    assert iterations_per_epoch(tmp_path, "nnUNetTrainerRWKVSSS_cpubudget") == 50
    assert iterations_per_epoch(tmp_path, "nnUNetTrainer_smoke") == 3
    assert iterations_per_epoch(tmp_path, "nnUNetTrainer") == 250
    (tmp_path / "debug.json").write_text(json.dumps({"num_iterations_per_epoch": "7"}))  # as nnU-Net writes it
    assert iterations_per_epoch(tmp_path, "nnUNetTrainer") == 7
