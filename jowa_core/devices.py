"""Device selection shared by every command."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch


def pick_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU when there is one, else CPU; otherwise the given device (``cuda`` means
    ``cuda:<local_rank>``). A CUDA device without CUDA is a ValueError."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


PRECISIONS = ("auto", "bf16", "fp32")  # one spelling for every command; configs also accept the older "off"


def use_bf16(device: torch.device, precision: str | bool) -> bool:
    """Whether to run under bf16 autocast: ``auto`` (or True) -> on CUDA only; ``bf16`` -> always; ``fp32``, ``off``
    (or False) -> never."""
    if isinstance(precision, bool):
        precision = "auto" if precision else "fp32"
    if precision not in (*PRECISIONS, "off"):
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast(device: torch.device, precision: str | bool) -> Callable[[], AbstractContextManager]:
    """A factory of the context every forward pass of a trainer runs in (see ``use_bf16``)."""
    if use_bf16(device, precision):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext
