from monai_moe_reg.networks.blocks.flow import ResidualFlowComposer, upsample_ddf
from monai_moe_reg.networks.blocks.moa_attention import MoAWindowAttention
from monai_moe_reg.networks.blocks.moa_swin import MoASwinStage
from monai_moe_reg.networks.blocks.pyramid_decoder import PyramidDecoder
from monai_moe_reg.networks.blocks.shmoe import SHMoE
from monai_moe_reg.networks.blocks.swin_encoder import SwinRegEncoder

__all__ = [
    "MoASwinStage",
    "MoAWindowAttention",
    "PyramidDecoder",
    "ResidualFlowComposer",
    "SHMoE",
    "SwinRegEncoder",
    "upsample_ddf",
]
