"""Ignite evaluator that runs a bundle's whole registration pipeline (:class:`~monai_moe_reg.apps.Registrar`) on
every pair of a datalist: what ``inference.json``, ``evaluate.json`` and ``monai-moe-reg register/evaluate`` all
run, so the four give the same numbers and the same files for a pair."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from monai.engines import Evaluator
from monai.engines.utils import IterationEvents
from monai_moe_reg.apps.affine import AFFINE_MODES
from monai_moe_reg.engines.handlers import pair_name

__all__ = ["RegistrationPipelineEvaluator", "pair_items"]

logger = logging.getLogger(__name__)

PAIR_FILES = ("fixed_image", "moving_image", "fixed_label", "moving_label")


def pair_items(batch) -> list[dict]:
    """The pairs of a batch of datalist entries (file paths): a list of dicts as it is, or MONAI's collated dict of
    lists (``{"fixed_image": [path, ...], ...}``) split back into one dict per pair."""
    if isinstance(batch, dict):
        n = len(batch["fixed_image"]) if isinstance(batch["fixed_image"], (list, tuple)) else 1
        return [{k: (v[i] if isinstance(v, (list, tuple)) else v) for k, v in batch.items()} for i in range(n)]
    return list(batch)


class RegistrationPipelineEvaluator(Evaluator):
    """Registers each pair of ``val_data_loader`` (datalist entries with ``fixed_image``, ``moving_image`` and
    optional ``fixed_label``/``moving_label`` file paths; no transforms: the pipeline loads every scan on its own
    grid) with ``registrar``.

    Output per iteration: ``results`` (one :class:`~monai_moe_reg.apps.registration.RegistrationResult` per pair),
    ``names`` (``<moving>_to_<fixed>``) and ``metrics`` (one row per pair, as
    :class:`~monai_moe_reg.engines.PairMetricsSaver` and :class:`~monai_moe_reg.engines.PairMetric` read them, with
    the pair's ``seconds``). A pair that fails for a reason of its own (an unreadable scan, a diverged optimisation)
    is logged and skipped, so the finished ones are kept; :meth:`run` then raises a ``ValueError`` naming the
    failures.

    Args:
        device: kept for the Model Zoo's ``device`` property (the registrar runs on its own device).
        val_data_loader: batches of datalist entries (``collate_fn`` may be MONAI's default or ``list``).
        registrar: the pipeline, e.g. ``Registrar.from_section(...)`` built from the bundle's ``registration``.
        affine: ``"on"``, ``"off"`` or ``"only"`` (see :class:`~monai_moe_reg.apps.Registrar`).
        instance_opt: run the instance optimisation.
        val_handlers: Ignite handlers (writer, metric saver, ...).
    """

    def __init__(
        self,
        device,
        val_data_loader,
        registrar,
        affine: str = "on",
        instance_opt: bool = True,
        val_handlers: Sequence | None = None,
        epoch_length: int | None = None,
        **kwargs,
    ) -> None:
        if affine not in AFFINE_MODES:
            raise ValueError(f"affine must be one of {AFFINE_MODES}, got {affine!r}.")
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            epoch_length=epoch_length,
            val_handlers=val_handlers,
            decollate=False,
            **kwargs,
        )
        self.registrar, self.affine, self.instance_opt = registrar, affine, bool(instance_opt)
        self.network = registrar.network  # what the workflow's handlers (e.g. a weights loader) would look for
        self.failed: list[str] = []
        self.seen = 0

    def _iteration(self, engine, batchdata) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        results, names, rows = [], [], []
        for pair in pair_items(batchdata):
            missing = [k for k in ("fixed_image", "moving_image") if not pair.get(k)]
            if missing:
                raise ValueError(f"a datalist entry lacks {missing}: {pair}")
            name = pair_name(pair["moving_image"], pair["fixed_image"])
            self.seen += 1
            labels = [pair.get(k) or None for k in ("fixed_label", "moving_label")]
            try:
                result = self.registrar(
                    pair["fixed_image"],
                    pair["moving_image"],
                    *labels,
                    affine=self.affine,
                    instance_opt=self.instance_opt,
                )
            except (ValueError, OSError, RuntimeError) as err:  # one bad pair never discards the finished ones
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                self.failed.append(f"{name}: {reason}")
                logger.warning("%s: FAILED (%s)", name, reason)
                continue
            m = result.metrics
            row = {k: v for k, v in m.items() if k != "labels"}
            row["seconds"] = result.timings["total"]
            results.append(result)
            names.append(name)
            rows.append(row)
            dice = m.get("dice", math.nan)
            logger.info(
                "[%d/%s] %s: %s%.1f s",
                engine.state.iteration,
                engine.state.epoch_length or "?",
                name,
                f"dice {dice:.4f}, " if not math.isnan(dice) else "",
                row["seconds"],
            )
        engine.state.output = {"results": results, "names": names, "metrics": rows}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def run(self, global_epoch: int = 1) -> None:  # type: ignore[override]
        self.failed, self.seen = [], 0
        super().run(global_epoch)
        if self.failed:
            raise ValueError(
                f"{len(self.failed)} of {self.seen} pairs failed (the {self.seen - len(self.failed)} "
                f"finished ones were written); first: {self.failed[0]}"
            )
