from monai_moe_reg.networks.nets.llm_morph import LLMMorph
from monai_moe_reg.networks.nets.shmoareg import SHMoAReg
from monai_moe_reg.networks.nets.voxelmorph_style import VoxelMorphStyle

__all__ = ["LLMMorph", "SHMoAReg", "VoxelMorphStyle"]
