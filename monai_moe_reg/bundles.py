"""Helpers the bundle configs call: where the bundle lives, and resuming from its latest checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from ignite.engine import Engine

__all__ = [
    "build_network",
    "bundle_config",
    "bundle_dir",
    "bundle_root",
    "default_weights",
    "expected_hash",
    "large_file_entries",
    "latest_checkpoint",
    "load_network_weights",
    "locate",
    "require_path",
    "resume_from_latest",
    "shipped_weights",
]

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


def bundle_dir(root: str | os.PathLike, name: str) -> str:
    """Absolute bundle folder for the configs' ``bundle_root`` (``"."`` by default, as in Model Zoo bundles).

    ``root`` itself when it is a bundle folder (has ``configs/metadata.json``): the current folder when run from the
    bundle (``cd bundles/shmoareg && python -m monai.bundle run --config_file configs/train.json``), or the folder
    given with ``--bundle_root``. From a checkout's root the default ``"."`` means ``./bundles/<name>`` (logged).
    Anything else is a ``FileNotFoundError`` naming the fix; the package's install location is never used, so
    outputs go where the user points, never silently into a source tree.
    """
    import logging

    path = Path(root).resolve()
    if (path / "configs" / "metadata.json").is_file():
        return str(path)
    nested = path / "bundles" / name
    if str(root) == "." and (nested / "configs" / "metadata.json").is_file():
        logging.getLogger(__name__).info("bundle_root '.' is a checkout's root: using %s", nested)
        return str(nested)
    raise FileNotFoundError(
        f"bundle_root '{root}' ({path}) is not a bundle folder (no configs/metadata.json): run from the bundle folder "
        f"(cd bundles/{name}) or pass --bundle_root <path to the {name} bundle>."
    )


def checkpoints_newest_first(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> list[Path]:
    """The ``<prefix>*.pt`` files in ``ckpt_dir`` (the resumable checkpoints the train configs save), newest first."""
    return sorted(Path(ckpt_dir).glob(f"{prefix}*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> Path | None:
    """Newest ``<prefix>*.pt`` in ``ckpt_dir``."""
    files = checkpoints_newest_first(ckpt_dir, prefix)
    return files[0] if files else None


def resume_from_latest(trainer: Engine, ckpt_dir: str | os.PathLike, load_dict: dict) -> str | None:
    """Restore network, optimizer and trainer state (epoch, iteration) from the newest readable checkpoint *now*,
    before the run starts, so the validation that runs at start already sees the resumed weights and training
    continues at the next epoch (the run's own ``max_epochs`` is kept). Unreadable checkpoints (e.g. a file a kill
    truncated in an older version) are skipped with a warning; raises if there are checkpoints but none can be read.

    With no checkpoint at all (a run killed before its first epoch ended) it logs a warning and returns ``None``: the
    run starts from the beginning, so a job scheduler can always requeue with ``--resume true`` (nnU-Net's ``--c``
    does the same)."""
    import logging

    import torch
    from ignite.handlers import Checkpoint

    files = checkpoints_newest_first(ckpt_dir)
    if not files:
        logging.getLogger(__name__).warning(
            "resume=True but no checkpoint*.pt in '%s' yet: starting a new run from epoch 1.", ckpt_dir)
        return None
    import pickle

    for path in files:
        try:  # never unpickle code: tensors, numbers, strings and the NumPy RNG state only
            with torch.serialization.safe_globals(_numpy_globals()):
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(f"checkpoint '{path}' holds Python objects other than tensors and numbers, so it was not "
                             "loaded (unpickling it could run code); delete it unless you trust where it came from."
                             ) from err
        except Exception as err:  # noqa: BLE001 - torch raises many types for a corrupt file
            logging.getLogger(__name__).warning("skipping unreadable checkpoint %s (%s)", path, type(err).__name__)
            continue
        max_epochs = trainer.state.max_epochs
        if isinstance(state, dict) and "rng" in state:
            _restore_rng_at_first_epoch(trainer, state["rng"])
        try:
            Checkpoint.load_objects(to_load=load_dict, checkpoint=state)
        except (RuntimeError, KeyError, ValueError) as err:
            raise ValueError(f"checkpoint '{path}' does not fit this run's {', '.join(load_dict)} (was it written by "
                             "another network_def or optimizer?): resume with the config that wrote it, or train "
                             f"into another --ckpt_dir. ({str(err).splitlines()[0][:200]})") from err
        if max_epochs is not None:
            if trainer.state.epoch > max_epochs:
                raise ValueError(f"checkpoint '{path}' is at epoch {trainer.state.epoch}, beyond max_epochs "
                                 f"{max_epochs}: raise --max_epochs to continue training.")
            trainer.state.max_epochs = max_epochs
        return str(path)
    raise ValueError(f"no readable checkpoint in '{ckpt_dir}' ({len(files)} unreadable); remove them and train again.")


def _restore_rng_at_first_epoch(trainer: Engine, rng_state: dict) -> None:
    """Restore the random generators when the resumed epoch starts, after the start-of-run validation: that is
    where an uninterrupted run stood when the checkpoint was written, so the data order and every random draw
    continue identically."""
    from ignite.engine import Events

    from monai_moe_reg.engines.checkpoints import RNGState

    def restore(engine: Engine) -> None:
        RNGState().load_state_dict(rng_state)
        engine.remove_event_handler(restore, Events.EPOCH_STARTED)

    trainer.add_event_handler(Events.EPOCH_STARTED, restore)


def require_path(path: str | os.PathLike, hint: str) -> str:
    """``path`` (a file or folder) if it exists, else a ``FileNotFoundError`` with ``hint`` (used before loading
    checkpoints and LLMs, so a missing one fails before anything is built)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"'{path}' does not exist: {hint}.")
    return str(path)


def bundle_root(bundle: str | os.PathLike) -> Path:
    """The bundle folder: ``bundle`` itself, or for a bundle name (``shmoareg``, ``bundles/llm_morph``) the folder
    :func:`locate` finds."""
    root = Path(bundle)
    if (root / "configs" / "inference.json").is_file():
        return root
    if root.name in BUNDLE_NAMES:
        return Path(locate(root.name))
    raise FileNotFoundError(
        f"'{root}' is not a bundle folder (no configs/inference.json); e.g. --bundle bundles/shmoareg"
    )


def bundle_config(bundle: str | os.PathLike, config: str = "inference.json"):
    """A MONAI ``ConfigParser`` of the bundle's ``configs/<config>`` with ``bundle_root`` set to the bundle folder;
    a config that would run code this package does not ship is refused unless trusted
    (:func:`monai_moe_reg.trust.check_bundle_code`)."""
    from monai.bundle import ConfigParser

    from monai_moe_reg.trust import check_bundle_code

    root = bundle_root(bundle)
    check_bundle_code(root / "configs" / config)  # a config that would run foreign code needs an opt-in
    parser = ConfigParser()
    try:
        parser.read_config(str(root / "configs" / config))
    except ValueError as err:
        raise ValueError(f"cannot read '{root / 'configs' / config}': {err}") from err
    parser["bundle_root"] = str(root.resolve())
    return parser


def build_network(parser, hint: str = ""):
    """The bundle's ``network_def`` from ``parser``. When building it fails for a reason the user can fix (a missing
    file such as LLM-Morph's LLM, a bad value), that reason is raised with ``hint`` appended, not MONAI's generic
    "failed to instantiate" wrapper (so the CLI prints it in one line)."""
    try:
        return parser.get_parsed_content("network_def")
    except RuntimeError as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, (OSError, ValueError)):
            cause = cause.__cause__
        if cause is None:
            raise
        raise type(cause)(f"{cause}{hint}") from err


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
    """The weights inference, evaluation and ``register`` use unless told otherwise: your own training result
    ``<ckpt_dir>/model.pt`` when it exists, else the bundle's shipped pretrained file (:func:`shipped_weights`);
    which one is logged. With neither, the ``model.pt`` path (whose absence ``require_path`` then reports)."""
    import logging

    log = logging.getLogger(__name__)
    own = Path(ckpt_dir or Path(bundle_dir) / "models") / "model.pt"
    if own.is_file():
        log.info("weights: your trained %s (pass --checkpoint to choose others)", own)
        return str(own)
    shipped = shipped_weights(bundle_dir)
    if shipped is not None:
        log.info("weights: the shipped pretrained %s (no trained model.pt in %s)", shipped, own.parent)
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


def _file_hash(path: Path, hash_type: str) -> str:
    import hashlib

    digest = hashlib.new(hash_type)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _numpy_globals() -> list:
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
        with torch.serialization.safe_globals(_numpy_globals()):  # resumable checkpoints hold NumPy RNG states
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch and safetensors raise many types for a corrupt file
        kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch"
        raise ValueError(f"checkpoint '{path}' is not a readable {kind} file ({type(err).__name__}); it may be "
                         "truncated or of another format.") from err
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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist: train the bundle first or pass --checkpoint.")
    listed = expected_hash(path)
    if listed is not None:
        got = _file_hash(path, listed[0])
        if got != listed[1]:
            raise ValueError(
                f"weights file '{path}' has {listed[0]} {got}, but large_files.yml expects {listed[1]}: the file is "
                "corrupt or was replaced; restore it (git checkout, or download it again)."
            )
    state = _read_weights(path)
    from monai_moe_reg.networks.config import config_mismatch

    differ = config_mismatch(_saved_network_config(path), network)
    if differ:
        raise ValueError(f"checkpoint '{path}' was trained with other network settings ({'; '.join(differ)}): build "
                         "the network as it was trained (network_def), or train one for these settings.")
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
