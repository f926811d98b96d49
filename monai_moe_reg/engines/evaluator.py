"""Ignite evaluator for registration: predicts the DDF, warps image and labels, computes per-pair metrics in mm."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from monai_moe_reg.engines.utils import autocast, image_spacing, pair_to_device, predict_ddf, warp_pair
from monai_moe_reg.metrics.registration import registration_metrics

__all__ = ["RegistrationEvaluator"]


class RegistrationEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` for pairs. Per iteration it predicts the DDF on the fixed grid (optionally at
    ``network_size``, see :func:`predict_ddf`), warps the moving image (linear) and the moving labels (nearest, the
    label map itself), and computes :func:`registration_metrics` per pair with the fixed image's voxel spacing
    (HD95/ASSD in mm).

    Output per iteration: ``image`` (network input), ``pred`` (DDF), ``fixed_image``, ``moving_image``,
    ``warped_image``, ``warped_label``/``fixed_label`` (if labels were given), ``expert_maps`` (SHMoAReg: level-0
    selected-expert map ``(B, D, *S)``, else ``None``) and ``metrics`` (a list with one dict per pair).

    Args:
        network_size: spatial size the network runs at (``None``: the fixed image's own size).
        labels: label ids to evaluate (default: all non-zero ids of the fixed label map).
        compute_metrics: skip the metrics (pure inference without labels still reports %|J|<=0 and SD log J).
        All other arguments are :class:`monai.engines.SupervisedEvaluator`'s (``amp`` uses bf16 on CPU).
    """

    def __init__(
        self,
        *args,
        network_size: Sequence[int] | None = None,
        labels: Sequence[int] | None = None,
        compute_metrics: bool = True,
        **kwargs,
    ) -> None:
        amp = kwargs.pop("amp", False)
        kwargs.setdefault("decollate", False)  # outputs stay batched dicts for the registration handlers
        super().__init__(*args, amp=False, **kwargs)
        self.use_amp = bool(amp)
        self.network_size = tuple(network_size) if network_size else None
        self.eval_labels = list(labels) if labels else None
        self.compute_metrics = compute_metrics

    def _iteration(self, engine, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = pair_to_device(batchdata, engine.state.device, engine.non_blocking)
        moving, fixed = batch["moving_image"], batch["fixed_image"]
        engine.network.eval()
        with torch.no_grad(), autocast(engine.state.device, engine.use_amp):
            ddf, aux = predict_ddf(engine.network, moving, fixed, engine.network_size, engine.inferer, return_aux=True)
            ddf = ddf.float()
        engine.state.output = {Keys.IMAGE: torch.cat([moving, fixed], 1), Keys.PRED: ddf}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        with torch.no_grad():
            out = engine.state.output
            out["moving_image"], out["fixed_image"] = moving, fixed
            has_labels = "moving_label" in batch and "fixed_label" in batch
            out.update(warp_pair(ddf, moving, batch["moving_label"] if has_labels else None, aux, self.network_size))
            fixed_label = torch.as_tensor(batch["fixed_label"]) if has_labels else None
            if has_labels:
                out["fixed_label"] = fixed_label
            if engine.compute_metrics:
                out["metrics"] = registration_metrics(
                    ddf, out.get("warped_label"), fixed_label, image_spacing(fixed), self.eval_labels
                )
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
