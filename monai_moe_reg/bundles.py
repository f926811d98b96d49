"""Helpers the bundle configs call: where the bundle lives, and resuming from its latest checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from ignite.engine import Engine

__all__ = ["locate", "latest_checkpoint", "require_path", "resume_from_latest"]

BUNDLE_NAMES = ("shmoareg", "llm_morph")


def locate(name: str) -> str:
    """Folder of bundle ``name``: ``./bundles/<name>`` (run from the repository root), the current folder when it is
    the bundle itself, or the ``bundles/<name>`` beside this package (editable install). Pass ``--bundle_root`` to
    ``monai.bundle run`` to choose another place."""
    if name not in BUNDLE_NAMES:
        raise ValueError(f"unknown bundle {name!r}; expected one of {BUNDLE_NAMES}.")
    candidates = [Path.cwd() / "bundles" / name, Path.cwd(), Path(__file__).resolve().parents[1] / "bundles" / name]
    for c in candidates:
        if (c / "configs" / "metadata.json").is_file() and c.name == name:
            return str(c)
    raise FileNotFoundError(
        f"cannot find the '{name}' bundle folder from {Path.cwd()}; run from the repository root or the bundle folder, "
        "or pass --bundle_root <path to bundles/" + name + ">."
    )


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> Path | None:
    """Newest ``<prefix>*.pt`` in ``ckpt_dir`` (the resumable checkpoints the train configs save every epoch)."""
    files = sorted(Path(ckpt_dir).glob(f"{prefix}*.pt"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def resume_from_latest(trainer: Engine, ckpt_dir: str | os.PathLike, load_dict: dict) -> str:
    """Attach a MONAI ``CheckpointLoader`` restoring network, optimizer and trainer state (epoch, iteration) from
    the latest checkpoint, so training continues at the next epoch. Raises if there is none."""
    from monai.handlers import CheckpointLoader

    path = latest_checkpoint(ckpt_dir)
    if path is None:
        raise FileNotFoundError(f"resume=True but no checkpoint*.pt in '{ckpt_dir}'; train once without resume first.")
    CheckpointLoader(load_path=str(path), load_dict=load_dict, map_location="cpu").attach(trainer)
    return str(path)


def require_path(path: str | os.PathLike, hint: str) -> str:
    """``path`` (a file or folder) if it exists, else a ``FileNotFoundError`` with ``hint`` (used before loading
    checkpoints and LLMs, so a missing one fails before anything is built)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"'{path}' does not exist: {hint}.")
    return str(path)
