"""Choose the bundle's registration defaults without evaluation labels (issue 11 / 15).

    python bench/io_schedule.py --data ../shared/data [--bundle bundles/shmoareg] [--only NAME ...]
                                [--out bench/results/io_schedule.md]

Every candidate is a set of overrides of the bundle's ``registration`` section, run in this process with
:class:`monai_moe_reg.apps.Registrar` on the images of the real brain pairs of ``bench/register_real.py`` (both
directions, 1 mm). **No label is read.** Each candidate is scored by what a user without labels can see:

- ``LNCC``: local normalised cross-correlation (7^3 window, MONAI's loss negated; 1 = identical) between the warped
  moving scan and the fixed scan, both min-max scaled;
- ``SD log J`` and ``%|J|<=0`` of the total map;
- the seconds of the deformable stages (network + instance optimisation) and of the whole pipeline call (no
  start-up, no writing).

The rule (README, "How the default schedule was chosen"): the highest LNCC at a smoothness no rougher than ANTs
SyN's on the same pairs (SD log J 0.247) and no folding above 0.05 %, with the whole ``register`` command within
40 s on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

from register_real import _pairs  # bench/register_real.py
from report import RESULTS, emit_table  # bench/report.py

import numpy as np
import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss

from monai_moe_reg.apps.registration import Registrar, load_scan

ROOT = Path(__file__).resolve().parents[1]

# name -> (network mode, registration overrides); every setting that differs from the bundle's base
# instance_optimisation section is explicit, so the table stays valid whatever the bundle's defaults become
CANDIDATES: dict[str, tuple[str, dict]] = {
    "identity, bundle IO (before issue 15)": ("off", {}),
    "network, IO on the residual (issue-15 default)": ("on", {"instance_optimisation": {
        "regularise": "residual", "steps": [100, 60]}}),
    "network, IO on the residual, 10 steps": ("on", {"instance_optimisation": {"regularise": "residual",
                                                                               "steps": [10, 10]}}),
    "network sigma 2, IO on the residual, 10 steps": ("on", {"network_smoothing": 2.0, "instance_optimisation": {
        "regularise": "residual", "steps": [10, 10]}}),
    "network, IO on the residual, lambda 2/6.4, 20 steps": ("on", {"instance_optimisation": {
        "regularise": "residual", "lambda_reg": [2.0, 6.4], "steps": [20, 20]}}),
}
_TOTAL = (
    ((1.0, 3.2), ((100, 60), (20, 20), (10, 10), (40, 20), (20, 60), (20, 40))),
    ((1.0, 2.0), ((100, 60), (20, 20), (10, 10), (40, 20))),
    ((0.5, 2.0), ((100, 60),)),
    ((1.0, 2.8), ((20, 20), (40, 20))),
    ((1.0, 2.5), ((20, 20), (40, 20))),
)
for _lam, _all_steps in _TOTAL:
    for _steps in _all_steps:
        CANDIDATES[f"network, IO on the total field, lambda {_lam[0]}/{_lam[1]}, {_steps[0]}/{_steps[1]} steps"] = (
            "on", {"instance_optimisation": {"regularise": "total", "lambda_reg": list(_lam), "steps": list(_steps)}})
for _passes in (2, 3):
    for _steps in ((20, 40), (100, 60)):
        CANDIDATES[f"network, IO on the residual, {_passes} box passes, {_steps[0]}/{_steps[1]} steps"] = (
            "on", {"instance_optimisation": {"regularise": "residual", "smoothing": _passes, "steps": list(_steps)}})
CANDIDATES["network, IO on the total field, lambda 1.0/2.0, 2 box passes, 20/40 steps"] = (
    "on", {"instance_optimisation": {"regularise": "total", "lambda_reg": [1.0, 2.0], "smoothing": 2,
                                     "steps": [20, 40]}})
CANDIDATES["network, IO on the total field, lambda 1.0/3.2, 20/30 steps, lr 1.0"] = (
    "on", {"instance_optimisation": {"regularise": "total", "lambda_reg": [1.0, 3.2], "steps": [20, 30], "lr": 1.0}})


def _minmax(t: torch.Tensor) -> torch.Tensor:
    t = t.float()
    return (t - t.min()) / (t.max() - t.min()).clamp_min(1e-6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the data folder (../shared/data)")
    ap.add_argument("--bundle", default=str(ROOT / "bundles" / "shmoareg"))
    ap.add_argument("--only", nargs="*", default=None, help="run only these candidates (names as in the table)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS / "io_schedule.md"))
    args = ap.parse_args()
    names = [n for n in CANDIDATES if args.only is None or n in args.only]
    lncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=7)
    pairs = [(p["name"], load_scan(p["fixed"], "fixed"), load_scan(p["moving"], "moving"))
             for p in _pairs(Path(args.data))]
    rows = []
    for name in names:
        mode, overrides = CANDIDATES[name]
        registrar = Registrar.from_bundle(args.bundle, device=args.device, network=mode,
                                          overrides=copy.deepcopy(overrides))
        per = []
        for pair_name, fixed, moving in pairs:
            t = time.perf_counter()
            res = registrar(fixed, moving)
            seconds = time.perf_counter() - t
            score = -float(lncc(_minmax(res.warped_image)[None], _minmax(fixed.as_tensor())[None]))
            s = res.timings
            per.append({"lncc": score, "sdlogj": res.metrics["sdlogj"], "folding": res.metrics["folding_percent"],
                        "deformable_s": s["network"] + s["instance_optimisation"], "pipeline_s": seconds,
                        "steps": "/".join(str(v) for v in s.get("io_steps", []))})
            print(f"{name} [{pair_name}]: LNCC {score:.4f}, SD log J {per[-1]['sdlogj']:.3f}, "
                  f"{per[-1]['folding']:.4f} %, steps {per[-1]['steps']}, {seconds:.1f} s", flush=True)
        rows.append([name, f"{np.mean([p['lncc'] for p in per]):.4f}",
                     f"{np.mean([p['sdlogj'] for p in per]):.3f}", f"{np.mean([p['folding'] for p in per]):.4f}",
                     " ; ".join(p["steps"] for p in per), f"{np.mean([p['deformable_s'] for p in per]):.1f}",
                     f"{np.mean([p['pipeline_s'] for p in per]):.1f}"])
    header = (f"Label-free choice of the registration defaults: brain3 A<->B images at 1 mm, both directions, "
              f"{platform.machine()}, {torch.get_num_threads()} threads, device {args.device}, "
              f"{time.strftime('%Y-%m-%d')}. No label was read. Means over the pairs; seconds without start-up "
              "and writing.")
    cols = ["candidate", "LNCC 7^3", "SD log J", "%\\|J\\|<=0", "IO steps per level", "network + IO s", "pipeline s"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    emit_table(lines + ["| " + " | ".join(r) + " |" for r in rows], args.out)


if __name__ == "__main__":
    main()
