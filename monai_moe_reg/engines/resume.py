"""Resuming a bundle's training from its newest readable checkpoint (``--resume true``)."""

from __future__ import annotations

import os
from pathlib import Path

from ignite.engine import Engine

__all__ = ["checkpoints_newest_first", "latest_checkpoint", "resume_from_latest"]


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
            "resume=True but no checkpoint*.pt in '%s' yet: starting a new run from epoch 1.", ckpt_dir
        )
        return None
    import pickle

    from monai_moe_reg.weights import rng_safe_globals

    for path in files:
        try:  # never unpickle code: tensors, numbers, strings and the NumPy RNG state only
            with torch.serialization.safe_globals(rng_safe_globals()):
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"checkpoint '{path}' holds Python objects other than tensors and numbers, so it was not "
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
            raise ValueError(
                f"checkpoint '{path}' does not fit this run's {', '.join(load_dict)} (was it written by "
                "another network_def or optimizer?): resume with the config that wrote it, or train "
                f"into another --ckpt_dir. ({str(err).splitlines()[0][:200]})"
            ) from err
        if max_epochs is not None:
            if trainer.state.epoch > max_epochs:
                raise ValueError(
                    f"checkpoint '{path}' is at epoch {trainer.state.epoch}, beyond max_epochs "
                    f"{max_epochs}: raise --max_epochs to continue training."
                )
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
