"""Write a DDF as an ITK displacement field in physical units (mm, LPS), applicable by ITK, ANTs or 3D Slicer.

Written here because MONAI's ``monai_to_itk_ddf`` expects arrays whose first axis is ITK's last (z) axis, whereas
MONAI's default NIfTI/ITK loading gives arrays whose first axis is ITK's x axis; using it on such images transposes
the field. This converts from the image's MetaTensor affine directly.
"""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = [
    "ddf_to_itk_displacement_field",
    "ddf_to_lps_mm",
    "write_itk_displacement_field",
    "write_itk_displacement_nifti",
    "write_itk_transform",
    "read_itk_transform",
]


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


def _lps_steps(affine) -> tuple[np.ndarray, np.ndarray]:
    """Column ``i``: the LPS mm vector of one voxel step along array axis ``i``; and the LPS position of voxel 0."""
    ras = np.asarray(affine, dtype=np.float64)
    dims = ras.shape[0] - 1
    flip = np.diag([-1.0, -1.0] + [1.0] * (dims - 2) + [1.0])
    lps = flip @ ras
    return lps[:dims, :dims], lps[:dims, dims]


def ddf_to_lps_mm(ddf: torch.Tensor, affine) -> np.ndarray:
    """``(D, *S)`` displacement in voxels of a grid with RAS ``affine`` -> ``(D, *S)`` physical displacement in LPS mm
    (float64), the unit of ITK/ANTs displacement fields."""
    step, _ = _lps_steps(affine)
    return np.einsum("ij,j...->i...", step, ddf.detach().cpu().double().numpy())


def write_itk_displacement_nifti(ddf: torch.Tensor, affine, path: str | os.PathLike) -> None:
    """The displacement field of :func:`ddf_to_itk_displacement_field` written as ITK/ANTs write one (a 5-D NIfTI
    ``(X, Y, Z, 1, 3)``, intent *vector*, LPS mm values, the grid's RAS affine in the header) with nibabel, so
    writing it does not load ITK (seconds of import time)."""
    import nibabel as nib

    phys = ddf_to_lps_mm(ddf, affine).astype(np.float32)
    data = np.moveaxis(phys, 0, -1)[..., None, :]  # (X, Y, Z, 1, 3): NIfTI's vector layout
    img = nib.Nifti1Image(np.ascontiguousarray(data), np.asarray(affine, dtype=np.float64))
    img.header.set_intent("vector")
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def write_itk_transform(
    path: str | os.PathLike, fixed_affine, world_affine=None, ddf: torch.Tensor | None = None
) -> None:
    """An ITK transform file (HDF5, ``.h5``) that maps fixed-image points to moving-image points the way ITK, ANTs
    (``antsApplyTransforms -t transform.h5``) and 3D Slicer expect: a composite of the affine ``world_affine``
    (4x4, fixed world RAS mm -> moving world) and the displacement field ``ddf`` (``(3, *S)`` in voxels of the fixed
    grid with RAS ``fixed_affine``); the field is applied to a point first, then the affine: ``q = A(p + d(p))``.

    Written with h5py in ITK's HDF5 transform layout (``/TransformGroup/<i>/{TransformType, TransformParameters,
    TransformFixedParameters}``; the composite's transforms follow it, the last one is applied first), so writing
    does not load ITK. The field's parameters are stored as float32 with HDF5's shuffle + gzip filters (ITK reads
    either precision and decompresses transparently): about a quarter of the float64 file. Only 3-D.
    """
    import h5py

    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    world = np.eye(4) if world_affine is None else np.asarray(world_affine, dtype=np.float64)
    lps = flip @ world @ flip
    parts = [("AffineTransform_double_3_3", np.concatenate([lps[:3, :3].ravel(), lps[:3, 3]]), np.zeros(3))]
    if ddf is not None:
        if ddf.shape[0] != 3 or ddf.ndim != 4:
            raise ValueError(f"write_itk_transform needs a 3-D DDF (3, X, Y, Z), got {tuple(ddf.shape)}.")
        step, origin = _lps_steps(fixed_affine)
        spacing = np.linalg.norm(step, axis=0)
        direction = step / spacing
        phys = ddf_to_lps_mm(ddf, fixed_affine)
        params = np.ascontiguousarray(np.transpose(phys, (3, 2, 1, 0))).ravel()  # x fastest, vectors interleaved
        fixed = np.concatenate([np.array(ddf.shape[1:], dtype=np.float64), origin, spacing, direction.ravel()])
        parts.append(("DisplacementFieldTransform_double_3_3", params, fixed))
    text = h5py.string_dtype("ascii")
    with h5py.File(str(path), "w") as fh:
        for key, value in (
            ("HDFVersion", f"HDF5 library version: {h5py.version.hdf5_version}"),
            ("ITKVersion", "5.4.0"),
            ("OSName", "Linux"),
            ("OSVersion", ""),
        ):
            fh.create_dataset(key, data=[value], dtype=text)
        group = fh.create_group("TransformGroup")
        group.create_group("0").create_dataset("TransformType", data=["CompositeTransform_double_3_3"], dtype=text)
        for i, (name, params, fixed) in enumerate(parts, start=1):
            g = group.create_group(str(i))
            g.create_dataset("TransformType", data=[name], dtype=text)
            if name.startswith("DisplacementField"):  # float32 + shuffle + fast gzip: the bulk of the file
                g.create_dataset(
                    "TransformParameters",
                    data=np.asarray(params, dtype=np.float32),
                    shuffle=True,
                    compression="gzip",
                    compression_opts=1,
                    chunks=(min(len(params), 1 << 20),),
                )
            else:
                g.create_dataset("TransformParameters", data=np.asarray(params, dtype=np.float64))
            g.create_dataset("TransformFixedParameters", data=np.asarray(fixed, dtype=np.float64))


def read_itk_transform(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, torch.Tensor | None]:
    """Read a transform file written by :func:`write_itk_transform` (``register``'s ``transform.h5``) back.

    Returns ``(world_affine, fixed_affine, ddf)``: the 4x4 fixed-world -> moving-world RAS matrix, the RAS affine of
    the field's grid (the fixed image) and the displacement ``(3, *S)`` in voxels of that grid (``None`` and ``None``
    for an affine-only file): the arguments :func:`write_itk_transform` was given.
    """
    import h5py

    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    world, fixed_affine, ddf = np.eye(4), None, None
    try:
        fh = h5py.File(str(path), "r")
    except OSError as err:
        raise ValueError(f"cannot read '{path}' as an ITK HDF5 transform file ({err}).") from err
    with fh:
        group = fh.get("TransformGroup")
        if group is None:
            raise ValueError(f"'{path}' is not an ITK HDF5 transform file (no /TransformGroup).")
        for key in sorted((k for k in group if k != "0"), key=int):
            name = group[key]["TransformType"][0]
            name = name.decode() if isinstance(name, bytes) else str(name)
            params = np.asarray(group[key]["TransformParameters"][()], dtype=np.float64)
            fixed = np.asarray(group[key]["TransformFixedParameters"][()], dtype=np.float64)
            if name.startswith("AffineTransform") or name.startswith("MatrixOffsetTransformBase"):
                lps = np.eye(4)
                lps[:3, :3], lps[:3, 3] = params[:9].reshape(3, 3), params[9:12]
                centre = fixed[:3]
                lps[:3, 3] += centre - lps[:3, :3] @ centre
                world = flip @ lps @ flip
            elif name.startswith("DisplacementFieldTransform"):
                size = fixed[:3].astype(int)
                origin, spacing, direction = fixed[3:6], fixed[6:9], fixed[9:18].reshape(3, 3)
                step = direction * spacing  # column i: LPS mm of one voxel step along axis i
                phys = params.reshape(size[2], size[1], size[0], 3).transpose(3, 2, 1, 0)  # (3, X, Y, Z) LPS mm
                vox = np.einsum("ij,j...->i...", np.linalg.inv(step), phys)
                ddf = torch.from_numpy(np.ascontiguousarray(vox, dtype=np.float32))
                lps_affine = np.eye(4)
                lps_affine[:3, :3], lps_affine[:3, 3] = step, origin
                fixed_affine = flip @ lps_affine
            else:
                raise ValueError(f"'{path}' holds a {name}, which read_itk_transform does not read.")
    return world, fixed_affine, ddf
