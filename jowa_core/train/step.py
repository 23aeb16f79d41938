"""The optimiser step every training loop shares."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


class NonFiniteError(ValueError):
    """The loss or the gradients are NaN or infinite: training stops before the parameters are touched."""


def optimizer_step(opt: torch.optim.Optimizer, loss: Tensor, params: Iterable[Tensor], max_norm: float) -> Tensor:
    """Zero the gradients, backpropagate ``loss``, clip the global gradient norm of ``params`` to ``max_norm``
    and step; returns the norm before clipping. A non-finite loss or gradient norm raises NonFiniteError before
    the step, so the model and the checkpoints already written stay as they were (the gradient norm is the same
    on every DDP rank, so all ranks stop together)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    loss_value, norm_value = float(loss.detach()), float(grad_norm)  # one sync per step
    if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
        opt.zero_grad(set_to_none=True)
        raise NonFiniteError(
            f"non-finite training loss ({loss_value}) or gradient norm ({norm_value}): training stopped before this "
            "step; the last checkpoint written is intact (look for NaN/inf in the data, e.g. rewards, or lower the "
            "learning rate, then --resume)")
    opt.step()
    return grad_norm
