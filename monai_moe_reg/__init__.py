"""monai-moe-reg: MONAI-native SHMoAReg and LLM-Morph deformable registration."""

__version__ = "0.1.0"
