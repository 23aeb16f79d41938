"""The JOWA world-action model: one GPT over interleaved observation and action tokens, with world heads
(next observation token, reward sign, termination) and a distributional Q head (C51, ensembled).

Token layout per step: 36 observation tokens (a 6x6 VQ-VAE grid) then 1 action token (full 18-action
index); 8 steps = 296 tokens. Positions restart at 0 for every context. Which head reads which output:

- ``obs``     every position except observation token 35: obs token k predicts token k+1 of the same
              frame; the action token predicts token 0 of the next frame.
- ``reward``, ``end``  the action token (the step's reward sign and termination).
- ``q``       observation token 35, the last of the step's frame: Q(o_t, .) for all 18 actions.

The target Q head is a frozen copy of the Q head fed by the same (detached) backbone output.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jowa_core import checkpoint as ckpt
from jowa_core.config import ConfigError, check_bounds, from_dict, to_dict
from jowa_core.constants import NUM_FULL_ACTIONS, TOKENS_PER_OBS
from jowa_core.models.losses import expected_q
from jowa_core.models.transformer import KVCache, Transformer


@dataclass
class WorldActionConfig:
    """Architecture of the world-action model (paper Tables 10-11; reference §2)."""

    preset: str = "custom"
    num_layers: int = 2
    embed_dim: int = 64
    num_heads: int = 4
    q_mlp_dim: int = 64
    num_q: int = 1
    q_dropout: float = 0.01
    embed_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    obs_vocab: int = 2048
    tokens_per_obs: int = TOKENS_PER_OBS
    max_steps: int = 8
    max_tasks: int = 60
    num_actions: int = NUM_FULL_ACTIONS
    num_atoms: int = 51
    v_min: float = -10.0
    v_max: float = 30.0
    attention: str = "auto"  # auto (flash-attn when usable, else SDPA) | sdpa | flash | manual

    PRESETS: ClassVar[dict[str, dict]] = {
        "tiny": dict(num_layers=2, embed_dim=64, num_heads=4, q_mlp_dim=64, num_q=1),
        "40m": dict(num_layers=4, embed_dim=512, num_heads=8, q_mlp_dim=768, num_q=1),
        "70m": dict(num_layers=6, embed_dim=768, num_heads=12, q_mlp_dim=1024, num_q=1),
        "150m": dict(num_layers=12, embed_dim=768, num_heads=12, q_mlp_dim=1792, num_q=3),
    }

    BOUNDS: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "num_layers": (1, None), "embed_dim": (1, None), "num_heads": (1, None), "q_mlp_dim": (1, None),
        "num_q": (1, None), "q_dropout": (0, 1), "embed_pdrop": (0, 1), "resid_pdrop": (0, 1), "attn_pdrop": (0, 1),
        "obs_vocab": (1, None), "tokens_per_obs": (1, None), "max_steps": (1, None), "max_tasks": (1, None),
        "num_actions": (1, None), "num_atoms": (2, None),
    }

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.embed_dim % self.num_heads or self.v_min >= self.v_max:
            raise ConfigError(f"embed_dim ({self.embed_dim}) must be a multiple of num_heads ({self.num_heads}) and "
                              f"v_min ({self.v_min}) below v_max ({self.v_max})")

    @property
    def tokens_per_step(self) -> int:
        return self.tokens_per_obs + 1

    @property
    def max_tokens(self) -> int:
        return self.tokens_per_step * self.max_steps


@dataclass
class WorldActionOutput:
    """Outputs of one forward over tokens at absolute positions [start, start+T).

    ``obs_logits`` (B, n_obs, V), ``reward_logits`` (B, n_act, 3), ``end_logits`` (B, n_act, 2),
    ``q_logits`` and ``q_target_logits`` (num_q, B, n_q, A, Z), in position order; ``hidden`` (B, T, E).
    Heads not requested are None.
    """

    hidden: Tensor
    obs_logits: Tensor | None = None
    reward_logits: Tensor | None = None
    end_logits: Tensor | None = None
    q_logits: Tensor | None = None
    q_target_logits: Tensor | None = None
    positions: dict[str, Tensor] = field(default_factory=dict)


class QEnsemble(nn.Module):
    """``num_q`` TD-MPC2-style MLPs evaluated as one batched computation.

    Each member: Linear(E, m) -> Dropout -> LayerNorm -> Mish -> Linear(m, m) -> LayerNorm -> Mish ->
    Linear(m, A*Z). Parameters are stacked along a leading ``num_q`` dimension. Init is PyTorch's default
    Linear/LayerNorm init (the official ``init_transformer_weights`` does not reach these parameters).
    """

    def __init__(self, num_q: int, embed_dim: int, mlp_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.num_q, self.out_dim, self.dropout = num_q, out_dim, dropout
        # True reproduces the official code, whose Q-head dropout never switches off (evaluation, beam search and
        # TD targets included; reference §2.5). Not saved with the weights; see ``official_q_dropout``.
        self.always_dropout = False

        def linear(n_out: int, n_in: int) -> tuple[nn.Parameter, nn.Parameter]:
            bound = 1.0 / math.sqrt(n_in)
            w = torch.empty(num_q, n_out, n_in).uniform_(-bound, bound)
            b = torch.empty(num_q, n_out).uniform_(-bound, bound)
            return nn.Parameter(w), nn.Parameter(b)

        self.w1, self.b1 = linear(mlp_dim, embed_dim)
        self.ln1_w, self.ln1_b = nn.Parameter(torch.ones(num_q, mlp_dim)), nn.Parameter(torch.zeros(num_q, mlp_dim))
        self.w2, self.b2 = linear(mlp_dim, mlp_dim)
        self.ln2_w, self.ln2_b = nn.Parameter(torch.ones(num_q, mlp_dim)), nn.Parameter(torch.zeros(num_q, mlp_dim))
        self.w3, self.b3 = linear(out_dim, mlp_dim)

    @staticmethod
    def _norm_mish(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
        h = F.layer_norm(h, h.shape[-1:]) * w[:, None] + b[:, None]
        return F.mish(h)

    def forward(self, x: Tensor) -> Tensor:
        """(N, E) -> (num_q, N, out_dim)."""
        h = torch.einsum("ne,qme->qnm", x, self.w1) + self.b1[:, None]
        h = F.dropout(h, self.dropout, self.training or self.always_dropout)  # independent masks per member
        h = self._norm_mish(h, self.ln1_w, self.ln1_b)
        h = torch.einsum("qnm,qkm->qnk", h, self.w2) + self.b2[:, None]
        h = self._norm_mish(h, self.ln2_w, self.ln2_b)
        return torch.einsum("qnm,qkm->qnk", h, self.w3) + self.b3[:, None]


def _mlp_head(embed_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, out_dim))


def add_backbone(model: nn.Module, cfg: Any) -> None:
    """Set JOWA's token layout modules on ``model``: position, observation-token, action and per-token-type task
    embeddings, embedding dropout and the GPT blocks (``cfg``: a WorldActionConfig or a config with the same
    fields). Shared by the world-action model and the MTBC baseline, in this order (the order of initialisation)."""
    E = cfg.embed_dim
    model.pos_emb = nn.Embedding(cfg.max_tokens, E)
    model.obs_emb = nn.Embedding(cfg.obs_vocab, E)
    model.act_emb = nn.Embedding(cfg.num_actions, E)
    model.obs_task_emb = nn.Embedding(cfg.max_tasks, E)
    model.act_task_emb = nn.Embedding(cfg.max_tasks, E)
    model.drop = nn.Dropout(cfg.embed_pdrop)
    model.transformer = Transformer(cfg.num_layers, E, cfg.num_heads, cfg.attn_pdrop, cfg.resid_pdrop, cfg.attention)


def init_weights(m: nn.Module) -> None:
    """GPT initialisation (normal(0, 0.02) Linear and Embedding weights, zero biases, unit LayerNorms)."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class WorldActionModel(nn.Module):
    """GPT over (obs tokens, action) steps with world heads and an ensembled C51 Q head."""

    def __init__(self, cfg: WorldActionConfig):
        super().__init__()
        self.cfg = cfg
        E = cfg.embed_dim
        add_backbone(self, cfg)
        self.head_obs = _mlp_head(E, cfg.obs_vocab)
        self.head_reward = _mlp_head(E, 3)
        self.head_end = _mlp_head(E, 2)
        self.apply(init_weights)  # before the Q heads: they keep PyTorch's default init (as official)
        self.head_q = QEnsemble(cfg.num_q, E, cfg.q_mlp_dim, cfg.num_actions * cfg.num_atoms, cfg.q_dropout)
        self.head_q_target = copy.deepcopy(self.head_q).requires_grad_(False).eval()
        self.register_buffer("support", torch.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms), persistent=False)
        self._positions: dict[tuple, dict[str, Tensor]] = {}

    def train(self, mode: bool = True) -> WorldActionModel:
        super().train(mode)
        self.head_q_target.eval()
        return self

    @torch.no_grad()
    def update_target(self) -> None:
        """Hard copy of the Q head into the target head."""
        for t, s in zip(self.head_q_target.parameters(), self.head_q.parameters(), strict=True):
            t.copy_(s)

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def new_cache(self, batch: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        cfg = self.cfg
        device = device or self.pos_emb.weight.device
        dtype = dtype or self.pos_emb.weight.dtype
        return KVCache.empty(cfg.num_layers, batch, cfg.num_heads, cfg.max_tokens, cfg.embed_dim // cfg.num_heads,
                             device, dtype)

    def positions(self, start: int, num_tokens: int, device: torch.device) -> dict[str, Tensor]:
        """Indices (into the T new tokens) read by each head, for tokens at [start, start+T). Cached per
        (start, T, device), so shapes are static for torch.compile and no mask is evaluated per call."""
        key = (start, num_tokens, str(device))
        cached = self._positions.get(key)
        if cached is None:
            k = [(start + i) % self.cfg.tokens_per_step for i in range(num_tokens)]
            last_obs = self.cfg.tokens_per_obs - 1

            def sel(pred) -> Tensor:
                return torch.tensor([i for i, ki in enumerate(k) if pred(ki)], dtype=torch.long, device=device)

            cached = {"obs": sel(lambda ki: ki != last_obs), "act": sel(lambda ki: ki == last_obs + 1),
                      "q": sel(lambda ki: ki == last_obs)}
            self._positions[key] = cached
        return cached

    def embed(self, tokens: Tensor, tasks: Tensor, start: int = 0) -> Tensor:
        """(B, T) tokens at absolute positions [start, start+T) of task ids (B,) -> (B, T, E)."""
        B, T = tokens.shape
        if start + T > self.cfg.max_tokens:
            raise ValueError(f"positions {start}..{start + T} exceed the context of {self.cfg.max_tokens} tokens")
        pos = torch.arange(start, start + T, device=tokens.device)
        is_act = (pos % self.cfg.tokens_per_step == self.cfg.tokens_per_obs)[None, :, None]  # (1, T, 1)
        # each table looks up its own positions only (the others read id 0), so an id outside its table is an
        # error (IndexError on CPU, a device assert on CUDA), never clamped into a wrong token; no host sync
        act = is_act[..., 0]  # (1, T)
        tok = torch.where(is_act, self.act_emb(tokens.masked_fill(~act, 0)), self.obs_emb(tokens.masked_fill(act, 0)))
        task = torch.where(is_act, self.act_task_emb(tasks)[:, None], self.obs_task_emb(tasks)[:, None])
        return self.drop(tok + task + self.pos_emb(pos)[None])

    def forward(self, tokens: Tensor, tasks: Tensor, cache: KVCache | None = None,
                heads: tuple[str, ...] = ("obs", "reward", "end", "q"), with_target: bool = False,
                detach_q_input: bool = False) -> WorldActionOutput:
        """Run the model on (B, T) tokens of tasks (B,), continuing ``cache`` when given (appends to it).

        ``heads`` picks the outputs to compute; ``with_target`` adds the target Q head (no gradient);
        ``detach_q_input`` stops Q-loss gradients at the backbone (the paper's sg(L_action) ablation).
        """
        start = cache.length if cache is not None else 0
        x = self.transformer(self.embed(tokens, tasks, start), cache)  # (B, T, E)
        pos = self.positions(start, tokens.shape[1], tokens.device)
        out = WorldActionOutput(hidden=x, positions=pos)
        B = tokens.shape[0]
        if "obs" in heads:
            out.obs_logits = self.head_obs(x[:, pos["obs"]])
        if "reward" in heads or "end" in heads:
            xa = x[:, pos["act"]]
            out.reward_logits = self.head_reward(xa) if "reward" in heads else None
            out.end_logits = self.head_end(xa) if "end" in heads else None
        if "q" in heads or with_target:
            xq = x[:, pos["q"]]  # (B, n_q, E)
            n = xq.shape[1]
            shape = (self.cfg.num_q, B, n, self.cfg.num_actions, self.cfg.num_atoms)
            if "q" in heads:
                q_in = xq.detach() if detach_q_input else xq
                out.q_logits = self.head_q(q_in.reshape(B * n, self.cfg.embed_dim)).view(shape)
            if with_target:
                with torch.no_grad():
                    out.q_target_logits = self.head_q_target(xq.detach().reshape(B * n, self.cfg.embed_dim)).view(shape)
        return out

    def q_values(self, q_logits: Tensor) -> Tensor:
        """Expected Q (..., A) from (num_q, ..., A, Z) logits: the mean of per-member softmaxes · support."""
        return expected_q(q_logits.float(), self.support)


def official_q_dropout(model: WorldActionModel, on: bool = True) -> WorldActionModel:
    """Make the Q heads apply their Dropout(``q_dropout``) in eval mode too, as the official code does by accident
    (its vmapped ensemble never sees ``.eval()``): for score parity with the released raw scores. Returns ``model``."""
    model.head_q.always_dropout = on
    model.head_q_target.always_dropout = on
    return model


def segment_tokens(obs_tokens: Tensor, actions: Tensor) -> Tensor:
    """Interleave (B, L, 36) observation tokens and (B, L) actions into (B, L*37) model tokens."""
    return torch.cat([obs_tokens, actions[..., None]], dim=-1).flatten(1)


def build_model(cfg: WorldActionConfig) -> WorldActionModel:
    return WorldActionModel(cfg)


def load_world_action(path: str, device: torch.device | str = "cpu") -> tuple[WorldActionModel, dict]:
    """A model (in eval mode) and its checkpoint metadata, from a checkpoint or run directory."""
    meta, tensors = ckpt.load_model(path, "world_action")
    if not isinstance(meta.get("config"), dict):
        raise ckpt.CheckpointError(f"{path}: {ckpt.META} has no model config")
    try:
        cfg = from_dict(WorldActionConfig, meta["config"])
    except ConfigError as e:
        raise ckpt.CheckpointError(f"{path}: bad model config in {ckpt.META}: {e}") from None
    with torch.device("meta"):  # the config's shapes, checked against the weights before allocating anything
        shapes = {k: tuple(v.shape) for k, v in WorldActionModel(cfg).state_dict().items()}
    problems = ckpt.state_dict_problems(shapes, tensors)
    if problems:
        raise ckpt.CheckpointError(f"{path}: weights vs the config: " + "; ".join(problems))
    model = WorldActionModel(cfg)
    ckpt.load_state_dict_checked(model, tensors, f"{path}: weights vs the config")
    return model.to(device).eval(), meta


def save_world_action(model: WorldActionModel, path: str, **extra) -> None:
    """A model-only checkpoint directory (weights including the target head, and the config)."""
    ckpt.save_model(path, "world_action", to_dict(model.cfg), model.state_dict(), **extra)
