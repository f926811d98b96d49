"""Result folders published all at once, and never over what the program did not write.

Files are written into a staging folder of this run's own beside the destination (``.<name>.<pid>.<random>.part``),
which is renamed onto it only when complete: concurrent runs never mix files, and a failure leaves nothing new. The
published folder holds a small ``.monai-moe-reg.json`` listing the files it wrote; an existing destination is
replaced only when everything in it is listed there (the program's own earlier result), otherwise publishing
refuses and names the files it would have deleted. Staging folders of killed runs are removed by the next run, and
a destination that a kill left moved aside (between the two renames of a replacement) is put back first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_save",
    "atomic_write_text",
    "staged_folder",
    "publish",
    "check_replaceable",
    "foreign_files",
    "process_alive",
    "MARKER",
]

MARKER = ".monai-moe-reg.json"
_NAME_BUDGET = 120  # characters of the destination's name kept in the staging names (file systems allow 255)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.<pid>.tmp`` files beside ``path`` left by a process that was killed mid-write (its pid is
    gone); a temporary of a live process is left alone."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            pid = int(tmp.name[len(path.name) + 2 : -len(".tmp")])
        except ValueError:
            continue
        if pid != os.getpid() and not process_alive(pid):
            tmp.unlink(missing_ok=True)


def atomic_save(obj, path: str | os.PathLike, writer: Callable | None = None) -> Path:
    """Write ``obj`` (``torch.save``, or ``writer(obj, file)``) to a temporary file beside ``path``, fsync it, rename
    it onto ``path`` and fsync the folder: ``path`` is always either the old complete file or the new one. The one
    way this package writes a single file (checkpoints, datalists, CSVs, downloads, exports)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            if writer is None:
                import torch

                writer = torch.save
            writer(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_save` of a text file (UTF-8)."""
    return atomic_save(text, path, writer=lambda obj, fh: fh.write(obj.encode("utf-8")))


def _files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def foreign_files(folder: str | os.PathLike) -> list[str]:
    """Files in ``folder`` that its :data:`MARKER` does not list (all of them without a marker): what replacing
    the folder would delete although this program did not write it."""
    folder = Path(folder)
    if not folder.is_dir():
        return [folder.name] if folder.exists() else []
    try:
        listed = set(json.loads((folder / MARKER).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        listed = set()
    return [f for f in _files_in(folder) if f != MARKER and f not in listed]


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


_LEFTOVER = re.compile(r"^\.(.+)\.(\d+)\.[^.]+\.(part|old)$")


def _recover(parent: Path) -> None:
    """In ``parent``: remove the staging folders of dead runs, and put back a destination that a killed replacement
    left moved aside (when its full name is known and nothing took its place; otherwise it is left alone)."""
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        m = _LEFTOVER.match(p.name)
        if not m or not p.is_dir() or int(m.group(2)) == os.getpid() or process_alive(int(m.group(2))):
            continue
        if m.group(3) == "part":
            shutil.rmtree(p, ignore_errors=True)
        elif len(m.group(1)) < _NAME_BUDGET and not (parent / m.group(1)).exists():
            p.replace(parent / m.group(1))


def _temp(final: Path, suffix: str) -> Path:
    return Path(
        tempfile.mkdtemp(prefix=f".{final.name[:_NAME_BUDGET]}.{os.getpid()}.", suffix=f".{suffix}", dir=final.parent)
    )


def check_replaceable(final: Path, replace: Callable[[Path], list[str]] | None = foreign_files) -> None:
    """Raise ``FileExistsError`` naming the files if replacing ``final`` would delete any that ``replace`` names (or,
    with ``replace=None``, any at all)."""
    if final.exists() and (final.is_file() or any(final.iterdir())):
        lost = replace(final) if replace is not None else _files_in(final)
        if lost:
            shown = ", ".join(lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
            raise FileExistsError(
                f"'{final}' exists and holds files this program did not write ({shown}): nothing "
                "was replaced; choose another output folder or move those files away."
            )


def publish(stage: Path, final: Path, replace: Callable[[Path], list[str]] | None = foreign_files) -> None:
    """Rename ``stage`` to ``final``. An existing ``final`` is replaced only when ``replace(final)`` (default:
    :func:`foreign_files`) names nothing that would be lost; it is moved aside first and removed after. With
    ``replace=None`` an existing non-empty ``final`` is never replaced."""
    check_replaceable(final, replace)
    old = None
    if final.exists():
        old = _temp(final, "old")
        os.rmdir(old)
        final.replace(old)
    stage.replace(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_folder(
    final: str | os.PathLike, replace: Callable[[Path], list[str]] | None = foreign_files, marker: bool = True
) -> Iterator[Path]:
    """``with staged_folder(out / name) as stage: ...write into stage...`` publishes ``stage`` as ``final`` when the
    block completes (see :func:`publish`; the folder gets the usual permissions, not ``mkdtemp``'s 0700) and removes
    it when the block raises. ``marker``: write :data:`MARKER` listing the files, so a later run may replace them."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _recover(final.parent)
    check_replaceable(final, replace)  # refuse before any work is done
    stage = _temp(final, "part")
    try:
        yield stage
        if marker:
            (stage / MARKER).write_text(json.dumps({"written_by": "monai-moe-reg", "files": _files_in(stage)}))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)
        publish(stage, final, replace)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
