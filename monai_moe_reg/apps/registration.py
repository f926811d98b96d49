"""One registration pipeline for a pair of scans, built from a bundle: load -> intensity scaling -> affine ->
network -> instance optimisation -> warp -> metrics -> files.

Everything a step needs comes from the bundle's ``configs/inference.json``: ``network_def`` and its checkpoint, the
intensity modes, and the ``registration`` section (the network's working spacing, the affine stage and the
multi-resolution instance optimisation with its similarity, regularisation weight and schedule). The CLI
(``monai-moe-reg register`` / ``evaluate``) and the benchmarks call it; nothing here prints (it logs).

Coordinates: every image keeps its own grid and affine (MONAI MetaTensor, RAS mm). The result maps each fixed voxel
``i`` to the moving world point ``T(x(i + u_d(i)))`` (``x``: fixed voxel -> world, ``T``: the affine stage, ``u_d``:
the deformable part in fixed voxels), and the *original* moving image is sampled there once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.networks.layers import GaussianFilter
from monai_moe_reg.apps.affine import AFFINE_MODES, affine_register
from monai_moe_reg.apps.deformable import compose, optimise_pyramid
from monai_moe_reg.apps.spatial import (
    Grid,
    level_factors,
    map_points,
    pool_to,
    resample_field,
    to_canonical,
    voxel_grid,
    warp_through,
)
from monai_moe_reg.data.staging import staged_folder
from monai_moe_reg.metrics.jacobian import jacobian_determinant
from torch import nn

__all__ = ["Registrar", "RegistrationResult", "load_scan", "parse_extras", "NETWORK_MODES", "EXTRAS"]

logger = logging.getLogger(__name__)

NETWORK_MODES = ("auto", "on", "off")
# the registration section's top-level settings (use_network and intensity are read by from_bundle)
SECTION_KEYS = (
    "network_spacing",
    "network_smoothing",
    "affine",
    "instance_optimisation",
    "network_instance_optimisation",
)
MAX_LABEL_IDS = 1000  # more distinct values than any parcellation: an intensity image given as a label map
# optional output files, each about the size of the field (expert_maps: SHMoAReg's selected SHMoE expert per voxel
# and direction on the network's working grid, when the network ran)
EXTRAS = ("ddf", "ddf_itk", "jacobian", "overview", "expert_maps")


def load_scan(path: str | os.PathLike, what: str, spatial_dims: int = 3, label: bool = False):
    """A scan as a MONAI MetaTensor ``(1, *S)`` (float32; labels rounded to int64) with its RAS affine, or a
    ``ValueError``/``FileNotFoundError`` naming the file and the problem."""
    from monai.transforms import LoadImage

    if Path(path).is_dir():
        raise ValueError(
            f"{what} '{path}' is a folder (a DICOM series?): convert it to one NIfTI file first, e.g. "
            "with dcm2niix, and pass that file."
        )
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} '{path}' does not exist.")
    try:
        img = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    except Exception as err:  # noqa: BLE001 - readers raise many types for a non-image
        raise ValueError(f"{what} '{path}' is not an image ITK or nibabel can read.") from err
    if img.ndim - 1 != spatial_dims:
        raise ValueError(
            f"{what} '{path}' is {img.ndim - 1}-D {tuple(img.shape[1:])} but this bundle registers {spatial_dims}-D "
            "images."
        )
    if img.shape[0] != 1 and not label:
        raise ValueError(f"{what} '{path}' has {img.shape[0]} components per voxel; give a single-channel scan.")
    if min(img.shape[1:]) < 2:
        raise ValueError(
            f"{what} '{path}' is {tuple(img.shape[1:])}: too small to register (at least 2 voxels per " "axis)."
        )
    if not torch.isfinite(img).all():
        raise ValueError(f"{what} '{path}' contains NaN or Inf voxels; fill or mask them first.")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError(f"{what} '{path}' has a degenerate voxel-to-world affine (zero or singular); fix its header.")
    if label:
        if img.shape[0] > 1:  # multi-channel binary maps -> one integer map (channel c -> label c + 1)
            from monai.data import MetaTensor
            from monai_moe_reg.metrics.registration import to_label_map

            img = MetaTensor(to_label_map(img.as_tensor()[None].float())[0], affine=img.affine)
        if (img < 0).any():
            raise ValueError(f"{what} '{path}' has negative values; label maps hold ids >= 0 (0 = background).")
        if not (img > 0).any():
            raise ValueError(f"{what} '{path}' is empty (no foreground voxel).")
        if not torch.equal(img, img.round()):
            raise ValueError(
                f"{what} '{path}' has non-integer values: it looks like an intensity image, not a label "
                "map (integer ids, 0 = background)."
            )
        ids = torch.unique(img).numel()
        if ids > MAX_LABEL_IDS:
            raise ValueError(
                f"{what} '{path}' has {ids} distinct values: it looks like an intensity image, not a "
                f"label map (at most {MAX_LABEL_IDS} ids are accepted)."
            )
        return img.round().long()
    return img.float()


def _grid(img) -> Grid:
    return Grid(tuple(int(s) for s in img.shape[1:]), torch.as_tensor(np.asarray(img.affine), dtype=torch.float64))


@dataclass
class RegistrationResult:
    """What :class:`Registrar` returns for one pair (all on the fixed grid, CPU tensors).

    Attributes:
        fixed: the fixed scan ``(1, *S)`` MetaTensor (its affine is the output affine).
        warped_image: ``(1, *S)`` the moving scan (original intensities) resampled onto the fixed grid.
        warped_label: ``(1, *S)`` int64 or ``None``.
        ddf: ``(3, *S)`` total displacement (affine + deformable) in fixed voxels, MONAI ``Warp`` convention (it
            warps the moving scan resampled onto the fixed grid).
        deformable: ``(3, *S)`` the deformable part alone, in fixed voxels.
        world_affine: ``(4, 4)`` fixed world -> moving world (RAS mm) of the affine stage.
        metrics: Dice/HD95/ASSD (mm) with both labels, %|J|<=0, SD log J, unregistered Dice.
        timings: seconds per stage.
        jacobian: ``(*S)`` Jacobian determinant of the total map (computed once, for the metrics and the files).
        expert_maps: SHMoAReg's selected expert per voxel and direction ``(D, *s)`` on the network's working grid
            (``network_affine``), or ``None`` (no network, or one without SHMoE).
    """

    fixed: torch.Tensor
    warped_image: torch.Tensor
    warped_label: torch.Tensor | None
    ddf: torch.Tensor
    deformable: torch.Tensor
    world_affine: torch.Tensor
    metrics: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    jacobian: torch.Tensor | None = None
    expert_maps: torch.Tensor | None = None
    network_affine: torch.Tensor | None = None


class Registrar:
    """Register pairs of scans with a bundle's network, affine stage and instance optimisation.

    Args:
        network: a registration network ``net(cat([moving, fixed])) -> ddf`` or ``None`` (affine + instance
            optimisation only).
        registration: the bundle's ``registration`` section, parsed (``network_spacing``, ``affine`` and
            ``instance_optimisation`` dicts whose ``similarity`` is a loss module).
        moving_intensity, fixed_intensity: intensity modes of :func:`monai_moe_reg.data.transforms.intensity_transform`.
        device: where the network and the optimisation run.
        spatial_dims: 3 (2 for 2-D bundles).
        inferer: runs the network, ``inferer(x, network)`` (default: ``network(x)``).

    Example::

        registrar = Registrar.from_bundle("bundles/shmoareg")
        result = registrar("fixed.nii.gz", "moving.nii.gz", moving_label="atlas_seg.nii.gz")
        registrar.write(result, "out/atlas_to_subject")
    """

    def __init__(
        self,
        network: nn.Module | None,
        registration: Mapping,
        moving_intensity: str = "minmax",
        fixed_intensity: str = "minmax",
        device: str | torch.device = "cpu",
        spatial_dims: int = 3,
        inferer: Callable | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.inferer = inferer
        self.network = network.to(self.device).eval() if network is not None else None
        self.config = dict(registration)
        for key in ("affine", "instance_optimisation"):
            if not isinstance(self.config.get(key), Mapping) or "similarity" not in self.config[key]:
                raise ValueError(f"the bundle's registration section needs '{key}' with a 'similarity' loss.")
        unknown = sorted(set(self.config) - set(SECTION_KEYS))
        if unknown:
            raise ValueError(
                f"the bundle's registration section has unknown settings {unknown}; known: "
                f"{', '.join(SECTION_KEYS)}."
            )
        for key, positive, need in (
            ("network_spacing", True, "a number of mm > 0 (or null: the fixed grid)"),
            ("network_smoothing", False, "a sigma in voxels >= 0"),
        ):
            value = self.config.get(key)
            if value is None:
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
            if not number or value < 0 or (positive and value == 0):
                raise ValueError(f"registration::{key} must be {need}, got {value!r}.")
        self.moving_intensity, self.fixed_intensity = moving_intensity, fixed_intensity
        self.spatial_dims = spatial_dims
        for name in ("affine", "instance_optimisation"):  # the whole section is checked now, not at the first pair
            self._stage(name, from_network=True)

    @classmethod
    def from_bundle(
        cls,
        bundle: str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        network: str = "auto",
        overrides: Mapping | None = None,
    ) -> Registrar:
        """Build from a bundle folder (or name) and its ``configs/inference.json``, as
        :meth:`from_section` (``checkpoint``: default your trained ``<bundle>/models/model.pt``, else the bundle's
        shipped pretrained weights, see :func:`~monai_moe_reg.weights.default_weights`). ``overrides`` replace
        entries of the bundle's ``registration`` section (e.g.
        ``{"instance_optimisation": {"steps": [50, 0]}}``)."""
        from monai_moe_reg.bundles import build_network, bundle_config
        from monai_moe_reg.weights import default_weights

        parser = bundle_config(bundle, "inference.json")
        if "registration" not in parser:
            raise ValueError(f"bundle '{bundle}' has no 'registration' section in configs/inference.json.")
        from_network = "network_instance_optimisation" in parser["registration"]
        for key, value in (overrides or {}).items():
            if isinstance(value, Mapping):
                for sub, v in value.items():
                    parser[f"registration::{key}::{sub}"] = v
                    if key == "instance_optimisation" and from_network:  # the caller's choice wins in both cases
                        parser[f"registration::network_instance_optimisation::{sub}"] = v
            else:
                parser[f"registration::{key}"] = value
        return cls.from_section(
            parser.get_parsed_content("registration"),
            lambda: build_network(parser, " (or register without the network: --network off)"),
            checkpoint=checkpoint,  # given here, it is a request for the network (even the default file)
            default_checkpoint=None if checkpoint else default_weights(parser["bundle_root"]),
            network_mode=network,
            moving_intensity=parser["moving_intensity"],
            fixed_intensity=parser["fixed_intensity"],
            device=device,
            spatial_dims=int(parser["network_def"].get("spatial_dims", 3)),
            bundle=str(bundle),
        )

    @classmethod
    def from_section(
        cls,
        registration: Mapping,
        network: nn.Module | Callable[[], nn.Module] | None,
        checkpoint: str | os.PathLike | None = None,
        default_checkpoint: str | os.PathLike | None = None,
        network_mode: str = "auto",
        moving_intensity: str = "minmax",
        fixed_intensity: str = "minmax",
        device: str | torch.device = "cpu",
        spatial_dims: int = 3,
        inferer: Callable | None = None,
        bundle: str = "",
    ) -> Registrar:
        """The registrar a bundle's parsed ``registration`` section describes; what :meth:`from_bundle` and the
        bundles' ``inference.json``/``evaluate.json`` (``registrar``) both build, so the CLI and the workflows run
        one pipeline with one set of settings.

        ``network`` is the bundle's network (or a function building it, called only when it is used) and
        ``checkpoint`` its weights (``None``: ``default_checkpoint``, the bundle's own). ``network_mode="auto"``
        loads the weights when the file exists and otherwise registers without the network (logged), and leaves the
        network out when the section's ``use_network`` is ``false`` unless a ``checkpoint`` other than the default
        was given (a request for the network); ``"on"`` requires the weights; ``"off"`` never uses the network.
        ``inferer`` (e.g. MONAI's ``SimpleInferer``) runs the network, ``inferer(x, network)``.
        The section's ``intensity`` (if set) scales both scans instead of the network's ``moving_intensity`` /
        ``fixed_intensity``."""
        from monai_moe_reg.weights import load_network_weights

        if network_mode not in NETWORK_MODES:
            raise ValueError(f"network must be one of {NETWORK_MODES}, got {network_mode!r}.")
        registration = dict(registration)
        requested = checkpoint is not None and (
            default_checkpoint is None or Path(checkpoint).resolve() != Path(default_checkpoint).resolve()
        )
        checkpoint = checkpoint if checkpoint is not None else default_checkpoint
        use = registration.pop("use_network", True)
        intensity = registration.pop("intensity", None)  # read here, not by the stages
        if not isinstance(use, bool):
            raise ValueError(f"the bundle's registration::use_network must be true or false, got {use!r}.")
        if network_mode == "auto" and not use and not requested:
            logger.info(
                "the bundle's registration::use_network is false (its defaults were chosen without the "
                "network, which did not help on the tuning pairs): registering without it; --network on or "
                "--checkpoint uses it"
            )
            network_mode = "off"
        net = None
        if network_mode != "off" and network is not None:
            path = Path(checkpoint) if checkpoint else None
            if (path is not None and path.is_file()) or requested or network_mode == "on":
                if path is None:
                    raise ValueError("the network was asked for but no checkpoint was given.")
                net = network() if callable(network) and not isinstance(network, nn.Module) else network
                load_network_weights(net, path, bundle)
                logger.info("network: %s with weights %s", type(net).__name__, path)
            else:
                logger.warning(
                    "no trained weights at %s: registering with the affine stage and instance optimisation "
                    "from the identity (train the bundle or pass a checkpoint to start from the network)",
                    path,
                )
        return cls(
            net,
            registration,
            moving_intensity=intensity or moving_intensity,
            fixed_intensity=intensity or fixed_intensity,
            device=device,
            spatial_dims=spatial_dims,
            inferer=inferer,
        )

    # ------------------------------------------------------------------ steps
    def _stage(self, name: str, from_network: bool = False) -> dict:
        """The keyword arguments of a stage from the bundle's ``registration::<name>`` section (the functions'
        own defaults fill what the section leaves out), or a ``ValueError`` naming an unknown key. With
        ``from_network``, the optional ``network_instance_optimisation`` section overrides ``instance_optimisation``
        (refining a network's field needs another schedule than starting from the identity)."""
        import inspect

        fn = affine_register if name == "affine" else optimise_pyramid
        inputs = {"fixed", "fixed_grid", "moving", "moving_grid", "transform", "initial", "progress"}
        allowed = set(inspect.signature(fn).parameters) - inputs
        sections = [name] + (
            ["network_instance_optimisation"] if from_network and name == "instance_optimisation" else []
        )
        cfg: dict = {}
        for section in sections:
            part = self.config.get(section) or {}
            unknown = set(part) - allowed
            if unknown:
                raise ValueError(
                    f"the bundle's registration::{section} section has unknown settings "
                    f"{sorted(unknown)}; allowed: {sorted(allowed)}."
                )
            cfg.update(part)
        return cfg

    def _scaled(self, img, mode: str) -> torch.Tensor:
        from monai_moe_reg.data.transforms import intensity_transform

        t = intensity_transform("image", mode)
        out = t({"image": img})["image"] if t is not None else img
        out = out.as_tensor() if hasattr(out, "as_tensor") else out
        return out[None].float().to(self.device)

    def _network_ddf(
        self, fixed: torch.Tensor, fixed_grid: Grid, moving: torch.Tensor, moving_grid: Grid, world: torch.Tensor
    ) -> tuple[torch.Tensor, Grid]:
        """The network's DDF on its working grid (the fixed grid pooled to ``network_spacing`` mm and reoriented to
        RAS, as the bundles' training transforms present pairs: :func:`to_canonical`), run on the affine-aligned
        pair."""
        spacing = self.config.get("network_spacing")
        ff = level_factors(fixed_grid, float(spacing), min_size=1) if spacing else (1,) * self.spatial_dims
        fm = level_factors(moving_grid, float(spacing), min_size=1) if spacing else (1,) * self.spatial_dims
        fix, grid = to_canonical(pool_to(fixed, ff), fixed_grid.coarsen(ff))
        matrix = torch.linalg.inv(moving_grid.coarsen(fm).affine) @ world @ grid.affine
        mov = warp_through(pool_to(moving, fm), matrix.to(self.device), grid.shape)
        with torch.no_grad():
            x = torch.cat([mov, fix], dim=1)
            ddf = (self.inferer(x, self.network) if self.inferer is not None else self.network(x)).float()
        maps = getattr(self.network, "expert_maps", None)  # SHMoAReg: the last forward's selection, finest first
        self._expert_maps = (maps[0][0].to(torch.int16).cpu(), grid.affine) if maps else None
        sigma = float(self.config.get("network_smoothing") or 0.0)
        if sigma > 0:  # Gaussian smoothing of the network's field (voxels of its working grid) before IO
            ddf = GaussianFilter(self.spatial_dims, sigma).to(ddf.device)(ddf)
        if not torch.isfinite(ddf).all():
            raise ValueError(
                "the network returned non-finite displacements for this pair: check the scans' intensity "
                "range and the bundle's intensity modes, or register without it (--network off)."
            )
        return ddf, grid

    def __call__(
        self,
        fixed,
        moving,
        fixed_label=None,
        moving_label=None,
        affine: str = "on",
        instance_opt: bool = True,
        progress: bool = False,
    ) -> RegistrationResult:
        """Register ``moving`` to ``fixed`` (file paths or ``(1, *S)`` MetaTensors with affines).

        ``moving_label`` alone is warped (atlas segmentation); with ``fixed_label`` too, Dice/HD95/ASSD are
        computed. ``affine``: ``"on"`` (affine, then deformable), ``"off"`` (identity start), ``"only"`` (no
        deformable stage). ``instance_opt=False`` keeps the network's DDF as it is.
        """
        if affine not in AFFINE_MODES:
            raise ValueError(f"affine must be one of {AFFINE_MODES}, got {affine!r}.")
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        dims = self.spatial_dims
        fix = fixed if isinstance(fixed, torch.Tensor) else load_scan(fixed, "fixed image", dims)
        mov = moving if isinstance(moving, torch.Tensor) else load_scan(moving, "moving image", dims)
        labels = {}
        for key, lab in (("fixed", fixed_label), ("moving", moving_label)):
            if lab is not None:
                labels[key] = lab if isinstance(lab, torch.Tensor) else load_scan(lab, f"{key} label", dims, label=True)
        if "fixed" in labels and "moving" not in labels:
            raise ValueError(
                "a fixed label alone cannot be compared: give the moving label too (or only the moving "
                "label, to warp it onto the fixed scan)."
            )
        fixed_grid, moving_grid = _grid(fix), _grid(mov)
        f_s, m_s = self._scaled(fix, self.fixed_intensity), self._scaled(mov, self.moving_intensity)
        times["load"] = time.perf_counter() - t0
        self._expert_maps = None

        t = time.perf_counter()
        world = torch.eye(4, dtype=torch.float64)
        if affine != "off":
            logger.info("affine stage ...")
            world = affine_register(f_s, fixed_grid, m_s, moving_grid, **self._stage("affine"))
        times["affine"] = time.perf_counter() - t
        _done("affine", times)

        t = time.perf_counter()
        initial = None
        if self.network is not None and affine != "only":
            logger.info("network %s ...", type(self.network).__name__)
            initial = self._network_ddf(f_s, fixed_grid, m_s, moving_grid, world)
        times["network"] = time.perf_counter() - t
        _done("network", times)

        t = time.perf_counter()
        residual = None
        if instance_opt and affine != "only":
            logger.info("instance optimisation ...")
            w, w_grid, info = optimise_pyramid(
                f_s,
                fixed_grid,
                m_s,
                moving_grid,
                world,
                initial=initial,
                progress=progress,
                **self._stage("instance_optimisation", from_network=initial is not None),
            )
            residual = resample_field(w, w_grid, fixed_grid)
            times["io_steps"] = info["steps"]
        with torch.no_grad():
            u0 = resample_field(initial[0], initial[1], fixed_grid) if initial is not None else None
            if residual is None:
                deformable = u0 if u0 is not None else torch.zeros(1, dims, *fixed_grid.shape, device=self.device)
            else:
                deformable = compose(residual, u0)
        if not torch.isfinite(deformable).all():
            raise ValueError(
                "instance optimisation diverged (non-finite displacements): lower its lr (--lr) or raise "
                "its regularisation (--io-lambda)."
            )
        times["instance_optimisation"] = time.perf_counter() - t
        _done("instance_optimisation", times)

        t = time.perf_counter()
        with torch.no_grad():
            to_moving = torch.linalg.inv(moving_grid.affine) @ world @ fixed_grid.affine
            raw = mov.as_tensor()[None].float().to(self.device) if hasattr(mov, "as_tensor") else mov[None].float()
            warped = warp_through(raw, to_moving, fixed_grid.shape, deformable)[0].cpu()
            warped_label = None
            if "moving" in labels:
                lab = labels["moving"]
                lab_grid = _grid(lab)
                m = torch.linalg.inv(lab_grid.affine) @ world @ fixed_grid.affine
                warped_label = _warp_label(lab, m, fixed_grid.shape, deformable)
            # total displacement in fixed voxels: i -> x^-1 T x (i + u_d(i))
            in_fixed = torch.linalg.inv(fixed_grid.affine) @ world @ fixed_grid.affine
            base = voxel_grid(fixed_grid.shape, device=self.device)[None]
            total = map_points(in_fixed.to(self.device), base + deformable) - base
        times["warp"] = time.perf_counter() - t
        _done("warp", times)

        t = time.perf_counter()
        with torch.no_grad():
            det = jacobian_determinant(total).cpu()
        metrics = self._metrics(total.cpu(), det, warped_label, labels, fixed_grid)
        times["metrics"] = time.perf_counter() - t
        _done("metrics", times)
        times["total"] = time.perf_counter() - t0
        maps = self._expert_maps
        return RegistrationResult(
            fixed=fix,
            warped_image=warped,
            warped_label=warped_label,
            ddf=total[0].cpu(),
            deformable=deformable[0].cpu(),
            world_affine=world,
            metrics=metrics,
            timings=times,
            jacobian=det[0],
            expert_maps=maps[0] if maps else None,
            network_affine=maps[1] if maps else None,
        )

    @staticmethod
    def _metrics(total: torch.Tensor, det: torch.Tensor, warped_label, labels: dict, fixed_grid: Grid) -> dict:
        """%|J|<=0 and SD log J of the total map; with both labels also Dice, HD95/ASSD (mm) and the Dice of the
        pair before registration (labels resampled through their headers, no transform)."""
        from monai_moe_reg.metrics.overlap import dice_per_label
        from monai_moe_reg.metrics.registration import registration_metrics

        if "fixed" not in labels:
            row = registration_metrics(total, det=det)[0]
            return {k: row[k] for k in ("folding_percent", "sdlogj")}
        shape, spacing = fixed_grid.shape, fixed_grid.spacing
        on_fixed = {
            k: _warp_label(v, torch.linalg.inv(_grid(v).affine) @ fixed_grid.affine, shape, None)
            for k, v in labels.items()
        }
        row = registration_metrics(total, warped_label[None], on_fixed["fixed"][None], spacing, det=det)[0]
        row["labels"] = sorted(int(v) for v in torch.unique(on_fixed["fixed"]) if v != 0)
        before = dice_per_label(on_fixed["moving"][None], on_fixed["fixed"][None], row["labels"])[0]
        row["dice_unregistered"] = float(np.nanmean(before.numpy()))
        return row

    # ------------------------------------------------------------------ files
    @staticmethod
    def write(
        result: RegistrationResult,
        folder: str | os.PathLike,
        extra_files: Mapping[str, str] | None = None,
        extras: str | Sequence[str] = (),
    ) -> Path:
        """Write ``result`` into ``folder`` on the fixed grid and affine: ``warped_image.nii.gz``,
        ``warped_label.nii.gz`` (if any), ``transform.h5`` (ITK composite of the affine and the deformable field, the
        one transform file: ``antsApplyTransforms``, ITK and 3D Slicer apply it to the *original* moving scan;
        :func:`~monai_moe_reg.data.displacement_io.read_itk_transform` reads it back) and ``metrics.json``/``.csv``.

        ``extras`` (a list or a comma-separated string; ``"all"``: every one) adds files on request, as large as
        the field each: ``ddf`` (total DDF in fixed voxels, MONAI ``Warp`` convention), ``ddf_itk`` (the same in LPS
        mm as ITK/ANTs write displacement fields), ``jacobian`` (its determinant), ``overview`` (a PNG). Files are
        staged in a folder of this run's own beside ``folder`` and published with a rename only when all are
        written; a failure leaves nothing new."""
        import json

        import nibabel as nib
        from monai_moe_reg.data.displacement_io import write_itk_displacement_nifti, write_itk_transform

        wanted = parse_extras(extras)
        final = Path(folder)
        with staged_folder(final) as stage:
            affine = np.asarray(result.fixed.affine, dtype=np.float64)
            label = result.warped_label
            arrays = {"warped_image": result.warped_image[0].numpy().astype(np.float32)}
            if "ddf" in wanted:
                arrays["ddf"] = result.ddf.movedim(0, -1).numpy().astype(np.float32)
            if "jacobian" in wanted:
                arrays["jacobian"] = (
                    (result.jacobian if result.jacobian is not None else jacobian_determinant(result.ddf[None])[0])
                    .numpy()
                    .astype(np.float32)
                )
            if label is not None:
                dtype = np.int16 if int(label.max()) <= np.iinfo(np.int16).max else np.int32
                arrays["warped_label"] = label[0].numpy().astype(dtype)
            # gzip releases the GIL: the NIfTI and transform files are written in parallel
            with ThreadPoolExecutor(max_workers=3) as pool:
                jobs = [
                    pool.submit(nib.save, nib.Nifti1Image(arr, affine), str(stage / f"{key}.nii.gz"))
                    for key, arr in arrays.items()
                ]
                if "expert_maps" in wanted and result.expert_maps is not None:
                    net_affine = np.asarray(result.network_affine, dtype=np.float64)
                    for d, axis in zip(range(result.expert_maps.shape[0]), "xyz"):
                        jobs.append(
                            pool.submit(
                                nib.save,
                                nib.Nifti1Image(result.expert_maps[d].numpy(), net_affine),
                                str(stage / f"expert_map_{axis}.nii.gz"),
                            )
                        )
                if "ddf_itk" in wanted:
                    jobs.append(pool.submit(write_itk_displacement_nifti, result.ddf, affine, stage / "ddf_itk.nii.gz"))
                if result.ddf.shape[0] == 3:
                    jobs.append(
                        pool.submit(
                            write_itk_transform, stage / "transform.h5", affine, result.world_affine, result.deformable
                        )
                    )
                if "overview" in wanted:
                    _overview(result, stage / "overview.png")
                for job in jobs:
                    job.result()
            metrics = dict(result.metrics)
            (stage / "metrics.json").write_text(json.dumps({**metrics, "seconds": result.timings}, indent=1))
            keys = [k for k in metrics if k != "labels"]
            values = ",".join(f"{metrics[k]:.6f}" for k in keys)
            (stage / "metrics.csv").write_text(",".join(keys) + "\n" + values + "\n")
            for name, text in (extra_files or {}).items():
                (stage / name).write_text(text)
        return final


def _done(stage: str, times: dict) -> None:
    if times[stage] > 0.05:
        logger.info("%s: %.1f s", stage, times[stage])


def parse_extras(extras: str | Sequence[str] | None) -> set[str]:
    """The optional output files asked for (:meth:`Registrar.write`): a list or a comma-separated string of
    :data:`EXTRAS`, or ``"all"``; an unknown name is an error naming the choices."""
    if extras is None or extras == "" or extras == ():
        return set()
    names = [v.strip() for v in extras.split(",")] if isinstance(extras, str) else [str(v).strip() for v in extras]
    if names == ["all"]:
        return set(EXTRAS)
    unknown = sorted(set(names) - set(EXTRAS))
    if unknown:
        raise ValueError(f"unknown extra output(s) {unknown}: choose from {', '.join(EXTRAS)} (or all).")
    return set(names)


def _warp_label(label: torch.Tensor, matrix: torch.Tensor, shape, ddf: torch.Tensor | None) -> torch.Tensor:
    """Nearest-neighbour resampling of an integer label map ``(1, *S)`` (exact for any id: done in float64)."""
    raw = label.as_tensor() if hasattr(label, "as_tensor") else label
    if (
        ddf is None
        and tuple(raw.shape[1:]) == tuple(shape)
        and torch.allclose(matrix.double().cpu(), torch.eye(matrix.shape[0], dtype=torch.float64), atol=1e-6)
    ):
        return raw.round().long().cpu()  # already on this grid (the usual case for a scan's own label map)
    device = ddf.device if ddf is not None else "cpu"
    out = warp_through(raw[None].double().to(device), matrix.to(device), shape, ddf, mode="nearest")
    return out[0].round().long().cpu()


def _overview(result: RegistrationResult, path: Path) -> None:
    """Fixed, warped, their difference and the deformed grid on the middle slice of axis 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = result.fixed.as_tensor()[0] if hasattr(result.fixed, "as_tensor") else result.fixed[0]
    warped = result.warped_image[0]
    k = fixed.shape[-1] // 2

    def norm(t):
        t = t.float()
        return (t - t.min()) / max(float(t.max() - t.min()), 1e-6)

    f, w = norm(fixed[..., k]), norm(warped[..., k])
    u = result.deformable[:2, :, :, k] if result.deformable.ndim == 4 else result.deformable[:2]
    panels = [("fixed", f), ("warped moving", w), ("|fixed - warped|", (f - w).abs())]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img.numpy().T, cmap="gray", origin="lower")
        ax.set_title(title)
        ax.axis("off")
    step = max(4, min(u.shape[1:]) // 16)
    ys, xs = np.meshgrid(np.arange(u.shape[1]), np.arange(u.shape[2]), indexing="ij")
    px, py = ys + u[0].numpy(), xs + u[1].numpy()
    ax = axes[3]
    for i in range(0, u.shape[1], step):
        ax.plot(px[i, :], py[i, :], "k", lw=0.5)
    for j in range(0, u.shape[2], step):
        ax.plot(px[:, j], py[:, j], "k", lw=0.5)
    ax.set_title("deformable grid")
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
