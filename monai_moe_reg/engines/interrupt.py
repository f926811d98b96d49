"""Ctrl-C or a scheduler's SIGTERM ends a bundle's training or evaluation with one line, not a traceback.

Attached first to an Ignite engine (before MONAI's ``StatsHandler``, whose exception handler logs the traceback and
re-raises), :class:`InterruptHandler` turns ``SIGTERM`` into ``KeyboardInterrupt`` while the engine runs, and on a
``KeyboardInterrupt`` logs where the run stopped and exits with status 130. Checkpoints are written atomically
(:func:`~monai_moe_reg.engines.atomic_save`), so the last complete one is intact and ``--resume true`` continues
from it. Any other exception goes on to the next handler unchanged. Written here: neither MONAI nor Ignite has it.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from ignite.engine import Engine, Events

__all__ = ["InterruptHandler"]

logger = logging.getLogger(__name__)


class InterruptHandler:
    """One line and exit status 130 on Ctrl-C / SIGTERM (see the module docs).

    Args:
        what: the run's name in the message (``"training"``, ``"validation"``, ``"evaluation"``).
        hint: what to do next, appended to the message.
    """

    def __init__(self, what: str = "training", hint: str = "resume with --resume true") -> None:
        self.what, self.hint = what, hint
        self._previous = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._install)
        engine.add_event_handler(Events.COMPLETED, self._restore)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self)

    def _install(self, engine: Engine) -> None:
        if threading.current_thread() is threading.main_thread() and self._previous is None:
            self._previous = signal.signal(signal.SIGTERM, _raise_interrupt)

    def _restore(self, engine: Engine) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def __call__(self, engine: Engine, e: BaseException) -> None:
        if not isinstance(e, KeyboardInterrupt):
            raise e
        self._restore(engine)
        state = engine.state
        msg = f"{self.what} interrupted at epoch {state.epoch}, iteration {state.iteration}; {self.hint}."
        logger.warning(msg)
        print(msg, file=sys.stderr, flush=True)
        raise SystemExit(130)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
