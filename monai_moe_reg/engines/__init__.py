"""Ignite engines and handlers for registration bundles."""

from monai_moe_reg.engines.evaluator import RegistrationEvaluator
from monai_moe_reg.engines.handlers import (
    PairMetric,
    PairMetricsSaver,
    RegistrationWriter,
    ResumableCheckpointSaver,
    pair_names,
)
from monai_moe_reg.engines.trainer import RegistrationTrainer
from monai_moe_reg.engines.utils import autocast, pair_to_device, predict_ddf, unwrap

__all__ = [
    "PairMetric",
    "PairMetricsSaver",
    "RegistrationEvaluator",
    "RegistrationTrainer",
    "RegistrationWriter",
    "ResumableCheckpointSaver",
    "autocast",
    "pair_names",
    "pair_to_device",
    "predict_ddf",
    "unwrap",
]
