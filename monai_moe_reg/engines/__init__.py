"""Ignite engines and handlers for registration bundles."""

from monai_moe_reg.engines.checkpoints import (
    BestModelSaver,
    ResumableCheckpointSaver,
    RNGState,
    SafeDiskSaver,
    WeightsLoader,
    atomic_save,
)
from monai_moe_reg.engines.evaluator import RegistrationEvaluator
from monai_moe_reg.engines.handlers import (
    PairMetric,
    PairMetricsSaver,
    RegistrationWriter,
    loss_terms,
    metric_table,
    pair_name,
    pair_names,
)
from monai_moe_reg.engines.interrupt import InterruptHandler
from monai_moe_reg.engines.pipeline import RegistrationPipelineEvaluator
from monai_moe_reg.engines.settings import check_device, check_training_settings
from monai_moe_reg.engines.trainer import RegistrationTrainer
from monai_moe_reg.engines.utils import autocast, pair_to_device, predict_ddf, unwrap

__all__ = [
    "BestModelSaver",
    "InterruptHandler",
    "RNGState",
    "SafeDiskSaver",
    "atomic_save",
    "loss_terms",
    "metric_table",
    "pair_name",
    "PairMetric",
    "PairMetricsSaver",
    "RegistrationEvaluator",
    "RegistrationPipelineEvaluator",
    "RegistrationTrainer",
    "RegistrationWriter",
    "ResumableCheckpointSaver",
    "WeightsLoader",
    "autocast",
    "check_device",
    "check_training_settings",
    "pair_names",
    "pair_to_device",
    "predict_ddf",
    "unwrap",
]
