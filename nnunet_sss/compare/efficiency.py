"""The cost side of a comparison: training wall time from nnU-Net's logs, and each trainer's
network measured by nnunet_sss.measure.measure_network, built exactly as nnU-Net builds
it (the trainer's build_network_architecture on the plans.json stored with the results)."""
from __future__ import annotations

import json
import re
import statistics
from datetime import datetime
from pathlib import Path
from typing import Sequence

_LOG_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?): (.*)$")
_EPOCH_TIME = re.compile(r"Epoch time: ([0-9.eE+-]+) s")


def parse_training_log(path: Path) -> dict:
    """Timing of one nnU-Net training_log_*.txt (timestamps are nnU-Net's own, one per line)."""
    first = done = last = None
    epoch_times = []
    for line in Path(path).read_text(errors="replace").splitlines():
        match = _LOG_LINE.match(line)
        if not match:
            continue
        stamp = datetime.fromisoformat(match.group(1))
        first = first or stamp
        last = stamp
        if match.group(2).strip().startswith("Training done."):
            done = stamp
        epoch = _EPOCH_TIME.search(match.group(2))
        if epoch:
            epoch_times.append(float(epoch.group(1)))
    return {
        "log": str(path),
        "epochs": len(epoch_times),
        "epoch_times_s": epoch_times,
        "train_wall_s": (done - first).total_seconds() if done and first else None,
        "total_wall_s": (last - first).total_seconds() if last and first else None,
        "finished": done is not None,
    }


def training_time(fold_dir: Path) -> dict:
    """Training wall time of one fold: sums over its logs (a resumed training writes several)."""
    logs = sorted(Path(fold_dir).glob("training_log_*.txt"))
    if not logs:
        return {"error": f"no training_log_*.txt in {fold_dir}"}
    parsed = [parse_training_log(p) for p in logs]
    epoch_times = [t for p in parsed for t in p["epoch_times_s"]]
    train = [p["train_wall_s"] for p in parsed if p["train_wall_s"] is not None]
    total = [p["total_wall_s"] for p in parsed if p["total_wall_s"] is not None]
    return {
        "logs": [p["log"] for p in parsed],
        "finished": parsed[-1]["finished"],
        "epochs": len(epoch_times),
        "epoch_times_s": epoch_times,
        "epoch_time_median_s": statistics.median(epoch_times) if epoch_times else None,
        "epoch_time_sum_s": sum(epoch_times),
        # start of the log to "Training done." (initialisation and every epoch, without the final validation)
        "train_wall_s": sum(train) if train else None,
        # start of the log to its last line (with the final validation)
        "total_wall_s": sum(total) if total else None,
    }


def training_times(model_folder: Path, folds: Sequence) -> dict:
    per_fold = {str(f): training_time(Path(model_folder) / f"fold_{f}") for f in folds}
    walls = [v.get("train_wall_s") for v in per_fold.values()]
    return {"folds": per_fold,
            "train_wall_s_total": sum(walls) if walls and all(w is not None for w in walls) else None}


def build_trainer_network(model_folder: Path, trainer: str, configuration: str):
    """(network, input_shape, batch_size) as nnU-Net would build them for this trained model."""
    from nnunet_sss.training.lookup import build_network, find_trainer_class

    model_folder = Path(model_folder)
    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    return build_network(find_trainer_class(trainer), str(model_folder / "plans.json"), configuration, dataset_json,
                         True)


def measure_trainer_network(model_folder: Path, trainer: str, configuration: str, *, device: str = "cpu",
                            steps: int = 5, warmup: int = 2, memory: bool = True) -> dict:
    """measure_network's numbers for this model's network at its plans' patch and batch size."""
    from nnunet_sss.measure import measure_network

    network, input_shape, batch_size = build_trainer_network(model_folder, trainer, configuration)
    measured = measure_network(network, input_shape, batch_size, device=device, steps=steps, warmup=warmup,
                               memory=memory)
    return {"network_class": f"{type(network).__module__}.{type(network).__qualname__}", **measured.as_dict()}
