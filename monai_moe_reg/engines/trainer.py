"""Ignite trainer for registration networks (a MONAI ``SupervisedTrainer`` with a pair iteration)."""

from __future__ import annotations

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from monai_moe_reg.engines.utils import autocast, has_aux, pair_to_device

__all__ = ["RegistrationTrainer"]


class RegistrationTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose iteration registers pairs: ``ddf = inferer(cat([moving, fixed], 1), network)``.

    ``loss_function`` must provide ``batch_loss(batch, ddf, aux) -> dict`` with a ``"loss"`` entry (both
    :class:`~monai_moe_reg.losses.SHMoARegLoss` and :class:`~monai_moe_reg.losses.LLMMorphLoss` do), so each
    network trains with its paper's objective. When the loss says ``needs_aux``, the network is called with
    ``return_aux=True`` and its auxiliary outputs (SHMoE routing, MoA losses) are passed to the loss explicitly.
    ``amp`` uses bf16 autocast on CPU and fp16 with a gradient scaler on CUDA. All of MONAI's
    iteration events are fired (``MODEL_COMPLETED`` included), so handlers and post-processing run as usual.

    Output per iteration: ``image`` (the network input), ``pred`` (the DDF), ``loss`` and every loss term as detached
    scalar tensors (no host sync in the iteration; :func:`~monai_moe_reg.engines.loss_terms` gives floats to loggers).
    All other arguments are :class:`monai.engines.SupervisedTrainer`'s.
    """

    def __init__(self, *args, **kwargs) -> None:
        amp = kwargs.pop("amp", False)
        kwargs.setdefault("decollate", False)  # outputs stay batched dicts for the registration handlers
        super().__init__(*args, amp=False, **kwargs)
        self.use_amp = bool(amp)
        cuda = torch.device(self.state.device).type == "cuda"
        self.grad_scaler = torch.amp.GradScaler("cuda") if self.use_amp and cuda else None
        # decided once, not per iteration (inspecting the forward signature every step is hot-path work)
        self.pass_aux = getattr(self.loss_function, "needs_aux", False) and has_aux(self.network)
        if not hasattr(self.loss_function, "batch_loss"):
            raise ValueError(
                f"loss_function {type(self.loss_function).__name__} needs a batch_loss(batch, ddf, aux) method "
                "(use monai_moe_reg.losses.SHMoARegLoss or LLMMorphLoss)."
            )

    def _iteration(self, engine, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = pair_to_device(batchdata, engine.state.device, engine.non_blocking)
        moving, fixed = batch["moving_image"], batch["fixed_image"]
        x = torch.cat([moving, fixed], dim=1)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast(engine.state.device, engine.use_amp):
            if engine.pass_aux:
                ddf, aux = engine.inferer(x, engine.network, return_aux=True)
            else:
                ddf, aux = engine.inferer(x, engine.network), None
            engine.state.output = {Keys.IMAGE: x, Keys.PRED: ddf}
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            terms = engine.loss_function.batch_loss(batch, ddf.float(), aux)
        loss = terms["loss"]
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.grad_scaler is not None:
            engine.grad_scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.grad_scaler.step(engine.optimizer)
            engine.grad_scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.state.output[Keys.PRED] = ddf.detach()
        engine.state.output[Keys.LOSS] = loss.detach()
        # detached tensors, not floats: no GPU-to-host sync here; the loggers convert what they log (loss_terms)
        engine.state.output.update({k: torch.as_tensor(v).detach() for k, v in terms.items() if k != "loss"})
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
