"""SIGKILL a real bundle training run at many points and check that nothing is lost.

For each kill time the SHMoAReg bundle trains a tiny network on the 32^3 demo data (``python -m monai.bundle run``,
exactly as a user runs it), is killed with SIGKILL, and then:

- every ``*.pt`` left in ``models/`` must load with ``torch.load(weights_only=True)`` (no torn file);
- the best-model record ``model.pt.json`` and ``model.pt`` must agree (both or neither);
- ``--resume true`` must finish the run with exit 0, and the final ``model.pt`` must load and carry a best metric
  at least as good as the one saved before the kill.

Prints a markdown table (one row per kill) and writes it to ``--out``.

    python bench/kill_training.py --kills 7 --work /tmp/kill_bench --out bench/results/kill_training.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--network_def#depths", "[1,1]", "--network_def#num_heads", "[2,2]", "--network_def#embed_dim", "12",
    "--network_def#conv_channels", "[8,8]", "--network_def#decoder_channels", "[8,8,16,16]", "--demo_size", "32",
]


def command(work: Path, epochs: int, resume: bool) -> list[str]:
    bundle = ROOT / "bundles" / "shmoareg"
    return [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "train.json"),
        "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
        "--dataset_dir", str(work / "data"), "--ckpt_dir", str(work / "models"), "--output_dir", str(work / "eval"),
        "--max_epochs", str(epochs), "--val_interval", "1", *TINY, *(["--resume", "true"] if resume else []),
    ]


def inspect(models: Path) -> dict:
    """Which checkpoint files exist, which of them do not load, and the recorded best metric."""
    import torch

    files = sorted(p.name for p in models.glob("*.pt")) if models.is_dir() else []
    torn = []
    for name in files:
        try:  # resumable checkpoints hold RNG states (plain Python objects): they are our own files, loaded in full
            torch.load(models / name, map_location="cpu", weights_only=name == "model.pt")
        except Exception:  # noqa: BLE001 - any failure to load is what we count
            torn.append(name)
    record = models / "model.pt.json"
    best = json.loads(record.read_text()).get("value") if record.is_file() else None
    partial = sorted(p.name for p in models.glob("*")) if models.is_dir() else []
    partial = [n for n in partial if n.endswith((".tmp", ".part")) or n.startswith(".")]
    return {"files": files, "torn": torn, "best": best, "model_and_record_agree": ("model.pt" in files) == (best is not None),
            "leftovers": partial}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--work", default="/tmp/kill_bench")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "kill_training.md"))
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    t0 = time.time()  # one uninterrupted run: its length sets the kill times (and writes the demo data once)
    ref = subprocess.run(command(work, args.epochs, False), capture_output=True, text=True, env=env, cwd=work)
    total = time.time() - t0
    if ref.returncode != 0:
        sys.exit(f"the uninterrupted run failed:\n{ref.stderr[-3000:]}")
    reference_best = inspect(work / "models")["best"]
    shutil.rmtree(work / "models")

    rows = []
    for i in range(args.kills):
        at = total * (i + 1) / (args.kills + 1)
        shutil.rmtree(work / "models", ignore_errors=True)
        proc = subprocess.Popen(command(work, args.epochs, False), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env, cwd=work)
        time.sleep(at)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after_kill = inspect(work / "models")
        resumed = subprocess.run(command(work, args.epochs, True), capture_output=True, text=True, env=env, cwd=work)
        final = inspect(work / "models")
        ok_best = final["best"] is not None and (after_kill["best"] is None or final["best"] >= after_kill["best"])
        rows.append({
            "kill_s": round(at, 1), "files_at_kill": ", ".join(after_kill["files"]) or "-",
            "torn": len(after_kill["torn"]) + len(final["torn"]), "agree": after_kill["model_and_record_agree"],
            "leftovers": len(after_kill["leftovers"]), "resume_rc": resumed.returncode,
            "best_before": after_kill["best"], "best_final": final["best"], "ok": resumed.returncode == 0 and ok_best
            and not after_kill["torn"] and not final["torn"] and after_kill["model_and_record_agree"],
        })
        print(rows[-1], flush=True)

    lines = [
        f"SIGKILL of `python -m monai.bundle run` (SHMoAReg bundle, tiny network, 32^3 demo data, {args.epochs} epochs, "
        f"validation every epoch); uninterrupted run {total:.0f} s, its best validation Dice {reference_best:.4f}. "
        f"Machine: {os.cpu_count()} CPU cores.",
        "",
        "| kill at (s) | checkpoint files at the kill | torn files | model.pt and record agree | temp files left "
        "| resume exit | best before kill | best after resume | ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {r['kill_s']} | {r['files_at_kill']} | {r['torn']} | {r['agree']} | {r['leftovers']} | "
                     f"{r['resume_rc']} | {fmt(r['best_before'])} | {fmt(r['best_final'])} | {'yes' if r['ok'] else 'NO'} |")
    lines.append("")
    lines.append(f"{sum(r['ok'] for r in rows)} of {len(rows)} kills recovered with nothing lost.")
    table = "\n".join(lines) + "\n"
    print(table)
    Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
