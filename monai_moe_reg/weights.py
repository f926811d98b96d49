"""Network weights on disk: the files a bundle lists in ``large_files.yml`` with their hashes, which weights a run
uses by default, and loading a state dict (``.safetensors`` or a PyTorch file, read with ``weights_only``) into a
network that must match it (keys, shapes and the recorded settings of :mod:`monai_moe_reg.networks.config`).

A leaf module: it imports nothing else of this package but :mod:`monai_moe_reg.networks.config`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "default_weights",
    "expected_hash",
    "file_hash",
    "large_file_entries",
    "load_network_weights",
    "rng_safe_globals",
    "shipped_weights",
]


def large_file_entries(bundle_dir: Path) -> list[dict]:
    """Entries of ``<bundle>/large_files.yml`` (none when the file is absent)."""
    path = bundle_dir / "large_files.yml"
    if not path.is_file():
        return []
    from monai.bundle import ConfigParser

    return list(ConfigParser.load_config_file(str(path)).get("large_files") or [])


def shipped_weights(bundle_dir: str | os.PathLike) -> Path | None:
    """The pretrained weights a bundle ships (its ``large_files.yml`` entry ending in ``.safetensors``), if present."""
    for entry in large_file_entries(Path(bundle_dir)):
        if str(entry.get("path", "")).endswith(".safetensors") and (Path(bundle_dir) / entry["path"]).is_file():
            return Path(bundle_dir) / entry["path"]
    return None


def default_weights(bundle_dir: str | os.PathLike, ckpt_dir: str | os.PathLike | None = None) -> str:
    """The weights inference, evaluation and ``register`` use unless told otherwise, first found: your own training
    result ``<ckpt_dir>/model.pt`` (the run's work folder), the bundle's ``models/model.pt`` (e.g. a Model Zoo
    download's), the bundle's shipped pretrained file (:func:`shipped_weights`); which one is logged (debug). With
    none, the ``model.pt`` path (whose absence ``require_path`` then reports)."""
    import logging

    log = logging.getLogger(__name__)
    own = Path(ckpt_dir or Path(bundle_dir) / "models") / "model.pt"
    for candidate, what in ((own, "your trained"), (Path(bundle_dir) / "models" / "model.pt", "the bundle's")):
        if candidate.is_file():
            log.debug("weights: %s %s (pass --checkpoint to choose others)", what, candidate)
            return str(candidate)
    shipped = shipped_weights(bundle_dir)
    if shipped is not None:
        log.debug("weights: the shipped pretrained %s (no trained model.pt in %s)", shipped, own.parent)
        return str(shipped)
    return str(own)


def expected_hash(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(hash_type, hash_val)`` of ``path`` when the bundle's ``large_files.yml`` (two folders up, e.g.
    ``<bundle>/models/x``) lists it, else ``None``."""
    path = Path(path).resolve()
    bundle = path.parent.parent
    for entry in large_file_entries(bundle):
        if (bundle / str(entry.get("path", ""))).resolve() == path and entry.get("hash_val"):
            return str(entry.get("hash_type", "sha256")).lower(), str(entry["hash_val"]).lower()
    return None


def file_hash(path: str | os.PathLike, hash_type: str = "sha256") -> str:
    """Hex digest of the file at ``path`` (read in 1 MiB blocks), as ``large_files.yml`` records it."""
    import hashlib

    digest = hashlib.new(hash_type)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def rng_safe_globals() -> list:
    """The NumPy types a resumable checkpoint's RNG state pickles (allowed for ``weights_only`` loading)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _read_weights(path: Path) -> dict:
    """A state dict from a ``.safetensors`` file or a PyTorch checkpoint (its ``network`` entry if it has one)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with torch.serialization.safe_globals(rng_safe_globals()):  # resumable checkpoints hold NumPy RNG states
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch and safetensors raise many types for a corrupt file
        kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch"
        raise ValueError(
            f"checkpoint '{path}' is not a readable {kind} file ({type(err).__name__}); it may be "
            "truncated or of another format."
        ) from err
    if isinstance(state, dict) and isinstance(state.get("network"), dict):
        state = state["network"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint '{path}' holds a {type(state).__name__}, not a state dict of a network.")
    return state


def _saved_network_config(path: Path) -> dict | None:
    """The network class and settings recorded with a weights file: its ``<file>.json`` sidecar (``model.pt``) or
    the ``network`` entry of a safetensors file's metadata; ``None`` when none was recorded."""
    import json

    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                text = (fh.metadata() or {}).get("network")
            return json.loads(text) if text else None
        side = path.with_name(path.name + ".json")
        return json.loads(side.read_text()).get("network") if side.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


def load_network_weights(network, path: str | os.PathLike, bundle: str | os.PathLike = "") -> None:
    """Load a state dict (``.safetensors``, or a PyTorch file holding a state dict or a checkpoint dict with a
    ``network`` entry) from ``path`` into ``network``. A file listed in its bundle's ``large_files.yml`` must match
    the hash given there. Every failure is a one-line error naming the file (and the expected hash, when listed)."""
    from monai_moe_reg.networks.config import config_mismatch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist: train the bundle first or pass --checkpoint.")
    listed = expected_hash(path)
    if listed is not None:
        got = file_hash(path, listed[0])
        if got != listed[1]:
            raise ValueError(
                f"weights file '{path}' has {listed[0]} {got}, but large_files.yml expects {listed[1]}: the file is "
                "corrupt or was replaced; restore it (git checkout, or download it again)."
            )
    state = _read_weights(path)
    differ = config_mismatch(_saved_network_config(path), network)
    if differ:
        raise ValueError(
            f"checkpoint '{path}' was trained with other network settings ({'; '.join(differ)}): build "
            "the network as it was trained (network_def), or train one for these settings."
        )
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        keys, got_keys = set(network.state_dict()), set(state)
        hint = f" (large_files.yml: {listed[0]} {listed[1]})" if listed else ""
        raise ValueError(
            f"checkpoint '{path}'{hint} does not fit the {Path(bundle).name or type(network).__name__} network "
            f"({len(keys - got_keys)} missing, {len(got_keys - keys)} unexpected keys): is it from the other bundle "
            "or another network_def?"
        ) from err
