"""Jacobian-determinant metrics of a displacement field (MONAI has none)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["jacobian_determinant", "nonpositive_jacobian_percent", "sd_log_jacobian"]


def _check_ddf(ddf: torch.Tensor) -> int:
    if not isinstance(ddf, torch.Tensor) or ddf.ndim not in (4, 5) or ddf.shape[1] != ddf.ndim - 2:
        shape = tuple(ddf.shape) if isinstance(ddf, torch.Tensor) else type(ddf).__name__
        raise ValueError(f"expected a DDF shaped (B, D, *S) with D = number of spatial dims (2 or 3), got {shape}.")
    return ddf.ndim - 2


def jacobian_determinant(ddf: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Determinant of the Jacobian of ``x -> x + u(x)`` at every voxel.

    Derivatives are central differences inside and one-sided at the border (``torch.gradient``). ``spacing`` may be
    given for completeness, but for an axis-aligned voxel grid the determinant does not depend on it: with ``u`` in
    voxels, the physical Jacobian is ``S (I + grad u) S^-1`` for ``S = diag(spacing)``, which has the same determinant.

    Args:
        ddf: ``(B, D, *S)`` displacement in voxel units (MONAI ``Warp`` convention).
        spacing: voxel spacing in mm, one per axis (optional, see above).

    Returns:
        ``(B, *S)`` determinants.
    """
    dims = _check_ddf(ddf)
    ddf = ddf.float()
    axes = tuple(range(2, 2 + dims))
    # grads[j][:, i] = d u_i / d x_j
    grads = torch.gradient(ddf, dim=axes)
    jac = torch.stack(grads, dim=2)  # (B, D_i, D_j, *S)
    eye = torch.eye(dims, dtype=jac.dtype, device=jac.device).view(1, dims, dims, *([1] * dims))
    jac = jac + eye
    if spacing is not None:
        s = torch.as_tensor(spacing, dtype=jac.dtype, device=jac.device).view(1, dims, 1, *([1] * dims))
        jac = jac * s / s.transpose(1, 2)
    return torch.linalg.det(jac.movedim(1, -1).movedim(1, -1))


def nonpositive_jacobian_percent(ddf: torch.Tensor | None, det: torch.Tensor | None = None) -> torch.Tensor:
    """Percentage of voxels with ``det J <= 0`` (folding), per batch item: ``(B,)`` in [0, 100] (``det``: the
    determinants ``(B, *S)`` when already computed)."""
    det = jacobian_determinant(ddf) if det is None else det
    return (det <= 0).float().flatten(1).mean(1) * 100.0


def sd_log_jacobian(ddf: torch.Tensor | None, eps: float = 1e-9, det: torch.Tensor | None = None) -> torch.Tensor:
    """Standard deviation of ``log(det J)`` per batch item ``(B,)``, with ``det J`` clipped to ``[eps, 1/eps]``
    so folded voxels count as a very small (not undefined) determinant."""
    det = (jacobian_determinant(ddf) if det is None else det).clamp(eps, 1.0 / eps)
    return torch.log(det).flatten(1).std(dim=1)
