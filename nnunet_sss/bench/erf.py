"""Effective receptive field (Luo et al., NeurIPS 2016) of trained models and of networks at init:
how far from a voxel the input still moves the network's output at that voxel.

    python -m nnunet_sss.bench.erf --model FOLD [FOLD ...] [--cases N] [--data DIR]
    python -m nnunet_sss.bench.erf --plans hippocampus2d large3d large2d aniso3d [--arms tokenDecay ...] [--cases N] [--data DIR]

Long-range token mixing can only add context that the conv path does not already bring. This
measures, per model, the reach that training gave it: for each input case, the voxel is the
centroid of the reference foreground inside the crop (the foreground voxel nearest it; the
patch centre where there are no labels, as for noise), the map is |d(sum of the foreground
logits at that voxel) / d input| summed over input channels, and the radius around the voxel
that holds 50% and 90% of the map's mass is its reach. Beside it: the foreground's own 90%
radius around the same voxel, and the share of the map's mass that lies beyond it (how much the
output at the object depends on input outside the object). Medians over cases; radii in voxels
and in mm (the plans' spacing). Any nnU-Net model works, so nnU-Net's network and RWKV-SSS's
arms are read the same way; a fold is read as `wkv_probe` reads it (nnunet_sss/bench/trained.py).
The networks at init (`--plans`: the bench's plans and its layouts for large images, bench/network.py
LAYOUTS) are PlainConvUNet and RWKV-SSS (and `--arms`) from seed 0; their radii are in voxels.

Instance norm makes every output depend a little on every input voxel (its statistics), in both
networks alike; that floor is part of what the map shows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from .network import LAYOUTS
from .trained import load_fold, preprocessed_cases, probe_main
from .wkv_probe import network_at_init

QUANTILES = (0.5, 0.9)


def distances(shape: Sequence[int], voxel: Sequence[int], spacing: Sequence[float]) -> Tensor:
    """Euclidean distance (in the units of `spacing`) of every voxel of `shape` from `voxel`."""
    grids = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape), indexing="ij")
    return torch.sqrt(sum(((g - v) * s) ** 2 for g, v, s in zip(grids, voxel, spacing)))


def mass_radii(weights: Tensor, voxel: Sequence[int], spacing: Sequence[float],
               quantiles: Sequence[float] = QUANTILES) -> List[float]:
    """The smallest radii around `voxel` whose balls hold each quantile of the (non-negative) weights' mass."""
    dist = distances(weights.shape, voxel, spacing).flatten()
    order = torch.argsort(dist, stable=True)
    mass = weights.detach().double().flatten()[order]
    if not bool(mass.sum() > 0):
        raise ValueError("the map has no mass: the output does not depend on the input")
    cumulative = torch.cumsum(mass, 0) / mass.sum()
    index = torch.searchsorted(cumulative, torch.tensor(list(quantiles), dtype=torch.float64))
    return [float(dist[order][min(int(i), len(dist) - 1)]) for i in index]


def output_voxel(labels: Optional[Tensor], shape: Sequence[int]) -> tuple:
    """The foreground voxel nearest the foreground's centroid; the centre without foreground."""
    if labels is None or not bool((labels > 0).any()):
        return tuple(n // 2 for n in shape)
    points = torch.nonzero(labels > 0).double()
    centroid = points.mean(0)
    nearest = torch.argmin(((points - centroid) ** 2).sum(1))
    return tuple(int(v) for v in points[nearest])


def gradient_map(network: nn.Module, x: Tensor, voxel: Sequence[int]) -> Tensor:
    """|d(sum of the foreground logits at `voxel`) / d x| summed over channels, for one (C, *S) input."""
    x = x.unsqueeze(0).clone().requires_grad_(True)
    out = network(x)
    out = out[0] if isinstance(out, (list, tuple)) else out  # deep supervision: the full-resolution head
    target = out[(0, slice(1, None), *voxel)].sum()
    (grad,) = torch.autograd.grad(target, x)
    return grad[0].abs().sum(0)


@dataclass
class CaseReach:
    erf: List[float]          # radii holding QUANTILES of the gradient's mass (mm)
    object_r90: Optional[float]  # the foreground's 90% radius around the voxel (mm); None without labels
    beyond_object: Optional[float]  # the gradient's mass farther than object_r90


def case_reach(network: nn.Module, x: Tensor, labels: Optional[Tensor], spacing: Sequence[float]) -> CaseReach:
    voxel = output_voxel(labels, x.shape[1:])
    grad = gradient_map(network, x, voxel)
    erf = mass_radii(grad, voxel, spacing)
    if labels is None or not bool((labels > 0).any()):
        return CaseReach(erf, None, None)
    object_r90 = mass_radii((labels > 0).double(), voxel, spacing, (0.9,))[0]
    beyond = float(grad[distances(grad.shape, voxel, spacing) > object_r90].sum() / grad.sum())
    return CaseReach(erf, object_r90, beyond)


def reach(network: nn.Module, x: Tensor, labels: Optional[Tensor], spacing: Sequence[float]) -> dict:
    """Medians over the cases of x (and their labels): ERF radii, object radius, mass beyond it."""
    was_training = network.training
    network.eval()
    try:
        cases = [case_reach(network, x[i], None if labels is None else labels[i], spacing) for i in range(len(x))]
    finally:
        network.train(was_training)
    with_object = [c for c in cases if c.object_r90 is not None]
    out = {f"r{round(q * 100)}": median(c.erf[i] for c in cases) for i, q in enumerate(QUANTILES)}
    out["object_r90"] = median(c.object_r90 for c in with_object) if with_object else None
    out["beyond_object"] = median(c.beyond_object for c in with_object) if with_object else None
    out["cases"] = len(cases)
    return out


HEADER = ["| network | cases | ERF r50 (mm) | ERF r90 (mm) | object r90 (mm) | ERF r90 / object r90 "
          "| gradient mass beyond the object's r90 |", "| --- | --- | --- | --- | --- | --- | --- |"]


def row(name: str, r: dict) -> str:
    def mm(v):
        return "-" if v is None else f"{v:.1f}"
    ratio = "-" if r["object_r90"] in (None, 0) else f"{r['r90'] / r['object_r90']:.2f}"
    beyond = "-" if r["beyond_object"] is None else f"{r['beyond_object']:.2f}"
    return f"| {name} | {r['cases']} | {mm(r['r50'])} | {mm(r['r90'])} | {mm(r['object_r90'])} | {ratio} | {beyond} |"


def _inputs(patch, channels: int, data: Optional[Path], n_cases: int, cases: Optional[Sequence[str]] = None):
    if data is not None:
        x, labels = preprocessed_cases(data, patch, n_cases, with_labels=True, cases=cases)
        return x, labels
    return torch.randn((n_cases, channels, *patch), generator=torch.Generator().manual_seed(0)), None


def at_init(plan_name: str, arms: List[str], data: Optional[Path], n_cases: int) -> List[str]:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    plan = LAYOUTS[plan_name]
    x, labels = _inputs(plan["patch"], plan["kwargs"]["input_channels"], data, n_cases)
    torch.manual_seed(0)
    rows = [row(f"{plan_name} at init: PlainConvUNet", reach(PlainConvUNet(**plan["kwargs"]), x, labels,
                                                             (1.0,) * len(plan["patch"])))]
    for arm in ["defaults", *arms]:
        _, network = network_at_init(plan, arm)
        rows.append(row(f"{plan_name} at init: RWKV-SSS {arm}", reach(network, x, labels, (1.0,) * len(plan["patch"]))))
    return rows


def trained(fold_folder: Path, data: Optional[Path], n_cases: int) -> str:
    fold = load_fold(fold_folder)
    cases = fold.validation if data is None else None  # the fold's own validation cases, unseen in its training
    data = data if data is not None else fold.data
    x, labels = _inputs(fold.patch, fold.input_channels, data, n_cases, cases)
    return row(f"{fold.model} {Path(fold_folder).name}", reach(fold.network, x, labels, fold.spacing))


def _run(args) -> None:
    rows = [r for name in args.plans for r in at_init(name, args.arms, args.data, args.cases)]
    rows += [trained(folder, args.data, args.cases) for folder in args.model]
    print("\n".join(HEADER + rows))


def main(argv=None) -> int:
    return probe_main("python -m nnunet_sss.bench.erf", __doc__.split("\n\n")[0], _run, argv, default_cases=8,
                      arms_help="ablation/candidate arms at init beside PlainConvUNet and the defaults",
                      data_help="an nnU-Net preprocessed folder of the configuration (images and labels)")


if __name__ == "__main__":
    raise SystemExit(main())
