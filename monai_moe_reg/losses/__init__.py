from monai_moe_reg.losses.gradient import REGULARISERS, GradientLoss, make_regulariser
from monai_moe_reg.losses.label_dice import WarpedLabelDice, to_one_hot_labels
from monai_moe_reg.losses.llm_morph_loss import LLMMorphLoss
from monai_moe_reg.losses.mind_ssc import MINDSSCLoss, mind_ssc
from monai_moe_reg.losses.routing_classification import RoutingClassificationLoss, routing_targets
from monai_moe_reg.losses.shmoareg_loss import SHMoARegLoss, make_similarity

__all__ = [
    "GradientLoss",
    "REGULARISERS",
    "make_regulariser",
    "LLMMorphLoss",
    "MINDSSCLoss",
    "RoutingClassificationLoss",
    "SHMoARegLoss",
    "WarpedLabelDice",
    "make_similarity",
    "mind_ssc",
    "routing_targets",
    "to_one_hot_labels",
]
