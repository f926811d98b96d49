"""Write a DDF as an ITK displacement field in physical units (mm, LPS), applicable by ITK, ANTs or 3D Slicer.

Written here because MONAI's ``monai_to_itk_ddf`` expects arrays whose first axis is ITK's last (z) axis, whereas
MONAI's default NIfTI/ITK loading gives arrays whose first axis is ITK's x axis; using it on such images transposes
the field. This converts from the image's MetaTensor affine directly.
"""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["ddf_to_itk_displacement_field", "write_itk_displacement_field"]


def ddf_to_itk_displacement_field(ddf: torch.Tensor, affine: torch.Tensor | np.ndarray):
    """ITK vector image ``Image[Vector[F, D], D]`` of the physical displacement (mm, LPS) of a DDF.

    Args:
        ddf: ``(D, *S)`` displacement in voxels along the array axes of an image whose voxel-to-world ``affine``
            (RAS, as in MONAI MetaTensors) is given. The array's axis ``i`` is ITK's index axis ``i``.
        affine: ``(D + 1, D + 1)`` RAS affine of that image grid (the fixed image).
    """
    import itk

    dims = ddf.shape[0]
    ras = np.asarray(affine, dtype=np.float64)
    flip = np.diag([-1.0, -1.0] + [1.0] * (dims - 1))  # RAS -> LPS on the first two world axes
    lps = flip @ ras
    step = lps[:dims, :dims]  # column i: physical vector of one voxel step along array axis i
    phys = np.einsum("ij,j...->i...", step, ddf.detach().cpu().double().numpy())  # (D, *S) in mm
    arr = np.ascontiguousarray(np.transpose(phys, tuple(range(dims, 0, -1)) + (0,)).astype(np.float32))
    field = itk.GetImageFromArray(arr, is_vector=True)
    spacing = np.linalg.norm(step, axis=0)
    field.SetSpacing(spacing.tolist())
    field.SetOrigin(lps[:dims, dims].tolist())
    field.SetDirection(itk.matrix_from_array(step / spacing))
    return field


def write_itk_displacement_field(ddf: torch.Tensor, affine, path: str | os.PathLike) -> None:
    """:func:`ddf_to_itk_displacement_field` written with ``itk.imwrite`` (e.g. ``ddf_itk.nii.gz``)."""
    import itk

    itk.imwrite(ddf_to_itk_displacement_field(ddf, affine), str(path))
