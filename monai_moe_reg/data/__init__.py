from monai_moe_reg.data.synthetic import (
    blob_label_map,
    labels_to_image,
    random_smooth_ddf,
    synthetic_pair,
    warp_image,
)

__all__ = ["blob_label_map", "labels_to_image", "random_smooth_ddf", "synthetic_pair", "warp_image"]
