"""Ignite handlers for registration evaluation and inference: metric averages, per-pair CSV and summaries, result
folders."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai_moe_reg.data.staging import atomic_write_text
from monai_moe_reg.metrics.registration import METRIC_NAMES, summarize_metrics

__all__ = [
    "PairMetric",
    "PairMetricsSaver",
    "RegistrationWriter",
    "loss_terms",
    "metric_table",
    "pair_name",
    "pair_names",
]

logger = logging.getLogger(__name__)


def _stem(path: str) -> str:
    name = Path(str(path)).name
    for ext in (".nii.gz", ".nii", ".mha", ".nrrd", ".gz"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def pair_name(moving: str | os.PathLike, fixed: str | os.PathLike) -> str:
    """``<moving>_to_<fixed>`` from two file names (extensions dropped): the name of a pair's result folder and
    metrics row everywhere (CLI, bundles)."""
    return f"{_stem(str(moving))}_to_{_stem(str(fixed))}"


def pair_names(batch) -> list[str]:
    """``<moving>_to_<fixed>`` per pair of a batch: preprocessed images' ``filename_or_obj`` meta data, or the file
    paths of a batch of datalist entries (index if unknown)."""
    if isinstance(batch, list):  # datalist entries, not collated
        return [pair_name(p["moving_image"], p["fixed_image"]) for p in batch]
    fixed, moving = batch.get("fixed_image"), batch.get("moving_image")
    if isinstance(fixed, (list, tuple, str)):  # collated file paths
        fixed, moving = ([fixed], [moving]) if isinstance(fixed, str) else (fixed, moving)
        return [pair_name(m, f) for m, f in zip(moving, fixed)]
    names = []
    n = fixed.shape[0] if isinstance(fixed, torch.Tensor) else 1
    for b in range(n):
        try:
            names.append(pair_name(moving.meta["filename_or_obj"][b], fixed.meta["filename_or_obj"][b]))
        except (AttributeError, KeyError, IndexError, TypeError):
            names.append(f"pair{b}")
    return names


def _metric_rows(output) -> tuple[list]:
    """The evaluator output's per-pair metric rows, as the 1-tuple Ignite metrics expect."""
    rows = output.get("metrics") if isinstance(output, dict) else None
    return (rows or [],)


class PairMetric(Metric):
    """Epoch mean of one per-pair metric from the evaluator's ``output["metrics"]`` (NaNs ignored), e.g.
    ``PairMetric("dice")`` as the key validation metric. Distributed runs reduce sums and counts over ranks."""

    def __init__(self, name: str, output_transform=None, device="cpu") -> None:
        if name not in METRIC_NAMES:
            raise ValueError(f"unknown registration metric {name!r}; choose from {METRIC_NAMES}.")
        self.name = name
        super().__init__(output_transform=output_transform or _metric_rows, device=device)

    def reset(self) -> None:
        self._sum, self._count = 0.0, 0

    def update(self, output) -> None:
        for row in output[0]:
            value = row[self.name]
            if not math.isnan(value):
                self._sum += value
                self._count += 1

    def compute(self) -> float:
        import ignite.distributed as idist

        total = idist.all_reduce(torch.tensor([self._sum, float(self._count)], dtype=torch.float64))
        return float(total[0] / total[1]) if total[1] > 0 else float("nan")


class PairMetricsSaver:
    """Writes ``<output_dir>/<filename>`` with one row of metrics per pair (rewritten after every iteration, each
    time to a temporary file that is renamed: an interrupted run keeps its finished rows), and at the end of every
    evaluation epoch ``<stem>_summary.csv`` and ``<stem>_summary.md`` with the mean and std of each metric; also
    logs the summary. Columns: ``pair``, :data:`~monai_moe_reg.metrics.registration.METRIC_NAMES` and ``seconds``
    when the rows have it (the registration pipeline's)."""

    def __init__(self, output_dir: str | os.PathLike, filename: str = "metrics.csv") -> None:
        self.output_dir = Path(output_dir)
        self.filename = filename
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _path(self) -> Path:
        import ignite.distributed as idist

        suffix = f"_rank{idist.get_rank()}" if idist.get_world_size() > 1 else ""
        return self.output_dir / (Path(self.filename).stem + suffix + ".csv")

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output if isinstance(engine.state.output, dict) else {}
        metrics = out.get("metrics")
        if metrics:
            names = out.get("names") or pair_names(engine.state.batch)
            for name, row in zip(names, metrics):
                self.rows.append({"pair": name, **row})
            if "names" in out:  # the pipeline's slow pairs: every finished row is on disk at once
                self._write_rows()

    def summary(self) -> dict[str, tuple[float, float]]:
        return summarize_metrics(self.rows)

    def _write_rows(self) -> Path:
        fields = ["pair", *METRIC_NAMES] + (["seconds"] if any("seconds" in r for r in self.rows) else [])
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, restval=float("nan"), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        return atomic_write_text(self._path(), buf.getvalue())

    def _write(self, engine: Engine) -> None:
        if not self.rows:
            return
        path = self._write_rows()
        summary = self.summary()
        lines = ["metric,mean,std,n_pairs"] + [f"{k},{m:.6f},{s:.6f},{len(self.rows)}" for k, (m, s) in summary.items()]
        atomic_write_text(path.with_name(path.stem + "_summary.csv"), "\n".join(lines) + "\n")
        atomic_write_text(path.with_name(path.stem + "_summary.md"), metric_table(self.rows) + "\n")
        logger.info(
            "registration metrics over %d pairs: %s",
            len(self.rows),
            ", ".join(f"{k} {m:.4f} +- {s:.4f}" for k, (m, s) in summary.items()),
        )


def metric_table(rows: list[dict]) -> str:
    """Mean +- std of each metric over per-pair rows as a Markdown table (``n/a`` where no pair has it)."""
    lines = ["| metric | mean | std |", "|---|---|---|"]
    for key, (mean, std) in summarize_metrics(rows).items():
        lines.append(f"| {key} | {mean:.4f} | {std:.4f} |" if not np.isnan(mean) else f"| {key} | n/a | n/a |")
    return "\n".join(lines)


class RegistrationWriter:
    """Writes every registered pair of the registration pipeline
    (:class:`~monai_moe_reg.engines.RegistrationPipelineEvaluator`) into ``<output_dir>/<moving>_to_<fixed>/`` with
    :meth:`Registrar.write <monai_moe_reg.apps.registration.Registrar.write>`, the writer ``monai-moe-reg register``
    uses: the same files for the same pair (warped image and label, ``transform.h5``, metrics; ``extras`` as
    ``register --extras``). Each pair's folder is staged and published when complete (never half-written, never
    over files this program did not write: :mod:`monai_moe_reg.data.staging`); pairs of one run whose names coincide
    (``s1/image -> s2/image`` and ``s3/image -> s2/image``) get ``_2``, ``_3``... so none overwrites another."""

    def __init__(self, output_dir: str | os.PathLike, extras: str | Sequence[str] = "") -> None:
        from monai_moe_reg.apps.registration import parse_extras

        self.output_dir = Path(output_dir)
        self.extras = sorted(parse_extras(extras))  # a typo fails when the workflow is built
        self._used: set[str] = set()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from monai_moe_reg.apps.registration import Registrar

        out = engine.state.output
        if not isinstance(out, dict) or "results" not in out:
            raise TypeError(
                "RegistrationWriter writes the output of RegistrationPipelineEvaluator (results and "
                "names per iteration)."
            )
        for name, result in zip(out["names"], out["results"]):
            Registrar.write(result, self.output_dir / self._unique(name), extras=self.extras)

    def _unique(self, name: str) -> str:
        k, out = 1, name
        while out in self._used:
            k += 1
            out = f"{name}_{k}"
        self._used.add(out)
        return out


def loss_terms(output) -> dict[str, float]:
    """The trainer output's ``loss`` and every loss term as floats, for ``StatsHandler`` /
    ``TensorBoardStatsHandler`` (``output_transform``): each is logged per iteration under its own name."""
    out = output[0] if isinstance(output, (list, tuple)) else output
    return {
        k: float(torch.as_tensor(v).detach().float().mean())
        for k, v in out.items()
        if k not in ("image", "pred", "label")
        and isinstance(v, (float, int, torch.Tensor))
        and torch.as_tensor(v).numel() == 1
    }
