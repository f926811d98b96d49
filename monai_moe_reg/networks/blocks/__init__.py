from monai_moe_reg.networks.blocks.decoder_adapter import DecoderAdapter, tokens_to_volume, volume_to_tokens
from monai_moe_reg.networks.blocks.dual_pyramid_encoder import DualPyramidEncoder
from monai_moe_reg.networks.blocks.flow import ResidualFlowComposer, upsample_ddf
from monai_moe_reg.networks.blocks.llm_encoding_block import LLMEncodingBlock, ViTEncodingBlock
from monai_moe_reg.networks.blocks.llm_morph_decoder import LLMMorphDecoder
from monai_moe_reg.networks.blocks.moa_attention import MoAWindowAttention
from monai_moe_reg.networks.blocks.moa_swin import MoASwinStage
from monai_moe_reg.networks.blocks.pyramid_cnn_encoder import PyramidCNNEncoder
from monai_moe_reg.networks.blocks.pyramid_decoder import PyramidDecoder
from monai_moe_reg.networks.blocks.shmoe import SHMoE
from monai_moe_reg.networks.blocks.swin_encoder import SwinRegEncoder
from monai_moe_reg.networks.blocks.token_adapter import TokenAdapter
from monai_moe_reg.networks.blocks.window_attention import SwinWindowAttention, relative_position_index

__all__ = [
    "DecoderAdapter",
    "DualPyramidEncoder",
    "LLMMorphDecoder",
    "SwinWindowAttention",
    "relative_position_index",
    "LLMEncodingBlock",
    "PyramidCNNEncoder",
    "TokenAdapter",
    "ViTEncodingBlock",
    "tokens_to_volume",
    "volume_to_tokens",
    "MoASwinStage",
    "MoAWindowAttention",
    "PyramidDecoder",
    "ResidualFlowComposer",
    "SHMoE",
    "SwinRegEncoder",
    "upsample_ddf",
]
