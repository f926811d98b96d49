"""Training pairs at the papers' scale: subjects loaded and preprocessed once, pairs drawn at random per iteration.

Expanding a subject list to all ``N (N - 1)`` ordered pairs and reading both images from disk for every pair makes
one "epoch" of OASIS's 350 training subjects 122,150 iterations of disk reads. Here a subject-list section becomes
:class:`CachedPairs`: a map-style dataset over pair *indices* whose items are composed from a MONAI
``CacheDataset`` of the images (each file read and preprocessed once); :func:`pair_sampler` draws
``epoch_length`` of them per epoch at random (with replacement, from torch's RNG, so a resumed run draws the same
pairs). Pair-list sections (e.g. MR -> CT) cache each distinct moving and fixed image once.
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

__all__ = [
    "CachedPairs",
    "subject_pairs",
    "subject_transforms",
    "training_pairs",
    "pair_sampler",
    "cached_dataset",
    "CACHE_MODES",
]

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


class CachedPairs(torch.utils.data.Dataset):
    """Registration pairs whose images are each read and preprocessed once: item ``k`` is
    ``{moving_image, fixed_image, moving_label?, fixed_label?}`` from ``moving[pairs[k][0]]`` and
    ``fixed[pairs[k][1]]``. When the two are not on one grid, the moving image (and label) is resampled onto the
    fixed one for that pair.

    Args:
        moving: a dataset of preprocessed items ``{"image", "label"?}`` (e.g. a ``CacheDataset``).
        fixed: the same for the fixed side (may be the same object as ``moving``).
        pairs: ``(moving index, fixed index)`` per item.
    """

    def __init__(
        self, moving: torch.utils.data.Dataset, fixed: torch.utils.data.Dataset, pairs: Sequence[tuple[int, int]]
    ) -> None:
        if not pairs:
            raise ValueError("CachedPairs needs at least one (moving, fixed) pair.")
        self.moving, self.fixed, self.pairs = moving, fixed, [(int(m), int(f)) for m, f in pairs]
        self.resample = mt.ResampleToMatchd(
            ["moving_image", "moving_label"],
            key_dst="fixed_image",
            mode=("bilinear", "nearest"),
            allow_missing_keys=True,
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def pair_indices(self, k: int) -> tuple[int, int]:
        """``(moving, fixed)`` indices of item ``k``."""
        return self.pairs[k]

    def __getitem__(self, k: int) -> dict:
        m, f = self.pairs[int(k)]
        moving, fixed = self.moving[m], self.fixed[f]
        pair = {"moving_image": moving["image"], "fixed_image": fixed["image"]}
        if "label" in moving and "label" in fixed:
            pair.update(moving_label=moving["label"], fixed_label=fixed["label"])
        same_grid = pair["moving_image"].shape == pair["fixed_image"].shape and torch.allclose(
            torch.as_tensor(getattr(pair["moving_image"], "affine", torch.eye(4))).double(),
            torch.as_tensor(getattr(pair["fixed_image"], "affine", torch.eye(4))).double(),
            atol=1e-4,
        )
        return pair if same_grid else self.resample(pair)


def subject_pairs(
    subjects: torch.utils.data.Dataset, pairing: str = "all", atlas: torch.utils.data.Dataset | None = None
) -> CachedPairs:
    """Pairs of a subject list: ``"all"``: every ordered pair (moving ``i``, fixed ``j``, ``i != j``); ``"atlas"``:
    the atlas (the one item of ``atlas``) as moving, each subject as fixed."""
    n = len(subjects)
    if pairing == "all":
        if n < 2:
            raise ValueError(f"'all' pairing needs at least 2 subjects, got {n}.")
        return CachedPairs(subjects, subjects, [(i, j) for i in range(n) for j in range(n) if i != j])
    if pairing == "atlas":
        if atlas is None or len(atlas) != 1:
            raise ValueError("'atlas' pairing needs the atlas as a one-item dataset.")
        return CachedPairs(atlas, subjects, [(0, j) for j in range(n)])
    raise ValueError(f"pairing must be 'all' or 'atlas', got {pairing!r}.")


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


def _side(entry: dict, side: str) -> dict:
    item = {"image": entry[f"{side}_image"]}
    if f"{side}_label" in entry:
        item["label"] = entry[f"{side}_label"]
    return item


def training_pairs(
    datalist: str | os.PathLike,
    section: str,
    spatial_size: Sequence[int] | None = None,
    moving_intensity: str = "minmax",
    fixed_intensity: str = "minmax",
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
) -> CachedPairs:
    """The training pairs of a datalist section, every image read and preprocessed once (:class:`CachedPairs`).

    A subject-list section (``{"subjects": [...], "pairing": "all" | "atlas", "atlas": {...}}``) gives all ordered
    pairs or atlas-to-subject pairs over one cache of subjects (one modality, so ``moving_intensity`` must equal
    ``fixed_intensity``). A pair-list section (e.g. MR -> CT) caches each distinct moving and fixed image once, however
    many pairs share it (Abdomen MR-CT: 36 MR x 45 CT images, 1620 pairs). Images are preprocessed by
    :func:`subject_transforms` (the side's intensity mode, ``spatial_size``). ``cache``: ``"memory"`` (MONAI
    ``CacheDataset``), ``"disk"`` (``PersistentDataset`` in ``cache_dir``, for sets larger than memory) or ``"none"``.
    """
    path = Path(datalist)
    try:
        data = json.loads(path.read_text())
        sec = data.get(section) if isinstance(data, dict) else None
    except (OSError, ValueError):
        sec = None
    if not isinstance(sec, dict):  # pair list (load_pairs names every problem: missing file, empty, bad JSON)
        entries = load_pairs(datalist, section)
        sides = {}
        for side, mode in (("moving", moving_intensity), ("fixed", fixed_intensity)):
            keys = [tuple(sorted(_side(e, side).items())) for e in entries]
            index = {key: i for i, key in enumerate(dict.fromkeys(keys))}  # distinct images, first-seen order
            sides[side] = (
                cached_dataset(
                    [dict(key) for key in index],
                    subject_transforms(spatial_size, mode),
                    cache,
                    None if cache_dir is None else Path(cache_dir) / side,
                    num_workers,
                ),
                [index[key] for key in keys],
            )
        return CachedPairs(sides["moving"][0], sides["fixed"][0], list(zip(sides["moving"][1], sides["fixed"][1])))
    if moving_intensity != fixed_intensity:
        raise ValueError(
            f"section '{section}' of '{path}' is a subject list (pairs of one modality) but moving_intensity "
            f"{moving_intensity!r} != fixed_intensity {fixed_intensity!r}; list multimodal data as pairs instead."
        )
    subjects = [{k: _resolve(v, path.parent) for k, v in s.items()} for s in sec.get("subjects", [])]
    if not subjects:
        raise ValueError(f"section '{section}' of datalist '{path}' has no subjects: add them.")
    validate_pairs(
        [
            {
                "moving_image": s["image"],
                "fixed_image": s["image"],
                **({"moving_label": s["label"], "fixed_label": s["label"]} if "label" in s else {}),
            }
            for s in subjects
        ],
        section,
    )
    transform = subject_transforms(spatial_size, moving_intensity)
    pairing = sec.get("pairing", "all")
    atlas = None
    if pairing == "atlas":
        if "atlas" not in sec or "image" not in sec["atlas"]:
            raise ValueError(
                f"section '{section}' of '{path}' uses 'atlas' pairing but has no 'atlas' with an 'image'."
            )
        atlas_item = {k: _resolve(v, path.parent) for k, v in sec["atlas"].items()}
        atlas = cached_dataset([atlas_item], transform, "memory" if cache != "none" else "none")
    return subject_pairs(cached_dataset(subjects, transform, cache, cache_dir, num_workers), pairing, atlas)


def pair_sampler(dataset: torch.utils.data.Dataset, epoch_length: int | None = None) -> torch.utils.data.Sampler:
    """``epoch_length`` random pairs per epoch (with replacement: any number of iterations, however many pairs
    there are), or, with ``None``, every pair once in a random order. Draws from torch's RNG (seeded by
    ``set_determinism``, restored on resume)."""
    if epoch_length is None:
        return torch.utils.data.RandomSampler(dataset)
    if int(epoch_length) < 1:
        raise ValueError(f"epoch_length must be a positive number of iterations (or null), got {epoch_length}.")
    return torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=int(epoch_length))
