from monai_moe_reg.metrics.jacobian import jacobian_determinant, nonpositive_jacobian_percent, sd_log_jacobian
from monai_moe_reg.metrics.overlap import assd_mm, dice_per_label, hd95_mm, label_channels
from monai_moe_reg.metrics.registration import METRIC_NAMES, registration_metrics, summarize_metrics, to_label_map

__all__ = [
    "METRIC_NAMES",
    "registration_metrics",
    "summarize_metrics",
    "to_label_map",
    "assd_mm",
    "dice_per_label",
    "hd95_mm",
    "jacobian_determinant",
    "label_channels",
    "nonpositive_jacobian_percent",
    "sd_log_jacobian",
]
