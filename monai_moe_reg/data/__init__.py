from monai_moe_reg.data.datalist import (
    IMAGE_KEYS,
    LABEL_KEYS,
    PAIR_KEYS,
    expand_subject_pairs,
    load_pairs,
    validate_pairs,
)
from monai_moe_reg.data.demo_dataset import DATALIST_NAME, ensure_datalist, write_demo_dataset
from monai_moe_reg.data.pair_dataset import (
    CACHE_MODES,
    CachedPairs,
    cached_dataset,
    pair_sampler,
    subject_pairs,
    subject_transforms,
    training_pairs,
)
from monai_moe_reg.data.synth import SynthPairs, random_diffeomorphism, random_svf, synth_image, synth_label_map
from monai_moe_reg.data.synthetic import (
    blob_label_map,
    labels_to_image,
    random_smooth_ddf,
    synthetic_pair,
    warp_image,
)
from monai_moe_reg.data.transforms import INTENSITY_MODES, CheckFinited, intensity_transform, pair_transforms

__all__ = [
    "SynthPairs",
    "random_diffeomorphism",
    "random_svf",
    "synth_image",
    "synth_label_map",
    "CACHE_MODES",
    "CachedPairs",
    "cached_dataset",
    "pair_sampler",
    "subject_pairs",
    "subject_transforms",
    "training_pairs",
    "DATALIST_NAME",
    "IMAGE_KEYS",
    "INTENSITY_MODES",
    "LABEL_KEYS",
    "PAIR_KEYS",
    "blob_label_map",
    "ensure_datalist",
    "expand_subject_pairs",
    "intensity_transform",
    "labels_to_image",
    "load_pairs",
    "pair_transforms",
    "CheckFinited",
    "random_smooth_ddf",
    "synthetic_pair",
    "validate_pairs",
    "warp_image",
    "write_demo_dataset",
]
