"""Build step that puts both bundles inside the wheel (``monai_moe_reg/_bundles/<name>``), so an installed package
registers with ``--bundle shmoareg`` from any folder, no checkout needed. Everything else is in ``setup.cfg``.

Copied: each bundle's configs, docs, LICENSE, ``large_files.yml`` and the shipped files it lists that are present
(the pretrained weights); never a user's trained ``models/model.pt``, demo ``data/`` or ``eval/`` outputs.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BUNDLES = ("shmoareg", "llm_morph")


def bundle_files(root: Path) -> list[Path]:
    """The files of bundle folder ``root`` that ship with the package."""
    import re

    files = [p for p in (root / "configs").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    files += [p for p in (root / "docs").rglob("*") if p.is_file()]
    files += [root / n for n in ("LICENSE", "large_files.yml") if (root / n).is_file()]
    listed = re.findall(r'path:\s*"?([^"\n]+)"?', (root / "large_files.yml").read_text())
    files += [root / p for p in listed if (root / p).is_file() and p.endswith(".safetensors")]
    return files


class BuildWithBundles(build_py):
    def run(self):
        super().run()
        for name in BUNDLES:
            src = HERE / "bundles" / name
            if not src.is_dir():  # building from an sdist made without them
                raise FileNotFoundError(f"bundles/{name} is missing: build the wheel from a checkout.")
            dest = Path(self.build_lib) / "monai_moe_reg" / "_bundles" / name
            for f in bundle_files(src):
                target = dest / f.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)


setup(cmdclass={"build_py": BuildWithBundles})
