"""Installable without a checkout: the wheel carries both bundles (configs, docs, shipped weights); installed in a
fresh virtual environment, ``monai-moe-reg register --bundle shmoareg`` works from a folder outside any checkout
with the shipped weights.

The fresh environment gets the dependencies (torch, MONAI, ...) of the running interpreter through a ``.pth`` path
line, not its packages' ``.pth`` files: this checkout's editable install is invisible there, so the package that
runs is the wheel's."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_moe_reg.data import synthetic_pair

ROOT = Path(__file__).resolve().parents[1]


def _run(args, **kwargs):
    proc = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _not_source(folder: str, names: list[str]) -> set[str]:
    """What a build does not need: VCS, environments, build outputs, benches, tests, a bundle's user files."""
    skip = {".git", "build", "dist", "__pycache__", "bench", "tests", "model.pt"}
    out = {n for n in names if n in skip or n.startswith(".venv") or n.endswith((".egg-info", ".pt.json"))}
    if Path(folder).parent.name == "bundles":  # bundles/<name>/{data,eval,cache}: demo data and outputs
        out |= {n for n in names if n in ("data", "eval", "cache")}
    return out


def test_wheel_installs_and_registers_outside_a_checkout(tmp_path):
    source, dist = tmp_path / "source", tmp_path / "dist"  # built from a copy: nothing is written into the checkout
    shutil.copytree(ROOT, source, ignore=_not_source)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
         cwd=tmp_path)
    wheel = next(dist.glob("monai_moe_reg-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for bundle in ("shmoareg", "llm_morph"):
        for f in ("configs/inference.json", "configs/metadata.json", "large_files.yml", "LICENSE", "docs/README.md",
                  "models/pretrained.safetensors"):
            assert f"monai_moe_reg/_bundles/{bundle}/{f}" in names, f
    assert not any(n.endswith("model.pt") or "/data/" in n for n in names if "_bundles" in n)

    env_dir = tmp_path / "env"
    _run([sys.executable, "-m", "venv", str(env_dir)])
    python = env_dir / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "outer_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])

    work = tmp_path / "elsewhere"
    work.mkdir()
    pair = synthetic_pair((32, 32, 32), max_disp=3.0, seed=5)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for key in ("fixed_image", "moving_image"):
        nib.save(nib.Nifti1Image(pair[key][0].numpy().astype(np.float32), affine), str(work / f"{key}.nii.gz"))
    where = _run([str(python), "-c", "import monai_moe_reg; print(monai_moe_reg.__file__)"], cwd=work).stdout
    assert str(env_dir) in where and str(ROOT) not in where, where
    proc = _run([str(env_dir / "bin" / "monai-moe-reg"), "register", "--fixed", "fixed_image.nii.gz", "--moving",
                 "moving_image.nii.gz", "--output", "out", "--bundle", "shmoareg", "--network", "on",
                 "--instance-opt", "2"], cwd=work)
    out = proc.stdout + proc.stderr
    assert "_bundles/shmoareg/models/pretrained.safetensors" in out, out  # which weights: the wheel's shipped ones
    folder = work / "out" / "moving_image_to_fixed_image"
    assert {p.name for p in folder.iterdir()} >= {"warped_image.nii.gz", "transform.h5", "metrics.json"}
