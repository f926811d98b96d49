"""LLM-Morph's semi-supervised objective: Dice on warped labels + lambda * L2 gradient, optional image similarity."""

from __future__ import annotations

import torch
from monai.losses import GlobalMutualInformationLoss, LocalNormalizedCrossCorrelationLoss
from monai.networks.blocks import Warp
from monai_moe_reg.losses.gradient import make_regulariser
from monai_moe_reg.losses.label_dice import WarpedLabelDice, to_one_hot_labels
from monai_moe_reg.losses.mind_ssc import MINDSSCLoss
from torch import nn

__all__ = ["to_one_hot_labels", "LLMMorphLoss"]

IMAGE_SIMILARITIES = ("mi", "mind", "lncc")


class LLMMorphLoss(nn.Module):
    """``Dice(S_m o phi, S_f) + lambda_reg * L2grad(phi) [+ lambda_image * sim(I_m o phi, I_f)]``.

    The labels are warped with linear interpolation of their one-hot channels (differentiable) and compared with
    MONAI's :class:`DiceLoss` (background excluded). ``L2grad`` is the papers' gradient loss
    (:class:`~monai_moe_reg.losses.GradientLoss`, forward differences, paper lambda 0.1); ``regulariser`` selects
    another (``"gradient_l1"``, MONAI's ``"diffusion"``, or a module).
    For unsupervised multimodal training set ``image_similarity`` to ``"mi"`` (MONAI
    :class:`GlobalMutualInformationLoss`), ``"mind"`` (:class:`MINDSSCLoss`) or ``"lncc"``, and ``lambda_label=0``
    if no labels are used.

    ``forward(ddf, moving_label=None, fixed_label=None, moving_image=None, fixed_image=None)`` returns a dict with
    ``loss`` and the terms. With the half-resolution strategy the network already returns a full-size DDF, so
    full-size labels are warped here.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        lambda_reg: float = 0.1,
        lambda_label: float = 1.0,
        image_similarity: str | None = None,
        lambda_image: float = 1.0,
        regulariser: str | nn.Module = "gradient",
    ) -> None:
        super().__init__()
        if image_similarity not in (None,) + IMAGE_SIMILARITIES:
            raise ValueError(f"image_similarity must be None or one of {IMAGE_SIMILARITIES}, got {image_similarity!r}.")
        self.num_classes = num_classes
        self.label_dice = WarpedLabelDice(num_classes)
        self.regulariser = make_regulariser(regulariser)
        self.warp = Warp(mode="bilinear", padding_mode="zeros")
        self.image_loss = {
            None: None,
            "mi": GlobalMutualInformationLoss(num_bins=32),
            "mind": MINDSSCLoss(),
            "lncc": LocalNormalizedCrossCorrelationLoss(kernel_size=9),
        }[image_similarity]
        self.lambda_reg, self.lambda_label, self.lambda_image = lambda_reg, lambda_label, lambda_image

    def forward(
        self,
        ddf: torch.Tensor,
        moving_label: torch.Tensor | None = None,
        fixed_label: torch.Tensor | None = None,
        moving_image: torch.Tensor | None = None,
        fixed_image: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        ddf = ddf.float()
        terms = {"reg": self.regulariser(ddf)}
        total = self.lambda_reg * terms["reg"]
        if self.lambda_label > 0:
            terms["dice"] = self.label_dice(ddf, moving_label, fixed_label)
            total = total + self.lambda_label * terms["dice"]
        if self.image_loss is not None:
            if moving_image is None or fixed_image is None:
                raise ValueError("the image similarity term needs moving_image and fixed_image.")
            terms["image"] = self.image_loss(self.warp(moving_image.float(), ddf), fixed_image.float())
            total = total + self.lambda_image * terms["image"]
        terms["loss"] = total
        return terms

    needs_aux = False  # LLM-Morph's objective needs nothing but the DDF

    def batch_loss(self, batch: dict, ddf: torch.Tensor, aux: dict | None = None) -> dict:
        """The engines' interface: images and (optional) labels from the batch dict (``aux`` is unused)."""
        get = lambda k: torch.as_tensor(batch[k]) if k in batch else None  # noqa: E731
        return self(ddf, get("moving_label"), get("fixed_label"), get("moving_image"), get("fixed_image"))
