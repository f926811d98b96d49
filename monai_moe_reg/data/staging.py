"""Result folders published all at once: files are written into a staging folder of this run's own beside the
destination, which is renamed onto it only when complete. Concurrent runs never mix files, and a failure leaves
nothing new."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["staged_folder", "publish"]


def publish(stage: Path, final: Path) -> None:
    """Rename ``stage`` to ``final``; an existing ``final`` is moved aside first and removed after."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
        os.rmdir(old)
        final.replace(old)
    stage.replace(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_folder(final: str | os.PathLike) -> Iterator[Path]:
    """``with staged_folder(out / name) as stage: ...write into stage...`` publishes ``stage`` as ``final`` when the
    block completes and removes it when the block raises."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    try:
        yield stage
        publish(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
