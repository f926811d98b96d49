"""Pretrained LLM layers for LLM-Morph: selective loading and the SmolLM2 fetcher."""

from monai_moe_reg.llm.fetch import SMOLLM2, bundle_llm, default_llm_dir, extract_gguf, fetch_smollm2, smollm2_path
from monai_moe_reg.llm.loading import (
    LoadedLayers,
    layers_fingerprint,
    llm_provenance,
    load_decoder_layers,
    resolve_llm_source,
)

__all__ = [
    "SMOLLM2",
    "LoadedLayers",
    "bundle_llm",
    "default_llm_dir",
    "extract_gguf",
    "fetch_smollm2",
    "layers_fingerprint",
    "llm_provenance",
    "load_decoder_layers",
    "resolve_llm_source",
    "smollm2_path",
]
