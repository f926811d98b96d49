"""Registration datalists: pairs of ``fixed_image``/``moving_image`` (+ optional labels), validated before training.

A datalist JSON has sections (``"training"``, ``"validation"``, ``"testing"``); each section is either a list of pair
entries ``{"fixed_image", "moving_image", "fixed_label"?, "moving_label"?}`` or a subject list
``{"subjects": [{"image", "label"?}, ...], "pairing": "all" | "atlas", "atlas": {"image", "label"?}}`` expanded to
all ordered inter-subject pairs (the papers' N x (N - 1) protocol) or atlas-to-subject pairs. Relative paths are
relative to the datalist file.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib

__all__ = ["PAIR_KEYS", "IMAGE_KEYS", "LABEL_KEYS", "expand_subject_pairs", "load_pairs", "validate_pairs"]

IMAGE_KEYS = ("moving_image", "fixed_image")
LABEL_KEYS = ("moving_label", "fixed_label")
PAIR_KEYS = IMAGE_KEYS + LABEL_KEYS


def expand_subject_pairs(subjects: Sequence[dict], pairing: str = "all", atlas: dict | None = None) -> list[dict]:
    """Pairs from a subject list: ``"all"`` = every ordered pair (i moving, j fixed, i != j); ``"atlas"`` = the atlas
    as moving image registered to every subject (fixed). Subjects are ``{"image": path, "label": path?}``."""

    def pair(moving: dict, fixed: dict) -> dict:
        entry = {"moving_image": moving["image"], "fixed_image": fixed["image"]}
        if "label" in moving and "label" in fixed:
            entry.update(moving_label=moving["label"], fixed_label=fixed["label"])
        return entry

    if pairing == "all":
        if len(subjects) < 2:
            raise ValueError(f"'all' pairing needs at least 2 subjects, got {len(subjects)}.")
        return [pair(m, f) for m, f in itertools.permutations(subjects, 2)]
    if pairing == "atlas":
        if atlas is None or "image" not in atlas:
            raise ValueError("'atlas' pairing needs an 'atlas' entry with an 'image' (and optionally a 'label').")
        return [pair(atlas, s) for s in subjects]
    raise ValueError(f"pairing must be 'all' or 'atlas', got {pairing!r}.")


def _resolve(path: str, root: Path) -> str:
    p = Path(os.path.expanduser(path))
    return str(p if p.is_absolute() else (root / p).resolve())


def _header(path: str, where: str):
    if not Path(path).is_file():
        raise FileNotFoundError(f"{where}: file '{path}' does not exist.")
    try:
        return nib.load(path)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for a non-image
        raise ValueError(f"{where}: '{path}' is not an image nibabel can read ({err}).") from err


def validate_pairs(pairs: Sequence[dict], section: str = "pairs") -> None:
    """Check every entry before training: files exist and are images, fixed and moving have the same number of
    spatial dims, and each label has its image's spatial shape. Errors name the entry (section and index)."""
    for i, entry in enumerate(pairs):
        where = f"datalist entry {section}[{i}]"
        missing = [k for k in IMAGE_KEYS if k not in entry]
        if missing:
            raise ValueError(f"{where} lacks {missing}; each pair needs 'moving_image' and 'fixed_image'.")
        if ("moving_label" in entry) != ("fixed_label" in entry):
            raise ValueError(f"{where} has only one of 'moving_label'/'fixed_label'; give both or neither.")
        shapes = {}
        for key in PAIR_KEYS:
            if key in entry:
                shapes[key] = tuple(_header(entry[key], f"{where} ({key})").shape)
        dims = {k: min(len(v), 3) for k, v in shapes.items()}  # 4-D label files keep channels last
        if dims["moving_image"] != dims["fixed_image"]:
            raise ValueError(
                f"{where}: moving image is {dims['moving_image']}-D {shapes['moving_image']} but fixed image is "
                f"{dims['fixed_image']}-D {shapes['fixed_image']}; both must have the same number of spatial dims."
            )
        for lab, img in (("moving_label", "moving_image"), ("fixed_label", "fixed_image")):
            if lab in shapes and shapes[lab][: dims[img]] != shapes[img][: dims[img]]:
                raise ValueError(
                    f"{where}: {lab} shape {shapes[lab]} differs from its image's shape {shapes[img]} "
                    f"({entry[lab]} vs {entry[img]})."
                )


def load_pairs(
    datalist: str | os.PathLike, section: str, validate: bool = True, require_labels: bool = False
) -> list[dict]:
    """The pair entries of ``section`` of a datalist JSON, paths made absolute, subject lists expanded, validated.
    An empty section is refused; with ``require_labels`` (the bundles' validation pairs, which select the best model
    by Dice) so is a pair without both label maps."""
    path = Path(datalist)
    if not path.is_file():
        raise FileNotFoundError(f"datalist '{path}' does not exist.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"datalist '{path}' is not valid JSON ({err.msg} at line {err.lineno}); is it truncated?"
        ) from err
    if not isinstance(data, dict):
        raise ValueError(f"datalist '{path}' must hold a JSON object of sections, got a {type(data).__name__}.")
    if section not in data:
        raise ValueError(f"datalist '{path}' has no section '{section}' (it has {sorted(data)}).")
    sec = data[section]
    root = path.parent
    if isinstance(sec, dict):
        subjects = [{k: _resolve(v, root) for k, v in s.items()} for s in sec.get("subjects", [])]
        atlas = {k: _resolve(v, root) for k, v in sec["atlas"].items()} if "atlas" in sec else None
        pairs = expand_subject_pairs(subjects, sec.get("pairing", "all"), atlas)
    else:
        pairs = [{k: _resolve(v, root) if k in PAIR_KEYS else v for k, v in e.items()} for e in sec]
    if not pairs:
        raise ValueError(f"section '{section}' of datalist '{path}' is empty: add pairs (or subjects) to it.")
    if require_labels:
        unlabelled = [i for i, p in enumerate(pairs) if not (p.get("moving_label") and p.get("fixed_label"))]
        if unlabelled:
            raise ValueError(
                f"{section}[{unlabelled[0]}] of datalist '{path}' has no moving_label/fixed_label: the best model is "
                f"chosen by validation Dice, so every {section} pair needs both label maps ({len(unlabelled)} lack them)."
            )
    if validate:
        validate_pairs(pairs, section)
    return pairs
