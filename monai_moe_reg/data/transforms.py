"""Pair preprocessing for the bundles (MONAI dictionary transforms)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai import transforms as mt
from monai.config import KeysCollection
from monai_moe_reg.data.datalist import IMAGE_KEYS, LABEL_KEYS, PAIR_KEYS

__all__ = ["INTENSITY_MODES", "CheckFinited", "intensity_transform", "pair_transforms"]

INTENSITY_MODES = ("minmax", "ct", "mr", "none")


class CheckFinited(mt.MapTransform):
    """Raise a ``ValueError`` naming the file when a loaded image holds NaN or Inf values.

    Runs in the data loader (on the CPU, once per load), so the networks can skip their own per-forward value check
    (``check_values=False``) and the training loop never waits on a GPU-to-host sync for it.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not bool(torch.isfinite(torch.as_tensor(img)).all()):
                source = getattr(img, "meta", {}).get("filename_or_obj", "<in memory>")
                raise ValueError(
                    f"{key} {source} contains NaN or Inf voxels; fix or mask the image (e.g. nan_to_num) before use."
                )
        return d


def intensity_transform(key: str, mode: str) -> mt.MapTransform | None:
    """``"minmax"`` -> [0, 1]; ``"ct"`` -> HU clipped to [-180, 400] then [0, 1]; ``"mr"`` -> 0..95th percentile to
    [0, 1] (LLM-Morph's preprocessing); ``"none"``."""
    if mode == "minmax":
        return mt.ScaleIntensityd(key, minv=0.0, maxv=1.0)
    if mode == "ct":
        return mt.ScaleIntensityRanged(key, a_min=-180.0, a_max=400.0, b_min=0.0, b_max=1.0, clip=True)
    if mode == "mr":
        return mt.ScaleIntensityRangePercentilesd(key, lower=0.0, upper=95.0, b_min=0.0, b_max=1.0, clip=True)
    if mode == "none":
        return None
    raise ValueError(f"intensity mode must be one of {INTENSITY_MODES}, got {mode!r}.")


def pair_transforms(
    spatial_size: Sequence[int] | None = None,
    moving_intensity: str = "minmax",
    fixed_intensity: str = "minmax",
    orientation: str | None = "RAS",
    resample_moving_to_fixed: bool = True,
    pixdim: Sequence[float] | None = None,
) -> mt.Compose:
    """Load a pair, put channels first, refuse NaN/Inf images (naming the file), orient it, optionally resample the
    fixed image (and label) to ``pixdim`` mm,
    resample the moving image (and label, nearest) onto the fixed grid, scale intensities, and optionally resize
    everything to ``spatial_size`` (the network's training size; labels nearest). Label keys are optional.

    For inference the bundles keep ``orientation=None`` and ``spatial_size=None`` so that outputs stay on the fixed
    image's own grid and affine.
    """
    labels = list(LABEL_KEYS)
    steps: list = [
        mt.LoadImaged(list(PAIR_KEYS), allow_missing_keys=True, image_only=True),
        mt.EnsureChannelFirstd(list(PAIR_KEYS), allow_missing_keys=True),
        CheckFinited(list(IMAGE_KEYS)),
    ]
    if orientation:
        steps.append(mt.Orientationd(list(PAIR_KEYS), axcodes=orientation, allow_missing_keys=True))
    if pixdim is not None:
        steps += [
            mt.Spacingd("fixed_image", pixdim=tuple(pixdim), mode="bilinear"),
            mt.Spacingd("fixed_label", pixdim=tuple(pixdim), mode="nearest", allow_missing_keys=True),
        ]
    if resample_moving_to_fixed:
        steps += [
            mt.ResampleToMatchd("moving_image", key_dst="fixed_image", mode="bilinear", padding_mode="zeros"),
            mt.ResampleToMatchd("moving_label", key_dst="fixed_image", mode="nearest", allow_missing_keys=True),
        ]
    for key, mode in zip(IMAGE_KEYS, (moving_intensity, fixed_intensity)):
        t = intensity_transform(key, mode)
        if t is not None:
            steps.append(t)
    if spatial_size is not None:
        steps += [
            mt.Resized(list(IMAGE_KEYS), spatial_size=tuple(spatial_size), mode="trilinear"),
            mt.Resized(labels, spatial_size=tuple(spatial_size), mode="nearest", allow_missing_keys=True),
        ]
    steps.append(mt.EnsureTyped(list(PAIR_KEYS), dtype=None, allow_missing_keys=True))
    return mt.Compose(steps)
