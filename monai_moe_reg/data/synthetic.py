"""Deterministic synthetic registration pairs: anatomy-like label maps, smooth deformations, intensity mappings.

Used by the tests, the demo and the bundles' embedded demo set, so no download is ever needed to try the project.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import Warp

__all__ = ["blob_label_map", "labels_to_image", "random_smooth_ddf", "warp_image", "synthetic_pair"]


def _grid(shape: Sequence[int]) -> torch.Tensor:
    axes = [torch.linspace(-1.0, 1.0, s) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)  # (D, *S)


def blob_label_map(shape: Sequence[int], num_labels: int = 5, seed: int = 0) -> torch.Tensor:
    """An ellipsoidal "organ" split into ``num_labels`` smooth, blob-shaped structures (ids 1..num_labels).

    The body is an ellipsoid filling ~70 % of the field of view; each voxel inside it gets the label of the nearest of
    ``num_labels`` random centres, with the distances perturbed by a smooth random field so boundaries are curved.

    Returns:
        ``(1, *shape)`` int64 label map (0 = background).
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    grid = _grid(shape)
    radii = torch.tensor(rng.uniform(0.6, 0.8, len(shape)), dtype=torch.float32).view(-1, *([1] * len(shape)))
    body = ((grid / radii) ** 2).sum(0) <= 1.0
    centres = torch.tensor(rng.uniform(-0.45, 0.45, (num_labels, len(shape))), dtype=torch.float32)
    dist = torch.stack([((grid - c.view(-1, *([1] * len(shape)))) ** 2).sum(0).sqrt() for c in centres])
    noise = _numpy_noise(shape, num_labels, rng, control=4) * 0.15
    labels = (dist + noise).argmin(0) + 1
    labels[~body] = 0
    return labels.unsqueeze(0).long()


def smooth_noise(
    shape: Sequence[int], channels: int, control: int, draw: Callable[[tuple], torch.Tensor]
) -> torch.Tensor:
    """``(1, channels, *shape)`` smooth random fields: standard normal noise ``draw(size)`` on a ``control``-point
    grid per axis (at least 2), upsampled linearly. ``draw`` is the caller's seeded generator (NumPy here,
    ``torch.Generator`` in :mod:`~monai_moe_reg.data.synth`)."""
    coarse = draw((1, channels) + (max(2, control),) * len(shape)).float()
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    return F.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=True)


def _numpy_noise(shape: Sequence[int], channels: int, rng: np.random.Generator, control: int = 4) -> torch.Tensor:
    return smooth_noise(shape, channels, control, lambda size: torch.from_numpy(rng.standard_normal(size)))[0]


def labels_to_image(
    labels: torch.Tensor, intensities: Sequence[float] | None = None, noise: float = 0.02, seed: int = 0
) -> torch.Tensor:
    """Image ``(1, *S)`` in [0, 1] from a label map: one intensity per label (background 0), a smooth bias field and
    Gaussian noise. Different ``intensities`` for the same labels give a multimodal pair."""
    rng = np.random.default_rng(seed)
    n = int(labels.max())
    if intensities is None:
        intensities = np.linspace(0.3, 1.0, n)
    lut = torch.tensor([0.0] + [float(v) for v in intensities][:n], dtype=torch.float32)
    if lut.numel() < n + 1:
        raise ValueError(f"need {n} intensities (one per label), got {len(intensities)}.")
    image = lut[labels.long()]
    image = image * (1.0 + 0.1 * _numpy_noise(labels.shape[1:], 1, rng, control=3))
    image = image + noise * torch.tensor(rng.standard_normal(image.shape), dtype=torch.float32)
    return image.clamp(0.0, 1.0)


def random_smooth_ddf(shape: Sequence[int], max_disp: float = 3.0, control: int = 4, seed: int = 0) -> torch.Tensor:
    """A smooth random displacement ``(D, *shape)`` in voxels: Gaussian noise on a ``control^D`` grid, upsampled
    linearly and scaled so the largest component is ``max_disp`` voxels."""
    rng = np.random.default_rng(seed)
    ddf = _numpy_noise(shape, len(shape), rng, control=control)
    return ddf * (max_disp / ddf.abs().max().clamp_min(1e-8))


def warp_image(image: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Warp an unbatched ``(C, *S)`` image with an unbatched DDF ``(D, *S)`` (MONAI ``Warp``; ``mode="nearest"``
    for labels)."""
    warp = Warp(mode=mode, padding_mode="zeros")
    out = warp(image[None].float(), ddf[None].float())[0]
    return out.round().long() if mode == "nearest" else out


def synthetic_pair(
    shape: Sequence[int] = (32, 32, 32),
    num_labels: int = 5,
    max_disp: float = 3.0,
    multimodal: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A registration pair with a known deformation.

    The fixed label map is a :func:`blob_label_map`; the moving one is it warped by a :func:`random_smooth_ddf`
    (``true_ddf``), so warping the moving image by the ideal DDF recovers the fixed one. With ``multimodal`` the
    moving image uses a different (permuted, non-monotonic) intensity per label, like MR vs CT.

    Returns:
        dict of unbatched tensors: ``fixed_image``, ``moving_image`` ``(1, *S)`` float, ``fixed_label``,
        ``moving_label`` ``(1, *S)`` int64, ``true_ddf`` ``(D, *S)`` (the displacement applied to the fixed image
        to make the moving one).
    """
    rng = np.random.default_rng(seed)
    fixed_label = blob_label_map(shape, num_labels, seed=seed)
    true_ddf = random_smooth_ddf(shape, max_disp, seed=seed + 1)
    moving_label = warp_image(fixed_label, true_ddf, mode="nearest")
    base = np.linspace(0.3, 1.0, num_labels)
    moving_int = rng.permutation(base) if multimodal else base
    return {
        "fixed_image": labels_to_image(fixed_label, base, seed=seed + 2),
        "moving_image": labels_to_image(moving_label, moving_int, seed=seed + 3),
        "fixed_label": fixed_label,
        "moving_label": moving_label,
        "true_ddf": true_ddf,
    }
