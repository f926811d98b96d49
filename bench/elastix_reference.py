"""elastix B-spline (``itk-elastix``, bench-only) as the classical reference of bench/accuracy.py.

The result is returned as our DDF convention (voxels of the fixed grid, MONAI ``Warp`` samples the moving image at
``x + ddf(x)``), read from transformix's deformation field, which is elastix's fixed->moving displacement in mm. So
labels are warped and scored by the same code as the networks' fields; :func:`elastix_bspline` also reports how
well ``Warp`` with that field reproduces elastix's own resampled image (a check of the conversion).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.blocks import Warp


def _itk_image(volume: torch.Tensor, spacing: Sequence[float]):
    import itk

    # our (x0, x1, x2) array -> ITK's (z, y, x) array order, so ITK's x axis is our first axis
    image = itk.image_from_array(np.ascontiguousarray(volume.numpy().astype(np.float32).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    return image


def elastix_bspline(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    spacing: Sequence[float],
    resolutions: int = 3,
    grid_spacing_mm: float = 10.0,
    iterations: int = 256,
    threads: int = 2,
) -> tuple[torch.Tensor, float, float]:
    """Register unbatched ``(1, *S)`` volumes with elastix's default B-spline map (Mattes mutual information,
    ``resolutions`` levels, final control-point spacing ``grid_spacing_mm``, ``iterations`` per level).

    Returns ``(ddf (3, *S) in voxels, seconds, correlation of our warp with elastix's result image)``.
    """
    try:
        import itk

        itk.ParameterObject  # noqa: B018 - present only with itk-elastix
    except (ImportError, AttributeError) as err:
        raise ImportError("the elastix reference needs itk-elastix: pip install itk-elastix (bench-only).") from err
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    fix, mov = _itk_image(fixed[0], spacing), _itk_image(moving[0], spacing)
    params = itk.ParameterObject.New()
    pmap = params.GetDefaultParameterMap("bspline", resolutions, grid_spacing_mm)
    pmap["MaximumNumberOfIterations"] = [str(iterations)]
    pmap["MaximumNumberOfThreads"] = [str(threads)]
    params.AddParameterMap(pmap)
    start = time.perf_counter()
    result, transform = itk.elastix_registration_method(fix, mov, parameter_object=params, log_to_console=False)
    with tempfile.TemporaryDirectory() as tmp:  # transformix writes deformationField.nii there, not in the cwd
        field = itk.transformix_deformation_field(mov, transform, output_directory=tmp)
    seconds = time.perf_counter() - start
    disp_mm = np.asarray(itk.array_from_image(field)).transpose(2, 1, 0, 3)  # (x0, x1, x2, 3), component 0 = x0
    ddf = torch.from_numpy(disp_mm / np.asarray(spacing, dtype=np.float64)).float().permute(3, 0, 1, 2).contiguous()
    ours = Warp(mode="bilinear", padding_mode="zeros")(moving[None].float(), ddf[None])[0, 0].numpy().ravel()
    theirs = np.asarray(itk.array_from_image(result)).transpose(2, 1, 0).ravel()
    corr = float(np.corrcoef(ours, theirs)[0, 1])
    return ddf, seconds, corr
