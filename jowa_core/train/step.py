"""The optimiser step every training loop shares."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def optimizer_step(opt: torch.optim.Optimizer, loss: Tensor, params: Iterable[Tensor], max_norm: float) -> Tensor:
    """Zero the gradients, backpropagate ``loss``, clip the global gradient norm of ``params`` to ``max_norm``
    and step; returns the norm before clipping."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    return grad_norm
