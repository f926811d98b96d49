"""The full SHMoAReg training objective (paper Eq. 1 plus the MoA auxiliary losses)."""

from __future__ import annotations

import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss
from monai.networks.blocks import Warp
from monai_moe_reg.losses.gradient import make_regulariser
from monai_moe_reg.losses.label_dice import WarpedLabelDice
from monai_moe_reg.losses.routing_classification import RoutingClassificationLoss
from torch import nn

__all__ = ["SHMoARegLoss", "make_similarity"]

SIMILARITIES = ("mse", "lncc")


def make_similarity(name: str | nn.Module, spatial_dims: int = 3, lncc_kernel_size: int = 9) -> nn.Module:
    """``"mse"`` (paper default), ``"lncc"`` (MONAI's local NCC) or any loss module ``(warped, fixed) -> scalar``."""
    if isinstance(name, nn.Module):
        return name
    if name == "mse":
        return nn.MSELoss()
    if name == "lncc":
        return LocalNormalizedCrossCorrelationLoss(spatial_dims=spatial_dims, kernel_size=lncc_kernel_size)
    raise ValueError(f"similarity must be one of {SIMILARITIES} or an nn.Module, got {name!r}.")


class SHMoARegLoss(nn.Module):
    """``lambda_sim L_sim(I_w, I_f) + lambda_reg L_reg(phi) + lambda_rc L_rc(T, Y) + lambda_balance L_bal + lambda_z L_z
    [+ lambda_label Dice(S_w, S_f)]``.

    ``L_reg`` is the papers' gradient loss (:class:`~monai_moe_reg.losses.GradientLoss`: forward differences,
    squared, averaged over voxels and axes, VoxelMorph's ``Grad('l2')``; ``regulariser="diffusion"`` selects MONAI's
    ``DiffusionLoss``, about 3x larger for the same lambda and blind to checkerboards), ``L_rc``
    the :class:`RoutingClassificationLoss`, and ``L_bal``/``L_z`` the MoA load-balance and router z-losses; the last
    three come from the network's auxiliary outputs (``ddf, aux = net(x, return_aux=True)``). Paper weights:
    ``lambda_reg`` 0.01 (brain MR) / 0.1 (abdominal CT),
    ``lambda_rc`` 0.001. The paper gives no MoA weights; the MoA reference uses 0.01 and 0.001 next to a language
    model's cross-entropy (about 2-5), but registration's MSE on [0, 1] images is about 0.001-0.01, so those
    weights let the auxiliary terms outweigh the image term about fivefold and the encoder mostly learned to shrink
    its router logits (measured on real brains, see bench/accuracy.py). The defaults are therefore scaled down by
    100: 1e-4 and 1e-5.

    Args:
        spatial_dims: 2 or 3.
        similarity: ``"mse"``, ``"lncc"`` or a loss module.
        lambda_reg: weight of the gradient regulariser.
        lambda_rc: weight of the routing-classification loss.
        lambda_balance: weight of the MoA load-balance loss.
        lambda_z: weight of the MoA router z-loss.
        lambda_sim: weight of the image similarity (the paper: 1; 0 for SynthMorph-style training on labels only).
        lambda_label: weight of the Dice between warped moving and fixed labels (:class:`WarpedLabelDice`; not in
            the paper: SynthMorph-style training, ``configs/train_synth.json``).
        num_classes: label values ``0..num_classes-1`` of integer label maps for ``lambda_label``.
        regulariser: ``"gradient"`` (default), ``"gradient_l1"``, ``"diffusion"`` or a module ``ddf -> scalar``
            (:func:`~monai_moe_reg.losses.make_regulariser`).
        max_labels: Dice on a random subset of at most this many labels per step (:class:`WarpedLabelDice`), for
            label sets with many structures; ``None``: all.
        lncc_kernel_size: window of ``similarity="lncc"``.

    ``forward(moving, fixed, ddf, aux)`` returns a dict of scalar tensors ``loss`` (the total), ``sim``, ``reg``,
    ``rc``, ``balance``, ``z``; ``aux`` is what :class:`SHMoAReg` returned with ``ddf`` (``None`` for a network
    without auxiliary outputs: those three terms are then 0).
    """

    needs_aux = True  # the engines call the network with return_aux=True and pass aux on

    def __init__(
        self,
        spatial_dims: int = 3,
        similarity: str | nn.Module = "mse",
        lambda_reg: float = 0.01,
        lambda_rc: float = 0.001,
        lambda_balance: float = 1e-4,
        lambda_z: float = 1e-5,
        lambda_sim: float = 1.0,
        lambda_label: float = 0.0,
        num_classes: int | None = None,
        regulariser: str | nn.Module = "gradient",
        max_labels: int | None = None,
        lncc_kernel_size: int = 9,
    ) -> None:
        super().__init__()
        self.similarity = make_similarity(similarity, spatial_dims, lncc_kernel_size)
        self.label_dice = WarpedLabelDice(num_classes, max_labels)
        self.lambda_sim, self.lambda_label = float(lambda_sim), float(lambda_label)
        self.regulariser = make_regulariser(regulariser)
        self.rc = RoutingClassificationLoss()
        self.warp = Warp(mode="bilinear", padding_mode="border")
        self.weights = {"reg": lambda_reg, "rc": lambda_rc, "balance": lambda_balance, "z": lambda_z}

    def forward(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        ddf: torch.Tensor,
        aux: dict | None,
        moving_label: torch.Tensor | None = None,
        fixed_label: torch.Tensor | None = None,
    ) -> dict:
        warped = self.warp(moving, ddf)
        terms = {"sim": self.similarity(warped, fixed), "reg": self.regulariser(ddf)}
        aux = aux or {}
        zero = ddf.new_zeros(())
        terms["rc"] = self.rc(aux.get("moe", []), moving, fixed)
        terms["balance"] = aux.get("moa_balance", zero)
        terms["z"] = aux.get("moa_z", zero)
        terms["loss"] = self.lambda_sim * terms["sim"] + sum(self.weights[k] * terms[k] for k in self.weights)
        if self.lambda_label > 0:
            terms["dice"] = self.label_dice(ddf, moving_label, fixed_label)
            terms["loss"] = terms["loss"] + self.lambda_label * terms["dice"]
        return terms

    def batch_loss(self, batch: dict, ddf: torch.Tensor, aux: dict | None = None) -> dict:
        """The engines' interface: ``batch`` holds ``moving_image``/``fixed_image`` (and the labels for
        ``lambda_label``); ``aux`` the network's auxiliary outputs of the same forward."""
        get = lambda k: torch.as_tensor(batch[k]) if k in batch else None  # noqa: E731
        return self(get("moving_image"), get("fixed_image"), ddf, aux, get("moving_label"), get("fixed_label"))
