"""The training loop of the paper's baselines (``jowa pretrain --algo mtbc|scaled-ql``), on the trainer skeleton
(``train/run.py``) and the same segment loader as JOWA. Each algorithm (``train/mtbc.py``, ``train/scaled_ql.py``)
is an ``Algorithm``: it builds its model and optimiser, computes its loss on a batch of segments and keeps its own
extra state (Scaled-QL's target network); this module owns the loop, checkpoints, resume, metrics and ``final/``.

One optimiser step per batch, one learning rate, gradient clipping, bf16 autocast on GPU, DDP under torchrun
(the loss calls the wrapper). Fine-tuning (``finetune_baseline``) is the same loop started from a pretrained
model on a held-out game's store with the paper's protocol (Appendix E.2), evaluated periodically; the best
snapshot is kept.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from jowa_core import checkpoint as ckpt
from jowa_core import devices
from jowa_core import dist as jdist
from jowa_core.config import check_bounds, save_yaml, to_dict
from jowa_core.constants import CONFIG_FILE, FINAL_DIR, OPTIMIZER_FILE, STATE_FILE
from jowa_core.data.segments import make_loader
from jowa_core.games import resolve as resolve_games
from jowa_core.progress import NullReporter
from jowa_core.train.pretrain import param_fingerprint
from jowa_core.train.run import MetricsLog, checkpoint_path, prepare_run, rng_state, set_rng_state, training_checkpoint
from jowa_core.train.step import optimizer_step


@dataclass
class LoopConfig:
    """What every baseline's training loop reads (the algorithms add their own fields)."""

    batch_size: int = 512  # global; split evenly over ranks (paper: 512 for every method)
    steps: int = 1_750_000  # paper: 1.75M gradient steps for every method
    lr: float = 1e-4
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: Literal["auto", "bf16", "off"] = "auto"
    log_every: int = 100
    save_every: int = 5000
    keep_checkpoints: int = 3
    stop_after: int | None = None  # checkpoint and stop after this many steps (resume later)
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "jowa"

    BOUNDS: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "batch_size": (1, None), "steps": (1, None), "lr": (0, None), "grad_clip": (0, None),
        "log_every": (1, None), "save_every": (1, None), "keep_checkpoints": (0, None), "stop_after": (1, None),
    }

    def __post_init__(self) -> None:
        check_bounds(self)


class Algorithm(Protocol):
    """One baseline: its checkpoint kind, metric columns, model, optimiser, loss and extra state."""

    kind: str
    metrics: list[str]

    def build(self, games: list[str], device: torch.device) -> nn.Module: ...

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer: ...

    def loss(self, net: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]: ...

    def after_step(self, step: int) -> None: ...

    def extra_state(self) -> dict[str, Tensor]: ...

    def load_extra_state(self, tensors: dict[str, Tensor]) -> None: ...

    def model_meta(self) -> dict[str, Any]: ...


EXTRA_FILE = "extra_state.safetensors"  # an algorithm's own tensors in a training checkpoint (target network)
Evaluator = Callable[[Path, int], dict[str, Any]]  # (checkpoint dir, step) -> {"score": float, ...}


def _to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def open_loader(cfg: Any, ctx: jdist.DistContext) -> Any:
    """This rank's game-balanced segment loader for ``cfg.data`` (observations as the algorithm needs them)."""
    dcfg, tcfg = cfg.data, cfg.train
    if not dcfg.path:
        raise ValueError("no data: pass --data (a folder of <Game>.zarr stores) or set data.path")
    if tcfg.batch_size % ctx.world_size:
        raise ValueError(f"train.batch_size {tcfg.batch_size} is not divisible by {ctx.world_size} processes")
    games = resolve_games(dcfg.games) if dcfg.games else None
    return make_loader(dcfg.path, tcfg.batch_size // ctx.world_size, seq_len=dcfg.seq_len, stride=dcfg.stride,
                       seed=tcfg.seed, num_workers=dcfg.num_workers, rank=ctx.rank, world_size=ctx.world_size,
                       observations=dcfg.observations, games=games, pin_memory=ctx.device.type == "cuda")


def save_training_checkpoint(out: Path, algo: Algorithm, model: nn.Module, opt: torch.optim.Optimizer,
                             state: dict[str, Any], cfg: Any, ctx: jdist.DistContext) -> Path:
    """``out/checkpoints/step_XXXXXXXX``: model files (the checkpoint kind of the algorithm), optimiser, loop
    state, RNG of every rank, the algorithm's extra tensors and the run's config."""
    with training_checkpoint(out, state["step"], cfg.train.keep_checkpoints, ctx) as tmp:
        ckpt.save_tensors(tmp / f"rng_rank{ctx.rank}.safetensors", rng_state(ctx.device))
        jdist.barrier(ctx)
        if ctx.is_main:
            write_model(tmp, algo, model, cfg, state)
            torch.save(opt.state_dict(), tmp / OPTIMIZER_FILE)
            ckpt.save_tensors(tmp / EXTRA_FILE, algo.extra_state())
            ckpt.write_json_atomic(tmp / STATE_FILE, {**state, "world_size": ctx.world_size})
            save_yaml(cfg, tmp / CONFIG_FILE)
    return checkpoint_path(out, state["step"])


def write_model(directory: Path, algo: Algorithm, model: nn.Module, cfg: Any, state: dict[str, Any]) -> None:
    ckpt.write_model_files(directory, algo.kind, to_dict(cfg.model), model.state_dict(), step=state["step"],
                           games=state.get("games"), algo=algo.kind, **algo.model_meta())


def load_training_checkpoint(path: Path, algo: Algorithm, model: nn.Module, opt: torch.optim.Optimizer,
                             ctx: jdist.DistContext) -> dict[str, Any]:
    _, tensors = ckpt.load_model(path, algo.kind)
    ckpt.load_state_dict_checked(model, tensors, path)
    ckpt.load_optimizer_state(opt, path / OPTIMIZER_FILE, ctx.device)
    algo.load_extra_state(ckpt.load_tensors(path / EXTRA_FILE, ctx.device))
    state = ckpt.read_json(path / STATE_FILE)
    if state.get("world_size", 1) != ctx.world_size:
        raise ValueError(f"{path} was written by {state.get('world_size')} processes; resume with the same number "
                         f"(now {ctx.world_size})")
    set_rng_state(ckpt.load_tensors(path / f"rng_rank{ctx.rank}.safetensors"), ctx.device)
    return state


def train_baseline(algo_factory: Callable[[Any, jdist.DistContext, Any], Algorithm], cfg: Any,
                   out: str | os.PathLike, resume: bool = False, reporter=None,
                   init: Callable[[nn.Module, list[str]], None] | None = None,
                   evaluator: Evaluator | None = None, eval_every: int = 0) -> dict[str, Any]:
    """Train (or resume) a baseline into the run directory ``out``; returns a summary dict.

    ``algo_factory(cfg, ctx, dataset)`` builds the algorithm; ``init(model, games)`` loads pretrained weights
    into a fresh model (fine-tuning); ``evaluator(checkpoint, step)`` is called every ``eval_every`` steps and
    at the end, and the best-scoring snapshot is copied to ``out/best``.
    """
    reporter = reporter or NullReporter()
    out = Path(out)
    ctx = jdist.setup(cfg.train.device)
    try:
        return _train(algo_factory, cfg, out, resume, reporter, ctx, init, evaluator, eval_every)
    finally:
        jdist.teardown(ctx)


def _train(algo_factory, cfg, out: Path, resume: bool, reporter, ctx: jdist.DistContext, init, evaluator,
           eval_every: int) -> dict[str, Any]:
    tcfg = cfg.train
    resume_from = prepare_run(out, resume, ctx.is_main)
    loader = open_loader(cfg, ctx)
    dataset = loader.dataset
    algo = algo_factory(cfg, ctx, dataset)
    jdist.barrier(ctx)
    if ctx.is_main and resume_from is None:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, out / CONFIG_FILE)
    torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
    model = algo.build(dataset.games, ctx.device)
    if init is not None and resume_from is None:
        init(model, dataset.games)
        algo.after_step(0)  # e.g. the target network starts as the loaded model
    opt = algo.optimizer(model)
    state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "games": dataset.games,
                             "best_score": None, "best_step": None}
    if resume_from is not None:
        state.update(load_training_checkpoint(resume_from, algo, model, opt, ctx))
        reporter.log(f"resuming from {resume_from} at step {state['step']}")
    else:
        torch.manual_seed(tcfg.seed * 1_000_003 + ctx.rank)  # dropout streams differ per rank
    net: nn.Module = model
    if ctx.distributed:  # heads of games absent from a batch get no gradient
        net = DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
                                      find_unused_parameters=True)
    autocast = devices.autocast(ctx.device, tcfg.amp)
    log = MetricsLog(out, ["step", "epoch", *algo.metrics, "grad_norm", "lr", "samples_per_s", "elapsed_s",
                           "eval_score"], state["step"], ctx.is_main,
                     tensorboard=algo.kind if tcfg.tensorboard else None,
                     wandb={"project": tcfg.wandb_project, "config": to_dict(cfg)} if tcfg.wandb else None)
    task = reporter.task(algo.kind, total=tcfg.steps, unit="steps", completed=state["step"])
    sums: dict[str, Tensor] = {}
    n_sum, t_last, t0 = 0, time.perf_counter(), time.perf_counter()
    stop_at = min(tcfg.steps, tcfg.stop_after) if tcfg.stop_after else tcfg.steps
    step = state["step"]
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    while step < stop_at:
        loader.batch_sampler.set_epoch(state["epoch"], state["batch_in_epoch"])
        for batch in loader:
            batch = _to_device(batch, ctx.device)
            with autocast():
                loss, terms = algo.loss(net, batch)
            grad_norm = optimizer_step(opt, loss, params, tcfg.grad_clip)
            step += 1
            state.update(step=step, batch_in_epoch=state["batch_in_epoch"] + 1)
            algo.after_step(step)
            for k, v in {**terms, "grad_norm": grad_norm}.items():
                sums[k] = sums[k] + v.detach().float() if k in sums else v.detach().float()
            n_sum += 1
            reporter.advance(task)
            row: dict[str, Any] = {}
            if step % tcfg.log_every == 0 or step == stop_at:
                now = time.perf_counter()
                row = jdist.mean_across_ranks({k: float(v) / n_sum for k, v in sums.items()}, ctx)
                row.update(step=step, epoch=state["epoch"], lr=opt.param_groups[0]["lr"],
                           samples_per_s=n_sum / max(now - t_last, 1e-9) * tcfg.batch_size, elapsed_s=now - t0)
                sums, n_sum, t_last = {}, 0, time.perf_counter()
            evaluate_now = evaluator is not None and (step == tcfg.steps or (eval_every and step % eval_every == 0))
            if step % tcfg.save_every == 0 or step == stop_at or evaluate_now:
                path = save_training_checkpoint(out, algo, model, opt, state, cfg, ctx)
                if evaluate_now and ctx.is_main:
                    row = {**row, "step": step, "epoch": state["epoch"], **_evaluate(evaluator, path, step, state,
                                                                                     out, reporter)}
            if row:
                log.write(row)
                if ctx.is_main:
                    reporter.log(_format_row(row, algo.metrics))
            if step >= stop_at:
                break
        else:
            state.update(epoch=state["epoch"] + 1, batch_in_epoch=0)
    if ctx.is_main and step >= tcfg.steps:
        with ckpt.atomic_dir(out / FINAL_DIR) as tmp:
            write_model(tmp, algo, model, cfg, state)
        reporter.log(f"final model: {out / FINAL_DIR}")
    log.close()
    return {"out": str(out), "algo": algo.kind, "step": step, "finished": step >= tcfg.steps,
            "games": dataset.games, "world_size": ctx.world_size,
            "trainable_parameters": sum(p.numel() for p in params), "param_fingerprint": param_fingerprint(model),
            "best_score": state.get("best_score"), "best_step": state.get("best_step")}


BEST_DIR = "best"


def _evaluate(evaluator: Evaluator, path: Path, step: int, state: dict[str, Any], out: Path,
              reporter) -> dict[str, Any]:
    """Score the checkpoint at ``path``; a new best is copied (model files) to ``out/best``."""
    result = evaluator(path, step)
    score = float(result["score"])
    reporter.log(f"step {step}: evaluation score {score:g}")
    if state.get("best_score") is None or score > state["best_score"]:
        state.update(best_score=score, best_step=step)
        with ckpt.atomic_dir(out / BEST_DIR) as tmp:
            for name in (ckpt.WEIGHTS, ckpt.META):
                (tmp / name).write_bytes((path / name).read_bytes())
        ckpt.write_json_atomic(path / STATE_FILE, {**ckpt.read_json(path / STATE_FILE), **state})
    return {"eval_score": score}


def _format_row(row: dict[str, Any], metrics: list[str]) -> str:
    parts = [f"step {int(row['step'])}"]
    parts += [f"{k} {row[k]:.4f}" for k in [*metrics, "grad_norm", "eval_score"]
              if isinstance(row.get(k), float) and math.isfinite(row[k])]
    if "samples_per_s" in row:
        parts.append(f"{row['samples_per_s']:.0f} samples/s")
    return " ".join(parts)
