"""Synthetic MRI-like phantom dataset in nnU-Net raw format, so the demo needs no download.

Each case holds one curved, tube-like structure (a sweep of spheres along a bent centreline,
thick at the head and thin at the tail, like a hippocampus) split across its length into two
adjacent labels: 1 (head, "anterior") and 2 (tail, "posterior"). Pose, size, bend and the
split point are random per case. The image is an intensity model, not a label map with noise:
tissue classes with different means and a smooth background texture, partial-volume blur,
a smooth multiplicative bias field and Rician noise. Everything follows from one seed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

LABELS = {"background": 0, "anterior": 1, "posterior": 2}
DEFAULT_SHAPE = (32, 40, 32)
_CENTRELINE_POINTS = 48


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A random rotation matrix (QR of a Gaussian matrix, sign-fixed so it is uniform)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _centreline(rng: np.random.Generator, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points of a bent centreline (quadratic Bezier) in voxel coordinates, and the radius at each."""
    extent = float(shape.min())
    length = rng.uniform(0.45, 0.6) * extent
    bend = rng.uniform(0.1, 0.3) * length
    s = np.linspace(0.0, 1.0, _CENTRELINE_POINTS)
    # canonical curve along axis 0, bent towards axis 1, then rotated and placed
    p0, p1, p2 = np.array([-length / 2, 0, 0]), np.array([0, 2 * bend, 0]), np.array([length / 2, 0, 0])
    curve = ((1 - s) ** 2)[:, None] * p0 + (2 * (1 - s) * s)[:, None] * p1 + (s ** 2)[:, None] * p2
    curve -= curve.mean(0)
    margin = 0.5 * length / 2 + 2
    centre = shape / 2 + rng.uniform(-1, 1, 3) * np.maximum(shape / 2 - margin - length / 2, 0) * 0.5
    points = curve @ _rotation(rng).T + centre
    head, tail = rng.uniform(0.11, 0.15) * extent, rng.uniform(0.06, 0.09) * extent
    radius = head + (tail - head) * s ** 1.5
    return points, radius


def _bias_field(rng: np.random.Generator, grid: np.ndarray, shape: np.ndarray, strength: float) -> np.ndarray:
    """Smooth multiplicative field: exp of a random 2nd-order polynomial, mean 1."""
    x = (grid - shape[:, None, None, None] / 2) / (shape[:, None, None, None] / 2)
    terms = [x[0], x[1], x[2], x[0] * x[1], x[1] * x[2], x[0] * x[2], x[0] ** 2, x[1] ** 2, x[2] ** 2]
    log_field = sum(c * t for c, t in zip(rng.normal(0, 1, len(terms)), terms))
    log_field *= strength / max(np.abs(log_field).max(), 1e-6)
    field = np.exp(log_field)
    return field / field.mean()


def phantom_case(seed: int | np.random.SeedSequence, shape: Sequence[int] = DEFAULT_SHAPE,
                 noise: float = 0.06, bias: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """One case: (image float32, label uint8), both of `shape` (z, y, x), deterministic in `seed`.

    noise: Rician noise level relative to the structure's intensity; bias: peak log-amplitude
    of the multiplicative bias field (0.3 means roughly +-35 %).
    """
    shape_arr = np.asarray(shape, dtype=int)
    if shape_arr.shape != (3,) or (shape_arr < 16).any():
        raise ValueError(f"phantom shape must be three axes of at least 16 voxels, got {tuple(shape)}")
    rng = np.random.default_rng(seed)
    shape_f = shape_arr.astype(float)
    grid = np.indices(tuple(shape_arr), dtype=np.float32)
    points, radius = _centreline(rng, shape_f)

    # nearest centreline point per voxel -> inside test against that point's radius; label by
    # which side of the split point along the centreline the nearest point lies
    flat = grid.reshape(3, -1).T
    d2 = ((flat[:, None, :] - points[None, :, :].astype(np.float32)) ** 2).sum(-1)
    nearest = d2.argmin(1)
    dist = np.sqrt(d2[np.arange(len(flat)), nearest])
    inside = dist < radius[nearest]
    split = int(round(rng.uniform(0.4, 0.6) * (_CENTRELINE_POINTS - 1)))
    label = np.zeros(len(flat), np.uint8)
    label[inside & (nearest <= split)] = 1
    label[inside & (nearest > split)] = 2
    label = label.reshape(tuple(shape_arr))

    # intensity model: texture background, a brighter shell of surrounding tissue, two structures
    texture = ndimage.gaussian_filter(rng.normal(0, 1, tuple(shape_arr)), 2.5)
    texture /= max(texture.std(), 1e-6)
    image = 0.35 + 0.06 * texture
    shell = ndimage.binary_dilation(label > 0, iterations=2) & (label == 0)
    image[shell] = 0.2 + rng.uniform(-0.03, 0.03)
    image[label == 1] = 0.8 + rng.uniform(-0.05, 0.05)
    image[label == 2] = 0.62 + rng.uniform(-0.05, 0.05)
    image = ndimage.gaussian_filter(image, 0.7)  # partial volume
    image *= _bias_field(rng, grid, shape_f, bias)
    sigma = noise * 0.8
    image = np.sqrt((image + rng.normal(0, sigma, image.shape)) ** 2 + rng.normal(0, sigma, image.shape) ** 2)
    return (image * 1000).astype(np.float32), label


def _write_nifti(array: np.ndarray, path: Path, spacing: Sequence[float]) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing)[::-1])  # array is (z, y, x); SimpleITK wants (x, y, z)
    sitk.WriteImage(img, str(path), useCompression=True)


def write_phantom_dataset(raw_root: str | Path, dataset_id: int = 990, name: str = "Phantom",
                          num_train: int = 24, num_test: int = 6, shape: Sequence[int] = DEFAULT_SHAPE,
                          seed: int = 0, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Path:
    """Write Dataset{id:03d}_{name} (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json) under raw_root.

    Returns the dataset folder. Cases are named phantom_XXX; test cases continue the numbering.
    Refuses to write into an existing non-empty dataset folder (no silent mix of old and new cases).
    """
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset_id must be in 1..999 (nnU-Net's three digits), got {dataset_id}")
    if num_train < 5:
        raise ValueError(f"num_train must be >= 5 (nnU-Net's 5-fold split), got {num_train}")
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty; remove it or pick another dataset id")
    seeds = np.random.SeedSequence(seed).spawn(num_train + num_test)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs") if num_test else ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i, case_seed in enumerate(seeds):
        image, label = phantom_case(case_seed, shape)
        split = "Tr" if i < num_train else "Ts"
        case = f"phantom_{i:03d}"
        _write_nifti(image, folder / f"images{split}" / f"{case}_0000.nii.gz", spacing)
        _write_nifti(label, folder / f"labels{split}" / f"{case}.nii.gz", spacing)
    dataset_json = {
        "channel_names": {"0": "MRI"},
        "labels": dict(LABELS),
        "numTraining": num_train,
        "file_ending": ".nii.gz",
        "name": name,
        "description": f"nnunet_sss synthetic phantom: {num_train} training + {num_test} test cases, "
                       f"shape {tuple(shape)}, seed {seed}",
        "licence": "generated (no licence restrictions)",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder


def write_fingerprinted_dataset(raw_root: str | Path, preprocessed_root: str | Path, dataset_id: int, name: str,
                                median_shape: Sequence[int], spacing: Sequence[float], num_train: int = 100,
                                seed: int = 0) -> str:
    """A dataset known to nnU-Net by its fingerprint alone, for planning without images: writes
    Dataset{id:03d}_{name}/dataset.json and one tiny placeholder case under raw_root (nnU-Net's
    planner opens one image to choose its reader), and under preprocessed_root the
    dataset_fingerprint.json that nnUNetv2_extract_fingerprint would write for `num_train` cases
    (odd: their median shape is `median_shape`; each axis spread over +-10% of it) at `spacing`.
    Returns the dataset's name."""
    if num_train % 2 == 0:
        raise ValueError(f"num_train must be odd (its median shape is median_shape), got {num_train}")
    dataset = f"Dataset{dataset_id:03d}_{name}"
    raw = Path(raw_root) / dataset
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    placeholder = np.zeros((4,) * len(median_shape), np.float32)
    _write_nifti(placeholder, raw / "imagesTr" / "case_000_0000.nii.gz", spacing)
    _write_nifti(placeholder.astype(np.uint8), raw / "labelsTr" / "case_000.nii.gz", spacing)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": dict(LABELS), "numTraining": num_train, "file_ending": ".nii.gz",
        "name": name}, indent=2))
    rng = np.random.default_rng(seed)
    factors = np.stack([rng.permutation(np.linspace(0.9, 1.1, num_train)) for _ in median_shape], 1)
    shapes = np.round(np.asarray(median_shape) * factors)
    intensities = {"max": 3000.0, "mean": 600.0, "median": 580.0, "min": 0.0, "percentile_00_5": 50.0,
                   "percentile_99_5": 1800.0, "std": 250.0}
    fingerprint = {"spacings": [list(map(float, spacing))] * num_train,
                   "shapes_after_crop": shapes.astype(int).tolist(),
                   "foreground_intensity_properties_per_channel": {"0": intensities},
                   "median_relative_size_after_cropping": 1.0}
    preprocessed = Path(preprocessed_root) / dataset
    preprocessed.mkdir(parents=True, exist_ok=True)
    (preprocessed / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    return dataset
