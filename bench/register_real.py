"""Register real brain pairs at full resolution, side by side: no registration, ANTs SyN, elastix B-spline, and
``monai-moe-reg register`` (network only, the default pipeline and its options), in one run on one machine.

    python bench/register_real.py --data ../shared/data [--checkpoint model.pt] [--ants-python .venv-ants/bin/python]
                                  [--device cpu] [--out bench/results/register_real.md]

Pairs: every real inter-subject brain pair of the data folder with one label set at its own 1 mm resolution,
both directions (``brain3/image_A`` <-> ``image_B``, 160x192x144, labels 1 and 2; ``brain/subject_a`` has no second
subject with its FreeSurfer labels). Every method gets the original files; ours are run as the command a user types
(``monai-moe-reg register ...``, a fresh process), ANTs as a fresh process of its own virtual environment
(``bench/ants_syn.py``), so the seconds are whole commands: start-up, reading, registering, writing. elastix runs in
this process (``bench/elastix_reference.py``); its seconds are the registration alone. All rows are scored by the
same code: Dice and HD95 (mm) over the fixed labels, %|J|<=0 and SD log J of the displacement field.

Also checked: ANTs applying our ``transform.h5`` to the original moving scan reproduces our warped image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import RESULTS, emit_table  # bench/report.py (scripts run as python bench/<name>.py)

import nibabel as nib
import numpy as np
import torch

from monai_moe_reg.apps.registration import _warp_label, load_scan
from monai_moe_reg.apps.spatial import Grid
from monai_moe_reg.metrics.registration import registration_metrics

ROOT = Path(__file__).resolve().parents[1]


def _pairs(data: Path) -> list[dict]:
    folder = data / "brain3"
    files = {k: folder / f"image_{k}.nii.gz" for k in "AB"}
    labels = {k: folder / f"image_{k}_seg.nii.gz" for k in "AB"}
    for p in [*files.values(), *labels.values()]:
        if not p.is_file():
            raise FileNotFoundError(f"'{p}' is missing: pass the data folder of ../shared/data/README.md as --data.")
    return [{"name": f"brain3 {m}->{f}", "moving": str(files[m]), "fixed": str(files[f]), "moving_label": str(labels[m]),
             "fixed_label": str(labels[f])} for m, f in (("A", "B"), ("B", "A"))]


def _grid(img) -> Grid:
    return Grid(tuple(img.shape[1:]), torch.as_tensor(np.asarray(img.affine), dtype=torch.float64))


def _score(pair: dict, warped_label: torch.Tensor, ddf: torch.Tensor) -> dict:
    """Our metrics of a warped label ``(1, *S)`` on the fixed grid and a DDF ``(3, *S)`` in fixed voxels."""
    fixed = load_scan(pair["fixed"], "fixed")
    lab = load_scan(pair["fixed_label"], "fixed label", label=True)
    grid = _grid(fixed)
    fixed_lab = _warp_label(lab, torch.linalg.inv(_grid(lab).affine) @ grid.affine, grid.shape, None)
    return registration_metrics(ddf[None], warped_label[None].long(), fixed_lab[None], grid.spacing, labels=[1, 2])[0]


def _lps_field_to_ddf(path: Path, fixed_affine: np.ndarray) -> torch.Tensor:
    """An ITK/ANTs displacement field NIfTI (LPS mm, ``(X, Y, Z, 1, 3)``) as a DDF in voxels of the fixed grid."""
    field = np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)[:, :, :, 0, :]  # (X, Y, Z, 3) LPS mm
    step = np.diag([-1.0, -1.0, 1.0]) @ fixed_affine[:3, :3]
    vox = np.einsum("ij,...j->...i", np.linalg.inv(step), field)
    return torch.from_numpy(np.moveaxis(vox, -1, 0).copy()).float()


def run_ours(pair: dict, out: Path, extra: list[str]) -> tuple[dict, float, Path]:
    cmd = [sys.executable, "-m", "monai_moe_reg.cli", "register", "--fixed", pair["fixed"], "--moving", pair["moving"],
           "--fixed-label", pair["fixed_label"], "--moving-label", pair["moving_label"], "--output", str(out), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PAGER": "cat"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    folder = Path(proc.stdout.strip().splitlines()[-1])
    metrics = json.loads((folder / "metrics.json").read_text())
    return metrics, seconds, folder


def run_ants(pair: dict, out: Path, python: str) -> tuple[dict, float, dict]:
    cmd = [python, str(ROOT / "bench" / "ants_syn.py"), pair["fixed"], pair["moving"], pair["moving_label"], str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"ANTs failed:\n{proc.stderr[-2000:]}")
    info = json.loads((out / "seconds.json").read_text())
    for params in info["affine_parameters"]:  # SyNOnly: the warp is the whole transform when the affine is identity
        if not np.allclose(params, [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0], atol=1e-6):
            raise RuntimeError(f"ANTs returned a non-identity affine {params}; score the composed field instead.")
    fixed_affine = np.asarray(load_scan(pair["fixed"], "fixed").affine, dtype=np.float64)
    ddf = _lps_field_to_ddf(out / "warp.nii.gz", fixed_affine)
    label = torch.from_numpy(np.asarray(nib.load(str(out / "warped_label.nii.gz")).dataobj).astype(np.int64))[None]
    return _score(pair, label, ddf), seconds, info


def run_elastix(pair: dict) -> tuple[dict, float]:
    from elastix_reference import elastix_bspline

    fixed = load_scan(pair["fixed"], "fixed")
    moving = load_scan(pair["moving"], "moving")
    if fixed.shape != moving.shape or not np.allclose(fixed.affine, moving.affine):
        raise RuntimeError("elastix_bspline expects both scans on one grid (true for brain3).")
    scale = lambda t: (t - t.min()) / (t.max() - t.min())  # noqa: E731
    ddf, seconds, _ = elastix_bspline(scale(moving.as_tensor()), scale(fixed.as_tensor()), _grid(fixed).spacing)
    lab = load_scan(pair["moving_label"], "moving label", label=True)
    grid = _grid(fixed)
    warped = _warp_label(lab, torch.linalg.inv(_grid(lab).affine) @ grid.affine, grid.shape, ddf[None])
    return _score(pair, warped, ddf), seconds


def ants_reproduces(pair: dict, folder: Path, python: str) -> float:
    """Correlation of ANTs' resampling of the original moving scan through our transform.h5 with our warped image."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ants_applied.nii.gz"
        subprocess.run([python, str(ROOT / "bench" / "ants_syn.py"), "--apply", pair["fixed"], pair["moving"],
                        str(folder / "transform.h5"), str(out)], check=True, capture_output=True)
        theirs = np.asarray(nib.load(str(out)).dataobj, dtype=np.float64).ravel()
    ours = np.asarray(nib.load(str(folder / "warped_image.nii.gz")).dataobj, dtype=np.float64).ravel()
    return float(np.corrcoef(ours, theirs)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the data folder (../shared/data)")
    parser.add_argument("--checkpoint", default=None,
                        help="network weights for the network rows (default: the bundle's, i.e. its shipped weights)")
    parser.add_argument("--bundle", default=str(ROOT / "bundles" / "shmoareg"))
    parser.add_argument("--ants-python", default=str(ROOT / ".venv-ants" / "bin" / "python"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["ants", "elastix"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(RESULTS / "register_real.md"))
    args = parser.parse_args()
    pairs = _pairs(Path(args.data))
    use_ants = "ants" not in args.skip
    if use_ants and not Path(args.ants_python).is_file():
        raise SystemExit(f"no ANTs Python at {args.ants_python}: see README 'Benchmarks' (or --skip ants).")
    base = ["--bundle", args.bundle, "--device", args.device]
    weights = ["--checkpoint", args.checkpoint] if args.checkpoint else []  # default: the bundle's (shipped) weights
    ours = [
        ("ours, network only", weights + ["--instance-opt", "false"]),
        ("ours (default: affine + network + instance optimisation)", weights),
        ("ours, network + IO regularising the residual only (--io-regularise residual)",
         weights + ["--io-regularise", "residual"]),
        ("ours, no network (--network off: affine + IO from the identity)", ["--network", "off"]),
        ("ours, diffeomorphic IO, no network", ["--network", "off", "--diffeomorphic", "true"]),
    ]
    rows: dict[str, list[dict]] = {}
    work = Path(tempfile.mkdtemp(prefix="register_real_"))
    checks = []
    for pair in pairs:
        print(f"== {pair['name']}", flush=True)
        unreg = _score(pair, _warp_label(load_scan(pair["moving_label"], "m", label=True),
                                         *_identity(pair), None), torch.zeros(3, 2, 2, 2))
        rows.setdefault("no registration", []).append({**unreg, "seconds": 0.0})
        if use_ants:
            m, s, _ = run_ants(pair, work / f"ants_{pair['name'][-4:]}", args.ants_python)
            rows.setdefault("ANTs SyN (antspyx, SyNOnly, defaults)", []).append({**m, "seconds": s})
            print(f"ANTs: dice {m['dice']:.4f} in {s:.1f} s", flush=True)
        if "elastix" not in args.skip:
            m, s = run_elastix(pair)
            rows.setdefault("elastix B-spline (itk-elastix defaults, registration only)", []).append({**m, "seconds": s})
            print(f"elastix: dice {m['dice']:.4f} in {s:.1f} s", flush=True)
        for i, (name, extra) in enumerate(ours):
            m, s, folder = run_ours(pair, work / f"ours{i}_{pair['name'][-4:]}", base + extra)
            rows.setdefault(name, []).append({**m, "seconds": s})
            print(f"{name}: dice {m['dice']:.4f} in {s:.1f} s", flush=True)
            if use_ants and "default" in name:
                checks.append(ants_reproduces(pair, folder, args.ants_python))
    lines = [
        f"Real brain pairs at 1 mm (brain3 A<->B, 160x192x144, labels 1-2), {len(pairs)} pairs, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, device {args.device}, "
        f"{time.strftime('%Y-%m-%d')}. Mean over pairs; seconds = whole command (ours, ANTs) or registration "
        "(elastix).",
        "",
        "| method | Dice | HD95 (mm) | %\\|J\\|<=0 | SD log J | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, rs in rows.items():
        mean = {k: float(np.mean([r[k] for r in rs])) for k in ("dice", "hd95_mm", "folding_percent", "sdlogj", "seconds")}
        lines.append(f"| {name} | {mean['dice']:.4f} | {mean['hd95_mm']:.2f} | {mean['folding_percent']:.4f} | "
                     f"{mean['sdlogj']:.3f} | {mean['seconds']:.1f} |")
    lines += ["", "Per pair (Dice / seconds): " + "; ".join(
        f"{name}: " + ", ".join(f"{r['dice']:.4f}/{r['seconds']:.0f}s" for r in rs) for name, rs in rows.items())]
    if checks:
        lines += ["", f"ANTs applying our transform.h5 to the original moving scan vs our warped image: correlation "
                      f"{', '.join(f'{c:.5f}' for c in checks)}"]
    emit_table(lines, args.out)
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(rows, indent=1))


def _identity(pair: dict):
    fixed = load_scan(pair["fixed"], "fixed")
    lab = load_scan(pair["moving_label"], "moving label", label=True)
    grid = _grid(fixed)
    return torch.linalg.inv(_grid(lab).affine) @ grid.affine, grid.shape


if __name__ == "__main__":
    main()
