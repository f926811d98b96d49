"""Routing-classification (RC) loss of SHMoAReg, with the target labels the paper leaves undefined."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Warp
from monai.networks.layers.utils import get_pool_layer
from torch import nn

__all__ = ["routing_targets", "RoutingClassificationLoss"]


def _image_gradient(image: torch.Tensor) -> torch.Tensor:
    """Central-difference gradient of ``(B, *S)`` along each array axis -> ``(B, D, *S)`` (voxel units)."""
    dims = tuple(range(1, image.ndim))
    return torch.stack(torch.gradient(image, dim=dims), dim=1)


@torch.no_grad()
def routing_targets(
    warped: torch.Tensor,
    fixed: torch.Tensor,
    experts: torch.Tensor,
    window: int = 3,
    tie_tolerance: float = 1e-3,
    gradient_floor: float = 0.1,
    sweeps: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which expert was "correct" per voxel and direction: target labels ``Y`` for the RC loss.

    The paper trains the router with a BCE between its gate tensor ``T`` and labels ``Y`` that say whether each
    expert choice was correct, without defining ``Y``. Our definition: at every voxel and direction ``d``, the correct
    expert is the one whose displacement component, applied **alone along d**, most reduces the local intensity error
    between the (already warped) moving image and the fixed image. With a first-order Taylor expansion of the warped
    moving image ``W``, moving by ``delta`` along axis ``d`` changes the residual ``r = W - F`` to
    ``r + dW/dx_d * delta``, so the local error of expert ``e`` is

        ``err[d, e] = box_window( (r + dW/dx_d * u_e,d)^2 )``

    and ``Y[d] = one_hot(argmin_e err[d, e])``. The directions are chosen jointly, by ``sweeps`` rounds of coordinate
    descent from the smallest motion: each direction's error is taken with the intensity change that the *other*
    directions' current choices explain removed from ``r`` (``r_d = r + sum_{d' != d} dW/dx_d' * u_{e*,d'}``):
    without it, a motion along one axis leaves a residual that the experts of the other axes "explain" too, and
    those get a non-zero expert where nothing moves along them (on the +1 voxel shift of
    ``tests/test_losses.py`` the two other axes got the zero expert 54-60 % of the time, 96-98 % with the joint
    choice). Why this is defensible: it asks the router for exactly the per-direction decision the SHMoE makes, it is
    measured with the training similarity's own quantity (squared
    intensity error, the MSE the paper uses), it is local (a ``window``-voxel box average, like the experts'
    receptive fields), and it costs one image gradient and a few multiplications per expert — no extra warps and no
    backward pass. Voxels where all experts are within ``tie_tolerance`` (relative) of each other — e.g. flat image
    regions, or at initialisation when all experts predict ~0 — carry no information and are masked out rather than
    assigned to expert 0; so are voxels whose local image gradient along ``d`` is below ``gradient_floor`` times
    its mean over the directions (the image cannot say there which expert is right along ``d``).

    Args:
        warped: moving image at this level already warped by the prior flow, ``(B, C, *S)``.
        fixed: fixed image at this level, ``(B, C, *S)``.
        experts: each expert's predicted displacement, ``(B, D, E, *S)`` (voxel units of this level).
        window: side of the local box average (odd).
        tie_tolerance: relative spread of errors below which a voxel/direction is not labelled.
        gradient_floor: relative local gradient energy along ``d`` below which a voxel/direction is not labelled.
        sweeps: coordinate-descent sweeps over the directions.

    Returns:
        ``(Y, valid)``: one-hot targets ``(B, D, E, *S)`` and a boolean mask ``(B, D, *S)``.
    """
    b, d, e = experts.shape[:3]
    spatial = experts.shape[3:]
    w_img, f_img = warped.float().mean(1), fixed.float().mean(1)
    residual = (w_img - f_img)[:, None]  # (B, 1, *S)
    grad = _image_gradient(w_img)  # (B, D, *S)
    u = experts.float()
    pool = get_pool_layer(("avg", {"kernel_size": window, "stride": 1, "padding": window // 2}), len(spatial))

    def local(t: torch.Tensor) -> torch.Tensor:  # box average of (B, D, E', *S) over space
        return pool(t.reshape(b * t.shape[1] * t.shape[2], 1, *spatial)).reshape(t.shape)

    def errors(res: torch.Tensor) -> torch.Tensor:  # (B, D, *S) residual per direction -> (B, D, E, *S)
        return local((res[:, :, None] + grad[:, :, None] * u) ** 2)

    # coordinate descent over the directions, from the smallest motion: each direction's choice is made with the
    # intensity change that the other directions' current choices explain removed from the residual
    chosen = torch.gather(u, 2, u.abs().argmin(dim=2, keepdim=True)).squeeze(2)  # (B, D, *S)
    for _ in range(sweeps):
        for axis in range(d):
            motion = grad * chosen
            others = residual[:, 0] + motion.sum(1) - motion[:, axis]  # (B, *S)
            e_axis = local(((others[:, None] + grad[:, axis, None] * u[:, axis]) ** 2)[:, None])[:, 0]
            chosen[:, axis] = torch.gather(u[:, axis], 1, e_axis.argmin(dim=1, keepdim=True)).squeeze(1)
    motion = grad * chosen
    err = errors(residual + motion.sum(1, keepdim=True) - motion)
    best = err.argmin(dim=2)
    spread = err.amax(dim=2) - err.amin(dim=2)
    valid = spread > tie_tolerance * (err.mean(dim=2) + 1e-12)
    g2 = local((grad * grad)[:, :, None])[:, :, 0]  # (B, D, *S) local image-gradient energy along each axis
    valid &= g2 > gradient_floor * g2.mean(dim=1, keepdim=True)  # too weak along d to tell the experts apart
    targets = F.one_hot(best, e).movedim(-1, 2).to(experts.dtype)
    return targets, valid


class RoutingClassificationLoss(nn.Module):
    """BCE between SHMoE gate probabilities ``T`` and the targets ``Y`` of :func:`routing_targets` (paper Eq. 1).

    ``forward(records, moving, fixed)`` takes the SHMoE records of a forward (``aux["moe"]`` of
    ``net(x, return_aux=True)``) and the network's moving and fixed images at input resolution. For each SHMoE
    level the images are zero-padded as the network padded them, average-pooled to the level, the moving one warped
    by the level's prior flow, and the BCE averaged over experts and valid voxels. Targets carry no gradient; only
    the routers learn from this loss. The paper weights it ``lambda_rc = 0.001``.

    Args:
        window: local window of :func:`routing_targets`.
        tie_tolerance: see :func:`routing_targets`.
    """

    def __init__(self, window: int = 3, tie_tolerance: float = 1e-3) -> None:
        super().__init__()
        self.window = window
        self.tie_tolerance = tie_tolerance
        self.warp = Warp(mode="bilinear", padding_mode="border")

    def level_images(self, image: torch.Tensor, level: int, size: Sequence[int]) -> torch.Tensor:
        """``image`` zero-padded to ``size * 2**level`` and average-pooled by ``2**level`` -> ``(B, C, *size)``."""
        full = [s * 2**level for s in size]
        pad: list[int] = []
        for s, t in reversed(list(zip(image.shape[2:], full))):
            pad += [0, t - s]
        image = F.pad(image, pad)
        if level == 0:
            return image
        k = 2**level
        return get_pool_layer(("avg", {"kernel_size": k, "stride": k}), len(size))(image)

    def forward(self, records: Sequence[dict], moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        if not records:
            return moving.new_zeros(())
        losses = []
        for rec in records:
            gates, experts = rec["gates"], rec["experts"]
            size = gates.shape[3:]
            mov = self.level_images(moving, rec["level"], size)
            fix = self.level_images(fixed, rec["level"], size)
            if rec["prior_ddf"] is not None:
                mov = self.warp(mov, rec["prior_ddf"])
            targets, valid = routing_targets(mov, fix, experts.detach(), self.window, self.tie_tolerance)
            with torch.autocast(device_type=gates.device.type, enabled=False):
                bce = F.binary_cross_entropy(gates.float().clamp(1e-6, 1 - 1e-6), targets.float(), reduction="none")
            bce = bce.mean(dim=2)
            mask = valid.to(bce.dtype)
            losses.append((bce * mask).sum() / mask.sum().clamp_min(1.0))
        return torch.stack(losses).mean()
