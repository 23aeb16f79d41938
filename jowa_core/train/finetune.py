"""Offline fine-tuning of a pretrained JOWA on one (held-out) game (paper §4.3, Appendix E.2; reference §7).

stage 1 (``stage1_steps``, 3k): real data only; world_weight * L_world + C51 TD + alpha * CQL.
stage 2 (``stage2_steps``, 7k): each batch is (1 - synthetic_fraction) real segments plus synthetic ones made by
planning (beam 2, horizon 2) from 6 real steps; world loss on the real rows only, TD on all rows, and COMBO
(eq. 4: the CQL negative term over real + synthetic rows, the positive term over real rows only).

Every part trains from step 0: the world-action model (backbone, world heads, Q head; the target Q head is a
hard copy every ``target_update_every`` steps) and, with ``train_tokenizer`` (default, as the paper and the
official code), the VQ-VAE tokenizer: each step it takes an Adam step on the batch's frames (pretrain's
``JointTokenizer``) and then tokenises them without gradient for the world model. ``train_tokenizer=false``
keeps it frozen and reads the store's precomputed ``obs_tokens`` (faster).
Deliberately unlike the official code (reference §7.3-7.4): the synthetic segments keep every real action and
reward with its own frame, and the game's own task id and action mask are used in training and evaluation.
Runs resume exactly (``resume=True``) from the training checkpoints of pretraining's format.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from jowa_core import checkpoint as ckpt
from jowa_core import devices
from jowa_core import dist as jdist
from jowa_core import games as _games
from jowa_core.config import check_bounds, read_yaml, save_yaml, to_dict
from jowa_core.constants import BEST_DIR, CONFIG_FILE, FINAL_DIR, SUMMARY_FILE
from jowa_core.data.segments import make_loader
from jowa_core.devices import pick_device
from jowa_core.models.losses import cql_loss, expected_q, td_loss, world_losses
from jowa_core.models.tokenizer import fingerprint, load_tokenizer, save_tokenizer
from jowa_core.models.world_action import WorldActionConfig, WorldActionModel, load_world_action, segment_tokens
from jowa_core.planning.beam import PlanResult, plan
from jowa_core.progress import NullReporter
from jowa_core.train.pretrain import (
    JointTokenizer,
    adamw,
    encode_frames,
    load_checkpoint,
    param_fingerprint,
    save_checkpoint,
    store_vocab,
)
from jowa_core.train.run import MetricsLog, checkpoint_path, prepare_run, rng_state, set_rng_state
from jowa_core.train.step import optimizer_step


@dataclass
class FinetuneConfig:
    """Fine-tuning hyperparameters (paper Appendix E.2; the official ``finetune_150M.yaml`` where it differs is
    noted)."""

    BOUNDS: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "stage1_steps": (0, None), "stage2_steps": (0, None), "batch_size": (1, None), "lr": (0, None),
        "weight_decay": (0, None), "grad_clip": (0, None), "world_weight": (0, None), "cql_alpha": (0, None),
        "synthetic_fraction": (0, 1), "imagine_beam": (1, None), "imagine_horizon": (1, None),
        "synthetic_stride": (1, None), "gamma": (0, 1), "target_update_every": (1, None), "seq_len": (1, None),
        "stride": (1, None), "eval_every": (0, None), "eval_episodes": (0, None), "eval_max_frames": (1, None),
        "eval_beam": (1, None), "eval_horizon": (1, None), "tokenizer_lr": (0, None),
        "tokenizer_batch_size": (1, None), "num_workers": (0, None), "log_every": (1, None),
        "save_every": (0, None), "keep_checkpoints": (0, None), "stop_after": (1, None),
    }

    def __post_init__(self) -> None:
        check_bounds(self)

    stage1_steps: int = 3000  # real data only (paper v1: 3k + 7k; official: 50k steps, synthetic after 20k)
    stage2_steps: int = 7000  # real + synthetic
    batch_size: int = 32
    lr: float = 5e-5  # world and Q
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    world_weight: float = 0.5  # beta: the official fine-tuning supervised_weight (pretraining uses 0.1)
    action_loss: Literal["combo", "cql"] = "combo"  # stage 2 (stage 1 has only real rows: COMBO == CQL there)
    cql_alpha: float = 0.1
    synthetic_fraction: float = 0.25  # of the stage-2 batch (paper: 8 of 32; the official preset: 0.5)
    imagine_beam: int = 2
    imagine_horizon: int = 2
    synthetic_stride: int = 1  # offsets of the real contexts the synthetic segments start from
    gamma: float = 0.99
    target_update_every: int = 1000
    seq_len: int = 8
    stride: int = 4
    eval_every: int = 0  # 0 = evaluate only at the end
    eval_episodes: int = 4  # 0 = no evaluation (best/ is then not written)
    eval_max_frames: int = 27_000  # emulator frames per evaluation episode (the paper's protocol: 108k)
    eval_plan: bool = False  # False: greedy on Q (as the official in-training evaluation)
    eval_beam: int = 2
    eval_horizon: int = 2
    eval_backend: str = "auto"
    from_scratch: bool = False  # random init with the checkpoint's architecture: the paper's "JOWA (scratch)"
    train_tokenizer: bool = True  # paper and official code; False: frozen, the store's obs_tokens (faster)
    tokenizer_lr: float = 1e-4  # Adam (official)
    tokenizer_batch_size: int = 128  # frames per step, drawn with replacement from the batch's (official: 128)
    perceptual_weights: str | None = None  # LPIPS weights for the tokenizer loss (None: no perceptual term)
    seed: int = 0
    device: str = "auto"
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 autocast on GPU
    num_workers: int = 0
    log_every: int = 50
    save_every: int = 1000  # training checkpoints under checkpoints/ (also at evaluations and the last step)
    keep_checkpoints: int = 3  # newest training checkpoints kept (0 = all)
    stop_after: int | None = None  # checkpoint and stop after this many steps (continue with resume)


METRICS = ["step", "stage", "loss", "world_obs", "world_reward", "world_end", "td", "action_loss", "q_taken",
           "q_max", "grad_norm", "n_real", "n_synthetic", "synthetic_reward", "tokenizer_total",
           "tokenizer_reconstruction", "tokenizer_commitment", "tokenizer_perceptual", "eval_mean", "eval_iqm",
           "best_mean", "elapsed_s"]


# --------------------------------------------------------------------------------------------------------
# Losses


def combo_loss(q_logits: Tensor, action: Tensor, valid: Tensor, real: Tensor, support: Tensor,
               action_mask: Tensor | None = None) -> Tensor:
    """Unscaled COMBO regulariser (eq. 4): E_{valid steps of all rows}[logsumexp_a Q(s, a)] -
    E_{valid steps of real rows}[Q(s, a_data)]. With only real rows it equals ``cql_loss``.

    q_logits (H, B, L, A, Z); action (B, L); valid (B, L); real (B,) bool; support (Z,); action_mask (B, A) or
    None (logsumexp over all A actions).
    """
    q = expected_q(q_logits.float(), support)  # (B, L, A)
    q_neg = q if action_mask is None else q.masked_fill(~action_mask[:, None], -math.inf)
    neg = torch.logsumexp(q_neg, dim=-1)  # (B, L)
    act = torch.where(valid, action.long(), 0)
    pos = q.gather(-1, act[..., None])[..., 0]  # (B, L)
    pos_rows = valid & real[:, None]
    return neg[valid].sum() / valid.sum().clamp(min=1) - pos[pos_rows].sum() / pos_rows.sum().clamp(min=1)


def finetune_loss(model: WorldActionModel, batch: dict[str, Tensor], real: Tensor, cfg: FinetuneConfig,
                  action_loss: str, support: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """world_weight * L_world(real rows) + TD(all rows) + alpha * (COMBO or CQL)(all rows); and its terms.

    ``real`` (B,) bool marks the real rows (synthetic rows are False)."""
    obs_tokens, action = batch["obs_tokens"], batch["action"]
    out = model(segment_tokens(obs_tokens, action), batch["game_id"], with_target=True)
    w = world_losses(out.obs_logits[real], out.reward_logits[real], out.end_logits[real], obs_tokens[real],
                     batch["reward"][real], batch["terminal"][real], batch["valid"][real])
    world = w["obs"] + w["reward"] + w["end"]
    valid, mask = batch["valid"], batch["action_mask"]
    td = td_loss(out.q_logits, out.q_target_logits, action, batch["reward"], batch["terminal"], valid, mask,
                 support, cfg.gamma)
    if action_loss == "combo":
        reg = combo_loss(out.q_logits, action, valid, real, support, mask)
    else:
        reg = cql_loss(out.q_logits, action, valid, support, mask)
    loss = cfg.world_weight * world + td + cfg.cql_alpha * reg
    with torch.no_grad():
        q = expected_q(out.q_logits.float(), support)
        rv = valid & real[:, None]
        q_taken = q.gather(-1, action[..., None])[..., 0][rv]
        q_max = q.masked_fill(~mask[:, None], -math.inf).amax(-1)[valid]
    return loss, {"loss": loss, "world_obs": w["obs"], "world_reward": w["reward"], "world_end": w["end"],
                  "td": td, "action_loss": reg, "q_taken": q_taken.mean(), "q_max": q_max.mean()}


# --------------------------------------------------------------------------------------------------------
# Synthetic segments


def best_path(result: PlanResult) -> dict[str, Tensor]:
    """The best leaf's path of a recorded beam search: ``action`` (N, H), ``reward`` (N, H), ``obs_tokens``
    (N, H, 36) of the imagined steps, and ``leaf_q`` (N, A) (masked Q̂ at the last imagined observation)."""
    tree = result.tree
    if not tree:
        raise ValueError("the plan has no recorded tree (use record=True, beam >= 2, horizon >= 1)")
    N = tree[0]["action"].shape[0]
    rows = torch.arange(N, device=tree[0]["action"].device)
    idx = tree[-1]["score"].argmax(-1)  # (N,) child index at the last depth
    actions, rewards, obs = [], [], []
    leaf_q = tree[-1]["q"][rows, idx]
    for d in range(len(tree) - 1, -1, -1):
        node = tree[d]
        actions.append(node["action"][rows, idx])
        rewards.append(node["reward"][rows, idx])
        obs.append(node["obs_tokens"][rows, idx])
        if d > 0:
            idx = tree[d - 1]["keep"][rows, node["parent"][rows, idx]]
    return {"action": torch.stack(actions[::-1], 1), "reward": torch.stack(rewards[::-1], 1),
            "obs_tokens": torch.stack(obs[::-1], 1), "leaf_q": leaf_q}


@torch.no_grad()
def synthesize(model: WorldActionModel, real: dict[str, Tensor], beam: int = 2, horizon: int = 2,
               gamma: float = 0.99) -> dict[str, Tensor]:
    """Synthetic segments of R + H steps from R real steps (all valid, none terminal) and an H-step plan.

    Steps 0..R-2 keep their real observation, action and reward; step R-1 keeps its real observation and takes
    the planned first action and its imagined reward; steps R..R+H-1 are the imagined observations with the
    planned actions and rewards, the last one's action being the greedy action of Q̂ there (reward 0: it is the
    segment's last step, so it has no TD term). terminal False, valid True; task id and action mask as ``real``.
    The imagined rewards become training labels (the reward head's classes, the TD target), so they are read as
    the reward head's mode, in {-1, 0, 1}, as the official code does, not as the planner's default expectation.
    """
    obs, action = real["obs_tokens"], real["action"]
    R = obs.shape[1]
    context = segment_tokens(obs, action)[:, :-1]  # the last observation has no action yet
    was_training = model.training
    model.eval()
    try:
        res = plan(model, context, real["game_id"], real["action_mask"], beam=beam, horizon=horizon, gamma=gamma,
                   record=True, reward_mode="mode")
    finally:
        model.train(was_training)
    path = best_path(res)
    last_action = path["leaf_q"].argmax(-1, keepdim=True)
    N, dev = obs.shape[0], obs.device
    out = {
        "obs_tokens": torch.cat([obs, path["obs_tokens"].to(obs.dtype)], 1),
        "action": torch.cat([action[:, :R - 1], path["action"].to(action.dtype), last_action.to(action.dtype)], 1),
        "reward": torch.cat([real["reward"][:, :R - 1], path["reward"].to(real["reward"].dtype),
                             torch.zeros(N, 1, dtype=real["reward"].dtype, device=dev)], 1),
        "terminal": torch.zeros(N, R + horizon, dtype=torch.bool, device=dev),
        "valid": torch.ones(N, R + horizon, dtype=torch.bool, device=dev),
        "game_id": real["game_id"].clone(),
        "action_mask": real["action_mask"].clone(),
    }
    return out


def _full_contexts(batches: Iterator[dict[str, Tensor]], n: int) -> dict[str, Tensor]:
    """``n`` real segments whose steps are all valid and not terminal, drawn from ``batches``."""
    parts: list[dict[str, Tensor]] = []
    have = 0
    for _ in range(10_000):
        b = next(batches)
        ok = b["valid"].all(1) & ~b["terminal"].any(1)
        if ok.any():
            parts.append({k: v[ok] for k, v in b.items()})
            have += int(ok.sum())
        if have >= n:
            return {k: torch.cat([p[k] for p in parts])[:n] for k in parts[0]}
    raise ValueError("the data has no run of enough consecutive non-terminal steps for synthetic segments")


# --------------------------------------------------------------------------------------------------------
# Run


def _concat(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: torch.cat([a[k], b[k]]) for k in a}


def _own_task(batch: dict[str, Tensor], task_id: int, mask: Tensor) -> dict[str, Tensor]:
    batch["game_id"] = torch.full_like(batch["game_id"], task_id)
    batch["action_mask"] = mask.expand_as(batch["action_mask"]).clone()
    return batch


def _check(cfg: FinetuneConfig) -> None:
    if cfg.stage1_steps < 0 or cfg.stage2_steps < 0 or cfg.stage1_steps + cfg.stage2_steps < 1:
        raise ValueError("stage1_steps and stage2_steps must be >= 0 with a positive sum")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if not 0.0 <= cfg.synthetic_fraction < 1.0:
        raise ValueError(f"synthetic_fraction must be in [0, 1), got {cfg.synthetic_fraction}")
    if cfg.action_loss not in ("combo", "cql"):
        raise ValueError(f"action_loss must be combo or cql, got {cfg.action_loss!r}")
    if cfg.imagine_beam < 2 or cfg.imagine_horizon < 1:
        raise ValueError("imagine_beam must be >= 2 and imagine_horizon >= 1")
    if cfg.eval_episodes < 0 or cfg.eval_every < 0:
        raise ValueError("eval_episodes and eval_every must be >= 0")
    if cfg.train_tokenizer and cfg.tokenizer_batch_size < 1:
        raise ValueError(f"tokenizer_batch_size must be >= 1, got {cfg.tokenizer_batch_size}")
    if cfg.stop_after is not None and cfg.stop_after < 1:
        raise ValueError(f"stop_after must be >= 1 (or null), got {cfg.stop_after}")


class _Cursor:
    """Endless batches of a segment loader, epoch after epoch, with a resumable ``position`` [epoch, batch]
    (batches consumed so far in that epoch)."""

    def __init__(self, loader, position: list[int] | None = None):
        self.loader = loader
        self.epoch, self.batch = position or (0, 0)
        self._it: Iterator[dict[str, Tensor]] | None = None

    @property
    def position(self) -> list[int]:
        return [self.epoch, self.batch]

    def __iter__(self) -> _Cursor:
        return self

    def __next__(self) -> dict[str, Tensor]:
        for _ in range(2):  # at most one epoch boundary per batch
            if self._it is None:
                self.loader.batch_sampler.set_epoch(self.epoch, self.batch)
                self._it = iter(self.loader)
            try:
                b = next(self._it)
            except StopIteration:
                self.epoch, self.batch, self._it = self.epoch + 1, 0, None
                continue
            self.batch += 1
            return b
        raise RuntimeError("the loader yields no batches")


@dataclass
class _RunConfig:
    """A training checkpoint's config.yaml: the architecture, the fine-tuning config and the inputs."""

    model: WorldActionConfig
    finetune: FinetuneConfig
    inputs: dict[str, str]


class _Tokenizer(JointTokenizer):
    """``JointTokenizer`` whose training-checkpoint files also include ``tokenizer/``, a tokenizer checkpoint that
    ``jowa evaluate --tokenizer`` loads."""

    def save(self, directory: Path) -> None:
        super().save(directory)
        save_tokenizer(self.tok, directory / "tokenizer")


# config keys that may change when resuming (they do not change what is trained)
RESUME_FREE = ("stop_after", "device", "num_workers", "eval_backend", "save_every", "keep_checkpoints")


def _check_resume(saved: dict[str, Any], cfg: FinetuneConfig, inputs: dict[str, str], path: Path) -> None:
    """Error naming every config key or input (checkpoint, tokenizer, game, store) that differs from the run's."""
    now = {**to_dict(cfg), **inputs}
    diff = [f"{k} ({saved.get(k)!r} in the run, {now.get(k)!r} now)" for k in sorted(set(saved) | set(now))
            if k not in RESUME_FREE and saved.get(k) != now.get(k)]
    if diff:
        raise ValueError(f"cannot resume {path} with a different config or input: {'; '.join(diff)}")


# (model checkpoint dir, tokenizer, step, JSON path) -> the game's stats of an evaluation (``mean``, ``iqm``, ``std``,
# ``raw_scores``); built by the evaluation layer (``jowa_core.recipes.finetune``), so training never imports it.
Evaluator = Callable[[Path, Path, int, Path], dict[str, Any]]


@dataclass
class _Inputs:
    """Everything a fine-tuning run reads, loaded and checked before anything is written."""

    info: _games.GameInfo
    ctx: jdist.DistContext
    model: WorldActionModel
    meta: dict[str, Any]
    tok: Any  # the tokenizer (None when it neither trains nor evaluates)
    loader: Any  # real segments
    syn_loader: Any  # real contexts for synthetic segments (None without stage 2 synthetic data)
    n_syn: int  # synthetic rows per stage-2 batch
    mask: Tensor  # (1, 18) the game's valid actions
    inputs: dict[str, str]  # resolved paths, recorded in config.yaml and checked on resume
    resume_from: Path | None


def _open_inputs(cfg: FinetuneConfig, ckpt_path: str | os.PathLike, tokenizer: str | os.PathLike, game: str,
                 data: str | os.PathLike, out: Path, resume: bool) -> _Inputs:
    """Load the model, tokenizer and data of a run and check they fit each other and (on resume) the run."""
    info = _games.get(game)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("fine-tuning runs in one process (no torchrun)")
    device = pick_device(cfg.device, 0)
    resume_from = prepare_run(out, resume)
    if not Path(data).exists():
        raise FileNotFoundError(f"no store at {data}")
    tok = None
    if cfg.train_tokenizer or cfg.eval_episodes:
        tok = load_tokenizer(tokenizer, device).requires_grad_(False)  # fail now, not after training
    model, meta = load_world_action(str(ckpt_path), device)
    if tok is not None:
        ckpt.check_tokens_tokenizer(meta, fingerprint(tokenizer), ckpt_path, tokenizer)
    mcfg = model.cfg
    if info.task_id >= mcfg.max_tasks:
        raise ValueError(f"{info.name} has task id {info.task_id} >= the model's max_tasks {mcfg.max_tasks}")
    R = mcfg.max_steps - cfg.imagine_horizon
    if R < 1:
        raise ValueError(f"imagine_horizon {cfg.imagine_horizon} leaves no real step in {mcfg.max_steps} steps")
    if cfg.seq_len > mcfg.max_steps:
        raise ValueError(f"seq_len {cfg.seq_len} > the model's {mcfg.max_steps} steps")
    if tok is not None and tok.cfg.vocab_size != mcfg.obs_vocab:
        raise ValueError(f"the tokenizer has vocab {tok.cfg.vocab_size}, the model {mcfg.obs_vocab}")

    n_syn = int(round(cfg.batch_size * cfg.synthetic_fraction)) if cfg.stage2_steps else 0
    obs_kind = "frames" if cfg.train_tokenizer else "tokens"  # frames: tokenised each step by the current tokenizer
    loader = make_loader(data, cfg.batch_size, seq_len=cfg.seq_len, stride=cfg.stride, seed=cfg.seed,
                         num_workers=cfg.num_workers, observations=obs_kind)
    ds = loader.dataset
    if ds.games != [info.name]:
        raise ValueError(f"{data} holds {', '.join(ds.games)}, not {info.name}")
    vocab = None if cfg.train_tokenizer else store_vocab(ds.paths)
    if vocab is not None and vocab != mcfg.obs_vocab:
        raise ValueError(f"the store's obs_tokens have vocab {vocab}, the model {mcfg.obs_vocab}")
    syn_loader = make_loader(data, max(n_syn, 1) * 2, seq_len=R, stride=cfg.synthetic_stride,
                             seed=cfg.seed + 10_000, num_workers=0, observations=obs_kind) if n_syn else None
    mask = torch.as_tensor(info.action_mask(), dtype=torch.bool, device=device)[None]
    inputs = {"source_checkpoint": str(Path(ckpt_path).resolve()), "tokenizer_source": str(Path(tokenizer).resolve()),
              "game": info.name, "data": str(Path(data).resolve())}
    if resume_from is not None:
        saved = read_yaml(resume_from / CONFIG_FILE)
        _check_resume({**(saved.get("finetune") or {}), **(saved.get("inputs") or {})}, cfg, inputs, resume_from)
    return _Inputs(info, jdist.DistContext(device=device), model, meta, tok, loader, syn_loader, n_syn, mask,
                   inputs, resume_from)


def _save_model(path: Path, model: WorldActionModel, tok: Any, step: int, stage: int, cfg: FinetuneConfig,
                extra: dict[str, Any]) -> Path:
    """A model-only world_action checkpoint at ``path`` (+ ``tokenizer/`` when ``tok`` is the trained tokenizer)."""
    with ckpt.atomic_dir(path) as tmp:
        ckpt.write_model_files(tmp, "world_action", to_dict(model.cfg), model.state_dict(), step=step, stage=stage,
                               games=[extra["game"]], gamma=cfg.gamma, **extra)
        if tok is not None:
            save_tokenizer(tok, tmp / "tokenizer", step=step)
    return path


def _keep_best(out: Path, snapshot: Path, e: dict[str, Any], best: dict[str, Any] | None,
               tokenizer_of) -> dict[str, Any]:
    """``best/`` replaced by ``snapshot`` when evaluation ``e`` beats ``best`` (by mean return); the new best."""
    if best is not None and e["mean"] <= best["mean"]:
        return best
    with ckpt.atomic_dir(out / BEST_DIR) as tmp:
        shutil.rmtree(tmp)
        shutil.copytree(snapshot, tmp)
    return {"path": str(out / BEST_DIR), "step": e["step"], "mean": e["mean"], "iqm": e["iqm"],
            "tokenizer": str(tokenizer_of(out / BEST_DIR))}


def finetune(cfg: FinetuneConfig, ckpt_path: str | os.PathLike, tokenizer: str | os.PathLike, game: str,
             data: str | os.PathLike, out: str | os.PathLike, resume: bool = False,
             reporter=None, evaluator: Evaluator | None = None) -> dict[str, Any]:
    """Fine-tune the world-action model of ``ckpt_path`` and (``train_tokenizer``) the ``tokenizer`` on
    ``game``'s store ``data`` into the run directory ``out``; returns (and writes to ``out/summary.json``) a
    summary with the best and final models and the tokenizer to use with them. ``resume`` continues the run
    in ``out`` from its latest checkpoint (same config and inputs; ``stop_after`` may change). ``evaluator`` plays
    the periodic evaluations (needed when ``eval_episodes`` > 0; ``jowa_core.recipes.finetune.run_finetune`` passes
    the paper's protocol)."""
    reporter = reporter or NullReporter()
    _check(cfg)
    if cfg.eval_episodes and evaluator is None:
        raise ValueError("eval_episodes > 0 needs an evaluator: call jowa_core.recipes.finetune.run_finetune, or set "
                         "eval_episodes=0")
    out = Path(out)
    run = _open_inputs(cfg, ckpt_path, tokenizer, game, data, out, resume)
    info, ctx, model, tok, mask = run.info, run.ctx, run.model, run.tok, run.mask
    device, n_syn, mcfg = ctx.device, run.n_syn, run.model.cfg

    if cfg.from_scratch:
        torch.manual_seed(cfg.seed)
        model = WorldActionModel(mcfg).to(device)
    model.update_target()
    model.requires_grad_(True)
    model.head_q_target.requires_grad_(False)
    opt = adamw(model, lr_world=cfg.lr, lr_q=cfg.lr, weight_decay=cfg.weight_decay, betas=list(cfg.betas))
    joint_tok = None
    if cfg.train_tokenizer:
        joint_tok = _Tokenizer(tok, ctx, lr=cfg.tokenizer_lr, batch_size=cfg.tokenizer_batch_size,
                               perceptual_weights=cfg.perceptual_weights)
    support = model.support
    autocast = devices.autocast(device, cfg.amp)

    total = cfg.stage1_steps + cfg.stage2_steps
    state: dict[str, Any] = {"step": 0, "stage": 1, "games": [info.name], "real": [0, 0], "synthetic": [0, 0],
                             "log_sums": {}, "log_n": 0, "evals": [], "best": None, "elapsed_s": 0.0}
    if run.resume_from is not None:
        state.update(load_checkpoint(run.resume_from, model, opt, ctx))  # weights, optimiser, RNG
        if joint_tok is not None:
            joint_tok.load(run.resume_from)
        reporter.log(f"resuming from {run.resume_from} at step {state['step']}")
    else:
        torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / CONFIG_FILE)
    log = MetricsLog(out, METRICS, state["step"])
    run_cfg = _RunConfig(mcfg, cfg, run.inputs)
    real_batches = _Cursor(run.loader, state["real"])
    syn_batches = _Cursor(run.syn_loader, state["synthetic"]) if run.syn_loader is not None else None
    task = reporter.task("finetune", total=total, unit="steps", completed=state["step"])
    evals: list[dict[str, Any]] = state["evals"]
    best: dict[str, Any] | None = state["best"]
    sums: dict[str, float] = state["log_sums"]
    n_sum, t0 = state["log_n"], time.perf_counter() - state["elapsed_s"]
    extra = {"game": info.name, "task_id": info.task_id, "source": str(ckpt_path), "from_scratch": cfg.from_scratch}
    saved_tok = tok if joint_tok is not None else None  # the trained tokenizer goes with every model snapshot
    eval_tok = (lambda path: path / "tokenizer") if joint_tok is not None else (lambda path: Path(tokenizer))

    model.train()
    step = state["step"]
    stop_at = min(total, cfg.stop_after) if cfg.stop_after else total
    while step < stop_at:
        stage = 1 if step < cfg.stage1_steps else 2
        batch = _own_task({k: v.to(device) for k, v in next(real_batches).items()}, info.task_id, mask)
        n_s = n_syn if stage == 2 else 0
        if n_s:
            batch = {k: v[:cfg.batch_size - n_s] for k, v in batch.items()}
        tok_terms: dict[str, Tensor] = {}
        if joint_tok is not None:  # train the tokenizer, then tokenise with it (no gradient)
            with autocast():
                tok_terms = joint_tok.step(batch["obs"], batch["valid"])
            batch = encode_frames(tok, batch)
        if n_s:
            ctx_batch = _own_task({k: v.to(device) for k, v in _full_contexts(syn_batches, n_s).items()},
                                  info.task_id, mask)
            if joint_tok is not None:
                ctx_batch = encode_frames(tok, ctx_batch)
            syn = synthesize(model, ctx_batch, cfg.imagine_beam, cfg.imagine_horizon, cfg.gamma)
            batch = _concat(_pad_steps(batch, syn["action"].shape[1]), syn)
        real = torch.arange(len(batch["action"]), device=device) < len(batch["action"]) - n_s
        with autocast():
            loss, terms = finetune_loss(model, batch, real, cfg, cfg.action_loss if stage == 2 else "cql", support)
        grad_norm = optimizer_step(opt, loss, [p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        step += 1
        if step % cfg.target_update_every == 0:
            model.update_target()
        terms = {**terms, **tok_terms, "grad_norm": grad_norm, "n_real": int(real.sum()), "n_synthetic": n_s}
        if n_s:
            terms["synthetic_reward"] = batch["reward"][~real].float().mean()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach() if isinstance(v, Tensor) else v)
        n_sum += 1
        reporter.advance(task)
        row: dict[str, Any] = {}
        do_eval = cfg.eval_episodes > 0 and (step == total or (cfg.eval_every and step % cfg.eval_every == 0))
        if do_eval:  # a model-only snapshot, evaluated; replaced by the training checkpoint below
            path = _save_model(checkpoint_path(out, step), model, saved_tok, step, stage, cfg, extra)
            rng = rng_state(device)  # the evaluation must not change the training's random streams
            g = evaluator(path, eval_tok(path), step, out / "evals" / f"step_{step:08d}.json")
            set_rng_state(rng, device)
            e = {"step": step, "mean": g["mean"], "iqm": g["iqm"], "std": g["std"], "raw_scores": g["raw_scores"]}
            evals.append(e)
            best = _keep_best(out, path, e, best, eval_tok)
            row.update(eval_mean=e["mean"], eval_iqm=e["iqm"], best_mean=best["mean"])
            reporter.log(f"step {step}: eval mean return {e['mean']:.1f} (best {best['mean']:.1f} at step "
                         f"{best['step']})")
        if step % cfg.log_every == 0 or step == total or do_eval:
            row.update({k: v / n_sum for k, v in sums.items()}, step=step, stage=stage,
                       elapsed_s=time.perf_counter() - t0)
            log.write(row)
            reporter.log(f"step {step} (stage {stage}) loss {row['loss']:.4f} td {row['td']:.4f} "
                         f"{cfg.action_loss if stage == 2 else 'cql'} {row['action_loss']:.4f}")
            sums, n_sum = {}, 0
        if (cfg.save_every and step % cfg.save_every == 0) or do_eval or step == stop_at:
            state.update(step=step, stage=stage, real=real_batches.position,
                         synthetic=syn_batches.position if syn_batches is not None else [0, 0], log_sums=sums,
                         log_n=n_sum, evals=evals, best=best, elapsed_s=time.perf_counter() - t0)
            save_checkpoint(out, model, opt, state, run_cfg, ctx, joint_tok, keep=cfg.keep_checkpoints, gamma=cfg.gamma)
    if step < total:
        log.close()  # releases the run's lock
        reporter.log(f"stopped at step {step} of {total}: continue with --resume")
        return {"out": str(out), "step": step, "finished": False, "param_fingerprint": param_fingerprint(model)}
    final_stage = 2 if cfg.stage2_steps else 1
    _save_model(out / FINAL_DIR, model, saved_tok, step, final_stage, cfg, extra)
    summary = {"out": str(out), "game": info.name, "task_id": info.task_id, "step": step, "finished": True,
               "from_scratch": cfg.from_scratch, "source_checkpoint": str(ckpt_path),
               "source_step": run.meta.get("step"),
               "final": {"path": str(out / FINAL_DIR), "step": step, "tokenizer": str(eval_tok(out / FINAL_DIR))},
               "best": best, "evals": evals, "synthetic_per_batch": n_syn, "device": str(device),
               "tokenizer": {"source": str(tokenizer), "trained": cfg.train_tokenizer,
                             "final": str(eval_tok(out / FINAL_DIR)),
                             "best": best["tokenizer"] if best else None},
               "trainable_parameters": model.num_trainable_parameters(),
               "param_fingerprint": param_fingerprint(model), "config": to_dict(cfg)}
    ckpt.write_json_atomic(out / SUMMARY_FILE, summary)
    log.close()  # the run's last write is done: its lock is released
    return summary


def _pad_steps(batch: dict[str, Tensor], steps: int) -> dict[str, Tensor]:
    """Right-pad the real rows to ``steps`` steps (padding: obs 0, action 0, reward 0, not valid)."""
    L = batch["action"].shape[1]
    if steps == L:
        return batch
    if steps < L:
        raise ValueError(f"seq_len {L} is longer than the synthetic segments ({steps} steps)")
    pad = steps - L
    out = dict(batch)
    for k in ("obs_tokens", "action", "reward", "terminal", "valid"):
        v = batch[k]
        out[k] = torch.cat([v, v.new_zeros((v.shape[0], pad, *v.shape[2:]))], 1)
    return out
