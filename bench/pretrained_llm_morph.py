"""What the shipped LLM-Morph weights do on a real multimodal pair, side by side in one run (issue 15).

    python bench/pretrained_llm_morph.py --data ../shared/data --demo-checkpoint DEMO.pt [--shipped PATH]
                                         [--device cpu] [--out bench/results/pretrained_llm_morph.md]

Pair: the data folder's abdominal MR and CT (``abdomen/example_mr_sm`` 117x91x20 and ``example_ct_sm`` 122x101x30,
3 mm, two different people), both directions (MR -> CT and CT -> MR). The organs both TotalSegmentator label maps
name with the same ids are scored: 1 spleen, 2 right kidney, 3 left kidney, 5 liver (the other ids differ between
the CT and MR label sets and are dropped). Every row is the command a user types (``monai-moe-reg register --bundle
bundles/llm_morph``, a fresh process; seconds = the whole command), scored by the command's own metrics:

- no registration (the labels resampled through their headers); the affine stage alone (MI);
- network only (affine + network) with weights trained on the bundle's demo set (``--demo-checkpoint``: the
  ``models/model.pt`` of ``python -m monai.bundle run --config_file bundles/llm_morph/configs/train.json``) and with
  the shipped weights (default: the bundle's ``large_files.yml`` safetensors);
- the bundle's pipeline without weights (affine + MIND-SSC instance optimisation) and with the shipped weights.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

from pretrained import weights_bench_args  # bench/pretrained.py
from register_real import run_register  # bench/register_real.py
from report import emit_table  # bench/report.py

import nibabel as nib
import numpy as np
import torch


SHARED_IDS = (1, 2, 3, 5)  # spleen, right kidney, left kidney, liver: the same ids in TotalSegmentator's CT and MR maps


def _organs(src: Path, dst: Path) -> str:
    img = nib.load(str(src))
    arr = np.asarray(img.dataobj).astype(np.int16)
    arr[~np.isin(arr, SHARED_IDS)] = 0
    nib.save(nib.Nifti1Image(arr, img.affine), str(dst))
    return str(dst)


def _pairs(data: Path, work: Path) -> list[dict]:
    folder = data / "abdomen"
    scans = {"MR": (folder / "example_mr_sm.nii.gz", folder / "example_seg_mr.nii.gz"),
             "CT": (folder / "example_ct_sm.nii.gz", folder / "example_seg.nii.gz")}
    for image, label in scans.values():
        for p in (image, label):
            if not p.is_file():
                raise FileNotFoundError(f"'{p}' is missing: pass the data folder of ../shared/data/README.md as "
                                        "--data.")
    labels = {k: _organs(lab, work / f"{k}_organs.nii.gz") for k, (_, lab) in scans.items()}
    return [{"name": f"{m}->{f}", "moving": str(scans[m][0]), "fixed": str(scans[f][0]), "moving_label": labels[m],
             "fixed_label": labels[f]} for m, f in (("MR", "CT"), ("CT", "MR"))]


def main() -> None:
    args, shipped, base = weights_bench_args(__doc__, "llm_morph", "pretrained_llm_morph.md")
    rows = [
        ("affine only (MI)", ["--network", "off", "--instance-opt", "false"]),
        ("network only, demo-trained weights", ["--checkpoint", args.demo_checkpoint, "--instance-opt", "false"]),
        ("network only, shipped weights", ["--checkpoint", str(shipped), "--instance-opt", "false"]),
        ("affine + MIND-SSC IO, no network (bundle schedule)", ["--network", "off"]),
        ("affine + shipped network + MIND-SSC IO (the default)", ["--checkpoint", str(shipped)]),
    ]
    work = Path(tempfile.mkdtemp(prefix="pretrained_llm_"))
    results: dict[str, list[dict]] = {}
    for pair in _pairs(Path(args.data), work):
        print(f"== {pair['name']}", flush=True)
        for i, (name, extra) in enumerate(rows):
            m, s, _ = run_register(pair, work / f"{pair['name'].replace('->', '_')}_{i}", base + extra, fixed_label=True)
            if i == 0:
                results.setdefault("no registration", []).append(
                    {"dice": m["dice_unregistered"], "hd95_mm": float("nan"), "folding_percent": 0.0, "sdlogj": 0.0,
                     "seconds": 0.0})
            results.setdefault(name, []).append({**m, "seconds": s})
            print(f"{name}: dice {m['dice']:.4f}, SD log J {m['sdlogj']:.3f} in {s:.1f} s", flush=True)
    keys = ("dice", "hd95_mm", "folding_percent", "sdlogj", "seconds")
    lines = [
        f"Real abdominal MR <-> CT (two people, 3 mm, organs 1/2/3/5), both directions, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, device {args.device}, "
        f"{time.strftime('%Y-%m-%d')}. Mean over the two directions; seconds = the whole `monai-moe-reg register "
        "--bundle bundles/llm_morph` command.",
        "",
        "| method | Dice | HD95 (mm) | %\\|J\\|<=0 | SD log J | seconds | per direction (Dice) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in results.items():
        v = {k: float(np.mean([r[k] for r in rs])) for k in keys}
        each = ", ".join(f"{r['dice']:.4f}" for r in rs)
        lines.append(f"| {name} | {v['dice']:.4f} | {v['hd95_mm']:.2f} | {v['folding_percent']:.4f} | "
                     f"{v['sdlogj']:.3f} | {v['seconds']:.1f} | {each} |")
    emit_table(lines, args.out)
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
