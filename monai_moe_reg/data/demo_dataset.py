"""The bundles' embedded demo set: small deterministic synthetic NIfTI pairs + datalist, written on first use."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from monai_moe_reg.data.synthetic import synthetic_pair

__all__ = ["DATALIST_NAME", "ensure_datalist", "write_demo_dataset"]

DATALIST_NAME = "datalist.json"
DEMO_MARKER = "SYNTHETIC_DEMO_DATA.txt"  # says what the folder is, to users and to ensure_datalist


def write_demo_dataset(
    dataset_dir: str | os.PathLike,
    multimodal: bool = False,
    size: int = 48,
    num_training: int = 8,
    num_validation: int = 2,
    num_testing: int = 2,
    spacing: float = 2.0,
    max_disp: float = 5.0,
    seed: int = 0,
) -> Path:
    """Write synthetic pairs (anatomy-like blob labels, random smooth deformations; with ``multimodal`` the moving
    image has a different intensity mapping, like MR vs CT) as NIfTI files with ``spacing`` mm voxels, plus
    ``datalist.json`` with ``training``/``validation``/``testing`` sections. Files are written to a temporary name and
    renamed, so an interrupted run never leaves a half-written datalist. Returns the datalist path."""
    root = Path(dataset_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).write_text("synthetic demo set written by monai_moe_reg.data.write_demo_dataset\n")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    sections: dict[str, list[dict]] = {"training": [], "validation": [], "testing": []}
    counts = {"training": num_training, "validation": num_validation, "testing": num_testing}
    idx = 0
    for section, n in counts.items():
        for _ in range(n):
            pair = synthetic_pair((size,) * 3, max_disp=max_disp, multimodal=multimodal, seed=seed + 1000 * idx)
            entry = {}
            for role in ("moving", "fixed"):
                img = f"images/pair{idx:03d}_{role}.nii.gz"
                lab = f"labels/pair{idx:03d}_{role}.nii.gz"
                nib.save(nib.Nifti1Image(pair[f"{role}_image"][0].numpy().astype(np.float32), affine), str(root / img))
                nib.save(nib.Nifti1Image(pair[f"{role}_label"][0].numpy().astype(np.uint8), affine), str(root / lab))
                entry[f"{role}_image"], entry[f"{role}_label"] = img, lab
            sections[section].append(entry)
            idx += 1
    from monai_moe_reg.data.staging import atomic_write_text

    return atomic_write_text(root / DATALIST_NAME, json.dumps(sections, indent=1))


def ensure_datalist(dataset_dir: str | os.PathLike, demo: str = "mono", **kwargs) -> str:
    """``dataset_dir/datalist.json`` if it exists; otherwise, when ``dataset_dir`` is absent or empty (a folder for
    the demo set alone), write the demo set there first (``demo``: ``"mono"`` or ``"multimodal"``) and return its
    datalist. A folder that holds anything but no datalist.json is an error naming ``monai-moe-reg prepare``: synthetic
    files are never written among a user's scans. Point ``dataset_dir`` at a folder holding your own datalist.json
    to train on real data. In a multi-process (torch.distributed) run, rank 0 writes the demo set and the other ranks
    wait at a barrier, so they never race on the same files."""
    import torch.distributed as dist

    if demo not in ("mono", "multimodal"):
        raise ValueError(f"demo must be 'mono' or 'multimodal', got {demo!r}.")
    target = Path(dataset_dir) / DATALIST_NAME
    folder = Path(dataset_dir)
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    # in a multi-process run only rank 0 checks the folder and writes the demo set; the others wait for it
    if not target.is_file() and (not distributed or dist.get_rank() == 0):
        # a folder with files is the user's, unless it holds a demo set (a killed demo write resumes there)
        if folder.is_dir() and not (folder / DEMO_MARKER).is_file() and any(folder.iterdir()):
            raise ValueError(
                f"dataset_dir '{folder}' holds files but no {DATALIST_NAME}: write one for your scans with "
                f"`monai-moe-reg prepare --layout folder --root {folder} --output {target}` (images/ and labels/ of "
                "the same names), or give an empty or new folder for the synthetic demo set."
            )
        write_demo_dataset(dataset_dir, multimodal=demo == "multimodal", **kwargs)
    if distributed:
        dist.barrier()
    return str(target)
