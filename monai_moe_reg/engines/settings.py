"""Checks of a bundle run's settings before anything is built, so a bad command-line override is one error naming
the setting and what to give instead, not a traceback from deep inside Ignite, PyTorch or a dataset cache."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["check_device", "check_training_settings"]

CACHE_MODES = ("memory", "disk", "none")


def check_device(device) -> torch.device:
    """``device`` (a ``torch.device`` or a string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``) as a device this
    machine has; otherwise a ``ValueError`` saying which devices it has."""
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device))
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device name: use cpu, cuda or cuda:N.") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0..cuda:{torch.cuda.device_count() - 1}."
            )
    elif dev.type not in ("cpu", "mps"):
        raise ValueError(f"device {device!r} is not supported here: use cpu, cuda or cuda:N.")
    return dev


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " (or null for every pair once per epoch)" if allow_none else ""
        raise ValueError(f"{name} must be a whole number of at least 1{extra}, got {value!r}.")


def check_training_settings(
    max_epochs,
    val_interval,
    epoch_length=None,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    device=None,
) -> None:
    """The training overrides a user is likely to get wrong, checked together at the start of ``train.json``:
    ``max_epochs``, ``val_interval`` (>= 1), ``epoch_length`` (>= 1 or null), ``cache`` (with ``"disk"``: a
    ``cache_dir`` that can be created and written) and ``device``."""
    _positive_int("max_epochs", max_epochs)
    _positive_int("val_interval", val_interval)
    _positive_int("epoch_length", epoch_length, allow_none=True)
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}.")
    if cache == "disk":
        folder = Path(str(cache_dir))
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(
                f"cache 'disk': cannot create cache_dir '{folder}' ({err.strerror}); pass --cache_dir "
                "<a writable folder> or --cache memory."
            ) from err
        if not os.access(folder, os.W_OK):
            raise ValueError(
                f"cache 'disk': cache_dir '{folder}' is not writable; pass --cache_dir <a writable "
                "folder> or --cache memory."
            )
    if device is not None:
        check_device(device)
