"""Multi-task behaviour cloning (MTBC, paper §5.1 and Appendix E.1.2): JOWA's transformer without the world heads,
its Q heads turned into an 18-way policy head trained by classification on the game's valid actions.

The token layout, embeddings, positions and GPT blocks are JOWA's (``world_action``): 36 observation tokens then 1
action token per step, task embeddings per token type. The policy head reads observation token 35 (where JOWA's Q
head reads) and is JOWA's Q-head MLP (``QEnsemble``: dropout, LayerNorm, Mish) with 18 outputs instead of 18x51
atoms. With an ensemble (``num_q`` > 1, the 120M preset) the policy is the mixture of the members' softmaxes, as
JOWA's Q is the mixture of its members' atom distributions (``losses.mixture_probs``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from jowa_core import checkpoint as ckpt
from jowa_core.config import ConfigError, check_bounds, from_dict
from jowa_core.constants import NUM_FULL_ACTIONS, TOKENS_PER_OBS
from jowa_core.models.world_action import QEnsemble, WorldActionConfig, WorldActionModel, add_backbone, init_weights

KIND = "mtbc"  # checkpoint kind
MASKED = -1e9  # the logit of an action the game cannot play

# The MTBC presets are the JOWA presets' backbones and head sizes (paper: "All hyperparameters are kept the same as
# JOWA"); their nominal names count what JOWA's names count (docs/baselines.md): 34M ~ JOWA-40M, 65M ~ JOWA-70M,
# 120M ~ JOWA-150M, each without world heads, target head and atoms.
_BACKBONES = {"tiny": "tiny", "34m": "40m", "65m": "70m", "120m": "150m"}


@dataclass
class MTBCConfig:
    """Architecture of the MTBC policy (the world-action model's fields without world heads and atoms)."""

    preset: str = "custom"
    num_layers: int = 2
    embed_dim: int = 64
    num_heads: int = 4
    q_mlp_dim: int = 64  # the policy head's hidden width (JOWA's Q-head MLP)
    num_q: int = 1  # policy-head ensemble members
    q_dropout: float = 0.01
    embed_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    obs_vocab: int = 2048
    tokens_per_obs: int = TOKENS_PER_OBS
    max_steps: int = 8
    max_tasks: int = 60
    num_actions: int = NUM_FULL_ACTIONS
    attention: str = "auto"

    PRESETS: ClassVar[dict[str, dict]] = {k: WorldActionConfig.PRESETS[v] for k, v in _BACKBONES.items()}
    BOUNDS: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        k: v for k, v in WorldActionConfig.BOUNDS.items() if k != "num_atoms"}

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim ({self.embed_dim}) must be a multiple of num_heads ({self.num_heads})")

    @property
    def tokens_per_step(self) -> int:
        return self.tokens_per_obs + 1

    @property
    def max_tokens(self) -> int:
        return self.tokens_per_step * self.max_steps


class MTBCModel(nn.Module):
    """GPT over (obs tokens, action) steps with a policy head at each step's last observation token."""

    # the world-action model's token embedding and head positions, unchanged (one place for the token layout)
    embed = WorldActionModel.embed
    positions = WorldActionModel.positions

    def __init__(self, cfg: MTBCConfig):
        super().__init__()
        self.cfg = cfg
        E = cfg.embed_dim
        add_backbone(self, cfg)
        self.apply(init_weights)  # before the head: it keeps PyTorch's default init, as JOWA's Q head
        self.head_policy = QEnsemble(cfg.num_q, E, cfg.q_mlp_dim, cfg.num_actions, cfg.q_dropout)
        self._positions: dict[tuple, dict[str, Tensor]] = {}

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, tokens: Tensor, tasks: Tensor) -> Tensor:
        """(B, T) tokens from position 0 of tasks (B,) -> policy logits (num_q, B, n, A), one per observation
        whose last token is in ``tokens`` (n = the number of steps with a complete observation)."""
        x = self.transformer(self.embed(tokens, tasks, 0))  # (B, T, E)
        xq = x[:, self.positions(0, tokens.shape[1], tokens.device)["q"]]  # (B, n, E)
        B, n, E = xq.shape
        return self.head_policy(xq.reshape(B * n, E)).view(self.cfg.num_q, B, n, self.cfg.num_actions)


def policy_log_probs(logits: Tensor, action_mask: Tensor) -> Tensor:
    """Log-probabilities (B, n, A) of the policy over the game's valid actions: the mixture of the members'
    softmaxes over valid actions (invalid actions get probability 0: their logits are set to ``MASKED``, finite so
    that no gradient is NaN).

    logits (H, B, n, A); action_mask (B, A) bool.
    """
    masked = logits.float().masked_fill(~action_mask[None, :, None], MASKED)
    return torch.logsumexp(masked.log_softmax(-1), dim=0) - math.log(logits.shape[0])  # log mean_h softmax_h


def bc_loss(logits: Tensor, action: Tensor, valid: Tensor, action_mask: Tensor) -> Tensor:
    """Mean over valid steps of -log pi(action | context), pi over the game's valid actions; 0 if none valid.

    logits (H, B, L, A); action (B, L) int; valid (B, L) bool; action_mask (B, A) bool.
    """
    logp = policy_log_probs(logits, action_mask)  # (B, L, A)
    act = torch.where(valid, action.long(), action_mask.long().argmax(-1, keepdim=True))  # padding: any valid action
    nll = -logp.gather(-1, act[..., None])[..., 0]  # (B, L)
    return nll[valid].sum() / valid.sum().clamp(min=1)


def load_mtbc(path: str, device: torch.device | str = "cpu") -> tuple[MTBCModel, dict]:
    """An MTBC model (eval mode) and its checkpoint metadata, from a checkpoint or run directory."""
    meta, tensors = ckpt.load_model(path, KIND)
    try:
        cfg = from_dict(MTBCConfig, meta["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise ckpt.CheckpointError(f"{path}: bad MTBC config in {ckpt.META}: {e}") from None
    model = MTBCModel(cfg)
    ckpt.load_state_dict_checked(model, tensors, f"{path}: weights vs the config")
    return model.to(device).eval(), meta
