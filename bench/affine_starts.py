"""The affine stage alone on the tuning pairs: similarity and initial rotations (issue 25; tuning pairs only).

    python bench/affine_starts.py --data ../shared/data [--out bench/results/affine_starts.md]

Each variant overrides the SHMoAReg bundle's ``registration::affine`` section; ``register --affine only`` is run in
this process on the 18 tuning pairs of ``bench/splits.json`` and the warped moving labels are scored by
``bench/scoring.py`` (Dice over the 148 DLMUSE labels; an affine alone scores far below a deformable result).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from report import RESULTS, emit_table  # bench/report.py
from scoring import fixed_label_on_grid, score, summary
from splits import pairs as split_pairs

import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss

from monai_moe_reg.apps.registration import Registrar

ROOT = Path(__file__).resolve().parents[1]
PITCH = [[-15, 0, 0], [15, 0, 0]]
ALL_AXES = [[s * 15 if k == a else 0 for k in range(3)] for a in range(3) for s in (-1, 1)]


def _lncc():
    return LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=5)


# name -> (similarity, extra initial rotations, steps per start)
VARIANTS = {
    "MSE, centre-of-mass start (the earlier default)": (torch.nn.MSELoss, [], 0),
    "MSE, + starts +-15 deg about each axis, 30 steps": (torch.nn.MSELoss, ALL_AXES, 30),
    "LNCC 5^3, centre-of-mass start": (_lncc, [], 0),
    "LNCC 5^3, + starts +-15 deg about each axis, 40 steps": (_lncc, ALL_AXES, 40),
    "LNCC 5^3, + starts +-15 deg pitch, 40 steps (the default)": (_lncc, PITCH, 40),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--bundle", default=str(ROOT / "bundles" / "shmoareg"))
    ap.add_argument("--out", default=str(RESULTS / "affine_starts.md"))
    args = ap.parse_args()
    pairs = split_pairs(Path(args.data), "tuning", ("ixi", "t1_flair"))
    gts = [fixed_label_on_grid(p) for p in pairs]
    lines = [f"The affine stage alone on the {len(pairs)} tuning pairs (bench/splits.json), {platform.machine()}, "
             f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}. Mean (min-max) over pairs.", "",
             "| affine variant | Dice | affine s |", "|---|---|---|"]
    for name, (similarity, starts, start_steps) in VARIANTS.items():
        affine = {"similarity": similarity(), "starts": starts, "start_steps": start_steps or 1}
        reg = Registrar.from_bundle(args.bundle, network="off", overrides={"affine": affine})
        rows = []
        for pair, gt in zip(pairs, gts):
            res = reg(pair["fixed"], pair["moving"], moving_label=pair["moving_label"], affine="only")
            rows.append({**score(pair, res.warped_label, None, None, gt), "seconds": res.timings["affine"]})
            print(f"{name} [{pair['name']}]: Dice {rows[-1]['dice']:.3f}", flush=True)
        lines.append(f"| {name} | {summary(rows, 'dice')} | {summary(rows, 'seconds')} |")
    emit_table(lines, args.out)


if __name__ == "__main__":
    main()
