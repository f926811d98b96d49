"""Checkpoints that survive a kill: atomic, fsynced writes; older files removed only after the new one is complete;
a best model that a resumed run never replaces with worse weights.

Ignite's ``Checkpoint`` removes the previous file *before* writing the next, and MONAI's ``CheckpointSaver`` with a
fixed ``key_metric_filename`` therefore deletes ``model.pt`` before re-writing it: a kill in between leaves nothing.
These handlers replace them in the bundles' ``train.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from monai_moe_reg.data.staging import atomic_save

__all__ = ["atomic_save", "SafeDiskSaver", "ResumableCheckpointSaver", "BestModelSaver", "RNGState", "WeightsLoader"]

logger = logging.getLogger(__name__)


class SafeDiskSaver(BaseSaveHandler):
    """An Ignite save handler (like ``DiskSaver``) whose writes are :func:`atomic_save` and whose ``remove`` is
    deferred until the next file has been written completely (a file replaced under the same name is never removed).
    It asks nothing of ``ignite.distributed`` (whose first use creates a process group: a collective that would hang
    when only rank 0 saves)."""

    def __init__(self, dirname: str | os.PathLike) -> None:
        self.dirname = Path(dirname)
        self._pending: list[str] = []

    def __call__(self, checkpoint, filename: str, metadata=None) -> None:
        atomic_save(checkpoint, self.dirname / filename)
        for old in self._pending:
            if old != filename:
                (self.dirname / old).unlink(missing_ok=True)  # a save that was interrupted left no file
        self._pending.clear()

    def remove(self, filename: str) -> None:
        self._pending.append(filename)


class RNGState:
    """The random generators a training run draws from (Python, NumPy, torch CPU and CUDA) as a ``state_dict``, so
    that a resumed run continues the same random sequence (data shuffling, augmentation, dropout) as an
    uninterrupted one."""

    def state_dict(self) -> dict:
        import random

        import numpy as np

        state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        import random

        import numpy as np

        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class ResumableCheckpointSaver:
    """``network``, ``optimizer`` **and the trainer it is attached to** saved every ``save_interval`` epochs as
    ``checkpoint_checkpoint_<epoch>.pt`` in ``save_dir`` (keeping ``n_saved``) with the random generators' state
    (:class:`RNGState`), crash-safe (:class:`SafeDiskSaver`),
    so a killed run resumes (:func:`monai_moe_reg.engines.resume.resume_from_latest`) losing at most the epoch in
    progress.
    A config cannot reference the trainer from its own handler list, so it is added at ``attach`` time."""

    def __init__(self, save_dir: str, network, optimizer, save_interval: int = 1, n_saved: int = 1) -> None:
        self.save_dir, self.network, self.optimizer = save_dir, network, optimizer
        self.save_interval, self.n_saved = save_interval, n_saved

    def attach(self, engine: Engine) -> None:
        handler = Checkpoint(
            {"network": self.network, "optimizer": self.optimizer, "trainer": engine, "rng": RNGState()},
            SafeDiskSaver(self.save_dir),
            filename_prefix="checkpoint",
            n_saved=self.n_saved,
            global_step_transform=lambda e, _: e.state.epoch,
        )
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), handler)


class BestModelSaver:
    """Keeps ``<save_dir>/<filename>`` (the network's state dict) at the best validation key metric so far, with a
    sidecar ``<filename>.json`` (metric name, value, epoch, and the network's class and settings,
    :func:`~monai_moe_reg.networks.config.network_config`) that a resumed run reads, so weights that validate worse
    than the saved ones never replace them. A NaN metric (e.g. validation pairs without labels) saves nothing and
    says so. Attach to the evaluator.

    Only a trained network is saved: the validation before the first epoch (``ValidationHandler(exec_at_start)``,
    epoch 0) is logged as the starting point and saves nothing (a run shorter than the validation interval writes no
    ``model.pt``, so ``register`` keeps using the shipped weights). A ``model.pt`` of another network (class or
    settings) found at the start is moved aside to ``<stem>.previous-<n>.pt`` (with its sidecar), never kept as this
    run's.

    Args:
        save_dir: folder.
        network: the module whose ``state_dict`` is saved (unwrapped from DDP).
        filename: ``model.pt`` in the bundles.
        mode: ``"max"`` (Dice) or ``"min"``.
    """

    def __init__(self, save_dir: str, network, filename: str = "model.pt", mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        self.path = Path(save_dir) / filename
        self.network, self.mode = network, mode
        self.best: float | None = None

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    def attach(self, engine: Engine) -> None:
        from monai_moe_reg.networks.config import config_mismatch

        if self.path.is_file() and self.sidecar.is_file():
            try:
                saved = json.loads(self.sidecar.read_text())
                best = float(saved["value"])
            except (ValueError, KeyError, TypeError):
                logger.warning("ignoring unreadable %s", self.sidecar)
            else:
                differ = config_mismatch(saved.get("network"), self.network)
                if differ:
                    self._move_aside(differ)
                else:
                    self.best = best
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _move_aside(self, why: list[str]) -> None:
        n = 1
        while self.path.with_name(f"{self.path.stem}.previous-{n}{self.path.suffix}").exists():
            n += 1
        target = self.path.with_name(f"{self.path.stem}.previous-{n}{self.path.suffix}")
        self.sidecar.replace(target.with_name(target.name + ".json"))
        self.path.replace(target)
        logger.warning(
            "%s is of another network (%s): moved to %s; this run saves its own",
            self.path.name,
            "; ".join(why),
            target.name,
        )

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def __call__(self, engine: Engine) -> None:
        name = getattr(engine.state, "key_metric_name", None)
        value = engine.state.metrics.get(name) if name else None
        if value is None or not math.isfinite(float(value)):
            logger.warning(
                "validation %s is %s: %s not updated (do the validation pairs have labels?)",
                name,
                value,
                self.path.name,
            )
            return
        value = float(value)
        if int(engine.state.epoch) < 1:  # validation before any training: a reference, never a model to keep
            logger.info(
                "%s %.4f before training (the weights it starts from); %s is written from trained epochs only",
                name,
                value,
                self.path.name,
            )
            return
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not self._better(value) or rank != 0:
            return
        from monai_moe_reg.networks.config import network_config

        module = getattr(self.network, "module", self.network)
        atomic_save(module.state_dict(), self.path)
        atomic_save(
            {"metric": name, "value": value, "epoch": int(engine.state.epoch), "network": network_config(module)},
            self.sidecar,
            writer=lambda obj, fh: fh.write(json.dumps(obj).encode()),
        )
        self.best = value
        logger.info("new best %s %.4f at epoch %d: saved %s", name, value, engine.state.epoch, self.path)


class WeightsLoader:
    """Ignite handler loading network weights when the engine starts: a ``model.pt`` (state dict or resumable
    checkpoint) or a bundle's shipped ``.safetensors``, checked against the hash its ``large_files.yml`` gives
    (:func:`monai_moe_reg.weights.load_network_weights`: one-line errors naming the file). Used by the bundles'
    evaluation and inference in place of MONAI's ``CheckpointLoader``, which reads neither safetensors nor hashes.

    Args:
        load_path: the weights file.
        network: the module to load into (unwrapped from DDP).
    """

    def __init__(self, load_path: str | os.PathLike, network) -> None:
        self.load_path = load_path
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from monai_moe_reg.engines.utils import unwrap
        from monai_moe_reg.weights import load_network_weights

        load_network_weights(unwrap(self.network), self.load_path)
