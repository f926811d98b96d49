from monai_moe_reg.metrics.jacobian import jacobian_determinant, nonpositive_jacobian_percent, sd_log_jacobian
from monai_moe_reg.metrics.overlap import assd_mm, dice_per_label, hd95_mm, label_channels

__all__ = [
    "assd_mm",
    "dice_per_label",
    "hd95_mm",
    "jacobian_determinant",
    "label_channels",
    "nonpositive_jacobian_percent",
    "sd_log_jacobian",
]
