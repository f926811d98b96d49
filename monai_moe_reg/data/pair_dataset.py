"""Training pairs at the papers' scale: subjects loaded and preprocessed once, pairs drawn at random per iteration.

Expanding a subject list to all ``N (N - 1)`` ordered pairs and reading both images from disk for every pair makes
one "epoch" of OASIS's 350 training subjects 122,150 iterations of disk reads. Here a subject-list section becomes
:class:`SubjectPairs`: a map-style dataset over the pair *indices* whose items are composed from a MONAI
``CacheDataset`` of the subjects (each file read and preprocessed once); :func:`pair_sampler` draws
``epoch_length`` of them per epoch at random (with replacement, from torch's RNG, so a resumed run draws the same
pairs). Pair-list sections (e.g. paired MR/CT) are cached as pairs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from monai import transforms as mt
from monai.data import CacheDataset, Dataset, PersistentDataset

from monai_moe_reg.data.datalist import _resolve, load_pairs, validate_pairs
from monai_moe_reg.data.transforms import CheckFinited, intensity_transform

__all__ = ["SubjectPairs", "subject_transforms", "training_pairs", "pair_sampler", "cached_dataset", "CACHE_MODES"]

CACHE_MODES = ("memory", "disk", "none")


def subject_transforms(
    spatial_size: Sequence[int] | None = None, intensity: str = "minmax", orientation: str | None = "RAS"
) -> mt.Compose:
    """One subject ``{"image", "label"?}``: load, channel first, refuse NaN/Inf, orient, scale intensities, and
    resize to ``spatial_size`` (labels nearest) when given."""
    steps = [
        mt.LoadImaged(["image", "label"], allow_missing_keys=True, image_only=True),
        mt.EnsureChannelFirstd(["image", "label"], allow_missing_keys=True),
        CheckFinited(["image"]),
    ]
    if orientation:
        steps.append(mt.Orientationd(["image", "label"], axcodes=orientation, allow_missing_keys=True))
    t = intensity_transform("image", intensity)
    if t is not None:
        steps.append(t)
    if spatial_size is not None:
        steps += [
            mt.Resized("image", spatial_size=tuple(spatial_size), mode="trilinear"),
            mt.Resized("label", spatial_size=tuple(spatial_size), mode="nearest", allow_missing_keys=True),
        ]
    steps.append(mt.EnsureTyped(["image", "label"], dtype=None, allow_missing_keys=True))
    return mt.Compose(steps)


class SubjectPairs(torch.utils.data.Dataset):
    """Pairs composed from preprocessed subjects: item ``k`` of ``pairing="all"`` is the ordered pair
    (moving ``k // (N - 1)``, fixed the ``k % (N - 1)``-th other subject); of ``"atlas"`` the atlas (moving) and
    subject ``k`` (fixed). Moving never equals fixed. When a pair's images are not on one grid, the moving image (and
    label) is resampled onto the fixed one.

    Args:
        subjects: a dataset of preprocessed subjects ``{"image", "label"?}`` (e.g. a ``CacheDataset``).
        pairing: ``"all"`` or ``"atlas"``.
        atlas: the preprocessed atlas item for ``"atlas"``.
    """

    def __init__(self, subjects: torch.utils.data.Dataset, pairing: str = "all", atlas: dict | None = None) -> None:
        if pairing not in ("all", "atlas"):
            raise ValueError(f"pairing must be 'all' or 'atlas', got {pairing!r}.")
        if pairing == "all" and len(subjects) < 2:
            raise ValueError(f"'all' pairing needs at least 2 subjects, got {len(subjects)}.")
        if pairing == "atlas" and atlas is None:
            raise ValueError("'atlas' pairing needs the atlas item.")
        self.subjects, self.pairing, self.atlas = subjects, pairing, atlas
        self.resample = mt.ResampleToMatchd(["moving_image", "moving_label"], key_dst="fixed_image",
                                            mode=("bilinear", "nearest"), allow_missing_keys=True)

    def __len__(self) -> int:
        n = len(self.subjects)
        return n * (n - 1) if self.pairing == "all" else n

    def pair_indices(self, k: int) -> tuple[int | None, int]:
        """``(moving, fixed)`` subject indices of item ``k`` (moving ``None``: the atlas)."""
        if not 0 <= k < len(self):
            raise IndexError(f"pair index {k} out of range for {len(self)} pairs.")
        if self.pairing == "atlas":
            return None, k
        n = len(self.subjects)
        moving, j = divmod(k, n - 1)
        return moving, j + (j >= moving)

    def __getitem__(self, k: int) -> dict:
        m, f = self.pair_indices(int(k))
        moving = self.atlas if m is None else self.subjects[m]
        fixed = self.subjects[f]
        pair = {"moving_image": moving["image"], "fixed_image": fixed["image"]}
        if "label" in moving and "label" in fixed:
            pair.update(moving_label=moving["label"], fixed_label=fixed["label"])
        same_grid = pair["moving_image"].shape == pair["fixed_image"].shape and torch.allclose(
            torch.as_tensor(getattr(pair["moving_image"], "affine", torch.eye(4))).double(),
            torch.as_tensor(getattr(pair["fixed_image"], "affine", torch.eye(4))).double(), atol=1e-4)
        return pair if same_grid else self.resample(pair)


def cached_dataset(
    data: list[dict], transform, cache: str = "memory", cache_dir: str | os.PathLike | None = None, num_workers: int = 0
) -> torch.utils.data.Dataset:
    """``data`` with ``transform`` applied once and kept: ``cache`` ``"memory"`` (``CacheDataset``), ``"disk"``
    (``PersistentDataset`` in ``cache_dir``) or ``"none"`` (plain ``Dataset``)."""
    if cache == "memory":
        return CacheDataset(data, transform, num_workers=num_workers or None, progress=False)
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir (a folder for MONAI's PersistentDataset).")
        return PersistentDataset(data, transform, cache_dir=str(cache_dir))
    if cache == "none":
        return Dataset(data, transform)
    raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}.")


def training_pairs(
    datalist: str | os.PathLike,
    section: str,
    pair_transform,
    spatial_size: Sequence[int] | None = None,
    moving_intensity: str = "minmax",
    fixed_intensity: str = "minmax",
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
) -> torch.utils.data.Dataset:
    """The training dataset of a datalist section, read from disk once.

    A subject-list section (``{"subjects": [...], "pairing": "all" | "atlas", "atlas": {...}}``) becomes
    :class:`SubjectPairs` over cached subjects (preprocessed by :func:`subject_transforms`; one modality, so
    ``moving_intensity`` must equal ``fixed_intensity``); a pair-list section is cached pair by pair with
    ``pair_transform``. ``cache``: ``"memory"`` (MONAI ``CacheDataset``), ``"disk"`` (``PersistentDataset`` in
    ``cache_dir``, for sets larger than memory) or ``"none"``.
    """
    path = Path(datalist)
    try:
        data = json.loads(path.read_text())
        sec = data.get(section) if isinstance(data, dict) else None
    except (OSError, ValueError):
        sec = None
    if not isinstance(sec, dict):  # pair list (load_pairs names every problem: missing file, empty, bad JSON)
        return cached_dataset(load_pairs(datalist, section), pair_transform, cache, cache_dir, num_workers)
    if moving_intensity != fixed_intensity:
        raise ValueError(
            f"section '{section}' of '{path}' is a subject list (pairs of one modality) but moving_intensity "
            f"{moving_intensity!r} != fixed_intensity {fixed_intensity!r}; list multimodal data as pairs instead."
        )
    subjects = [{k: _resolve(v, path.parent) for k, v in s.items()} for s in sec.get("subjects", [])]
    if not subjects:
        raise ValueError(f"section '{section}' of datalist '{path}' has no subjects: add them.")
    pairing = sec.get("pairing", "all")
    validate_pairs([{"moving_image": s["image"], "fixed_image": s["image"],
                     **({"moving_label": s["label"], "fixed_label": s["label"]} if "label" in s else {})}
                    for s in subjects], section)
    transform = subject_transforms(spatial_size, moving_intensity)
    atlas = None
    if pairing == "atlas":
        if "atlas" not in sec or "image" not in sec["atlas"]:
            raise ValueError(f"section '{section}' of '{path}' uses 'atlas' pairing but has no 'atlas' with an 'image'.")
        atlas = transform({k: _resolve(v, path.parent) for k, v in sec["atlas"].items()})
    return SubjectPairs(cached_dataset(subjects, transform, cache, cache_dir, num_workers), pairing, atlas)


def pair_sampler(dataset: torch.utils.data.Dataset, epoch_length: int | None = None) -> torch.utils.data.Sampler:
    """``epoch_length`` random pairs per epoch (with replacement: any number of iterations, however many pairs
    there are), or, with ``None``, every pair once in a random order. Draws from torch's RNG (seeded by
    ``set_determinism``, restored on resume)."""
    if epoch_length is None:
        return torch.utils.data.RandomSampler(dataset)
    if int(epoch_length) < 1:
        raise ValueError(f"epoch_length must be a positive number of iterations (or null), got {epoch_length}.")
    return torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=int(epoch_length))
