"""What the shipped pretrained SHMoAReg weights buy on real brains, side by side in one run (issue 15).

    python bench/pretrained.py --data ../shared/data --demo-checkpoint DEMO.pt [--shipped PATH] [--device cpu]
                               [--datasets ixi fs1mm] [--io-steps 10] [--out bench/results/pretrained.md]

Pairs: the validation pairs of ``bench/splits.json`` (``bench/splits.py``). Every row is the atlas-use command a user
types (``monai-moe-reg register``, a fresh process; seconds = the whole command), scored by ``bench/scoring.py``:

- no registration; the affine stage alone;
- network only (affine + network, no instance optimisation) with the demo-trained weights (``--demo-checkpoint``,
  e.g. the ``models/model.pt`` of the README's main command: 30 epochs on the 32^3 synthetic demo set) and with the
  shipped weights (default: the bundle's ``large_files.yml`` safetensors);
- instance optimisation (IO) from the identity with the bundle's schedule (the pipeline without weights), and IO
  from the shipped weights' field with the bundle's schedule for it (``network_instance_optimisation``: the total
  field regularised, 20/40 steps), with the residual regularised instead, and with that at ``--io-steps`` steps per
  level: the question is whether the shipped weights reach the identity-initialised IO's Dice in less than half its
  time.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from register_real import run_ours  # bench/register_real.py
from report import RESULTS, emit_table  # bench/report.py
from scoring import fixed_label_on_grid, score, unregistered_label
from splits import eval_labels, pairs as split_pairs

import numpy as np
import torch

from monai_moe_reg.weights import shipped_weights

ROOT = Path(__file__).resolve().parents[1]


def weights_bench_args(doc: str, bundle: str, out: str, extra=None) -> tuple[argparse.Namespace, Path, list[str]]:
    """The command line shared by the shipped-weights benches: ``(args, shipped weights file, base CLI args)``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the data folder (../shared/data)")
    ap.add_argument("--demo-checkpoint", required=True, help="the bundle's weights trained on its demo set only")
    ap.add_argument("--shipped", default=None, help="shipped weights (default: the bundle's)")
    ap.add_argument("--bundle", default=str(ROOT / "bundles" / bundle))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS / out))
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    shipped = args.shipped or shipped_weights(args.bundle)
    if shipped is None:
        raise SystemExit(f"no shipped weights in {args.bundle} (large_files.yml): pass --shipped.")
    return args, Path(shipped), ["--bundle", args.bundle, "--device", args.device]


def main() -> None:
    args, shipped, base = weights_bench_args(
        __doc__, "shmoareg", "pretrained.md",
        lambda ap: (ap.add_argument("--io-steps", type=int, nargs="*", default=[10]),
                    ap.add_argument("--datasets", nargs="+", default=["ixi", "fs1mm"])))
    rows = [
        ("affine only", ["--network", "off", "--instance-opt", "false"]),
        ("network only, demo-trained weights", ["--checkpoint", args.demo_checkpoint, "--instance-opt", "false"]),
        ("network only, shipped weights", ["--checkpoint", str(shipped), "--instance-opt", "false"]),
        ("IO from the identity (bundle schedule)", ["--network", "off"]),
        ("IO from the shipped weights (bundle schedule: total-field regularisation, 20/40 steps; the default)",
         ["--checkpoint", str(shipped)]),
        ("IO from the shipped weights, residual regularisation (--io-regularise residual), 20/40 steps",
         ["--checkpoint", str(shipped), "--io-regularise", "residual"]),
    ] + [
        (f"IO from the shipped weights, residual regularisation, {n} steps per level",
         ["--checkpoint", str(shipped), "--io-regularise", "residual", "--instance-opt", str(n)])
        for n in args.io_steps
    ]
    results: dict[str, list[dict]] = {}
    work = Path(tempfile.mkdtemp(prefix="pretrained_"))
    data = Path(args.data)
    for k, pair in enumerate(split_pairs(data, "validation", tuple(args.datasets))):
        print(f"== {pair['name']}", flush=True)
        labels, gt = eval_labels(data, pair["dataset"]), fixed_label_on_grid(pair)
        unreg = score(pair, unregistered_label(pair), None, labels, gt)
        results.setdefault("no registration", []).append({**unreg, "seconds": 0.0})
        for i, (name, extra) in enumerate(rows):
            m, _ = run_ours(pair, work / f"{k}_{i}", base + extra, labels, gt)
            results.setdefault(name, []).append(m)
            print(f"{name}: dice {m['dice']:.4f} in {m['seconds']:.1f} s", flush=True)
    mean = {
        name: {
            k: float(np.mean([r[k] for r in rs])) for k in ("dice", "folding_percent", "sdlogj", "seconds")
        }
        for name, rs in results.items()
    }
    target = mean["IO from the identity (bundle schedule)"]
    reached = [n for n, v in mean.items() if n.startswith("IO from the shipped") and v["dice"] >= target["dice"]]
    fastest = min(reached, key=lambda n: mean[n]["seconds"]) if reached else None
    lines = [
        f"Validation pairs of bench/splits.json ({', '.join(args.datasets)}), "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, device {args.device}, "
        f"{time.strftime('%Y-%m-%d')}. Mean over pairs; seconds = the whole `monai-moe-reg register` command.",
        "",
        "| method | Dice | %\\|J\\|<=0 | SD log J | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, v in mean.items():
        lines.append(
            f"| {name} | {v['dice']:.4f} | {v['folding_percent']:.4f} | "
            f"{v['sdlogj']:.3f} | {v['seconds']:.1f} |"
        )
    verdict = (
        (
            f"fastest shipped-weights IO reaching the identity IO's Dice {target['dice']:.4f}: '{fastest}' in "
            f"{mean[fastest]['seconds']:.1f} s = {mean[fastest]['seconds'] / target['seconds']:.2f}x its "
            f"{target['seconds']:.1f} s (target < 0.5x)"
        )
        if fastest
        else (f"no shipped-weights IO row reached the identity IO's Dice {target['dice']:.4f}")
    )
    lines += [
        "",
        verdict,
        "",
        "Per pair (Dice / seconds): "
        + "; ".join(
            f"{name}: " + ", ".join(f"{r['dice']:.4f}/{r['seconds']:.0f}s" for r in rs) for name, rs in results.items()
        ),
    ]
    emit_table(lines, args.out)
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
