"""`jowa train-tokenizer`: train the VQ-VAE on frames of game stores (stage 1 of JOWA, tokenizer part).

Paper / official settings (reference §1.6-1.8): Adam, lr 1e-4, no weight decay, gradient clipping at 1.0,
batches of 2048 frames, bf16 autocast on GPU, loss = L1 + commitment + perceptual (weights 1).

Differences from the official loop, on purpose: frames are drawn uniformly (with replacement) from all
frames of all games, the same number per game in every batch (the official code draws frames out of the
world-model batch, padding frames included); the tokenizer trains on its own instead of alongside the
world model (the world model only ever sees it frozen in stage 2, and the released token dataset was built
from one fixed tokenizer checkpoint).

Determinism: batch ``s`` is a function of ``(seed, s)`` only, so batches can be read by DataLoader workers
in any order and a resumed run reads exactly the batches an uninterrupted one would have. A resumed run
(optimizer state, RNG state and weights restored from the latest checkpoint) is bit-for-bit the
uninterrupted run on CPU.

Run directory ``<out>``:
  ``config.yaml``                 the resolved TokenizerTrainConfig
  ``metrics.csv``                 one row per logged step (see ``METRIC_COLUMNS``)
  ``samples/step_XXXXXXXX.png``   held-out originals above their reconstructions
  ``checkpoints/step_XXXXXXXX/``  model + optimizer.pt + rng.safetensors + state.json; ``checkpoints/latest``
  ``final/``                      the trained tokenizer (a model checkpoint; ``load_tokenizer(out)`` reads it)
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from jowa_core import checkpoint as ckpt
from jowa_core import devices
from jowa_core import games as registry
from jowa_core.config import ConfigError, save_yaml, to_dict
from jowa_core.constants import CONFIG_FILE, FINAL_DIR, OPTIMIZER_FILE, STATE_FILE
from jowa_core.data.store import FRAME_SHAPE, FrameReader, GameStore, StoreError, list_stores, open_store
from jowa_core.devices import pick_device
from jowa_core.models.lpips import LPIPS, load_lpips
from jowa_core.models.tokenizer import (
    KIND,
    Tokenizer,
    TokenizerConfig,
    load_tokenizer,
    restart_dead_codes,
    tokenizer_tensors,
)
from jowa_core.progress import NullReporter, Reporter
from jowa_core.train.run import MetricsLog, checkpoint_path, prepare_run, rng_state, set_rng_state, training_checkpoint
from jowa_core.train.step import optimizer_step

METRIC_COLUMNS = (
    "step", "total", "reconstruction", "commitment", "perceptual", "heldout_l1", "grad_norm",
    "codebook_usage", "perplexity", "lr", "restarted_codes", "frames_per_s", "elapsed_s",
)
# Keys that may change between a run and its resumption (they do not change what is computed).
RESUMABLE_CHANGES = ("steps", "log_every", "save_every", "grid_every", "num_workers", "device", "keep_checkpoints",
                     "grid_frames")


class TrainError(ValueError):
    """Bad training input (output folder, resume mismatch, data); the message says what to do."""


@dataclass
class TokenizerTrainConfig:
    """Tokenizer training; defaults are the paper's (Table 12: Adam, lr 1e-4, batch 2048 frames)."""

    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    steps: int = 250_000  # stage 1 length; the released token dataset used the tokenizer at step 175,806
    batch_size: int = 2048  # frames per step (official: 256 per GPU x 8)
    lr: float = 1e-4
    grad_clip: float = 1.0
    perceptual_weights: str | None = None  # LPIPS weights file(s), comma-separated (e.g. the official tokenizer.pt)
    games: list[str] | None = None  # restrict to these games of the data folder; None: every store
    heldout_frames: int = 64  # frames of the held-out episodes used for held-out L1
    grid_frames: int = 16  # of those, how many appear in the PNG grids
    log_every: int = 100
    save_every: int = 5000
    grid_every: int = 5000
    keep_checkpoints: int = 3
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA (as the official code); ignored on CPU
    num_workers: int = 4  # DataLoader processes reading frames
    restart_dead_codes: int = 0  # >0: re-initialise codes unused for this many steps (not in the paper; 0 = off)
    # start from this tokenizer's weights (a checkpoint or run directory, same ``model``) instead of a random
    # initialisation, e.g. to adapt a pretrained tokenizer to a new game; the optimiser starts fresh
    init: str | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "save_every", "grid_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.heldout_frames < 0 or self.grid_frames < 0 or self.num_workers < 0 or self.restart_dead_codes < 0:
            raise ConfigError("heldout_frames, grid_frames, num_workers and restart_dead_codes must be >= 0")


# --------------------------------------------------------------------------------------------------------
# Frames


@dataclass
class GameFrames:
    """One store's frames: training rows are ``[0, train_rows)``, held-out rows ``[train_rows, num_rows)``."""

    game: str
    path: Path
    num_rows: int
    train_rows: int
    heldout_rows: np.ndarray  # the rows used for held-out metrics and grids


def split_store(store: GameStore, heldout: int) -> GameFrames:
    """Hold out the last episode (or the last 10% of rows when there is only one episode)."""
    n = store.num_steps
    if n < 2:
        raise TrainError(f"{store.path}: {n} frame(s); a store needs at least 2 to hold one out")
    if store.num_episodes >= 2:
        train = int(store.episode_start[-1])
    else:
        train = n - max(1, n // 10)
    count = min(heldout, n - train)
    rows = np.unique(np.linspace(train, n - 1, num=count).round().astype(np.int64)) if count else np.zeros(0, int)
    return GameFrames(game=store.game, path=store.path, num_rows=n, train_rows=train, heldout_rows=rows)


def select_stores(data: str | os.PathLike, games: list[str] | None) -> list[GameStore]:
    stores = [open_store(p) for p in list_stores(data)]
    if games:
        wanted = registry.resolve(games)
        have = {s.game: s for s in stores}
        missing = [g for g in wanted if g not in have]
        if missing:
            raise TrainError(f"{data}: no store for {missing}; it has {sorted(have)}")
        stores = [have[g] for g in wanted]
    return stores


def read_rows(reader: FrameReader, rows: np.ndarray) -> np.ndarray:
    """Frames at arbitrary ``rows`` (any order, repeats allowed), each compressed chunk decoded once."""
    rows = np.asarray(rows, np.int64)
    out = np.empty((len(rows), *FRAME_SHAPE), np.uint8)
    if not len(rows):
        return out
    cf = int(getattr(reader, "chunk_frames", 1) or 1)
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    chunk = srt // cf
    bounds = np.flatnonzero(np.diff(chunk)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(srt)], strict=True):
        c = int(chunk[lo])
        block = reader.read_range(c * cf, min((c + 1) * cf, len(reader)))
        out[order[lo:hi]] = block[srt[lo:hi] - c * cf]
    return out


def batch_counts(num_games: int, batch_size: int, step: int) -> np.ndarray:
    """Frames per game in batch ``step``: ``B // G`` each, the ``B % G`` extra ones round-robin over steps."""
    counts = np.full(num_games, batch_size // num_games, np.int64)
    r = batch_size % num_games
    if r:
        counts[(step * r + np.arange(r)) % num_games] += 1
    return counts


class FrameBatches(Dataset):
    """``dataset[step]`` = the (B, 84, 84) uint8 frames of batch ``step``: a function of ``(seed, step)``."""

    def __init__(self, parts: list[GameFrames], batch_size: int, seed: int):
        self.parts = parts
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.readers = [FrameReader(Path(p.path) / "obs") for p in parts]

    def __len__(self) -> int:
        return 2**62

    def rows(self, step: int) -> list[np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(step)]))
        counts = batch_counts(len(self.parts), self.batch_size, step)
        return [rng.integers(0, p.train_rows, size=int(c)) for p, c in zip(self.parts, counts, strict=True)]

    def __getitem__(self, step: int) -> torch.Tensor:
        frames = [read_rows(r, rows) for r, rows in zip(self.readers, self.rows(step), strict=True)]
        return torch.from_numpy(np.concatenate(frames))


def _identity(x: Any) -> Any:
    return x


def batch_stream(ds: FrameBatches, start: int, stop: int, num_workers: int, pin: bool) -> Iterator[torch.Tensor]:
    """Batches ``start..stop-1`` (in order), read by ``num_workers`` processes (0: in this process)."""
    if stop <= start:
        return iter(())
    if num_workers == 0:
        return (ds[s] for s in range(start, stop))
    loader = DataLoader(ds, batch_size=None, sampler=range(start, stop), num_workers=num_workers,
                        pin_memory=pin, prefetch_factor=4, persistent_workers=False, collate_fn=_identity)
    return iter(loader)


# --------------------------------------------------------------------------------------------------------
# Outputs


def write_grid(path: Path, originals: np.ndarray, reconstructions: np.ndarray, columns: int = 8) -> None:
    """PNG of frames in rows of ``columns``: each row of originals directly above its reconstructions."""
    import cv2

    n = len(originals)
    if n == 0:
        return
    columns = min(columns, n)
    h, w = originals.shape[1:3]
    pad = 2
    rows = math.ceil(n / columns)
    img = np.full((rows * (2 * h + 3 * pad) + pad, columns * (w + pad) + pad), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        y = pad + r * (2 * h + 3 * pad)
        x = pad + c * (w + pad)
        img[y : y + h, x : x + w] = originals[i]
        img[y + h + pad : y + 2 * h + pad, x : x + w] = reconstructions[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    if not cv2.imwrite(str(tmp), img):
        raise OSError(f"cannot write {path}")
    os.replace(tmp, path)


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt(x: float | None, digits: int = 6) -> str | None:
    return None if x is None else f"{x:.{digits}g}"


def codebook_stats(tokens: torch.Tensor, vocab_size: int) -> tuple[float, float]:
    """(fraction of codes used, perplexity = exp(entropy of the code histogram)) of a batch of tokens."""
    counts = torch.bincount(tokens.flatten().long(), minlength=vocab_size).double()
    p = counts / counts.sum().clamp_min(1)
    nz = p[p > 0]
    return float((counts > 0).double().mean()), float(torch.exp(-(nz * nz.log()).sum()))


# --------------------------------------------------------------------------------------------------------
# Checkpoints


def save_training_checkpoint(out: Path, step: int, model: Tokenizer, opt: torch.optim.Optimizer,
                             cfg: TokenizerTrainConfig, data_info: list[dict[str, Any]], device: torch.device,
                             code_age: torch.Tensor) -> Path:
    with training_checkpoint(out, step, cfg.keep_checkpoints) as tmp:
        ckpt.write_model_files(tmp, KIND, to_dict(cfg.model), tokenizer_tensors(model), step=step,
                               train_config=to_dict(cfg))
        torch.save(opt.state_dict(), tmp / OPTIMIZER_FILE)
        ckpt.save_tensors(tmp / "rng.safetensors", {**rng_state(device), "code_age": code_age.cpu()})
        ckpt.write_json_atomic(tmp / STATE_FILE, {"step": step, "data": data_info})
    return checkpoint_path(out, step)


def _init_weights(cfg: TokenizerTrainConfig) -> dict[str, torch.Tensor]:
    """The weights of the tokenizer ``cfg.init``; a TrainError if it cannot be read or its architecture is not
    ``cfg.model``."""
    try:
        init = load_tokenizer(cfg.init, device="cpu")
    except (OSError, ValueError) as e:
        raise TrainError(f"init={cfg.init}: cannot load a tokenizer from it: {e}") from None
    old, new = to_dict(init.config), to_dict(cfg.model)
    if old != new:
        detail = ", ".join(f"{k}: {old.get(k)!r} vs {new.get(k)!r}" for k in sorted(old) if old.get(k) != new.get(k))
        raise TrainError(f"init={cfg.init}: its architecture differs from model ({detail}); use its model settings")
    return init.state_dict()


def _check_resumable(path: Path, cfg: TokenizerTrainConfig, data_info: list[dict[str, Any]]) -> int:
    meta = ckpt.read_meta(path)
    state = ckpt.read_json(path / STATE_FILE)
    old = dict(meta.get("train_config") or {})
    new = to_dict(cfg)
    changed = sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if changed:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise TrainError(f"cannot resume {path}: the config changed ({detail}); only {list(RESUMABLE_CHANGES)} "
                         f"may differ; start a new --out instead")
    old_data = [(d["game"], d["num_rows"]) for d in state.get("data", [])]
    new_data = [(d["game"], d["num_rows"]) for d in data_info]
    if old_data != new_data:
        raise TrainError(f"cannot resume {path}: it was trained on {old_data}, the data now has {new_data}")
    return int(state["step"])


def _resolve_device(name: str) -> torch.device:
    try:
        return pick_device(name)
    except ValueError as e:
        raise TrainError(str(e)) from None


# --------------------------------------------------------------------------------------------------------
# Training


def heldout_l1(model: Tokenizer, heldout: np.ndarray, autocast, grid_idx: np.ndarray | None,
               grid_path: Path) -> float | None:
    """Mean L1 reconstruction error (in [-1, 1] pixel units) of the held-out frames (N, 84, 84) uint8; with
    ``grid_idx``, those frames above their reconstructions as a PNG at ``grid_path``. None without frames."""
    if not len(heldout):
        return None
    model.eval()
    errs, recs = [], []
    with torch.no_grad(), autocast():
        for i in range(0, len(heldout), 256):
            x = model.preprocess(heldout[i : i + 256])
            _, z_q = model.quantize(model.encode_latents(x))
            rec = model.decode_latents(z_q).float()
            errs.append((x - rec).abs().mean(dim=(1, 2, 3)))
            recs.append(rec)
    model.train()
    if grid_idx is not None and len(grid_idx):
        rec = torch.cat(recs)[grid_idx, 0].add(1).div(2).clamp(0, 1).mul(255).round().byte().cpu().numpy()
        write_grid(grid_path, heldout[grid_idx], rec)
    return float(torch.cat(errs).mean())


def train_tokenizer(cfg: TokenizerTrainConfig, data: str | os.PathLike, out: str | os.PathLike, resume: bool = False,
                    reporter: Reporter | None = None) -> dict[str, Any]:
    """Train a tokenizer on the stores under ``data``; write the run directory ``out``; return a summary."""
    reporter = reporter or NullReporter()
    out = Path(out)
    try:
        stores = select_stores(data, cfg.games)
    except StoreError as e:
        raise TrainError(str(e)) from None
    device = _resolve_device(cfg.device)
    init = _init_weights(cfg) if cfg.init else None  # fails before anything is written

    try:
        latest = prepare_run(out, resume)
    except ValueError as e:
        raise TrainError(str(e)) from None
    out.mkdir(parents=True, exist_ok=True)

    heldout_per = [cfg.heldout_frames // len(stores) + (i < cfg.heldout_frames % len(stores))
                   for i in range(len(stores))]
    parts = [split_store(s, k) for s, k in zip(stores, heldout_per, strict=True)]
    data_info = [{"game": p.game, "path": str(p.path), "num_rows": p.num_rows, "train_rows": p.train_rows}
                 for p in parts]

    torch.manual_seed(cfg.seed)
    model = Tokenizer(cfg.model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    code_age = torch.zeros(cfg.model.vocab_size, dtype=torch.long, device=device)  # steps since each code was used
    start = 0
    if init is not None and latest is None:
        model.load_state_dict(init)
        reporter.log(f"starting from the weights of {cfg.init}")
    if latest is not None:
        start = _check_resumable(latest, cfg, data_info)
        _, tensors = ckpt.load_model(latest, KIND, device=device)
        model.load_state_dict(tensors)
        ckpt.load_optimizer_state(opt, latest / OPTIMIZER_FILE, device)
        saved_rng = ckpt.load_tensors(latest / "rng.safetensors")
        set_rng_state(saved_rng, device)
        if "code_age" in saved_rng:
            code_age.copy_(saved_rng["code_age"])
        reporter.log(f"resuming {out} from {latest.name} (step {start})")
    save_yaml(cfg, out / CONFIG_FILE)

    perceptual: LPIPS | None = None
    if cfg.perceptual_weights:
        files = [f.strip() for f in cfg.perceptual_weights.split(",") if f.strip()]
        perceptual = load_lpips(files, device=device)
        reporter.log(f"perceptual loss: LPIPS weights from {', '.join(files)}")
    else:
        reporter.log("no perceptual_weights: training WITHOUT the perceptual (LPIPS) loss term; the paper's loss "
                     "has it (see docs/tokenizer.md for how to supply the weights)")

    autocast = devices.autocast(device, cfg.amp)
    heldout = np.concatenate([read_rows(FrameReader(Path(p.path) / "obs"), p.heldout_rows) for p in parts])
    grid_idx = np.linspace(0, len(heldout) - 1, num=min(cfg.grid_frames, len(heldout))).round().astype(int) \
        if len(heldout) else np.zeros(0, int)

    metrics = MetricsLog(out, METRIC_COLUMNS, start)
    dataset = FrameBatches(parts, cfg.batch_size, cfg.seed)
    task = reporter.task("train tokenizer", total=cfg.steps, unit="steps", completed=start)
    t_begin = time.perf_counter()
    t_window, frames_window = t_begin, 0
    last_row: dict[str, Any] = {}
    final_path = out / FINAL_DIR
    restarted = 0  # codes restarted since the last metrics row
    model.train()
    try:
        batches = batch_stream(dataset, start + 1, cfg.steps + 1, cfg.num_workers, pin=device.type == "cuda")
        for step, frames in zip(range(start + 1, cfg.steps + 1), batches, strict=True):
            with autocast():
                losses = model.compute_loss(frames, perceptual, return_tokens=True)
            grad_norm = optimizer_step(opt, losses["total"], model.parameters(), cfg.grad_clip)
            if cfg.restart_dead_codes:
                restarted += restart_dead_codes(model.embedding.weight, code_age, losses["tokens"], losses["latents"],
                                                cfg.restart_dead_codes)
            frames_window += int(frames.shape[0])
            reporter.advance(task, 1)

            last = step == cfg.steps
            if step % cfg.log_every == 0 or step == 1 or last:
                now = time.perf_counter()
                usage, ppl = codebook_stats(losses["tokens"], cfg.model.vocab_size)
                grid = step % cfg.grid_every == 0 or last
                row = {
                    "step": step,
                    **{k: _fmt(float(losses[k].detach())) for k in ("total", "reconstruction", "commitment")},
                    "perceptual": _fmt(float(losses["perceptual"].detach())) if "perceptual" in losses else None,
                    "heldout_l1": _fmt(heldout_l1(model, heldout, autocast, grid_idx if grid else None,
                                                      out / "samples" / f"step_{step:08d}.png")),
                    "grad_norm": _fmt(float(grad_norm)),
                    "codebook_usage": _fmt(usage),
                    "perplexity": _fmt(ppl),
                    "lr": cfg.lr,
                    "restarted_codes": restarted,
                    "frames_per_s": f"{frames_window / max(now - t_window, 1e-9):.1f}",
                    "elapsed_s": f"{now - t_begin:.1f}",
                }
                metrics.write(row)
                last_row = row
                t_window, frames_window, restarted = time.perf_counter(), 0, 0
                reporter.log(
                    f"step {step}: loss {row['total']} (rec {row['reconstruction']}, commit {row['commitment']}"
                    + (f", perc {row['perceptual']}" if row["perceptual"] is not None else "")
                    + f") heldout_l1 {row['heldout_l1']} codes {100 * usage:.1f}% ppl {ppl:.1f} "
                    f"{row['frames_per_s']} frames/s"
                )
            if step % cfg.save_every == 0 or last:
                save_training_checkpoint(out, step, model, opt, cfg, data_info, device, code_age)
        ckpt.save_model(final_path, KIND, to_dict(cfg.model), tokenizer_tensors(model), step=max(start, cfg.steps),
                        train_config=to_dict(cfg))
    finally:
        metrics.close()
    return {
        "out": str(out),
        "final": str(final_path),
        "steps": cfg.steps,
        "resumed_from": start or None,
        "device": str(device),
        "perceptual": perceptual is not None,
        "games": [p.game for p in parts],
        "train_frames": int(sum(p.train_rows for p in parts)),
        "heldout_frames": len(heldout),
        "metrics": last_row,
        "elapsed_s": round(time.perf_counter() - t_begin, 2),
    }
