"""SynthMorph-style synthetic registration pairs, generated on the fly from random label maps (no data needed).

After Hoffmann et al., *SynthMorph: learning contrast-invariant registration without acquired images*, IEEE TMI
2022: a random label map (smooth noise images, one per class, argmax) is deformed twice by random smooth
diffeomorphisms into a moving and a fixed label map; each is turned into an image by drawing a Gaussian intensity per
label (a different draw for moving and fixed: any "contrast", hence multimodal pairs), then blurred, multiplied by a
smooth bias field, gamma-transformed, given noise and, at random, a lower resolution along one axis. A network
trained on these pairs with a Dice loss on the warped labels learns anatomy- and contrast-agnostic registration.

Written here because neither MONAI nor PyTorch has such a generator; it is built from MONAI's ``DVF2DDF``
(scaling and squaring), ``Warp`` and ``GaussianFilter``. Every pair is a pure function of ``(seed, index)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import DVF2DDF, Warp
from monai.networks.layers import GaussianFilter
from monai_moe_reg.data.synthetic import smooth_noise
from torch.utils.data import Dataset

__all__ = ["SynthPairs", "random_diffeomorphism", "random_svf", "synth_image", "synth_label_map"]


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _smooth_noise(g: torch.Generator, channels: int, shape: Sequence[int], control: int) -> torch.Tensor:
    return smooth_noise(shape, channels, control, lambda size: torch.randn(*size, generator=g))


def random_svf(
    g: torch.Generator, shape: Sequence[int], max_std: float, control: Sequence[int] = (4, 9)
) -> torch.Tensor:
    """A random smooth stationary velocity field ``(1, D, *shape)`` in voxels: noise on a random control grid
    (``control`` range of points per axis) with a standard deviation drawn in ``[0, max_std]`` voxels."""
    n = int(torch.randint(control[0], control[1] + 1, (), generator=g))
    return _smooth_noise(g, len(shape), shape, n) * _uniform(g, 0.0, max_std)


def random_diffeomorphism(g: torch.Generator, shape: Sequence[int], max_std: float, integrate: DVF2DDF) -> torch.Tensor:
    """A random diffeomorphic DDF ``(1, D, *shape)`` in voxels: a :func:`random_svf` at half resolution integrated
    by scaling and squaring (``integrate`` = MONAI ``DVF2DDF``), then upsampled x2 (size and vectors)."""
    half = [max(4, s // 2) for s in shape]
    ddf = integrate(random_svf(g, half, max_std / 2))
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    scale = torch.tensor([s / h for s, h in zip(shape, half)]).view(1, -1, *([1] * len(shape)))
    return F.interpolate(ddf, size=tuple(shape), mode=mode, align_corners=True) * scale


def synth_label_map(
    g: torch.Generator,
    shape: Sequence[int],
    num_labels: int,
    control: Sequence[int] = (3, 10),
    integrate: DVF2DDF | None = None,
    warp_std: float = 0.0,
) -> torch.Tensor:
    """A random label map ``(1, 1, *shape)`` with values ``0..num_labels-1``: the argmax over ``num_labels`` smooth
    noise images (one random control grid per map), optionally deformed by a :func:`random_diffeomorphism`
    (``warp_std`` voxels) so that shapes are less blob-like."""
    n = int(torch.randint(control[0], control[1] + 1, (), generator=g))
    labels = _smooth_noise(g, num_labels, shape, n).argmax(1, keepdim=True)
    if integrate is not None and warp_std > 0:
        ddf = random_diffeomorphism(g, shape, warp_std, integrate)
        labels = Warp(mode="nearest", padding_mode="border")(labels.float(), ddf).long()
    return labels


def synth_image(
    g: torch.Generator,
    labels: torch.Tensor,
    num_labels: int,
    blur: float = 1.0,
    bias: float = 0.3,
    gamma: float = 0.25,
    noise: float = 0.05,
    low_res: float = 0.5,
    max_factor: float = 3.0,
) -> torch.Tensor:
    """An image ``(1, 1, *S)`` in [0, 1] from ``labels`` ``(1, 1, *S)``: a Gaussian intensity per label (mean in
    [0, 1], std up to 0.1), Gaussian blur (sigma up to ``blur`` voxels), a multiplicative smooth bias field
    (``exp`` of noise with std up to ``bias``), min-max scaling, gamma ``exp(N(0, gamma))``, additive noise (std up to
    ``noise``) and, with probability ``low_res``, a resolution reduced by up to ``max_factor`` along one axis."""
    shape = labels.shape[2:]
    means = torch.rand(num_labels, generator=g)
    stds = torch.rand(num_labels, generator=g) * 0.1
    lab = labels[0, 0]
    img = means[lab] + stds[lab] * torch.randn(lab.shape, generator=g)
    img = img[None, None]
    sigma = _uniform(g, 0.0, blur)
    if sigma > 0.1:
        img = GaussianFilter(len(shape), sigma)(img)
    img = img * torch.exp(_smooth_noise(g, 1, shape, 4) * _uniform(g, 0.0, bias))
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-6)
    img = img.clamp_min(0) ** float(torch.exp(torch.randn((), generator=g) * gamma))
    img = img + torch.randn(img.shape, generator=g) * _uniform(g, 0.0, noise)
    if float(torch.rand((), generator=g)) < low_res:
        axis = int(torch.randint(len(shape), (), generator=g))
        small = list(shape)
        small[axis] = max(2, round(shape[axis] / _uniform(g, 1.0, max_factor)))
        mode = "trilinear" if len(shape) == 3 else "bilinear"
        img = F.interpolate(
            F.interpolate(img, size=small, mode=mode, align_corners=True),
            size=tuple(shape),
            mode=mode,
            align_corners=True,
        )
    return ((img - img.min()) / (img.max() - img.min()).clamp_min(1e-6)).clamp(0, 1)


class SynthPairs(Dataset):
    """``length`` synthetic pairs; item ``i`` is a pure function of ``(seed, i)`` (any order, any worker).

    Args:
        spatial_size: size of every image (an int for a cube).
        num_labels: label classes (values ``0..num_labels-1``; the Dice loss needs ``num_classes = num_labels``).
        length: number of distinct pairs (draw ``epoch_length`` of them per epoch with ``pair_sampler``).
        seed: base seed (use another one for a validation set).
        multimodal: independent intensity draws for moving and fixed (SynthMorph); ``False`` reuses the fixed image's
            draw for the moving one (same contrast: monomodal).
        max_displacement: standard deviation (voxels) of the random velocity fields deforming the label map into
            the moving and the fixed map (up to; drawn per pair).
        shape_warp: deformation (voxels) applied to the label map itself to vary its shapes.
        integration_steps: scaling-and-squaring steps (MONAI ``DVF2DDF``).
        image_kwargs: passed to :func:`synth_image` (``blur``, ``bias``, ``gamma``, ``noise``, ``low_res``,
            ``max_factor``).

    Returns per item:
        ``{"moving_image", "fixed_image"}``: ``(1, *S)`` float32 in [0, 1]; ``{"moving_label", "fixed_label"}``:
        ``(1, *S)`` int64.
    """

    def __init__(
        self,
        spatial_size: Sequence[int] | int = 64,
        num_labels: int = 16,
        length: int = 100_000,
        seed: int = 0,
        multimodal: bool = True,
        max_displacement: float = 3.0,
        shape_warp: float = 2.0,
        integration_steps: int = 5,
        image_kwargs: dict | None = None,
    ) -> None:
        self.spatial_size = (
            (int(spatial_size),) * 3 if isinstance(spatial_size, int) else tuple(int(s) for s in spatial_size)
        )
        if len(self.spatial_size) not in (2, 3) or min(self.spatial_size) < 8:
            raise ValueError(f"spatial_size must be 2 or 3 sizes of at least 8 voxels, got {spatial_size}.")
        if num_labels < 2:
            raise ValueError(f"num_labels must be at least 2, got {num_labels}.")
        if length < 1:
            raise ValueError(f"length must be a positive number of pairs, got {length}.")
        self.num_labels, self.length, self.seed = int(num_labels), int(length), int(seed)
        self.multimodal, self.max_displacement, self.shape_warp = multimodal, float(max_displacement), float(shape_warp)
        self.integrate = DVF2DDF(num_steps=integration_steps, mode="bilinear", padding_mode="border")
        self.warp_label = Warp(mode="nearest", padding_mode="border")
        self.image_kwargs = dict(image_kwargs or {})

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"pair {index} is outside 0..{self.length - 1}.")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
        with torch.no_grad():
            labels = synth_label_map(
                g, self.spatial_size, self.num_labels, integrate=self.integrate, warp_std=self.shape_warp
            ).float()
            maps = [
                self.warp_label(
                    labels, random_diffeomorphism(g, self.spatial_size, self.max_displacement, self.integrate)
                ).long()
                for _ in range(2)
            ]
            state = g.get_state()
            fixed = synth_image(g, maps[1], self.num_labels, **self.image_kwargs)
            if not self.multimodal:
                g.set_state(state)  # the same intensity draw for the moving image
            moving = synth_image(g, maps[0], self.num_labels, **self.image_kwargs)
        return {
            "moving_image": moving[0],
            "fixed_image": fixed[0],
            "moving_label": maps[0][0],
            "fixed_label": maps[1][0],
        }
