"""What a network was built with, recorded so that weights know their architecture.

A state dict alone does not say how its network was configured: SHMoAReg weights load into ``diffeomorphic=True``
or another ``moe_gate_mode`` without an error and then give another field. :func:`record_config` stores the
constructor arguments of the decorated networks; :func:`network_config` turns them into JSON written beside the
weights (``model.pt.json``, the safetensors metadata) and :func:`config_mismatch` names the settings in which a file
and a network differ. Written by hand: neither PyTorch nor MONAI records constructor arguments.
"""

from __future__ import annotations

import functools
import inspect
import os

import torch
from torch import nn

__all__ = ["record_config", "network_config", "config_mismatch", "RUNTIME_SETTINGS"]

# settings that change how a network runs or where its parts come from, not what its weights mean
RUNTIME_SETTINGS = frozenset(
    {"check_values", "use_checkpoint", "drop_path_rate", "flow_init_std", "llm", "llm_dtype", "export_size"}
)


def _jsonable(value):
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        items = [_jsonable(v) for v in value]
        return None if any(i is _SKIP for i in items) else items
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return _SKIP


_SKIP = object()


def record_config(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: every instance gets ``_init_config``, its constructor arguments with defaults applied
    (JSON-able values only)."""
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        config = {}
        for name, value in list(bound.arguments.items())[1:]:
            v = _jsonable(value)
            if v is not _SKIP:
                config[name] = v
        init(self, *args, **kwargs)
        if type(self) is cls or not hasattr(self, "_init_config"):
            self._init_config = config

    cls.__init__ = wrapped
    return cls


def network_config(network: nn.Module) -> dict:
    """``{"class": "<module>.<name>", "config": {...}}`` of a network (``config`` empty when not recorded)."""
    module = getattr(network, "module", network)  # DDP
    out = {
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "config": dict(getattr(module, "_init_config", {})),
    }
    if getattr(module, "llm_provenance", None):  # LLM-Morph: which LLM's layers (name, indices, weights hash)
        out["llm"] = dict(module.llm_provenance)
    return out


def config_mismatch(saved: dict | None, network: nn.Module) -> list[str]:
    """``"name: saved -> network"`` for every architecture setting (not :data:`RUNTIME_SETTINGS`) recorded in both
    that differs, the class when it differs, and LLM-Morph's LLM layers (name, indices, weights hash) when both
    recorded them and they differ; empty when they agree or nothing was recorded."""
    if not isinstance(saved, dict):
        return []
    now = network_config(network)
    out = []
    if saved.get("class") and saved["class"] != now["class"]:
        out.append(f"class: {saved['class']} -> {now['class']}")
    old, new = saved.get("config") or {}, now["config"]
    for key in sorted(set(old) & set(new) - RUNTIME_SETTINGS):
        if old[key] != new[key]:
            out.append(f"{key}: {old[key]!r} -> {new[key]!r}")
    was, got = saved.get("llm"), now.get("llm")
    if isinstance(was, dict) and isinstance(got, dict) and _llm_key(was) != _llm_key(got):
        out.append(f"llm: {_llm_text(was)} -> {_llm_text(got)}")
    return out


def _llm_key(llm: dict) -> tuple:
    """What identifies LLM layers: the hash of their weights and their indices (the file name may differ)."""
    return llm.get("sha256"), llm.get("layers")


def _llm_text(llm: dict) -> str:
    return f"{llm.get('name')} layers {tuple(llm.get('layers') or ())} (weights sha256 {str(llm.get('sha256'))[:12]})"
