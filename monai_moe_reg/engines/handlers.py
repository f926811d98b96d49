"""Ignite handlers for registration evaluation and inference: metric averages, per-pair CSV, result files."""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric

from monai_moe_reg.metrics.jacobian import jacobian_determinant
from monai_moe_reg.metrics.registration import METRIC_NAMES, summarize_metrics

__all__ = ["PairMetric", "PairMetricsSaver", "RegistrationWriter", "loss_terms", "pair_names"]

logger = logging.getLogger(__name__)


def _stem(path: str) -> str:
    name = Path(str(path)).name
    for ext in (".nii.gz", ".nii", ".mha", ".nrrd", ".gz"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def pair_names(batch: dict) -> list[str]:
    """``<moving>_to_<fixed>`` per pair from the images' ``filename_or_obj`` meta data (index if unknown)."""
    names = []
    fixed, moving = batch.get("fixed_image"), batch.get("moving_image")
    n = fixed.shape[0] if isinstance(fixed, torch.Tensor) else 1
    for b in range(n):
        try:
            f = fixed.meta["filename_or_obj"][b]
            m = moving.meta["filename_or_obj"][b]
            names.append(f"{_stem(m)}_to_{_stem(f)}")
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
    """Writes ``<output_dir>/<filename>`` with one row of metrics per pair and ``<stem>_summary.csv`` with the mean
    and std of each metric at the end of every evaluation epoch; also logs the summary."""

    def __init__(self, output_dir: str | os.PathLike, filename: str = "metrics.csv") -> None:
        self.output_dir = Path(output_dir)
        self.filename = filename
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        metrics = engine.state.output.get("metrics") if isinstance(engine.state.output, dict) else None
        if metrics:
            for name, row in zip(pair_names(engine.state.batch), metrics):
                self.rows.append({"pair": name, **row})

    def summary(self) -> dict[str, tuple[float, float]]:
        return summarize_metrics(self.rows)

    def _write(self, engine: Engine) -> None:
        import ignite.distributed as idist

        if not self.rows:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rank = idist.get_rank()
        suffix = f"_rank{rank}" if idist.get_world_size() > 1 else ""
        path = self.output_dir / (Path(self.filename).stem + suffix + ".csv")
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["pair", *METRIC_NAMES])
            writer.writeheader()
            writer.writerows(self.rows)
        summary = self.summary()
        with open(path.with_name(path.stem + "_summary.csv"), "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["metric", "mean", "std", "n_pairs"])
            for key, (mean, std) in summary.items():
                writer.writerow([key, f"{mean:.6f}", f"{std:.6f}", len(self.rows)])
        logger.info(
            "registration metrics over %d pairs: %s",
            len(self.rows),
            ", ".join(f"{k} {m:.4f} +- {s:.4f}" for k, (m, s) in summary.items()),
        )


class RegistrationWriter:
    """Writes, for every pair, on the fixed image's grid and affine, into ``<output_dir>/<moving>_to_<fixed>/``:
    ``warped_image.nii.gz``, ``warped_label.nii.gz`` (if labels), ``ddf.nii.gz`` (voxel units, last axis = array axis
    of the displacement), ``ddf_itk.nii.gz`` (ITK displacement field in physical mm, LPS, applicable by
    ITK/ANTs/Slicer; see :mod:`monai_moe_reg.data.displacement_io`), ``jacobian.nii.gz``, ``expert_map_{x,y,z}.nii.gz``
    (SHMoAReg: the selected SHMoE expert per voxel and direction, paper Fig. 2) and ``overview.png`` (fixed, moving,
    warped, deformed grid, expert map on the middle slice). Each pair's files are written into a temporary folder
    that is renamed when complete, so a failure never leaves a half-written pair. Pairs of one run whose file names
    coincide (``s1/image -> s2/image`` and ``s3/image -> s2/image``) get ``_2``, ``_3``... so none overwrites another,
    and a folder holding files this program did not write is never replaced (:mod:`monai_moe_reg.data.staging`)."""

    def __init__(self, output_dir: str | os.PathLike, png: bool = True, itk_ddf: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self._used: set[str] = set()
        self.png = png
        self.itk_ddf = itk_ddf

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        for b, name in enumerate(pair_names(engine.state.batch)):
            self.write_pair(self._unique(name), out, b)

    def _unique(self, name: str) -> str:
        k, out = 1, name
        while out in self._used:
            k += 1
            out = f"{name}_{k}"
        self._used.add(out)
        return out

    def write_pair(self, name: str, out: dict, b: int = 0, extra_files: dict[str, str] | None = None) -> Path:
        """Write pair ``b`` of ``out`` (the evaluator's output layout) to ``<output_dir>/<name>/``; ``extra_files``
        maps file names to text written in the same folder (e.g. a metrics JSON) before it is published."""
        import nibabel as nib

        from monai_moe_reg.data.staging import staged_folder

        fixed = out["fixed_image"][b]
        affine = np.asarray(getattr(fixed, "affine", torch.eye(4)), dtype=np.float64)
        final = self.output_dir / name
        with staged_folder(final) as tmp:
            ddf = out["pred"][b].detach().float().cpu()
            arrays = {
                "warped_image": out["warped_image"][b, 0],
                "ddf": ddf.movedim(0, -1),
                "jacobian": jacobian_determinant(ddf[None])[0],
            }
            if out.get("warped_label") is not None:
                label = out["warped_label"][b].round().long()
                dtype = torch.int16 if int(label.max()) <= torch.iinfo(torch.int16).max else torch.int32
                arrays["warped_label"] = label.to(dtype).movedim(0, -1).squeeze(-1)
            maps = out.get("expert_maps")
            if maps is not None:
                for d, axis in zip(range(maps.shape[1]), "xyz"):
                    arrays[f"expert_map_{axis}"] = maps[b, d].to(torch.int16)
            for key, arr in arrays.items():
                arr = torch.as_tensor(arr).detach().cpu().numpy()
                nib.save(nib.Nifti1Image(arr, affine), str(tmp / f"{key}.nii.gz"))
            if self.itk_ddf:
                self._write_itk_ddf(fixed, ddf, tmp / "ddf_itk.nii.gz")
            if self.png:
                self._write_png(out, b, tmp / "overview.png")
            for fname, text in (extra_files or {}).items():
                (tmp / fname).write_text(text)
        return final

    @staticmethod
    def _write_itk_ddf(fixed: torch.Tensor, ddf: torch.Tensor, path: Path) -> None:
        from monai_moe_reg.data.displacement_io import write_itk_displacement_nifti

        write_itk_displacement_nifti(ddf, np.asarray(getattr(fixed, "affine", torch.eye(ddf.shape[0] + 1))), path)

    @staticmethod
    def _write_png(out: dict, b: int, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from monai.networks.blocks import Warp

        fixed = torch.as_tensor(out["fixed_image"][b, 0]).float().cpu()
        moving = torch.as_tensor(out["moving_image"][b, 0]).float().cpu()
        warped = torch.as_tensor(out["warped_image"][b, 0]).float().cpu()
        ddf = out["pred"][b : b + 1].float().cpu()
        dims = fixed.ndim
        grid = torch.zeros_like(fixed)
        step = max(4, min(fixed.shape) // 12)
        for axis in range(dims - 2, dims):  # lines in the displayed plane only (slices are taken along axis 0)
            index = [slice(None)] * dims
            index[axis] = slice(0, None, step)
            grid[tuple(index)] = 1.0
        grid = Warp(mode="bilinear", padding_mode="zeros")(grid[None, None], ddf)[0, 0]

        def mid(t: torch.Tensor):
            return t[t.shape[0] // 2].numpy() if t.ndim == 3 else t.numpy()

        panels = [("fixed", mid(fixed)), ("moving", mid(moving)), ("warped", mid(warped)), ("deformed grid", mid(grid))]
        maps = out.get("expert_maps")
        if maps is not None:
            panels.append(("expert map (x)", mid(maps[b, 0].float().cpu())))
        fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
        for ax, (title, img) in zip(axes, panels):
            ax.imshow(img.T, cmap="bwr" if title.startswith("expert") else "gray", origin="lower")
            ax.set_title(title)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)


def loss_terms(output) -> dict[str, float]:
    """The trainer output's ``loss`` and every loss term as floats, for ``StatsHandler`` /
    ``TensorBoardStatsHandler`` (``output_transform``): each is logged per iteration under its own name."""
    out = output[0] if isinstance(output, (list, tuple)) else output
    return {k: float(torch.as_tensor(v).detach().float().mean()) for k, v in out.items()
            if k not in ("image", "pred", "label") and isinstance(v, (float, int, torch.Tensor)) and
            torch.as_tensor(v).numel() == 1}
