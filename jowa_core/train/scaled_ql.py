"""``jowa pretrain --algo scaled-ql``: Scaled-QL (paper Appendix E.1.5, Table 14; seed 003) on the same stores.

One transition per segment. A segment of ``frame_stack + n_step`` steps (the loader reads frames) gives the state
at step c = frame_stack - 1 (frames 0..c, the stack) and the bootstrap state at c + n (frames n..c+n); the
action, rewards (clipped to [-1, 1], Table B.1) and terminals are read at steps c..c+n-1. Segments never cross an
episode, so the first ``frame_stack - 1`` steps of each episode are never a transition's state (docs/baselines.md).

Loss: n-step C51 cross-entropy against the target network (a full copy of the network, hard-updated every
``target_update_every`` steps; the greedy valid action of the target's expected Q, Dopamine's C51) + alpha * CQL on
the expected Q (logsumexp over the game's valid actions). Adam, lr 2e-4, batch 512, clip 1.0 (Table 14).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from jowa_core import dist as jdist
from jowa_core.config import check_bounds, from_dict
from jowa_core.models.losses import cql_loss
from jowa_core.models.scaled_ql import (
    KIND,
    ScaledQLConfig,
    ScaledQLModel,
    greedy_next_probs,
    n_step_returns,
    nstep_c51_loss,
)
from jowa_core.train.baselines import LoopConfig
from jowa_core.train.pretrain import DataConfig


@dataclass
class FrameDataConfig(DataConfig):
    """The loader as Scaled-QL reads it: frames, segments of frame_stack + n_step steps at every step."""

    seq_len: int = 7
    stride: int = 1
    observations: Literal["tokens", "frames"] = "frames"


@dataclass
class ScaledQLTrainConfig(LoopConfig):
    lr: float = 2e-4
    adam_eps: float = 3.125e-4  # Dopamine's C51 Adam epsilon (the seed's code base); Table 14 does not say
    gamma: float = 0.99
    n_step: int = 3
    cql_alpha: float = 0.05
    target_update_every: int = 2000
    reward_clip: float = 1.0  # rewards clipped to [-c, c] (seed 003 Table B.1); 0 = no clipping

    BOUNDS: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        **LoopConfig.BOUNDS, "adam_eps": (0, None), "gamma": (0, 1), "n_step": (1, None), "cql_alpha": (0, None),
        "target_update_every": (1, None), "reward_clip": (0, None)}

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass
class ScaledQLPretrainConfig:
    model: ScaledQLConfig = field(default_factory=lambda: from_dict(ScaledQLConfig, {"preset": "tiny"}))
    data: FrameDataConfig = field(default_factory=FrameDataConfig)
    train: ScaledQLTrainConfig = field(default_factory=ScaledQLTrainConfig)


class ScaledQL:
    """The ``Algorithm`` of Scaled-QL (``train/baselines.py``)."""

    kind = KIND
    metrics = ["loss", "td", "cql", "q_taken", "q_max"]

    def __init__(self, cfg: ScaledQLPretrainConfig, ctx: jdist.DistContext, dataset: Any):
        self.cfg, self.ctx = cfg, ctx
        m, t = cfg.model, cfg.train
        if cfg.data.observations != "frames":
            raise ValueError("--algo scaled-ql reads frames: set data.observations=frames")
        if cfg.data.seq_len != m.frame_stack + t.n_step:
            raise ValueError(f"data.seq_len must be model.frame_stack + train.n_step = {m.frame_stack + t.n_step}, "
                             f"got {cfg.data.seq_len}")
        if m.games and set(dataset.games) - set(m.games):
            raise ValueError(f"model.games {m.games} has no head for {sorted(set(dataset.games) - set(m.games))}")
        self.games = list(m.games) or list(dataset.games)  # one head per game of the stores by default
        self.target: ScaledQLModel | None = None

    def build(self, games: list[str], device: torch.device) -> ScaledQLModel:
        self.cfg.model.games = self.games  # the heads are part of the architecture (saved with the config)
        model = ScaledQLModel(self.cfg.model).to(device)
        self.model = model
        self.target = copy.deepcopy(model).requires_grad_(False).eval()
        return model

    def optimizer(self, model: nn.Module) -> torch.optim.Adam:
        t = self.cfg.train
        return torch.optim.Adam(model.parameters(), lr=t.lr, eps=t.adam_eps)

    def loss(self, net: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        t, S = self.cfg.train, self.cfg.model.frame_stack
        c, n = S - 1, t.n_step
        obs, tasks, mask = batch["obs"], batch["game_id"], batch["action_mask"]  # (B, L, 84, 84), (B,), (B, A)
        reward = batch["reward"].clamp(-t.reward_clip, t.reward_clip) if t.reward_clip else batch["reward"]
        G, discount, has = n_step_returns(reward, batch["terminal"], batch["valid"], c, n, t.gamma)
        logits = net(obs[:, :S], tasks)  # (B, A, Z)
        support = self.model.support
        with torch.no_grad():
            next_probs = greedy_next_probs(self.target(obs[:, n:n + S], tasks), mask, support)  # (B, Z)
        action = batch["action"][:, c]
        td = nstep_c51_loss(logits, action, G, discount, next_probs, has, support)
        valid = batch["valid"][:, c]
        cql = cql_loss(logits.float()[None, :, None], action[:, None], valid[:, None], support, mask)
        loss = td + t.cql_alpha * cql
        with torch.no_grad():
            q = self.model.q_values(logits)  # (B, A)
            q_taken = q.gather(1, action[:, None])[:, 0][valid].mean()
            q_max = q.masked_fill(~mask, -math.inf).amax(-1)[valid].mean()
        return loss, {"loss": loss, "td": td, "cql": cql, "q_taken": q_taken, "q_max": q_max}

    def after_step(self, step: int) -> None:
        if step % self.cfg.train.target_update_every == 0:
            self.target.load_state_dict(self.model.state_dict())

    def extra_state(self) -> dict[str, Tensor]:
        return {f"target.{k}": v for k, v in self.target.state_dict().items()}

    def load_extra_state(self, tensors: dict[str, Tensor]) -> None:
        self.target.load_state_dict({k.removeprefix("target."): v for k, v in tensors.items()})

    def model_meta(self) -> dict[str, Any]:
        return {"gamma": self.cfg.train.gamma}
