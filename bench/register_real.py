"""``monai-moe-reg register`` against ANTs SyN on the recorded validation (or tuning) pairs of real brains, side by
side in one run, each method run as its users run it: a fresh process with its defaults and its own preprocessing.

    python bench/register_real.py --data ../shared/data [--role validation] [--datasets ixi fs1mm]
                                  [--ants-python .venv-ants/bin/python] [--out bench/results/register_real.md]

Pairs: ``bench/splits.json`` (``bench/splits.py``): IXI validation pairs (2 mm, skull on, native space, 148 DLMUSE
labels) and the FreeSurfer brains at 1 mm (256^3, the 30 labels of ``brain/eval_labels.json``, validation only).
No default of ``register`` was chosen on these pairs (``bench/tune_register.py`` chose them on the tuning pairs).

Ours runs as the atlas-use command a user types (``monai-moe-reg register --fixed F --moving M --moving-label ML
--output O``: no fixed label, so no metrics inside the command); ANTs as a fresh process of its own virtual
environment (``bench/ants_syn.py``: ``ants.registration(type_of_transform="SyN")``, affine then SyN, defaults). The
seconds are whole commands: start-up, reading, registering, writing. Both are scored afterwards by the same code
(``bench/scoring.py``). Also checked: ANTs applying our ``transform.h5`` to the original moving scan reproduces our
warped image (correlation).
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
from scoring import fixed_label_on_grid, lps_field_to_ddf, read_field, read_label, score, summary, unregistered_label
from splits import eval_labels, pairs as split_pairs

import nibabel as nib
import numpy as np
import torch

from monai_moe_reg.apps.registration import load_scan

ROOT = Path(__file__).resolve().parents[1]


def run_register(pair: dict, out: Path, extra: list[str], fixed_label: bool = False) -> tuple[dict, float, Path]:
    """``monai-moe-reg register`` as a fresh process: ``(its metrics.json, whole-command seconds, result folder)``;
    with ``fixed_label`` the command computes the label metrics itself."""
    labels = ["--moving-label", pair["moving_label"]] + (["--fixed-label", pair["fixed_label"]] if fixed_label else [])
    cmd = [sys.executable, "-m", "monai_moe_reg.cli", "register", "--fixed", pair["fixed"], "--moving", pair["moving"],
           *labels, "--output", str(out), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PAGER": "cat"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    folder = Path(proc.stdout.strip().splitlines()[-1])
    return json.loads((folder / "metrics.json").read_text()), seconds, folder


def run_ours(pair: dict, out: Path, extra: list[str], labels: list[int] | None, gt: torch.Tensor) -> tuple[dict, Path]:
    """The atlas-use command (moving label only), scored by ``bench/scoring.py``."""
    metrics, seconds, folder = run_register(pair, out, extra)
    row = score(pair, read_label(folder / "warped_label.nii.gz"), read_field(folder / "transform.h5"), labels, gt)
    return {**row, "seconds": seconds, "stages": metrics["seconds"]}, folder


def run_ants(pair: dict, out: Path, python: str, labels: list[int] | None, gt: torch.Tensor) -> dict:
    cmd = [python, str(ROOT / "bench" / "ants_syn.py"), pair["fixed"], pair["moving"], pair["moving_label"], str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"ANTs failed:\n{proc.stderr[-2000:]}")
    info = json.loads((out / "seconds.json").read_text())
    fixed_affine = np.asarray(load_scan(pair["fixed"], "fixed").affine, dtype=np.float64)
    ddf = lps_field_to_ddf(out / "warp.nii.gz", fixed_affine)
    row = score(pair, read_label(out / "warped_label.nii.gz"), ddf, labels, gt)
    return {**row, "seconds": seconds, "registration_seconds": info["registration"]}


def ants_reproduces(pair: dict, folder: Path, python: str) -> float:
    """Correlation of ANTs' resampling of the original moving scan through our transform.h5 with our warped image."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ants_applied.nii.gz"
        subprocess.run([python, str(ROOT / "bench" / "ants_syn.py"), "--apply", pair["fixed"], pair["moving"],
                        str(folder / "transform.h5"), str(out)], check=True, capture_output=True)
        theirs = np.asarray(nib.load(str(out)).dataobj, dtype=np.float64).ravel()
    ours = np.asarray(nib.load(str(folder / "warped_image.nii.gz")).dataobj, dtype=np.float64).ravel()
    return float(np.corrcoef(ours, theirs)[0, 1])


METHODS = {
    "ours": ("ours: `monai-moe-reg register` (recommended defaults)", []),
    "ours_network": ("ours: with the shipped network (--network on)", ["--network", "on"]),
    "ours_network_only": ("ours: shipped network only (--network on --instance-opt false)",
                          ["--network", "on", "--instance-opt", "false"]),
    "ours_affine_only": ("ours: affine only (--affine only)", ["--affine", "only"]),
}
ANTS = "ANTs SyN (antspyx, type_of_transform='SyN', defaults)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the data folder (../shared/data)")
    parser.add_argument("--role", default="validation", choices=["validation", "tuning"])
    parser.add_argument("--datasets", nargs="+", default=["ixi", "fs1mm"], choices=["ixi", "t1_flair", "fs1mm"])
    parser.add_argument("--methods", nargs="+", default=["ants", *METHODS], choices=["ants", *METHODS])
    parser.add_argument("--bundle", default=str(ROOT / "bundles" / "shmoareg"))
    parser.add_argument("--checkpoint", default=None, help="network weights (default: the bundle's shipped weights)")
    parser.add_argument("--ants-python", default=str(ROOT / ".venv-ants" / "bin" / "python"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-pairs", type=int, default=None, help="the first N pairs of each dataset")
    parser.add_argument("--out", default=str(RESULTS / "register_real.md"))
    args = parser.parse_args()
    data = Path(args.data)
    if "ants" in args.methods and not Path(args.ants_python).is_file():
        raise SystemExit(f"no ANTs Python at {args.ants_python}: see README 'Benchmarks' (or leave out ants).")
    todo = []
    for dataset in args.datasets:
        todo += split_pairs(data, args.role, (dataset,))[: args.max_pairs]
    base = ["--bundle", args.bundle, "--device", args.device]
    base += ["--checkpoint", args.checkpoint] if args.checkpoint else []
    rows: dict[str, dict[str, list[dict]]] = {}
    work = Path(tempfile.mkdtemp(prefix="register_real_"))
    checks = []
    for k, pair in enumerate(todo):
        print(f"== {pair['name']}", flush=True)
        labels, gt = eval_labels(data, pair["dataset"]), fixed_label_on_grid(pair)
        per = rows.setdefault(pair["dataset"], {})
        unreg = score(pair, unregistered_label(pair), None, labels, gt)
        per.setdefault("no registration (headers only)", []).append({**unreg, "seconds": 0.0})
        for method in args.methods:
            if method == "ants":
                m = run_ants(pair, work / f"ants_{k}", args.ants_python, labels, gt)
                name = ANTS
            else:
                name, extra = METHODS[method]
                m, folder = run_ours(pair, work / f"{method}_{k}", base + extra, labels, gt)
                if method == "ours" and "ants" in args.methods and not checks:
                    checks.append(ants_reproduces(pair, folder, args.ants_python))
            per.setdefault(name, []).append({**m, "pair": pair["name"]})
            print(f"{name}: dice {m['dice']:.4f}, SD log J {m['sdlogj']:.3f}, folding {m['folding_percent']:.4f} %, "
                  f"{m['seconds']:.1f} s", flush=True)
    lines = [
        f"`monai-moe-reg register` vs ANTs SyN on the {args.role} pairs of bench/splits.json, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, device {args.device}, "
        f"{time.strftime('%Y-%m-%d')}, one run. Each cell: mean over pairs (min-max); seconds = the whole command in "
        "a fresh process (start-up, reading, registering, writing); time ratio = per-pair seconds / ANTs' seconds.",
    ]
    for dataset, per in rows.items():
        n = len(next(iter(per.values())))
        lines += ["", f"**{dataset}** ({n} pairs)", "",
                  "| method | Dice | SD log J | %\\|J\\|<=0 | seconds | time ratio to ANTs |",
                  "|---|---|---|---|---|---|"]
        ants = per.get(ANTS)
        for name, rs in per.items():
            ratio = "" if ants is None or name.startswith("no registration") else summary(
                [{"r": r["seconds"] / a["seconds"]} for r, a in zip(rs, ants)], "r")
            lines.append(f"| {name} | {summary(rs, 'dice')} | {summary(rs, 'sdlogj')} | "
                         f"{summary(rs, 'folding_percent')} | {summary(rs, 'seconds')} | {ratio} |")
        if ants is not None and METHODS["ours"][0] in per:
            diff = [o["dice"] - a["dice"] for o, a in zip(per[METHODS["ours"][0]], ants)]
            lines += ["", f"Dice of the recommended command minus ANTs', per pair: "
                          f"{', '.join(f'{d:+.3f}' for d in diff)} (mean {np.mean(diff):+.3f})"]
            stages = [r["stages"] for r in per[METHODS["ours"][0]]]
            keys = [k for k in stages[0] if k not in ("io_steps", "total")]
            lines += ["", "Seconds per stage of the recommended command (mean): " + ", ".join(
                f"{k} {np.mean([s[k] for s in stages]):.1f}" for k in keys) + f"; pipeline total "
                f"{np.mean([s['total'] for s in stages]):.1f} (the rest of the whole command: start-up and writing)"]
    if checks:
        lines += ["", f"ANTs applying our transform.h5 to the original moving scan vs our warped image: correlation "
                      f"{', '.join(f'{c:.5f}' for c in checks)}"]
    emit_table(lines, args.out)
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
