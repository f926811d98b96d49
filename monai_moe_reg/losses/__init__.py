from monai_moe_reg.losses.routing_classification import RoutingClassificationLoss, routing_targets
from monai_moe_reg.losses.shmoareg_loss import SHMoARegLoss, make_similarity

__all__ = ["RoutingClassificationLoss", "SHMoARegLoss", "make_similarity", "routing_targets"]
