"""``jowa pretrain --algo mtbc``: multi-task behaviour cloning (paper Appendix E.1.2) on JOWA's segments.

Each valid step of a segment is one classification example: the policy at the step's last observation token
(its context: the segment's earlier steps and this observation) predicts the recorded action among the game's
valid actions. "All hyperparameters are kept the same as JOWA": AdamW, weight decay 0.01 on Linear weights and the
policy head, gradient clip 1.0, batch 512, segments of 8 steps; one stage at JOWA's stage-1 rate 1e-4 (MTBC has no
world model to pretrain first, so there is no second stage; docs/baselines.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from jowa_core import dist as jdist
from jowa_core.config import from_dict
from jowa_core.models.mtbc import KIND, MTBCConfig, MTBCModel, bc_loss, policy_log_probs
from jowa_core.models.world_action import segment_tokens
from jowa_core.train.baselines import LoopConfig
from jowa_core.train.pretrain import DataConfig, store_vocab


@dataclass
class MTBCTrainConfig(LoopConfig):
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class MTBCPretrainConfig:
    model: MTBCConfig = field(default_factory=lambda: from_dict(MTBCConfig, {"preset": "tiny"}))
    data: DataConfig = field(default_factory=DataConfig)
    train: MTBCTrainConfig = field(default_factory=MTBCTrainConfig)


class MTBC:
    """The ``Algorithm`` of multi-task BC (``train/baselines.py``)."""

    kind = KIND
    metrics = ["loss", "accuracy"]

    def __init__(self, cfg: MTBCPretrainConfig, ctx: jdist.DistContext, dataset: Any):
        self.cfg, self.ctx = cfg, ctx
        if cfg.data.observations != "tokens":
            raise ValueError("--algo mtbc reads observation tokens: set data.observations=tokens (run jowa tokenize "
                             "on the stores first)")
        vocab = store_vocab(dataset.paths)
        if vocab is not None and vocab != cfg.model.obs_vocab:
            raise ValueError(f"the observation tokens come from a tokenizer with vocab {vocab}, but model.obs_vocab "
                             f"is {cfg.model.obs_vocab}; set model.obs_vocab={vocab}")
        if cfg.data.seq_len > cfg.model.max_steps:
            raise ValueError(f"data.seq_len {cfg.data.seq_len} > model.max_steps {cfg.model.max_steps}")
        ids = dataset.task_id
        if ids.size and int(ids.max()) >= cfg.model.max_tasks:
            raise ValueError(f"the stores' task ids {sorted(set(ids.tolist()))} do not fit model.max_tasks="
                             f"{cfg.model.max_tasks}")
        self.tokens_tokenizer = dataset.tokens_tokenizer

    def build(self, games: list[str], device: torch.device) -> MTBCModel:
        return MTBCModel(self.cfg.model).to(device)

    def optimizer(self, model: nn.Module) -> torch.optim.AdamW:
        """AdamW with JOWA's groups: Linear weights and the policy head decay; biases, LayerNorms and embeddings
        do not."""
        t = self.cfg.train
        linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
        decay = [p for n, p in model.named_parameters() if id(p) in linear or n.startswith("head_policy.")]
        ids = {id(p) for p in decay}
        no_decay = [p for p in model.parameters() if id(p) not in ids]
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas))

    def loss(self, net: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        tokens = segment_tokens(batch["obs_tokens"], batch["action"])  # (B, L*37)
        logits = net(tokens, batch["game_id"])  # (H, B, L, A)
        valid, mask = batch["valid"], batch["action_mask"]
        loss = bc_loss(logits, batch["action"], valid, mask)
        with torch.no_grad():
            pred = policy_log_probs(logits, mask).argmax(-1)  # (B, L)
            accuracy = (pred == batch["action"])[valid].float().mean()
        return loss, {"loss": loss, "accuracy": accuracy}

    def after_step(self, step: int) -> None:
        pass

    def extra_state(self) -> dict[str, Tensor]:
        return {}

    def load_extra_state(self, tensors: dict[str, Tensor]) -> None:
        pass

    def model_meta(self) -> dict[str, Any]:
        return {"tokens_tokenizer_sha256": self.tokens_tokenizer}
