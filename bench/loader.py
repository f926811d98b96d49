"""Does the data loader keep up with training? Pairs/s delivered next to the network's training steps/s, one run.

    python bench/loader.py [--subjects 20] [--size 128] [--workers 2] [--pairs 200] [--out bench/results/loader.md]

Writes ``--subjects`` synthetic subjects (``--size``^3 NIfTI, 1 mm, with labels) to a temporary folder and a
subject-list datalist, then measures, each after a warm-up:

- the bundles' training loader (``training_pairs``: subjects cached once, random pairs, ``--workers`` workers);
- the previous loader (every pair read and preprocessed from disk: ``Dataset`` over the expanded pair list, the
  bundles' ``pair_transforms``), same workers;
- SHMoAReg's training step (forward, MSE + diffusion loss, backward) at ``--size``^3 on this machine.

Target: the loader delivers at least 3x the network's step rate with the default workers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from report import RESULTS, emit_table  # bench/report.py

import nibabel as nib
import numpy as np
import torch


def write_subjects(folder: Path, n: int, size: int) -> Path:
    from monai_moe_reg.data import synthetic_pair

    subjects = []
    for i in range(n):
        pair = synthetic_pair((size,) * 3, seed=i)
        img, lab = folder / f"s{i:03d}.nii.gz", folder / f"s{i:03d}_seg.nii.gz"
        nib.save(nib.Nifti1Image(pair["fixed_image"][0].numpy().astype(np.float32), np.eye(4)), str(img))
        nib.save(nib.Nifti1Image(pair["fixed_label"][0].numpy().astype(np.uint8), np.eye(4)), str(lab))
        subjects.append({"image": img.name, "label": lab.name})
    path = folder / "datalist.json"
    path.write_text(json.dumps({"training": {"subjects": subjects, "pairing": "all"}}))
    return path


def pairs_per_second(loader, n: int) -> float:
    it = iter(loader)
    next(it)  # warm-up: workers started
    start = time.perf_counter()
    for _ in range(n):
        next(it)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "loader.md"))
    args = ap.parse_args()
    from monai.data import DataLoader, Dataset
    from monai.losses import DiffusionLoss
    from monai.networks.blocks import Warp

    from monai_moe_reg.data import load_pairs, pair_sampler, pair_transforms, training_pairs
    from monai_moe_reg.networks.nets import SHMoAReg

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        datalist = write_subjects(Path(tmp), args.subjects, args.size)
        t = time.perf_counter()
        cached = training_pairs(datalist, "training")
        cache_s = time.perf_counter() - t
        loader = DataLoader(cached, batch_size=1, sampler=pair_sampler(cached, args.pairs + 1),
                            num_workers=args.workers)
        rows.append(("training_pairs: cached subjects, random pairs", pairs_per_second(loader, args.pairs),
                     f"{len(cached)} pairs; caching {args.subjects} subjects took {cache_s:.1f} s once"))
        disk = Dataset(load_pairs(datalist, "training"), pair_transforms())
        n_disk = max(10, args.pairs // 10)
        loader = DataLoader(disk, batch_size=1, sampler=pair_sampler(disk, n_disk + 1), num_workers=args.workers)
        rows.append(("previous: every pair read from disk", pairs_per_second(loader, n_disk), f"{len(disk)} pairs"))

    net = SHMoAReg(img_size=args.size, check_values=False)
    x = torch.rand(1, 2, args.size, args.size, args.size)
    warp, reg = Warp(), DiffusionLoss()
    opt = torch.optim.Adam(net.parameters(), 1e-4)

    def step():
        opt.zero_grad()
        ddf = net(x)
        (torch.mean((warp(x[:, :1], ddf) - x[:, 1:]) ** 2) + 0.01 * reg(ddf)).backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    net_rate = args.steps / (time.perf_counter() - start)

    machine = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"
    lines = [f"Loader vs network at {args.size}^3 ({machine}; {args.workers} workers, batch 1).", "",
             "| source | pairs or steps / s | vs SHMoAReg training steps | notes |", "|---|---|---|---|"]
    for name, rate, note in rows:
        lines.append(f"| {name} | {rate:.2f} | {rate / net_rate:.1f}x | {note} |")
    lines.append(f"| SHMoAReg training step (forward + backward + Adam) | {net_rate:.3f} | 1.0x | |")
    emit_table(lines, args.out)


if __name__ == "__main__":
    main()
