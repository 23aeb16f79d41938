"""Device selection shared by every command."""

from __future__ import annotations

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
