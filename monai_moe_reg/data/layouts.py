"""Datalists for the public dataset layouts the papers use (``monai-moe-reg prepare``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

__all__ = ["LAYOUTS", "PAPER_SPLITS", "prepare_datalist"]

PAPER_SPLITS = {"oasis": (350, 10, 11), "btcv": (35, 5, 10), "srreg": (150, 10, 20)}
LAYOUTS = ("oasis", "abdomenmrct", "srreg", "btcv", "folder")
NII = (".nii.gz", ".nii", ".mha", ".nrrd")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(NII)) if folder.is_dir() else []


def _require(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise FileNotFoundError(f"expected {what} folder '{folder}' (check --layout and --root).")
    return folder


def _split(items: list, split: str | tuple | None, default: tuple[int, ...] | None, what: str) -> list[list]:
    n = len(items)
    if split is None:
        counts = list(default) if default else [round(0.7 * n), round(0.1 * n)]
        if default and sum(counts) > n:  # fewer subjects than the paper: keep its proportions
            counts = [max(1, round(c * n / sum(default))) for c in default[:2]]
    else:
        counts = [int(v) for v in (split.split(",") if isinstance(split, str) else split)]
    if len(counts) == 3:
        counts = counts[:2] + [n - sum(counts[:2])] if sum(counts) > n else counts
    else:
        counts = counts[:2] + [n - sum(counts[:2])]
    if any(c < 0 for c in counts) or sum(counts) > n or counts[0] < 1:
        raise ValueError(f"split {counts} does not fit the {n} {what} found; pass --split train,val,test.")
    a, b = counts[0], counts[0] + counts[1]
    return [items[:a], items[a:b], items[b : b + counts[2]]]


def _subject_sections(subjects: list[dict], split, default, pairing: str) -> dict:
    parts = _split(subjects, split, default, "subjects")
    if split is None and pairing == "all":  # a default split never leaves a section 1 subject (no pair)
        counts = [len(p) for p in parts]
        for i in (1, 2):
            if counts[i] == 1 and counts[0] > 3:
                counts[0], counts[i] = counts[0] - 1, 2
        parts = _split(subjects, tuple(counts), None, "subjects")
    out = {}
    for name, part in zip(("training", "validation", "testing"), parts):
        if len(part) == 1 and pairing == "all":
            raise ValueError(
                f"the {name} section gets 1 subject, and pairs within a section need 2: give it 2 or more "
                "(--split train,val,test counts subjects) or 0, or use --pairing atlas."
            )
        if len(part) >= 2 or (pairing == "atlas" and part):
            sec = {"subjects": part, "pairing": pairing}
            if pairing == "atlas":
                sec["atlas"] = parts[0][0]
            out[name] = sec
    return out


def _pair_sections(pairs: list[dict], split, default) -> dict:
    parts = _split(pairs, split, default, "pairs")
    return {name: part for name, part in zip(("training", "validation", "testing"), parts) if part}


def prepare_datalist(
    layout: str, root: str | os.PathLike, output: str | os.PathLike, split=None, pairing: str = "all"
) -> Path:
    """Scan ``root`` for ``layout`` and write a datalist (absolute paths) to ``output``.

    * ``oasis``: Learn2Reg OASIS ``imagesTr/OASIS_XXXX_0000.nii.gz`` + ``labelsTr/OASIS_XXXX_0000.nii.gz`` (35 labels);
      subjects split 350/10/11 by default, all ordered pairs within each split.
    * ``abdomenmrct``: Learn2Reg AbdomenMRCT ``imagesTr/AbdomenMRCT_XXXX_0000.nii.gz`` (MR) / ``_0001`` (CT) with
      ``labelsTr`` of the same names (4 organs); the MR of each case with both modalities is registered to its CT.
    * ``srreg``: ``volumes_center/{subj}_mr.nii.gz`` (moving) -> ``{subj}_ct.nii.gz`` (fixed), labels
      ``seg_center/{subj}.nii.gz`` for both; 150/10/20 pairs.
    * ``btcv``: ``imagesTr/img0001.nii.gz`` + ``labelsTr/label0001.nii.gz``; 35/5/10 subjects, all ordered pairs.
    * ``folder``: ``images/<name>`` + optional ``labels/<name>``; 70/10/20 % of subjects, all ordered pairs.
    """
    layout = layout.lower().replace("-", "").replace("_", "")
    root = Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}.")
    if pairing not in ("all", "atlas"):
        raise ValueError(f"pairing must be 'all' or 'atlas', got {pairing!r}.")
    from monai_moe_reg.data.demo_dataset import DEMO_MARKER

    if (root / DEMO_MARKER).is_file():
        raise ValueError(
            f"'{root}' holds the synthetic demo set ({DEMO_MARKER}), not scans: point --root at your data."
        )
    if layout in ("oasis", "btcv", "folder"):
        img_dir = _require(root / ("images" if layout == "folder" else "imagesTr"), "image")
        lab_dir = root / ("labels" if layout == "folder" else "labelsTr")
        subjects = []
        for img in _images(img_dir):
            if layout == "oasis" and not re.match(r"OASIS_\d+_0000", img.name):
                continue
            label_name = img.name.replace("img", "label", 1) if layout == "btcv" else img.name
            entry = {"image": str(img.resolve())}
            if (lab_dir / label_name).is_file():
                entry["label"] = str((lab_dir / label_name).resolve())
            subjects.append(entry)
        if len(subjects) < 2:
            raise ValueError(f"found {len(subjects)} images for layout '{layout}' in '{img_dir}'; need at least 2.")
        data = _subject_sections(subjects, split, PAPER_SPLITS.get(layout), pairing)
    elif layout == "abdomenmrct":
        img_dir = _require(root / "imagesTr", "image")
        lab_dir = root / "labelsTr"
        pairs = []
        for mr in _images(img_dir):
            m = re.match(r"(AbdomenMRCT_\d+)_0000(\..+)$", mr.name)
            ct = img_dir / f"{m.group(1)}_0001{m.group(2)}" if m else None
            if ct is None or not ct.is_file():
                continue
            entry = {"moving_image": str(mr.resolve()), "fixed_image": str(ct.resolve())}
            if (lab_dir / mr.name).is_file() and (lab_dir / ct.name).is_file():
                entry.update(
                    moving_label=str((lab_dir / mr.name).resolve()), fixed_label=str((lab_dir / ct.name).resolve())
                )
            pairs.append(entry)
        if not pairs:
            raise ValueError(f"no AbdomenMRCT case with both _0000 (MR) and _0001 (CT) images in '{img_dir}'.")
        data = _pair_sections(pairs, split, None)
    else:  # srreg
        vol = _require(root / "volumes_center", "volumes_center")
        seg = root / "seg_center"
        pairs = []
        for mr in _images(vol):
            m = re.match(r"(.+)_mr(\..+)$", mr.name)
            if not m or not (vol / f"{m.group(1)}_ct{m.group(2)}").is_file():
                continue
            entry = {
                "moving_image": str(mr.resolve()),
                "fixed_image": str((vol / f"{m.group(1)}_ct{m.group(2)}").resolve()),
            }
            lab = seg / f"{m.group(1)}{m.group(2)}"
            if lab.is_file():
                entry.update(moving_label=str(lab.resolve()), fixed_label=str(lab.resolve()))
            pairs.append(entry)
        if not pairs:
            raise ValueError(f"no SR-Reg subject with both _mr and _ct volumes in '{vol}'.")
        data = _pair_sections(pairs, split, PAPER_SPLITS["srreg"])
    from monai_moe_reg.data.staging import atomic_write_text

    return atomic_write_text(output, json.dumps(data, indent=1))
