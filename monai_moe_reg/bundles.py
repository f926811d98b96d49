"""Helpers the bundle configs call: where the bundle lives, and resuming from its latest checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from ignite.engine import Engine

__all__ = [
    "bundle_config",
    "bundle_root",
    "latest_checkpoint",
    "load_network_weights",
    "locate",
    "require_path",
    "resume_from_latest",
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
    for path in files:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - torch raises many types for a corrupt file
            logging.getLogger(__name__).warning("skipping unreadable checkpoint %s (%s)", path, type(err).__name__)
            continue
        max_epochs = trainer.state.max_epochs
        if isinstance(state, dict) and "rng" in state:
            _restore_rng_at_first_epoch(trainer, state["rng"])
        Checkpoint.load_objects(to_load=load_dict, checkpoint=state)
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
    """A MONAI ``ConfigParser`` of the bundle's ``configs/<config>`` with ``bundle_root`` set to the bundle folder."""
    from monai.bundle import ConfigParser

    root = bundle_root(bundle)
    _warn_if_foreign(root, config)
    parser = ConfigParser()
    try:
        parser.read_config(str(root / "configs" / config))
    except ValueError as err:
        raise ValueError(f"cannot read '{root / 'configs' / config}': {err}") from err
    parser["bundle_root"] = str(root.resolve())
    return parser


def _warn_if_foreign(root: Path, config: str) -> None:
    """Log a warning when ``root/configs/<config>`` is not byte-identical to the config of the same name shipped
    with this package: bundle configs run Python expressions (``$...``) and import any ``_target_``."""
    import logging

    own = Path(__file__).resolve().parents[1] / "bundles" / root.resolve().name / "configs" / config
    mine = root / "configs" / config
    try:
        same = own.is_file() and own.read_bytes() == mine.read_bytes()
    except OSError:
        same = False
    if not same:
        logging.getLogger(__name__).warning(
            "bundle config '%s' is not one of monai-moe-reg's own (or was modified): its '$' expressions and "
            "'_target_' callables run as Python code; use only bundles you trust.", mine)


def load_network_weights(network, path: str | os.PathLike, bundle: str | os.PathLike = "") -> None:
    """Load a state dict (or a checkpoint dict with a ``network`` entry) from ``path`` into ``network``, with a
    one-line error naming the file for a missing, unreadable or mismatched checkpoint."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist: train the bundle first or pass --checkpoint.")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise ValueError(f"checkpoint '{path}' is not a readable PyTorch checkpoint ({type(err).__name__}); "
                         "it may be truncated or of another format.") from err
    if isinstance(state, dict) and isinstance(state.get("network"), dict):
        state = state["network"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint '{path}' holds a {type(state).__name__}, not a state dict of a network.")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        keys, got = set(network.state_dict()), set(state)
        raise ValueError(
            f"checkpoint '{path}' does not fit the {Path(bundle).name or type(network).__name__} network "
            f"({len(keys - got)} missing, {len(got - keys)} unexpected keys): is it from the other bundle?"
        ) from err
