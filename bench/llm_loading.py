"""Peak memory and time to build 2 LLM Encoding Block layers from a sharded checkpoint, next to loading the whole model.

    python bench/llm_loading.py [--layers 8] [--hidden 1024] [--workdir /tmp/llm_bench] [--out bench/results/llm_loading.md]

Writes a random LLaMA-architecture checkpoint (>= 8 layers, sharded safetensors + index, fp32) once, then measures in a
fresh subprocess each: (a) ``monai_moe_reg.llm.load_decoder_layers`` for layers (3, 4); (b)
``transformers.AutoModelForCausalLM.from_pretrained`` of the whole model. Peak memory is the process's peak resident
set (VmHWM) minus its resident set after the imports, so both rows count only what loading added; every loaded
weight is touched once so lazily memory-mapped pages count too. Target (issue #3):
selective peak <= 1.5x the two layers' size.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from report import RESULTS, emit_table  # bench/report.py (scripts run as python bench/<name>.py)

CHILD = r"""
import json, sys, time
import torch
import transformers  # imports first, so the baseline includes them
from transformers import AutoModelForCausalLM
from transformers.models.llama import modeling_llama  # noqa: F401
from monai_moe_reg.llm import load_decoder_layers

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
base = rss("VmRSS:")
mode, folder = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if mode == "selective":
    obj = load_decoder_layers(folder, (3, 4))
    params = [p for l in obj.layers for p in l.parameters()]
else:
    obj = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    params = list(obj.parameters())
torch.stack([p.detach().float().sum() for p in params])  # touch every weight: lazily mapped pages become resident
nbytes = sum(p.numel() * p.element_size() for p in params)
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "peak_bytes": rss("VmHWM:") - base, "loaded_bytes": nbytes}))
"""


def write_checkpoint(folder: Path, layers: int, hidden: int) -> int:
    """Random LLaMA, two-layer shards; returns the bytes of one decoder layer."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=4096,
    )
    if not (folder / "model.safetensors.index.json").is_file():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        folder.mkdir(parents=True, exist_ok=True)
        cfg.save_pretrained(folder)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        weight_map = {}
        for shard_id in range(0, layers, 2):
            name = f"model-{shard_id // 2 + 1:05d}.safetensors"
            keys = [k for k in state if k.startswith((f"model.layers.{shard_id}.", f"model.layers.{shard_id + 1}."))]
            if shard_id == 0:
                keys += [k for k in state if not k.startswith("model.layers.")]
            save_file({k: state[k] for k in keys}, str(folder / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in keys})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    h, i, kv = hidden, int(hidden * 2.75), hidden // 16 * 4
    return 4 * (h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h)


def run_child(mode: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--workdir", default="/tmp/monai_moe_reg_llm_bench")
    parser.add_argument("--out", default=str(RESULTS / "llm_loading.md"))
    args = parser.parse_args()
    folder = Path(args.workdir) / f"llama_{args.layers}x{args.hidden}"
    layer_bytes = write_checkpoint(folder, args.layers, args.hidden)
    two = 2 * layer_bytes
    rows = [("selective: 2 layers (monai_moe_reg.llm)", run_child("selective", folder)),
            ("AutoModelForCausalLM.from_pretrained (whole model)", run_child("whole", folder))]
    mb = 1024**2
    lines = [
        f"Random LLaMA checkpoint: {args.layers} layers, hidden {args.hidden}, fp32, {args.layers // 2} safetensors "
        f"shards + index; two decoder layers = {two / mb:.1f} MiB. {platform.machine()} CPU, Python {platform.python_version()}.",
        "",
        "| loader | time (s) | peak added RSS (MiB) | peak / two layers' size | tensors loaded (MiB) |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['seconds']:.2f} | {r['peak_bytes'] / mb:.1f} | {r['peak_bytes'] / two:.2f}x | "
            f"{r['loaded_bytes'] / mb:.1f} |"
        )
    emit_table(lines, args.out)


if __name__ == "__main__":
    main()
