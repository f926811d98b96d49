"""Choose ``register``'s defaults on the tuning pairs of ``bench/splits.json`` (never on a validation pair).

    python bench/tune_register.py --data ../shared/data [--datasets ixi t1_flair] [--only NAME ...]
                                  [--ants bench/results/register_tuning.json] [--out bench/results/tune_register.md]

Every candidate is a set of overrides of the SHMoAReg bundle's ``registration`` section (and a network mode), run in
this process with :class:`monai_moe_reg.apps.Registrar` on every tuning pair (IXI and T1-FLAIR T1 subjects of the
tuning role: 2 mm, skull on, native space, 148 DLMUSE labels), and scored by ``bench/scoring.py`` like the validation
bench. Seconds are the pipeline call (no start-up, no writing). The rule: the highest mean Dice whose mean SD log J is
no rougher than ANTs SyN's on the same tuning pairs (``--ants``: the JSON of ``bench/register_real.py --role tuning
--methods ants``), with %|J|<=0 < 0.05 and the least time among near-ties (within 0.003 Dice).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

from report import RESULTS, emit_table  # bench/report.py
from scoring import fixed_label_on_grid, score, summary
from splits import eval_labels, pairs as split_pairs

import numpy as np
import torch

from monai_moe_reg.apps.registration import Registrar, load_scan

ROOT = Path(__file__).resolve().parents[1]


def _io(**kw) -> dict:
    return {"instance_optimisation": kw}


# name -> (network mode, registration overrides). Lambdas are GradientLoss weights (level voxels).
CANDIDATES: dict[str, tuple[str, dict]] = {
    "bundle as shipped": ("auto", {}),
}
for _lam in ((3.0, 9.0), (5.0, 15.0), (10.0, 30.0), (30.0, 90.0)):
    CANDIDATES[f"no network, lambda {_lam[0]:g}/{_lam[1]:g}"] = ("off", _io(lambda_reg=list(_lam)))
    CANDIDATES[f"network, total field, lambda {_lam[0]:g}/{_lam[1]:g}"] = (
        "on", _io(regularise="total", lambda_reg=list(_lam)))
for _lam in ((5.0, 15.0), (10.0, 30.0)):
    CANDIDATES[f"network sigma 2, total field, lambda {_lam[0]:g}/{_lam[1]:g}"] = (
        "on", {"network_smoothing": 2.0, **_io(regularise="total", lambda_reg=list(_lam))})
for _lam in ((4.0, 12.0), (5.0, 15.0)):
    CANDIDATES[f"no network, lambda {_lam[0]:g}/{_lam[1]:g}, 'mr' intensities"] = (
        "off", {"intensity": "mr", **_io(lambda_reg=list(_lam))})
    CANDIDATES[f"network sigma 2, total field, lambda {_lam[0]:g}/{_lam[1]:g}, 'mr' intensities"] = (
        "on", {"intensity": "mr", "network_smoothing": 2.0, **_io(regularise="total", lambda_reg=list(_lam))})
CANDIDATES["bundle: LNCC affine from 3 starts (0, +-15 deg pitch), no network, 'mr', lambda 4/12"] = ("auto", {})
CANDIDATES["network, total field, lambda 10/30, 100/60 steps"] = (
    "on", _io(regularise="total", lambda_reg=[10.0, 30.0], steps=[100, 60]))
CANDIDATES["no network, levels 4/2/1, lambda 10/30/30"] = (
    "off", _io(levels=[4, 2, 1], lambda_reg=[10.0, 30.0, 30.0], steps=[100, 60, 30]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the data folder (../shared/data)")
    ap.add_argument("--datasets", nargs="+", default=["ixi", "t1_flair"], choices=["ixi", "t1_flair"])
    ap.add_argument("--bundle", default=str(ROOT / "bundles" / "shmoareg"))
    ap.add_argument("--only", nargs="*", default=None, help="run only these candidates (names as in the table)")
    ap.add_argument("--ants", default=str(RESULTS / "register_tuning.json"),
                    help="ANTs SyN on the tuning pairs (bench/register_real.py --role tuning --methods ants)")
    ap.add_argument("--max-pairs", type=int, default=None, help="the first N tuning pairs of each dataset (screening)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS / "tune_register.md"))
    args = ap.parse_args()
    data = Path(args.data)
    names = [n for n in CANDIDATES if args.only is None or n in args.only]
    unknown = set(args.only or []) - set(CANDIDATES)
    if unknown:
        raise SystemExit(f"unknown candidates {sorted(unknown)}; known: {list(CANDIDATES)}")
    pairs = [p for ds in args.datasets for p in split_pairs(data, "tuning", (ds,))[: args.max_pairs]]
    loaded = [(p, load_scan(p["fixed"], "fixed"), load_scan(p["moving"], "moving"),
               load_scan(p["moving_label"], "moving label", label=True), fixed_label_on_grid(p),
               eval_labels(data, p["dataset"])) for p in pairs]
    results: dict[str, list[dict]] = {}
    for name in names:
        mode, overrides = CANDIDATES[name]
        overrides = copy.deepcopy(overrides)
        intensity = overrides.pop("intensity", None)
        registrar = Registrar.from_bundle(args.bundle, device=args.device, network=mode, overrides=overrides)
        if intensity:  # the bundle's moving_intensity / fixed_intensity
            registrar.moving_intensity = registrar.fixed_intensity = intensity
        per = []
        for pair, fixed, moving, mlab, gt, labels in loaded:
            t = time.perf_counter()
            res = registrar(fixed, moving, moving_label=mlab)
            seconds = time.perf_counter() - t
            row = score(pair, res.warped_label, res.ddf, labels, gt)
            per.append({**row, "seconds": seconds, "pair": pair["name"], "affine_s": res.timings["affine"],
                        "steps": res.timings.get("io_steps", [])})
            print(f"{name} [{pair['name']}]: Dice {row['dice']:.4f}, SD log J {row['sdlogj']:.3f}, "
                  f"{row['folding_percent']:.4f} %, steps {per[-1]['steps']}, {seconds:.1f} s", flush=True)
        results[name] = per
        _report(args, pairs, results)


def _report(args, pairs: list[dict], results: dict[str, list[dict]]) -> None:
    ants_rows = None
    if Path(args.ants).is_file():
        ants_all = json.loads(Path(args.ants).read_text())
        ants_rows = [r for ds in args.datasets for name, rs in ants_all.get(ds, {}).items() if name.startswith("ANTs")
                     for r in rs]
    header = (f"Choice of `register`'s defaults on the {len(pairs)} tuning pairs of bench/splits.json "
              f"({', '.join(args.datasets)}; 2 mm, 148 DLMUSE labels), {platform.machine()}, "
              f"{torch.get_num_threads()} threads, device {args.device}, {time.strftime('%Y-%m-%d')}. "
              "Mean (min-max) over pairs; seconds = the pipeline call (no start-up, no writing).")
    cols = ["candidate", "Dice", "SD log J", "%\\|J\\|<=0", "seconds", "affine s"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    if ants_rows:
        lines.append(f"| ANTs SyN (whole command, from --ants) | {summary(ants_rows, 'dice')} | "
                     f"{summary(ants_rows, 'sdlogj')} | {summary(ants_rows, 'folding_percent')} | "
                     f"{summary(ants_rows, 'seconds')} | |")
    for name, per in results.items():
        lines.append(f"| {name} | {summary(per, 'dice')} | {summary(per, 'sdlogj')} | "
                     f"{summary(per, 'folding_percent')} | {summary(per, 'seconds')} | {summary(per, 'affine_s')} |")
    emit_table(lines, args.out)
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    if ants_rows:
        limit = float(np.mean([r["sdlogj"] for r in ants_rows]))
        ok = {n: p for n, p in results.items() if np.mean([r["sdlogj"] for r in p]) <= limit
              and np.mean([r["folding_percent"] for r in p]) < 0.05}
        if ok:
            best = max(float(np.mean([r["dice"] for r in p])) for p in ok.values())
            near = [n for n, p in ok.items() if np.mean([r["dice"] for r in p]) >= best - 0.003]
            pick = min(near, key=lambda n: np.mean([r["seconds"] for r in results[n]]))
            print(f"\nchosen (SD log J <= ANTs' {limit:.3f}, folding < 0.05 %, fastest within 0.003 Dice): {pick}")


if __name__ == "__main__":
    main()
