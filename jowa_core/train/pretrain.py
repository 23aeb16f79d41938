"""Two-stage JOWA pretraining (paper §4.3, Appendix E.1.1; reference §3), read top to bottom:

stage 1 (``stage1_steps``): world loss only (eq. 8), world lr 1e-4, Q head frozen.
stage 2 (``stage2_steps``): beta * L_world + L_action (eq. 9-10): C51 TD against a target Q head copied every
``target_update_every`` steps + alpha * CQL; world lr 5e-5, Q lr 5e-5.

Differences from the official code, on purpose (see docs/pretraining.md): the stage-2 world lr really is
5e-5 (``train.lr_world_stage2=1e-4`` reproduces the official single-run behaviour); DDP gradients are
synchronised by calling the wrapper; CQL's logsumexp runs over the game's valid actions
(``train.cql_actions=all`` is the official behaviour); batches are balanced across games.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from jowa_core import checkpoint as ckpt
from jowa_core import devices
from jowa_core import dist as jdist
from jowa_core.config import check_bounds, from_dict, save_yaml, to_dict
from jowa_core.constants import CONFIG_FILE, FINAL_DIR, OBS_TOKENS, OPTIMIZER_FILE, STATE_FILE
from jowa_core.data.segments import make_loader
from jowa_core.games import resolve as resolve_games
from jowa_core.models.losses import cql_loss, expected_q, td_loss, world_losses
from jowa_core.models.lpips import load_lpips
from jowa_core.models.tokenizer import Tokenizer, TokenizerConfig, load_tokenizer, save_tokenizer
from jowa_core.models.world_action import WorldActionConfig, WorldActionModel, segment_tokens
from jowa_core.progress import NullReporter
from jowa_core.train.run import MetricsLog, checkpoint_path, prepare_run, rng_state, set_rng_state, training_checkpoint
from jowa_core.train.step import optimizer_step


@dataclass
class DataConfig:
    path: str = ""  # a root of <Game>.zarr stores (or one store); usually given with --data
    games: list[str] | None = None  # game or group names (atari15, ...); None = every store under path
    seq_len: int = 8
    stride: int = 4
    observations: Literal["tokens", "frames"] = "tokens"  # tokens: the stores' obs_tokens (jowa tokenize)
    tokenizer: str | None = None  # tokenizer checkpoint to encode frames on the fly (observations=frames)
    num_workers: int = 2


@dataclass
class TrainConfig:
    batch_size: int = 512  # global; split evenly over ranks
    stage1_steps: int = 250_000
    stage2_steps: int = 1_500_000
    lr_world_stage1: float = 1e-4
    lr_world_stage2: float = 5e-5  # official single runs effectively keep 1e-4 (a bug)
    lr_q: float = 5e-5
    # constant: the paper's and the official schedule; cosine: each stage's learning rates fall along a half
    # cosine from their set values to lr_final_ratio times them by the stage's last step (docs/pretraining.md)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_final_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    gamma: float = 0.99
    world_weight_stage2: float = 0.1  # beta of eq. 10
    cql_alpha: float = 0.1
    cql_actions: Literal["valid", "all"] = "valid"  # all = the official code (logsumexp over 18 actions)
    target_update_every: int = 1000
    detach_q_input: bool = False  # sg(L_action) ablation: Q loss does not train the backbone
    # WPT's reward-free pretraining: world losses on observations and termination only, rewards never read (the
    # stores may hold none: zeros or NaN); needs stage2_steps=0, the Q head learns in fine-tuning (docs/online.md)
    reward_free: bool = False
    tokenizer_training: Literal["frozen", "joint_stage1"] = "frozen"  # joint_stage1: the official schedule
    tokenizer_lr: float = 1e-4  # Adam, joint_stage1 only
    tokenizer_batch_size: int = 2048  # frames per step (global), drawn with replacement from the batch's frames
    perceptual_weights: str | None = None  # LPIPS weights for the joint tokenizer loss (docs/tokenizer.md)
    seed: int = 0
    device: str = "auto"
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False
    log_every: int = 100
    save_every: int = 5000
    keep_checkpoints: int = 3
    stop_after: int | None = None  # checkpoint and stop after this many steps (resume later)
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "jowa"

    BOUNDS: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "batch_size": (1, None), "stage1_steps": (0, None), "stage2_steps": (0, None),
        "lr_world_stage1": (0, None), "lr_world_stage2": (0, None), "lr_q": (0, None), "lr_final_ratio": (0, 1),
        "weight_decay": (0, None), "grad_clip": (0, None), "gamma": (0, 1), "world_weight_stage2": (0, None),
        "cql_alpha": (0, None), "target_update_every": (1, None), "tokenizer_lr": (0, None),
        "tokenizer_batch_size": (1, None), "log_every": (1, None), "save_every": (1, None),
        "keep_checkpoints": (0, None), "stop_after": (1, None),
    }

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass
class PretrainConfig:
    model: WorldActionConfig = field(default_factory=lambda: from_dict(WorldActionConfig, {"preset": "tiny"}))
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


METRICS = ["step", "stage", "epoch", "loss", "world_obs", "world_reward", "world_end", "td", "cql", "q_taken",
           "q_max", "grad_norm", "lr_world", "lr_q", "tokens_per_s", "segments_per_s", "elapsed_s",
           "tokenizer_total", "tokenizer_reconstruction", "tokenizer_commitment", "tokenizer_perceptual"]


# --------------------------------------------------------------------------------------------------------
# Loss


def jowa_loss(model: nn.Module, batch: dict[str, Tensor], stage: int, cfg: TrainConfig,
              support: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The stage's total loss and its (detached) terms for one batch of segments.

    ``model`` may be the DDP wrapper (its forward is what synchronises gradients).
    """
    obs_tokens, action = batch["obs_tokens"], batch["action"]  # (B, L, 36), (B, L)
    tokens = segment_tokens(obs_tokens, action)  # (B, L*37)
    heads = ("obs", "reward", "end", "q") if stage == 2 else ("obs", "reward", "end")
    out = model(tokens, batch["game_id"], heads=heads, with_target=stage == 2, detach_q_input=cfg.detach_q_input)
    reward = torch.zeros_like(batch["reward"]) if cfg.reward_free else batch["reward"]
    w = world_losses(out.obs_logits, out.reward_logits, out.end_logits, obs_tokens, reward, batch["terminal"],
                     batch["valid"])
    world = w["obs"] + w["end"] + (0 if cfg.reward_free else w["reward"])
    terms = {"world_obs": w["obs"], "world_end": w["end"]} | ({} if cfg.reward_free else {"world_reward": w["reward"]})
    if stage == 1:
        return world, {**terms, "loss": world}
    td = td_loss(out.q_logits, out.q_target_logits, action, batch["reward"], batch["terminal"], batch["valid"],
                 batch["action_mask"], support, cfg.gamma)
    mask = batch["action_mask"] if cfg.cql_actions == "valid" else None
    cql = cql_loss(out.q_logits, action, batch["valid"], support, mask)
    loss = cfg.world_weight_stage2 * world + td + cfg.cql_alpha * cql
    with torch.no_grad():
        q = expected_q(out.q_logits.float(), support)  # (B, L, A)
        valid = batch["valid"]
        q_taken = q.gather(-1, action[..., None])[..., 0][valid]
        q_max = q.masked_fill(~batch["action_mask"][:, None], -math.inf).amax(-1)[valid]
    return loss, {**terms, "td": td, "cql": cql, "loss": loss, "q_taken": q_taken.mean(), "q_max": q_max.mean()}


# --------------------------------------------------------------------------------------------------------
# Optimiser


def build_optimizer(model: WorldActionModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """``adamw`` with pretraining's rates: the world groups at ``lr_world_stage1``, the Q head at ``lr_q``."""
    return adamw(model, lr_world=cfg.lr_world_stage1, lr_q=cfg.lr_q, weight_decay=cfg.weight_decay, betas=cfg.betas)


def adamw(model: WorldActionModel, *, lr_world: float, lr_q: float, weight_decay: float,
          betas: list[float]) -> torch.optim.AdamW:
    """AdamW with the official groups: Linear weights decay; biases, LayerNorm and embeddings do not; the Q
    head (all of it) decays at its own lr. The target head is not optimised."""
    decay, no_decay, q_params = [], [], []
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    for name, p in model.named_parameters():
        if name.startswith("head_q_target."):
            continue
        if name.startswith("head_q."):
            q_params.append(p)
        elif id(p) in linear_weights:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "world_decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "world_no_decay"},
        {"params": q_params, "weight_decay": weight_decay, "name": "q", "lr": lr_q},
    ]
    fused = all(p.is_cuda for g in groups for p in g["params"]) and any(g["params"] for g in groups)
    return torch.optim.AdamW(groups, lr=lr_world, betas=tuple(betas), fused=fused or None)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The multiplier of the stage's learning rates for optimiser step ``step`` (0-based): 1 when constant; with
    cosine, 1 at the stage's first step falling to ``lr_final_ratio`` at its last."""
    if cfg.lr_schedule == "constant":
        return 1.0
    start, length = (0, cfg.stage1_steps) if step < cfg.stage1_steps else (cfg.stage1_steps, cfg.stage2_steps)
    frac = min(max(step - start, 0) / max(length - 1, 1), 1.0)
    return cfg.lr_final_ratio + (1.0 - cfg.lr_final_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


def set_stage_lr(opt: torch.optim.Optimizer, stage: int, cfg: TrainConfig, factor: float = 1.0) -> None:
    for g in opt.param_groups:
        base = cfg.lr_q if g["name"] == "q" else (cfg.lr_world_stage1 if stage == 1 else cfg.lr_world_stage2)
        g["lr"] = base * factor


# --------------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(out: Path, model: WorldActionModel, opt: torch.optim.Optimizer, state: dict[str, Any],
                    cfg: Any, ctx: jdist.DistContext, joint_tok: JointTokenizer | None = None, *, keep: int,
                    gamma: float, tokens_tokenizer: str | None = None) -> Path:
    """``out/checkpoints/step_XXXXXXXX``, complete or absent: every rank writes its RNG state into a hidden
    directory, rank 0 adds the rest and renames it; the newest ``keep`` checkpoints are kept. ``cfg`` is the run's
    config (a dataclass with the architecture in ``cfg.model``), saved as its config.yaml; ``gamma`` (the planner's
    discount) and ``tokens_tokenizer`` (sha256 of the tokenizer that made the training tokens, checked when the
    model is evaluated) go into the model metadata."""
    with training_checkpoint(out, state["step"], keep, ctx) as tmp:
        ckpt.save_tensors(tmp / f"rng_rank{ctx.rank}.safetensors", rng_state(ctx.device))
        jdist.barrier(ctx)  # every rank's RNG file is in before rank 0 finishes the directory
        if ctx.is_main:
            ckpt.write_model_files(tmp, "world_action", to_dict(cfg.model), model.state_dict(),
                                   step=state["step"], stage=state["stage"], games=state.get("games"), gamma=gamma,
                                   tokens_tokenizer_sha256=tokens_tokenizer)
            torch.save(opt.state_dict(), tmp / OPTIMIZER_FILE)
            ckpt.write_json_atomic(tmp / STATE_FILE, {**state, "world_size": ctx.world_size})
            save_yaml(cfg, tmp / CONFIG_FILE)
            if joint_tok is not None:
                joint_tok.save(tmp)
    return checkpoint_path(out, state["step"])


def load_checkpoint(path: Path, model: WorldActionModel, opt: torch.optim.Optimizer,
                    ctx: jdist.DistContext) -> dict[str, Any]:
    meta, tensors = ckpt.load_model(path, "world_action")
    model.load_state_dict(tensors)
    ckpt.load_optimizer_state(opt, path / OPTIMIZER_FILE, ctx.device)
    state = ckpt.read_json(path / STATE_FILE)
    if state.get("world_size", 1) != ctx.world_size:
        raise ValueError(f"{path} was written by {state.get('world_size')} processes; resume with the same number "
                         f"(now {ctx.world_size})")
    set_rng_state(ckpt.load_tensors(path / f"rng_rank{ctx.rank}.safetensors"), ctx.device)
    return state


class JointTokenizer:
    """The official schedule's tokenizer training during stage 1: each step, Adam on the VQ-VAE loss of
    ``batch_size`` frames drawn with replacement from the batch's valid frames; the world model
    then tokenises with the updated tokenizer (no gradient). Gradients are averaged over ranks explicitly
    (the loss is not the module's forward, so DDP hooks would not see it)."""

    def __init__(self, tokenizer: nn.Module, ctx: jdist.DistContext, *, lr: float, batch_size: int,
                 perceptual_weights: str | None):
        self.tok, self.ctx, self.batch_size = tokenizer, ctx, batch_size
        self.opt = torch.optim.Adam(tokenizer.parameters(), lr=lr)
        self.perceptual = None
        if perceptual_weights:
            self.perceptual = load_lpips(perceptual_weights, device=ctx.device)

    def step(self, frames: Tensor, valid: Tensor) -> dict[str, Tensor]:
        import torch.distributed as dist

        pool = frames[valid]  # (N, 84, 84) uint8
        idx = torch.randint(0, len(pool), (self.batch_size // self.ctx.world_size,),
                            device=pool.device)
        self.tok.train().requires_grad_(True)
        losses = self.tok.compute_loss(pool[idx], self.perceptual)
        self.opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        if self.ctx.distributed:
            for p in self.tok.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.ctx.world_size
        torch.nn.utils.clip_grad_norm_(self.tok.parameters(), 1.0)
        self.opt.step()
        self.tok.eval().requires_grad_(False)
        return {f"tokenizer_{k}": v.detach() for k, v in losses.items()}

    def save(self, directory: Path) -> None:
        ckpt.save_tensors(directory / "tokenizer.safetensors", self.tok.state_dict())
        ckpt.write_json_atomic(directory / "tokenizer_config.json", to_dict(self.tok.cfg))
        torch.save(self.opt.state_dict(), directory / "tokenizer_optimizer.pt")

    def load(self, directory: Path) -> None:
        self.tok.load_state_dict(ckpt.load_tensors(directory / "tokenizer.safetensors", self.ctx.device))
        ckpt.load_optimizer_state(self.opt, directory / "tokenizer_optimizer.pt", self.ctx.device)


# --------------------------------------------------------------------------------------------------------
# Training


def _to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def encode_frames(tokenizer: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Replace ``obs`` (B, L, 84, 84) uint8 frames by ``obs_tokens`` (B, L, 36) from a frozen tokenizer."""
    obs = batch.pop("obs")
    B, L = obs.shape[:2]
    with torch.no_grad():
        batch["obs_tokens"] = tokenizer.encode(obs.reshape(B * L, *obs.shape[2:])).view(B, L, -1)
    return batch


def pretrain(cfg: PretrainConfig, out: str | os.PathLike, resume: bool = False, reporter=None) -> dict[str, Any]:
    """Run (or resume) pretraining into the run directory ``out``; returns a summary dict."""
    reporter = reporter or NullReporter()
    tcfg, dcfg = cfg.train, cfg.data
    out = Path(out)
    ctx = jdist.setup(tcfg.device)
    try:
        return _pretrain(cfg, tcfg, dcfg, out, resume, reporter, ctx)
    finally:
        jdist.teardown(ctx)


def _open_data(cfg: PretrainConfig, ctx: jdist.DistContext) -> tuple[Any, nn.Module | None]:
    """This rank's segment loader and, when observations are frames, the tokenizer that encodes them (loaded, or
    new for joint training); checks that the tokens' vocabulary is the model's."""
    tcfg, dcfg = cfg.train, cfg.data
    games = resolve_games(dcfg.games) if dcfg.games else None
    loader = make_loader(dcfg.path, tcfg.batch_size // ctx.world_size, seq_len=dcfg.seq_len, stride=dcfg.stride,
                         seed=tcfg.seed, num_workers=dcfg.num_workers, rank=ctx.rank, world_size=ctx.world_size,
                         observations="tokens" if dcfg.observations == "tokens" else "frames", games=games,
                         pin_memory=ctx.device.type == "cuda")
    tokenizer = None
    joint = tcfg.tokenizer_training == "joint_stage1"
    if joint and dcfg.observations != "frames":
        raise ValueError("train.tokenizer_training=joint_stage1 needs data.observations=frames")
    if joint and tcfg.tokenizer_batch_size % ctx.world_size:
        raise ValueError(f"train.tokenizer_batch_size is not divisible by {ctx.world_size} processes")
    if dcfg.observations == "frames":
        if dcfg.tokenizer:
            tokenizer = load_tokenizer(dcfg.tokenizer, device=ctx.device)
        elif joint:  # trained from scratch in stage 1, as the official code
            torch.manual_seed(tcfg.seed)
            tokenizer = Tokenizer(TokenizerConfig(vocab_size=cfg.model.obs_vocab)).to(ctx.device)
        else:
            raise ValueError("data.observations=frames needs data.tokenizer (a tokenizer checkpoint)")
        tokenizer.eval().requires_grad_(False)
        vocab = tokenizer.cfg.vocab_size
    else:
        vocab = store_vocab(loader.dataset.paths)
    if vocab is not None and vocab != cfg.model.obs_vocab:
        raise ValueError(f"the observation tokens come from a tokenizer with vocab {vocab}, but model.obs_vocab is "
                         f"{cfg.model.obs_vocab}; set model.obs_vocab={vocab}")
    task_ids = loader.dataset.task_id
    if task_ids.size and (int(task_ids.min()) < 0 or int(task_ids.max()) >= cfg.model.max_tasks):
        raise ValueError(f"the stores' task ids {sorted(set(task_ids.tolist()))} do not fit model.max_tasks="
                         f"{cfg.model.max_tasks} (ids 0..{cfg.model.max_tasks - 1})")
    return loader, tokenizer


def _pretrain(cfg: PretrainConfig, tcfg: TrainConfig, dcfg: DataConfig, out: Path, resume: bool, reporter,
              ctx: jdist.DistContext) -> dict[str, Any]:
    if not dcfg.path:
        raise ValueError("no data: pass --data (a folder of <Game>.zarr stores) or set data.path")
    _check_train(tcfg, ctx)
    total_steps = tcfg.stage1_steps + tcfg.stage2_steps
    resume_from = prepare_run(out, resume, ctx.is_main)

    loader, tokenizer = _open_data(cfg, ctx)
    dataset = loader.dataset
    joint = tcfg.tokenizer_training == "joint_stage1"

    if resume_from is not None:  # before anything in `out` is rewritten
        was = ckpt.read_json(resume_from / ckpt.META).get("tokens_tokenizer_sha256")
        if was and was != dataset.tokens_tokenizer:
            raise ValueError(f"{resume_from} trained on tokens of the tokenizer with sha256 {was[:12]}...; the data "
                             f"now holds tokens of another one. Resume on the data it started with")

    jdist.barrier(ctx)
    if ctx.is_main and resume_from is None:  # only now that the data and config are known to be usable
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, out / CONFIG_FILE)
    torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
    model = WorldActionModel(cfg.model).to(ctx.device)
    opt = build_optimizer(model, tcfg)
    joint_tok = JointTokenizer(tokenizer, ctx, lr=tcfg.tokenizer_lr, batch_size=tcfg.tokenizer_batch_size,
                               perceptual_weights=tcfg.perceptual_weights) if joint else None
    state: dict[str, Any] = {"step": 0, "stage": 1, "epoch": 0, "batch_in_epoch": 0, "games": dataset.games}
    if resume_from is not None:
        state.update(load_checkpoint(resume_from, model, opt, ctx))
        if ctx.is_main:  # the checkpoint fits this config: it is the run's config from now on
            save_yaml(cfg, out / CONFIG_FILE)
        if joint_tok is not None:
            joint_tok.load(resume_from)
        reporter.log(f"resuming from {resume_from} at step {state['step']}")
    else:
        torch.manual_seed(tcfg.seed * 1_000_003 + ctx.rank)  # dropout streams differ per rank
    support = model.support
    autocast = devices.autocast(ctx.device, tcfg.amp)

    wrapped: nn.Module = model
    current_stage = 0

    def enter_stage(stage: int, fresh: bool) -> nn.Module:
        """Freeze/unfreeze the Q head and (re)build the DDP wrapper for the stage (the loop sets learning rates)."""
        if stage == 2 and fresh:
            model.update_target()
        model.head_q.requires_grad_(stage == 2)
        net: nn.Module = model
        if tcfg.compile:
            net = torch.compile(net)
        if ctx.distributed:
            net = DistributedDataParallel(net, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
        return net

    log = MetricsLog(out, METRICS, state["step"], ctx.is_main, tensorboard="pretrain" if tcfg.tensorboard else None,
                     wandb={"project": tcfg.wandb_project, "config": to_dict(cfg)} if tcfg.wandb else None)
    task = reporter.task("pretrain", total=total_steps, unit="steps", completed=state["step"])
    sums: dict[str, Tensor] = {}
    n_sum, t_last, t0 = 0, time.perf_counter(), time.perf_counter()
    tokens_per_batch = tcfg.batch_size * dcfg.seq_len * cfg.model.tokens_per_step
    sampler = loader.batch_sampler
    stop_at = min(total_steps, tcfg.stop_after) if tcfg.stop_after else total_steps
    step = state["step"]
    model.train()
    while step < stop_at:
        sampler.set_epoch(state["epoch"], state["batch_in_epoch"])
        for batch in loader:
            stage = 1 if step < tcfg.stage1_steps else 2
            if stage != current_stage:
                wrapped = enter_stage(stage, fresh=(step == tcfg.stage1_steps) or current_stage == 1)
                current_stage = stage
            set_stage_lr(opt, stage, tcfg, lr_factor(step, tcfg))  # the stage's rates; constant or cosine
            batch = _to_device(batch, ctx.device)
            if joint_tok is not None and stage == 1:
                with autocast():
                    terms_tok = joint_tok.step(batch["obs"], batch["valid"])
            if tokenizer is not None:
                batch = encode_frames(tokenizer, batch)
            with autocast():
                loss, terms = jowa_loss(wrapped, batch, stage, tcfg, support)
            grad_norm = optimizer_step(opt, loss, [p for p in model.parameters() if p.requires_grad], tcfg.grad_clip)
            step += 1
            state.update(step=step, stage=stage, batch_in_epoch=state["batch_in_epoch"] + 1)
            if step % tcfg.target_update_every == 0:
                model.update_target()
            if joint_tok is not None and stage == 1:
                terms = {**terms, **terms_tok}
            for k, v in {**terms, "grad_norm": grad_norm}.items():  # summed on the device, read at log time
                sums[k] = sums[k] + v.detach().float() if k in sums else v.detach().float()
            n_sum += 1
            reporter.advance(task)
            if step % tcfg.log_every == 0 or step == stop_at:
                now = time.perf_counter()
                row = jdist.mean_across_ranks({k: float(v) / n_sum for k, v in sums.items()}, ctx)
                rate = n_sum / max(now - t_last, 1e-9)
                lrs = {g["name"]: g["lr"] for g in opt.param_groups}
                row.update(step=step, stage=stage, epoch=state["epoch"], lr_world=lrs["world_decay"], lr_q=lrs["q"],
                           tokens_per_s=rate * tokens_per_batch, segments_per_s=rate * tcfg.batch_size,
                           elapsed_s=now - t0)
                log.write(row)
                if ctx.is_main:
                    reporter.log(_format_row(row))
                sums, n_sum, t_last = {}, 0, time.perf_counter()
            if step % tcfg.save_every == 0 or step == stop_at:
                save_checkpoint(out, model, opt, state, cfg, ctx, joint_tok, keep=cfg.train.keep_checkpoints,
                                gamma=cfg.train.gamma, tokens_tokenizer=dataset.tokens_tokenizer)
            if step >= stop_at:
                break
        else:
            state.update(epoch=state["epoch"] + 1, batch_in_epoch=0)
    if ctx.is_main and step >= total_steps:
        _write_final(out, cfg, model, state, dataset, tokenizer if joint_tok is not None else None)
        reporter.log(f"final model: {out / FINAL_DIR} (training checkpoint {ckpt.latest_checkpoint(out)})")
    log.close()  # the run's last write is done: its lock is released
    return {"out": str(out), "step": step, "finished": step >= total_steps, "stage": state["stage"],
            "games": dataset.games, "world_size": ctx.world_size,
            "trainable_parameters": model.num_trainable_parameters(), "param_fingerprint": param_fingerprint(model)}


def _write_final(out: Path, cfg: PretrainConfig, model: WorldActionModel, state: dict[str, Any], dataset: Any,
                 trained_tokenizer: nn.Module | None) -> None:
    """``final/`` (the model alone, for evaluation and fine-tuning) and, when the tokenizer trained jointly,
    ``final_tokenizer/``."""
    with ckpt.atomic_dir(out / FINAL_DIR) as tmp:
        ckpt.write_model_files(tmp, "world_action", to_dict(cfg.model), model.state_dict(), step=state["step"],
                               stage=state["stage"], games=dataset.games, gamma=cfg.train.gamma,
                               tokens_tokenizer_sha256=dataset.tokens_tokenizer)
    if trained_tokenizer is not None:
        save_tokenizer(trained_tokenizer, out / "final_tokenizer", step=state["step"])


def _check_train(tcfg: TrainConfig, ctx: jdist.DistContext) -> None:
    if tcfg.batch_size % ctx.world_size:
        raise ValueError(f"train.batch_size {tcfg.batch_size} is not divisible by {ctx.world_size} processes")
    if tcfg.stage1_steps + tcfg.stage2_steps < 1:
        raise ValueError("train.stage1_steps + train.stage2_steps must be >= 1")
    if tcfg.reward_free and tcfg.stage2_steps:
        raise ValueError("train.reward_free needs train.stage2_steps=0: the Q head needs rewards, it learns in "
                         "fine-tuning")
    if not 0.0 <= tcfg.lr_final_ratio <= 1.0:
        raise ValueError(f"train.lr_final_ratio must be in [0, 1], got {tcfg.lr_final_ratio}")


def param_fingerprint(model: nn.Module) -> str:
    """sha256 of every parameter and buffer, in state_dict order (compare runs and ranks exactly)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _format_row(row: dict[str, float]) -> str:
    keys = ["loss", "world_obs", "world_reward", "world_end", "td", "cql", "q_taken", "grad_norm"]
    parts = [f"step {int(row['step'])} (stage {int(row['stage'])})"]
    parts += [f"{k} {row[k]:.4f}" for k in keys if k in row]
    parts.append(f"{row['tokens_per_s']:.0f} tok/s")
    return " ".join(parts)


def store_vocab(paths: list[Path]) -> int | None:
    """The tokenizer vocab recorded with the stores' obs_tokens (None when not recorded)."""
    import zarr

    vocabs = set()
    for p in paths:
        attrs = dict(zarr.open_group(str(p), mode="r", zarr_format=3)[OBS_TOKENS].attrs)
        v = (attrs.get("tokenizer_config") or {}).get("vocab_size")
        if v is not None:
            vocabs.add(int(v))
    if len(vocabs) > 1:
        raise ValueError(f"the stores were tokenized with different vocab sizes {sorted(vocabs)}")
    return vocabs.pop() if vocabs else None
