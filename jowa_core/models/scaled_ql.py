"""Scaled-QL (Kumar et al. 2023; paper Appendix E.1.5, Table 14): a ResNet Q-network with one C51 head per game,
trained offline with n-step C51 TD and CQL.

Network (seed 003 Appendix B.1; JOWA Appendix E.1.5):
  4 stacked 84x84 frames / 255 -> ResNet (GroupNorm, ``group_size`` channels per group, instead of BatchNorm)
  -> feature map (C, H, W) * learned spatial embedding (C, H, W) -> flatten -> MLP (Linear + ReLU, 3 x 1024)
  -> feature normalisation e / ||e||_2 -> the game's head: Linear(1024, 18 x 51) -> C51 logits.
Heads are routed by task id (``ScaledQLConfig.games``: one head per game, in that order). Heads output all 18
actions; only the game's valid actions are ever read (argmax, CQL logsumexp), as in the rest of the toolkit.

Losses (pure functions, below): ``n_step_returns`` (truncated at a terminal), ``nstep_c51_loss`` (the n-step
target distribution r + gamma^n z projected onto the support, ``losses.c51_project``) and CQL on the expected
Q of the C51 distribution (``losses.cql_loss``; Lee et al. 2022's distributional CQL, as seed 003 eq. 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jowa_core import checkpoint as ckpt
from jowa_core import games as _games
from jowa_core.config import ConfigError, check_bounds, from_dict
from jowa_core.constants import FRAME_SHAPE, NUM_FULL_ACTIONS
from jowa_core.models.losses import LOG_EPS, c51_project, c51_support, expected_q

KIND = "scaled_ql"  # checkpoint kind


@dataclass
class ScaledQLConfig:
    """Architecture of the Scaled-QL Q-network. Presets: ``80m`` is ResNet-101 (the paper's SQL-80M); ``resnet50``
    and ``resnet34`` the seed's smaller ResNets; ``tiny`` a CPU-test size."""

    preset: str = "custom"
    block: Literal["basic", "bottleneck"] = "basic"
    layers: list[int] = field(default_factory=lambda: [1, 1])  # residual blocks per stage
    widths: list[int] = field(default_factory=lambda: [8, 16])  # stage widths (bottleneck output: 4x)
    stem_channels: int = 8
    group_size: int = 4  # channels per GroupNorm group (seed 003 B.1: "group size of 4")
    mlp_dims: list[int] = field(default_factory=lambda: [64, 64, 64])
    mlp_layer_norm: bool = False  # seed 003 B.1's LayerNorm after the first MLP layer (JOWA E.1.5 has none)
    frame_stack: int = 4
    num_actions: int = NUM_FULL_ACTIONS
    num_atoms: int = 51
    v_min: float = -20.0
    v_max: float = 20.0
    games: list[str] = field(default_factory=list)  # one Q head per game, routed by task id; set by pretraining

    PRESETS: ClassVar[dict[str, dict]] = {
        "tiny": dict(block="basic", layers=[1, 1], widths=[8, 16], stem_channels=8, mlp_dims=[64, 64, 64]),
        "resnet34": dict(block="basic", layers=[3, 4, 6, 3], widths=[64, 128, 256, 512], stem_channels=64,
                         mlp_dims=[1024, 1024, 1024]),
        "resnet50": dict(block="bottleneck", layers=[3, 4, 6, 3], widths=[64, 128, 256, 512], stem_channels=64,
                         mlp_dims=[1024, 1024, 1024]),
        "80m": dict(block="bottleneck", layers=[3, 4, 23, 3], widths=[64, 128, 256, 512], stem_channels=64,
                    mlp_dims=[1024, 1024, 1024]),
    }
    BOUNDS: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "stem_channels": (1, None), "group_size": (1, None), "frame_stack": (1, None), "num_actions": (1, None),
        "num_atoms": (2, None),
    }

    def __post_init__(self) -> None:
        check_bounds(self)
        if not self.layers or len(self.layers) != len(self.widths) or min(self.layers + self.widths) < 1:
            raise ConfigError(f"layers {self.layers} and widths {self.widths} must be equally long lists of "
                              f"positive numbers")
        if not self.mlp_dims or min(self.mlp_dims) < 1 or self.v_min >= self.v_max:
            raise ConfigError(f"mlp_dims {self.mlp_dims} must be positive and v_min ({self.v_min}) below v_max "
                              f"({self.v_max})")
        for g in self.games:
            _games.get(g)  # a known game
        if len(set(self.games)) != len(self.games):
            raise ConfigError(f"games has duplicates: {self.games}")


def group_norm(channels: int, group_size: int) -> nn.GroupNorm:
    """GroupNorm with ``group_size`` channels per group (one group when there are fewer channels)."""
    return nn.GroupNorm(max(1, channels // group_size), channels)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, group_size: int):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.norm1 = group_norm(width, group_size)
        self.conv2 = nn.Conv2d(width, c_out, 3, 1, 1, bias=False)
        self.norm2 = group_norm(c_out, group_size)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), group_norm(c_out, group_size))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(h)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int, group_size: int):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.norm1 = group_norm(width, group_size)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.norm2 = group_norm(width, group_size)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.norm3 = group_norm(c_out, group_size)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), group_norm(c_out, group_size))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = F.relu(self.norm2(self.conv2(h)))
        return F.relu(self.norm3(self.conv3(h)) + self.shortcut(x))


def _conv_out(n: int, kernel: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - kernel) // stride + 1


class ResNetEncoder(nn.Module):
    """He et al.'s ResNet (7x7/2 stem, 3x3/2 max-pool, stages at stride 1, 2, 2, ...) with GroupNorm; returns the
    final feature map (B, C, H, W) multiplied by a learned spatial embedding (C, H, W), flattened."""

    def __init__(self, cfg: ScaledQLConfig):
        super().__init__()
        block = BasicBlock if cfg.block == "basic" else Bottleneck
        self.stem = nn.Sequential(nn.Conv2d(cfg.frame_stack, cfg.stem_channels, 7, 2, 3, bias=False),
                                  group_norm(cfg.stem_channels, cfg.group_size), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        size = _conv_out(_conv_out(FRAME_SHAPE[0], 7, 2, 3), 3, 2, 1)
        stages, c = [], cfg.stem_channels
        for i, (n, width) in enumerate(zip(cfg.layers, cfg.widths, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(block(c, width, stride if j == 0 else 1, cfg.group_size))
                c = width * block.expansion
            stages.append(nn.Sequential(*blocks))
            size = _conv_out(size, 3, stride, 1)
        self.stages = nn.Sequential(*stages)
        # ones: at initialisation the embedding is a plain flatten (docs/baselines.md)
        self.spatial = nn.Parameter(torch.ones(c, size, size))
        self.out_dim = c * size * size

    def forward(self, x: Tensor) -> Tensor:
        """(B, S, 84, 84) float in [0, 1] -> (B, C*H*W)."""
        return (self.stages(self.stem(x)) * self.spatial).flatten(1)


def normalize_features(e: Tensor) -> Tensor:
    """Feature normalisation (seed 003 §4, DR3-motivated): e / ||e||_2 along the last dim, gradients pass through."""
    return e / e.norm(dim=-1, keepdim=True).clamp(min=1e-6)


class ScaledQLModel(nn.Module):
    """Shared ResNet + MLP, normalised features, one C51 head per game (``cfg.games``)."""

    def __init__(self, cfg: ScaledQLConfig):
        super().__init__()
        if not cfg.games:
            raise ConfigError("ScaledQLConfig.games is empty: a Scaled-QL model needs one head per game")
        self.cfg = cfg
        self.encoder = ResNetEncoder(cfg)
        mlp: list[nn.Module] = []
        d = self.encoder.out_dim
        for i, width in enumerate(cfg.mlp_dims):
            mlp.append(nn.Linear(d, width))
            if i == 0 and cfg.mlp_layer_norm:
                mlp.append(nn.LayerNorm(width))
            mlp.append(nn.ReLU())
            d = width
        self.mlp = nn.Sequential(*mlp)
        out = cfg.num_actions * cfg.num_atoms
        bound = 1.0 / math.sqrt(d)  # nn.Linear's default init, per head
        self.head_w = nn.Parameter(torch.empty(len(cfg.games), out, d).uniform_(-bound, bound))
        self.head_b = nn.Parameter(torch.empty(len(cfg.games), out).uniform_(-bound, bound))
        task_ids = [_games.get(g).task_id for g in cfg.games]
        route = torch.full((max(task_ids) + 1,), -1, dtype=torch.long)
        route[torch.tensor(task_ids)] = torch.arange(len(task_ids))
        self.register_buffer("head_of_task", route, persistent=False)  # task id -> head index (-1: none)
        self.register_buffer("support", c51_support(cfg.v_min, cfg.v_max, cfg.num_atoms), persistent=False)

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def features(self, obs: Tensor) -> Tensor:
        """(B, S, 84, 84) uint8 frame stacks -> normalised features (B, D)."""
        return normalize_features(self.mlp(self.encoder(obs.to(self.head_w.dtype) / 255.0)))

    def heads(self, tasks: Tensor) -> Tensor:
        """Head index (B,) of each task id; ValueError for a game without a head."""
        known = tasks < self.head_of_task.shape[0]
        idx = torch.where(known, self.head_of_task[tasks.clamp(max=self.head_of_task.shape[0] - 1)], -1)
        if bool((idx < 0).any()):
            missing = sorted(set(tasks[idx < 0].tolist()))
            raise ValueError(f"this Scaled-QL model has no Q head for task id(s) {missing} (heads: "
                             f"{', '.join(self.cfg.games)})")
        return idx

    def forward(self, obs: Tensor, tasks: Tensor) -> Tensor:
        """(B, S, 84, 84) uint8, task ids (B,) -> C51 logits (B, A, Z) from each row's game head."""
        e = self.features(obs)  # (B, D)
        idx = self.heads(tasks)
        out = e.new_empty(e.shape[0], self.head_w.shape[1])
        for h in idx.unique().tolist():  # the heads present in the batch
            rows = idx == h
            out[rows] = F.linear(e[rows], self.head_w[h], self.head_b[h])
        return out.view(-1, self.cfg.num_actions, self.cfg.num_atoms)

    def q_values(self, logits: Tensor) -> Tensor:
        """Expected Q (B, A) of (B, A, Z) logits."""
        return expected_q(logits.float()[None], self.support)


# --------------------------------------------------------------------------------------------------------
# Losses


def n_step_returns(reward: Tensor, terminal: Tensor, valid: Tensor, start: int, n: int,
                   gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """The n-step return from step ``start`` of each segment: ``(G, discount, has_target)``, each (B,).

    G = sum_{k<j} gamma^k r[start+k], where j = n, or the step after the first terminal among the n steps.
    discount = gamma^n (bootstrap from the state at ``start+n``), or 0 when a terminal came first. A row has a
    target when step ``start`` is valid and either a terminal comes within the n steps or step ``start+n`` is
    valid (the segment ran out otherwise: no target).

    reward (B, L) float; terminal, valid (B, L) bool; L > start + n - 1.
    """
    B = reward.shape[0]
    G = reward.new_zeros(B)
    alive = valid[:, start].clone()  # (B,) no terminal yet
    ended = torch.zeros_like(alive)
    for k in range(n):
        t = start + k
        step_ok = alive & valid[:, t]
        G = G + torch.where(step_ok, reward[:, t] * gamma**k, 0.0)
        ended = ended | (step_ok & terminal[:, t])
        alive = step_ok & ~terminal[:, t]
    bootstrap = alive & valid[:, start + n] if start + n < valid.shape[1] else torch.zeros_like(alive)
    has = valid[:, start] & (ended | bootstrap)
    discount = torch.where(bootstrap, reward.new_tensor(gamma**n), reward.new_tensor(0.0))
    return G, discount, has


def nstep_c51_loss(logits: Tensor, action: Tensor, returns: Tensor, discount: Tensor, next_probs: Tensor,
                   has: Tensor, support: Tensor) -> Tensor:
    """Mean over rows with a target of the cross-entropy -sum_z m_z log p_z(s, a); m = projection of
    G + discount * z under ``next_probs`` (the target network's distribution at the bootstrap state and its greedy
    valid action) onto ``support``. 0 when no row has a target.

    logits (B, A, Z); action (B,); returns, discount (B,); next_probs (B, Z); has (B,) bool; support (Z,).
    """
    logits = logits.float()
    Z = support.shape[0]
    p = logits.softmax(-1).gather(1, action.long().view(-1, 1, 1).expand(-1, 1, Z))[:, 0]  # (B, Z)
    with torch.no_grad():
        tz = returns[:, None].float() + discount[:, None].float() * support  # (B, Z)
        target = c51_project(tz, next_probs.float(), support)  # (B, Z)
    ce = -(target * torch.log(p + LOG_EPS)).sum(-1)  # (B,)
    return ce[has].sum() / has.sum().clamp(min=1)


def greedy_next_probs(target_logits: Tensor, action_mask: Tensor, support: Tensor) -> Tensor:
    """The target distribution (B, Z) at the greedy valid action of its expected Q. target_logits (B, A, Z)."""
    probs = target_logits.float().softmax(-1)  # (B, A, Z)
    q = (probs @ support).masked_fill(~action_mask, float("-inf"))  # (B, A)
    a_star = q.argmax(-1)
    return probs[torch.arange(probs.shape[0], device=probs.device), a_star]


def load_scaled_ql(path: str, device: torch.device | str = "cpu") -> tuple[ScaledQLModel, dict]:
    """A Scaled-QL model (eval mode) and its checkpoint metadata, from a checkpoint or run directory."""
    meta, tensors = ckpt.load_model(path, KIND)
    try:
        cfg = from_dict(ScaledQLConfig, meta["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise ckpt.CheckpointError(f"{path}: bad Scaled-QL config in {ckpt.META}: {e}") from None
    model = ScaledQLModel(cfg)
    ckpt.load_state_dict_checked(model, tensors, f"{path}: weights vs the config")
    return model.to(device).eval(), meta
