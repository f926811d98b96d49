"""Voxel grids with their world affines, image pyramids, and sampling an image through a linear map and a DDF.

A registration maps every voxel ``k`` of a (possibly coarsened) fixed grid to a point of the moving image:
``j = P @ (k + u(k))``, where ``u`` is a DDF in voxels of that grid (MONAI ``Warp`` convention: channel ``i`` along
array axis ``i``) and ``P`` is a 4x4 matrix from grid voxels to moving-image voxels (the fixed grid's affine, the
affine transform between the two worlds and the inverse of the moving image's affine, multiplied). Sampling the
*original* moving image this way interpolates once, whatever its size, spacing and orientation. MONAI's ``Warp``
covers only the case ``P = I`` (moving already on the fixed grid), hence these few functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Grid", "pool_to", "level_factors", "voxel_grid", "map_points", "sample", "warp_through", "to_canonical"]


@dataclass(frozen=True)
class Grid:
    """A voxel grid: spatial ``shape`` and its voxel-to-world ``affine`` (4x4, RAS mm, float64)."""

    shape: tuple[int, ...]
    affine: torch.Tensor

    @property
    def spacing(self) -> list[float]:
        return [float(v) for v in self.affine[:3, :3].norm(dim=0)]

    def coarsen(self, factors: Sequence[int]) -> Grid:
        """The grid of ``avg_pool`` with kernel = stride = ``factors``: voxel ``k`` is the mean of voxels
        ``f k .. f k + f - 1``, centred at ``f k + (f - 1) / 2``."""
        f = torch.tensor([float(v) for v in factors], dtype=torch.float64)
        scale = torch.eye(4, dtype=torch.float64)
        scale[:3, :3] = torch.diag(f)
        scale[:3, 3] = (f - 1) / 2
        shape = tuple(max(1, s // int(v)) for s, v in zip(self.shape, factors))
        return Grid(shape, self.affine @ scale)


def level_factors(grid: Grid, spacing_mm: float, min_size: int = 8) -> tuple[int, ...]:
    """Integer pooling factor per axis that brings ``grid`` to about ``spacing_mm`` mm: axes with a finer spacing are
    pooled more, so anisotropic grids become about isotropic; a factor never leaves fewer than ``min_size`` voxels
    on an axis (nor goes below 1)."""
    out = []
    for s, n in zip(grid.spacing, grid.shape):
        f = max(1, int(round(spacing_mm / s)))
        while f > 1 and n // f < min_size:
            f -= 1
        out.append(f)
    return tuple(out)


def pool_to(image: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """``(B, C, *S)`` averaged over non-overlapping blocks of ``factors`` voxels (the :meth:`Grid.coarsen` grid)."""
    if all(int(f) == 1 for f in factors):
        return image
    pool = F.avg_pool3d if image.ndim == 5 else F.avg_pool2d
    return pool(image, kernel_size=tuple(int(f) for f in factors), stride=tuple(int(f) for f in factors))


def voxel_grid(shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """``(D, *shape)`` voxel indices of a grid (channel ``i`` = index along axis ``i``)."""
    axes = [torch.arange(int(n), device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


def map_points(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply a ``(D + 1, D + 1)`` homogeneous matrix to points ``(B, D, *S)`` (or ``(D, *S)``)."""
    dims = matrix.shape[0] - 1
    m = matrix.to(points.dtype)
    lin, off = m[:dims, :dims], m[:dims, dims]
    out = _apply_linear(lin, points)
    shape = [1] * points.ndim
    shape[-dims - 1] = dims
    return out + off.view(shape)


def _apply_linear(lin: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    dims = lin.shape[0]
    axis = points.ndim - dims - 1  # the component axis
    comps = points.unbind(axis)
    rows = [sum(lin[i, j] * comps[j] for j in range(dims)) for i in range(dims)]
    return torch.stack(rows, dim=axis)


def sample(
    image: torch.Tensor, points: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros"
) -> torch.Tensor:
    """``image`` ``(B, C, *S_in)`` sampled at voxel coordinates ``points`` ``(B, D, *S_out)`` of its own grid
    (linear or nearest; outside the image: ``padding_mode``). Returns ``(B, C, *S_out)``."""
    dims = points.shape[1]
    size = image.shape[2:]
    norm = [2.0 * points[:, i] / max(int(size[i]) - 1, 1) - 1.0 for i in range(dims)]
    grid = torch.stack(norm[::-1], dim=-1)  # grid_sample wants (x, y, z) = (last, ..., first) array axis
    return F.grid_sample(image, grid.to(image.dtype), mode=mode, padding_mode=padding_mode, align_corners=True)


def warp_through(
    image: torch.Tensor,
    matrix: torch.Tensor,
    shape: Sequence[int],
    ddf: torch.Tensor | None = None,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """``image`` sampled at ``matrix @ (k + ddf(k))`` for every voxel ``k`` of a grid of ``shape``.

    Args:
        image: ``(B, C, *S_in)`` on its own grid.
        matrix: ``(D + 1, D + 1)`` from voxels of the output grid to voxels of ``image``.
        shape: output spatial shape.
        ddf: optional ``(B, D, *shape)`` displacement in output-grid voxels.
        mode, padding_mode: as ``torch.nn.functional.grid_sample``.

    Returns:
        ``(B, C, *shape)``.
    """
    points = voxel_grid(shape, device=image.device)[None]
    if ddf is not None:
        points = points + ddf.to(points.dtype)
    points = map_points(matrix.to(image.device), points)
    if points.shape[0] != image.shape[0]:
        points = points.expand(image.shape[0], *points.shape[1:])
    return sample(image, points, mode, padding_mode)


def resample_field(ddf: torch.Tensor, source: Grid, target: Grid) -> torch.Tensor:
    """A DDF ``(B, D, *source.shape)`` in voxels of ``source`` as a DDF on ``target`` in voxels of ``target``
    (the same world): linear interpolation at the target voxels' positions (border values outside), vectors
    mapped through the two grids' linear parts. Exact for any pair of grids, e.g. a pyramid level and the full grid."""
    if source.shape == target.shape and torch.allclose(source.affine, target.affine):
        return ddf
    to_source = torch.linalg.inv(source.affine) @ target.affine  # target voxel -> source voxel
    points = map_points(to_source.to(ddf.device), voxel_grid(target.shape, device=ddf.device)[None])
    points = points.expand(ddf.shape[0], *points.shape[1:])
    values = sample(ddf.float(), points, "bilinear", "border")
    to_target = (torch.linalg.inv(target.affine) @ source.affine)[:3, :3].to(ddf.device)  # source vox -> target vox
    return _apply_linear(to_target.float(), values)


def to_canonical(image: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, Grid]:
    """``image`` ``(B, C, *grid.shape)`` and its grid reoriented to the closest RAS axis order (MONAI's
    ``Orientation(axcodes="RAS")``, which the bundles' training transforms apply): axes flipped and permuted only,
    so every voxel keeps its value and its world position (no interpolation). Returns the image and its new grid;
    fields computed on that grid map back through :func:`resample_field`. 2-D grids are returned unchanged."""
    if len(grid.shape) != 3:
        return image, grid
    import nibabel as nib

    ornt = nib.orientations.io_orientation(grid.affine.numpy())
    flips = [2 + i for i, f in enumerate(ornt[:, 1]) if f < 0]
    out = image.flip(flips) if flips else image
    order = [int(v) for v in np.argsort(ornt[:, 0])]
    out = out.permute(0, 1, *(2 + i for i in order))
    to_old = torch.as_tensor(nib.orientations.inv_ornt_aff(ornt, grid.shape), dtype=torch.float64)
    return out, Grid(tuple(int(grid.shape[i]) for i in order), grid.affine @ to_old)
