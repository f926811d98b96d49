from monai_moe_reg.networks.nets.llm_morph import LLMMorph
from monai_moe_reg.networks.nets.shmoareg import SHMoAReg

__all__ = ["LLMMorph", "SHMoAReg"]
