"""Online fine-tuning, the training side: config, schedules, replay mixing, retrieval, the update step.

The acting loop (environments, the agent, evaluation) lives in ``jowa_core.recipes.online`` because the agent
belongs to the evaluation layer; this module holds what training needs and nothing that plays:

* ``OnlineConfig``: every setting of ``jowa finetune --online`` (docs/online.md);
* ``linear_schedule``: the epsilon and execution-guidance schedules (pure functions of the environment step);
* ``mix_counts`` (``data/replay.py``): rows per source of a batch (online replay, offline store, rehearsal);
* ``segment_embeddings`` / ``nearest_neighbours`` / ``retrieve``: retrieval-based experience rehearsal (WPT);
* ``OnlineLearner``: the model, its optimiser and the update step (``finetune_loss`` of offline fine-tuning on a
  mixed batch), its training checkpoints (pretraining's format) and the resume check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from jowa_core import devices
from jowa_core import dist as jdist
from jowa_core.config import check_bounds, to_dict
from jowa_core.data.replay import SegmentTable
from jowa_core.models.world_action import WorldActionConfig, WorldActionModel, segment_tokens
from jowa_core.train.finetune import finetune_loss
from jowa_core.train.pretrain import adamw, load_checkpoint, save_checkpoint
from jowa_core.train.step import optimizer_step


@dataclass
class OnlineConfig:
    """Online fine-tuning in the emulator (docs/online.md). Steps counted in agent steps of all environments."""

    BOUNDS: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "env_steps": (1, None), "num_envs": (1, None), "learning_starts": (0, None), "utd": (0, None),
        "batch_size": (1, None), "seq_len": (1, None), "lr": (0, None), "weight_decay": (0, None),
        "grad_clip": (0, None), "world_weight": (0, None), "cql_alpha": (0, None), "gamma": (0, 1),
        "target_update_every": (1, None), "eps_start": (0, 1), "eps_end": (0, 1), "eps_decay_steps": (0, None),
        "beam": (1, None), "horizon": (1, None), "offline_fraction": (0, 1), "rehearsal_fraction": (0, 1),
        "rehearsal_episodes": (1, None), "rehearsal_k": (1, None), "rehearsal_pool": (1, None),
        "guide_prob_start": (0, 1), "guide_decay_steps": (0, None), "guide_max_start": (0, None),
        "guide_max_length": (1, None), "sticky_actions": (0, 1),
        "max_episode_steps": (0, None), "eval_every": (0, None), "eval_episodes": (0, None),
        "eval_max_frames": (1, None), "eval_beam": (1, None), "eval_horizon": (1, None), "save_every": (0, None),
        "keep_checkpoints": (0, None), "log_every": (1, None), "stop_after": (1, None),
    }

    env_steps: int = 100_000  # agent steps in all (Atari 100k: 100k steps = 400k frames)
    num_envs: int = 4  # environments acting together (one batched decision per step)
    learning_starts: int = 1600  # environment steps before the first update
    utd: float = 1.0  # updates per environment step after learning_starts (the update-to-data ratio)
    batch_size: int = 32
    seq_len: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    world_weight: float = 0.5  # beta, as offline fine-tuning
    cql_alpha: float = 0.0  # online: no conservatism by default (offline fine-tuning uses 0.1)
    gamma: float = 0.99
    target_update_every: int = 1000  # updates
    # acting
    plan: bool = False  # False: greedy on Q̂ with the epsilon schedule; True: beam search (beam, horizon)
    beam: int = 2
    horizon: int = 2
    eps_start: float = 1.0  # epsilon decays linearly from eps_start to eps_end over eps_decay_steps env steps
    eps_end: float = 0.01
    eps_decay_steps: int = 10_000
    # data mixing (fractions of every batch; the online replay gets the rest)
    offline_fraction: float = 0.0  # rows from --data (the game's offline store, obs_tokens of this tokenizer)
    rehearsal_fraction: float = 0.0  # WPT retrieval-based rehearsal: rows from the retrieved pretraining segments
    rehearsal_episodes: int = 2  # the first online episodes whose segments are the retrieval queries
    rehearsal_k: int = 8  # nearest pretraining segments per query segment
    rehearsal_pool: int = 20_000  # pretraining segments embedded (a uniform sample of --rehearsal-data's rows)
    # WPT execution guidance: at the start of each episode, with a probability decaying linearly from
    # guide_prob_start to 0 over guide_decay_steps env steps, the guide acts for a window of the episode (its start
    # uniform in [0, guide_max_start], its length uniform in [1, guide_max_length]); the agent acts elsewhere
    guide_prob_start: float = 0.0
    guide_decay_steps: int = 10_000
    guide_max_start: int = 100
    guide_max_length: int = 100
    guide_ckpt: str | None = None  # the guide policy (greedy Q̂ of a world-action checkpoint); None: --ckpt's
    # environments (training: Dopamine/DQN-Replay settings; rewards stored clipped, returns logged raw)
    sticky_actions: float = 0.25
    max_episode_steps: int = 27_000
    # evaluation (the paper's protocol) and checkpoints, every N environment steps
    eval_every: int = 10_000  # 0: only at the end
    eval_episodes: int = 8  # 0: no evaluation (no best/)
    eval_max_frames: int = 108_000
    eval_plan: bool = False
    eval_beam: int = 2
    eval_horizon: int = 2
    eval_backend: str = "auto"
    save_every: int = 5_000  # training checkpoint + replay store (0: only at evaluations and the end)
    keep_checkpoints: int = 2
    stop_after: int | None = None  # environment steps: checkpoint and stop (continue with --resume)
    from_scratch: bool = False  # random init with the checkpoint's architecture
    seed: int = 0
    device: str = "auto"
    amp: Literal["auto", "bf16", "off"] = "auto"
    log_every: int = 100  # updates

    def __post_init__(self) -> None:
        check_bounds(self)


# config keys that may change when resuming (they do not change what is trained)
RESUME_FREE = ("stop_after", "device", "eval_backend", "save_every", "keep_checkpoints", "log_every")


def check_config(cfg: OnlineConfig, has_offline: bool, has_rehearsal: bool) -> None:
    """One-line errors for settings that do not fit together or with the inputs."""
    if cfg.offline_fraction + cfg.rehearsal_fraction >= 1:
        raise ValueError("offline_fraction + rehearsal_fraction must be < 1 (the online replay needs rows)")
    if cfg.offline_fraction > 0 and not has_offline:
        raise ValueError("offline_fraction > 0 needs --data (the game's tokenized offline store)")
    if cfg.rehearsal_fraction > 0 and not has_rehearsal:
        raise ValueError("rehearsal_fraction > 0 needs --rehearsal-data (tokenized pretraining stores)")
    if cfg.eps_end > cfg.eps_start:
        raise ValueError(f"eps_end {cfg.eps_end} > eps_start {cfg.eps_start}")


def check_resume(saved: dict[str, Any], cfg: OnlineConfig, inputs: dict[str, str], path: Path) -> None:
    now = {**to_dict(cfg), **inputs}
    diff = [f"{k} ({saved.get(k)!r} in the run, {now.get(k)!r} now)" for k in sorted(set(saved) | set(now))
            if k not in RESUME_FREE and saved.get(k) != now.get(k)]
    if diff:
        raise ValueError(f"cannot resume {path} with a different config or input: {'; '.join(diff)}")


# --------------------------------------------------------------------------------------------------------
# Schedules


def linear_schedule(step: int, start: float, end: float, duration: int) -> float:
    """``start`` at step 0, linearly to ``end`` at ``duration`` (and after); ``duration`` 0: ``end`` at once."""
    if duration <= 0 or step >= duration:
        return float(end)
    return float(start + (end - start) * max(step, 0) / duration)


def epsilon(cfg: OnlineConfig, env_step: int) -> float:
    return linear_schedule(env_step, cfg.eps_start, cfg.eps_end, cfg.eps_decay_steps)


def guide_probability(cfg: OnlineConfig, env_step: int) -> float:
    return linear_schedule(env_step, cfg.guide_prob_start, 0.0, cfg.guide_decay_steps)


def guide_window(rng: np.random.Generator, p: float, max_start: int, max_length: int) -> tuple[int, int]:
    """WPT's (and JSRL's) per-episode guidance: with probability ``p`` the guide acts for steps
    ``[start, start + length)`` of the new episode, start uniform in [0, max_start], length in [1, max_length];
    ``(0, 0)`` otherwise."""
    if rng.random() >= p:
        return 0, 0
    return int(rng.integers(0, max_start + 1)), int(rng.integers(1, max_length + 1))


# --------------------------------------------------------------------------------------------------------
# Retrieval-based experience rehearsal


@torch.no_grad()
def segment_embeddings(model: WorldActionModel, table: SegmentTable, starts: np.ndarray, seq_len: int,
                       task_id: int, chunk: int = 256) -> Tensor:
    """(S, E) float32: the mean of the last layer's hidden states over each segment's valid tokens, all read with
    the task id ``task_id`` (the new game's: the distance then reflects what the segments show and do, not which
    game's embedding they carry)."""
    was = model.training
    model.eval()
    out = []
    device = next(model.parameters()).device
    try:
        for i in range(0, len(starts), chunk):
            b = table.gather(starts[i:i + chunk], seq_len)
            tokens = segment_tokens(b["obs_tokens"].to(device), b["action"].to(device))  # (B, L*37)
            tasks = torch.full((tokens.shape[0],), task_id, dtype=torch.long, device=device)
            h = model(tokens, tasks, heads=()).hidden.float()  # (B, L*37, E)
            w = b["valid"].to(device).repeat_interleave(h.shape[1] // seq_len, dim=1).float()  # (B, L*37)
            out.append((h * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1))
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.zeros(0, model.cfg.embed_dim)


def nearest_neighbours(queries: Tensor, keys: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """(Q, k) indices of the ``k`` keys nearest (Euclidean) to each query, nearest first; ties by lower index."""
    k = min(k, keys.shape[0])
    out = []
    for i in range(0, queries.shape[0], chunk):
        d = torch.cdist(queries[i:i + chunk].double(), keys.double())  # (q, K)
        out.append(torch.argsort(d, dim=1, stable=True)[:, :k])  # stable: equal distances by lower index
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def retrieve(model: WorldActionModel, online: SegmentTable, query_starts: np.ndarray, pool: SegmentTable,
             pool_starts: np.ndarray, k: int, seq_len: int, task_id: int) -> np.ndarray:
    """Rows of ``pool`` (segment starts, sorted, unique) among the ``k`` nearest to any online query segment."""
    q = segment_embeddings(model, online, query_starts, seq_len, task_id)
    keys = segment_embeddings(model, pool, pool_starts, seq_len, task_id)
    idx = nearest_neighbours(q, keys, k)
    return np.unique(pool_starts[idx.reshape(-1).numpy()])


# --------------------------------------------------------------------------------------------------------
# Learner


@dataclass
class OnlineRunConfig:
    """A training checkpoint's config.yaml: the architecture, the online config and the inputs."""

    model: WorldActionConfig
    online: OnlineConfig
    inputs: dict[str, str]


def mixed_batch(sources: list[SegmentTable | None], counts: list[int], seq_len: int, rng: np.random.Generator,
                among: list[np.ndarray | None]) -> dict[str, Tensor]:
    """One batch: ``counts[i]`` segments of ``sources[i]`` (from its rows ``among[i]`` when given), in order."""
    parts = [src.sample(n, seq_len, rng, a) for src, n, a in zip(sources, counts, among, strict=True) if n]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


class OnlineLearner:
    """The world-action model being fine-tuned, its AdamW and target Q head, and the update step."""

    def __init__(self, model: WorldActionModel, cfg: OnlineConfig, device: torch.device):
        self.model, self.cfg, self.device = model, cfg, device
        model.update_target()
        model.requires_grad_(True)
        model.head_q_target.requires_grad_(False)
        self.opt = adamw(model, lr_world=cfg.lr, lr_q=cfg.lr, weight_decay=cfg.weight_decay, betas=[0.9, 0.999])
        self.autocast = devices.autocast(device, cfg.amp)
        self.ctx = jdist.DistContext(device=device)
        self.step = 0

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One optimiser step on ``batch``: offline fine-tuning's ``finetune_loss`` with every row real (world loss
        and TD on every row, CQL weighted by ``cql_alpha``; it reads ``world_weight``, ``gamma``, ``cql_alpha``
        of this config)."""
        self.model.train()
        batch = {k: v.to(self.device) for k, v in batch.items()}
        real = torch.ones(batch["action"].shape[0], dtype=torch.bool, device=self.device)
        with self.autocast():
            loss, terms = finetune_loss(self.model, batch, real, self.cfg, "cql", self.model.support)
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = optimizer_step(self.opt, loss, params, self.cfg.grad_clip)
        self.step += 1
        if self.step % self.cfg.target_update_every == 0:
            self.model.update_target()
        return {k: float(v.detach()) for k, v in {**terms, "grad_norm": grad_norm}.items()}

    def save(self, out: Path, state: dict[str, Any], run_cfg: OnlineRunConfig, tokens_tokenizer: str) -> Path:
        return save_checkpoint(out, self.model, self.opt, {**state, "step": self.step, "stage": 2}, run_cfg,
                               self.ctx, None, keep=self.cfg.keep_checkpoints, gamma=self.cfg.gamma,
                               tokens_tokenizer=tokens_tokenizer)

    def load(self, path: Path) -> dict[str, Any]:
        state = load_checkpoint(path, self.model, self.opt, self.ctx)
        self.step = int(state["step"])
        return state


def rng_to_json(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def rng_from_json(state: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


def input_paths(**paths: str | os.PathLike | None) -> dict[str, str]:
    """Resolved input paths (recorded in config.yaml, compared on resume); empty for absent ones."""
    return {k: str(Path(v).resolve()) if v else "" for k, v in paths.items()}
