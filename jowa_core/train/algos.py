"""The algorithms ``jowa pretrain --algo`` trains: ``jowa`` (``train/pretrain.py``) and the paper's baselines
``mtbc`` and ``scaled-ql`` (``train/baselines.py``). One table: name -> (config class, algorithm)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from jowa_core import checkpoint as ckpt
from jowa_core import games as _games
from jowa_core.config import apply_overrides, check_bounds, from_dict, load_config, to_dict
from jowa_core.train.baselines import Evaluator, train_baseline
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


# --------------------------------------------------------------------------------------------------------
# Fine-tuning a pretrained baseline on one game (paper Appendix E.2)

# The paper's protocol for every method: batch 32, lr 5e-5, 10k gradient steps on 5k transitions of the game, the
# best snapshot of the periodic evaluations reported.
FINETUNE_TRAIN: dict[str, Any] = {"batch_size": 32, "lr": 5e-5, "steps": 10_000, "save_every": 1000, "log_every": 100}


@dataclass
class EvalProtocol:
    """The periodic evaluation of baseline fine-tuning (``eval.*`` overrides): greedy, JOWA's protocol."""

    every: int = 1000  # steps between evaluations (and at the end); best/ keeps the best snapshot
    episodes: int = 4
    max_frames: int = 27_000  # emulator frames per evaluation episode (the paper's final protocol: 108k)
    seed: int = 0

    BOUNDS: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "every": (1, None), "episodes": (1, None), "max_frames": (1, None), "seed": (0, None)}

    def __post_init__(self) -> None:
        check_bounds(self)


def finetune_config(algo: str, pretrained: str | Path, game: str, data: str | Path,
                    overrides: Sequence[str] = ()) -> tuple[Any, EvalProtocol]:
    """The fine-tuning config of a pretrained baseline: its architecture (Scaled-QL: one head, for ``game``), the
    game's store, ``FINETUNE_TRAIN`` and the ``key=value`` overrides (``eval.*`` ones set the ``EvalProtocol``)."""
    cls, _ = BASELINES[check_algo(algo)]
    meta = ckpt.read_meta(ckpt.resolve(pretrained, _kind(algo)))
    name = _games.get(game).name
    model = dict(meta["config"], **({"games": [name]} if algo == "scaled-ql" else {}))
    base = to_dict(cls())
    raw = {"model": model, "data": {**base["data"], "path": str(data), "games": [name]},
           "train": {**base["train"], **FINETUNE_TRAIN}}
    own = [o for o in overrides if not o.startswith("eval.")]
    cfg = from_dict(cls, apply_overrides(raw, own))
    protocol = load_config(EvalProtocol, None, [o.removeprefix("eval.") for o in overrides if o.startswith("eval.")])
    return cfg, protocol


def _kind(algo: str) -> str:
    return BASELINES[algo][1].kind


def pretrained_init(algo: str, pretrained: str | Path) -> Callable[[nn.Module, list[str]], None]:
    """Loads the pretrained weights into the fine-tuning model. Scaled-QL: the shared ResNet and MLP, and the
    game's head when it had one in pretraining (a held-out game's head starts fresh; docs/baselines.md)."""
    path = ckpt.resolve(pretrained, _kind(algo))
    meta, tensors = ckpt.load_model(path, _kind(algo))

    def init(model: nn.Module, games: list[str]) -> None:
        state = model.state_dict()
        if algo == "mtbc":
            ckpt.load_state_dict_checked(model, tensors, path)
            return
        shared = {k: v for k, v in tensors.items() if not k.startswith("head_")}
        problems = ckpt.state_dict_problems({k: tuple(v.shape) for k, v in state.items()
                                             if not k.startswith("head_")}, shared)
        if problems:
            raise ckpt.CheckpointError(f"{path}: does not fit the model; " + "; ".join(problems))
        old = list(meta["config"].get("games") or [])
        for i, g in enumerate(model.cfg.games):
            if g in old:
                shared[f"head_w.{i}"], shared[f"head_b.{i}"] = tensors["head_w"][old.index(g)], tensors["head_b"][
                    old.index(g)]
        with torch.no_grad():
            for k, v in shared.items():
                if k.startswith("head_"):
                    name, i = k.split(".")
                    state[name][int(i)].copy_(v)
                else:
                    state[k].copy_(v)

    return init


def finetune_baseline(algo: str, cfg: Any, pretrained: str | Path, out: str, resume: bool = False, reporter=None,
                      evaluator: Evaluator | None = None, eval_every: int = 0) -> dict[str, Any]:
    """Fine-tune the pretrained baseline ``pretrained`` with ``cfg`` (``finetune_config``) into ``out``; the best
    evaluated snapshot goes to ``out/best``."""
    _, algorithm = BASELINES[check_algo(algo)]
    return train_baseline(algorithm, cfg, out, resume=resume, reporter=reporter,
                          init=pretrained_init(algo, pretrained), evaluator=evaluator, eval_every=eval_every)
