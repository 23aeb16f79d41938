"""The algorithms ``jowa pretrain --algo`` trains: ``jowa`` (``train/pretrain.py``) and the paper's baselines
``mtbc`` and ``scaled-ql`` (``train/baselines.py``). One table: name -> (config class, algorithm)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jowa_core.config import load_config
from jowa_core.train.baselines import train_baseline
from jowa_core.train.mtbc import MTBC, MTBCPretrainConfig
from jowa_core.train.scaled_ql import ScaledQL, ScaledQLPretrainConfig

ALGOS = ("jowa", "mtbc", "scaled-ql")
BASELINES: dict[str, tuple[type, Any]] = {"mtbc": (MTBCPretrainConfig, MTBC),
                                          "scaled-ql": (ScaledQLPretrainConfig, ScaledQL)}


def check_algo(algo: str) -> str:
    if algo not in ALGOS:
        raise ValueError(f"unknown --algo {algo!r}; choose from {', '.join(ALGOS)}")
    return algo


def load_baseline_config(algo: str, path: str | None, overrides: Sequence[str] = (),
                         extra: dict[str, Any] | None = None) -> Any:
    """The baseline's config: its dataclass defaults, the YAML at ``path``, then ``key=value`` overrides."""
    cls, _ = BASELINES[check_algo(algo)]
    return load_config(cls, path, list(overrides), extra)


def pretrain_baseline(algo: str, cfg: Any, out: str, resume: bool = False, reporter=None) -> dict[str, Any]:
    """Train the baseline ``algo`` with ``cfg`` (``load_baseline_config``) into the run directory ``out``."""
    _, algorithm = BASELINES[check_algo(algo)]
    return train_baseline(algorithm, cfg, out, resume=resume, reporter=reporter)
