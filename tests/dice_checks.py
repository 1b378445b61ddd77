"""What a trained network's Dice must beat, read from a summary.json nnU-Net's evaluation wrote.

Background everywhere scores 0 on every class a case holds. A prediction made without looking
at the image, labelling a share q of the voxels as class c, has an expected Dice of
2pq / (p + q) < 2p for class c, where p is the class's share of the case's voxels (labelling
every voxel c gives 2p / (1 + p)); an untrained network, whose output does not follow the
structure, is such a prediction. So a foreground mean Dice above the mean over classes of 2p is
one that only a network that looks at the image reaches.

The smoke schedule (2 epochs x 3 iterations) learns the demo's phantom well past that bound
(foreground Dice 0.18-0.30 against 0.023-0.027, validation and test set, both trainers), but not
Hippocampus reliably: two runs of the same test gave 3d_fullres validation Dice 0.154 and 0.042
against a bound of 0.047 (2d 0.083, the unseen cases 0.053 against 0.055). There the check is
against background everywhere: every class found somewhere, as nnU-Net's evaluation counts it.
"""
import json
import math
from pathlib import Path


def _summary(summary_file: Path) -> dict:
    return json.loads(Path(summary_file).read_text())


def image_blind_dice(summary: dict) -> float:
    """Mean over foreground classes (of the mean over cases) of 2 x the class's share of the voxels."""
    shares = {}
    for record in summary["metric_per_case"]:
        for label, m in record["metrics"].items():
            voxels = m["TP"] + m["FP"] + m["FN"] + m["TN"]
            shares.setdefault(label, []).append(2 * m["n_ref"] / voxels)
    return sum(sum(v) / len(v) for v in shares.values()) / len(shares)


def dice_above_image_blind(summary_file: Path) -> float:
    """nnU-Net's foreground mean Dice in `summary_file`, asserted to beat image_blind_dice."""
    summary = _summary(summary_file)
    dice, bound = summary["foreground_mean"]["Dice"], image_blind_dice(summary)
    assert math.isfinite(dice) and dice > bound, (
        f"{summary_file}: foreground Dice {dice} does not beat {bound:.4f}, the most a prediction that ignores "
        f"the image scores on these cases (per class {summary['mean']})")
    return dice


def dice_above_background(summary_file: Path) -> dict:
    """Each foreground class's mean Dice in `summary_file`, asserted above 0: what background
    everywhere scores, since every case holds every class (checked)."""
    summary = _summary(summary_file)
    assert all(m["n_ref"] > 0 for record in summary["metric_per_case"] for m in record["metrics"].values())
    dice = {label: scores["Dice"] for label, scores in summary["mean"].items()}
    assert all(math.isfinite(d) and d > 0 for d in dice.values()), (
        f"{summary_file}: a class scores no better than background everywhere (Dice 0): {dice}")
    return dice
