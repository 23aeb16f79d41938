"""The trainer skeleton every training loop shares: the run directory, resume, random state, metrics and training
checkpoints. Each trainer (``pretrain``, ``finetune``, ``tokenizer``) keeps only its algorithm and the files that
are its own.

A run directory ``<out>`` holds ``config.yaml``, ``metrics.csv`` (+ ``tb/``), ``checkpoints/step_XXXXXXXX/``
with a ``checkpoints/latest`` pointer, and ``final/`` (names in ``jowa_core.constants``).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jowa_core import checkpoint as ckpt
from jowa_core import dist as jdist
from jowa_core.constants import CHECKPOINTS_DIR, METRICS_FILE, TENSORBOARD_DIR
from jowa_core.outputs import lock_output, release_output


def prepare_run(out: Path, resume: bool, is_main: bool = True) -> Path | None:
    """The checkpoint to resume from (None: a fresh run). A fresh run needs ``out`` missing or empty. The main
    process locks ``out`` (one writer per run: a second one is refused); ``MetricsLog.close`` releases it."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory; choose another --out")
    if is_main:
        if not resume and out.exists() and any(out.iterdir()):
            raise ValueError(f"{out} is not empty: pass --resume to continue that run, or choose another --out")
        lock_output(out)
    latest = ckpt.latest_checkpoint(out)
    return latest if resume else None


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """torch's CPU (and this device's CUDA) generator states."""
    state = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)


def checkpoint_path(out: Path, step: int) -> Path:
    """Where the training checkpoint of ``step`` lives: ``out/checkpoints/step_XXXXXXXX``."""
    return out / CHECKPOINTS_DIR / f"step_{step:08d}"


@contextmanager
def training_checkpoint(out: Path, step: int, keep: int, ctx: jdist.DistContext | None = None) -> Iterator[Path]:
    """``out/checkpoints/step_XXXXXXXX``, complete or absent: yields a hidden directory that every rank may write
    into (once it exists, on every rank); rank 0 then renames it into place and
    keeps the newest ``keep`` checkpoints (0 = all)."""
    ctx = ctx or jdist.DistContext()
    final = checkpoint_path(out, step)
    name, tmp = final.name, final.with_name(f".{final.name}.partial")
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    jdist.barrier(ctx)
    try:
        yield tmp
    except BaseException:
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    jdist.barrier(ctx)
    if ctx.is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        ckpt.mark_latest(out, name, keep=keep)
    jdist.barrier(ctx)


class MetricsLog:
    """``metrics.csv`` with a fixed header (+ optional TensorBoard under ``tb/`` and wandb): rows are appended and
    flushed; on resume the rows after the checkpoint's step are dropped first. Disabled (no files) off rank 0."""

    def __init__(self, out: Path, columns: Sequence[str], start_step: int, enabled: bool = True,
                 tensorboard: str | None = None, wandb: dict[str, Any] | None = None):
        """``tensorboard``: the scalar prefix (e.g. "pretrain") or None for none; ``wandb``: ``wandb.init``
        keyword arguments or None."""
        self.columns, self.enabled, self.prefix, self.out = list(columns), enabled, tensorboard, out
        self.tb = self.wandb = self.file = None
        if not enabled:
            return
        path = out / METRICS_FILE
        kept: list[dict[str, str]] = []
        if start_step > 0 and path.is_file():
            with open(path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if r.get("step") and int(float(r["step"])) <= start_step]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(buf.getvalue())
        os.replace(tmp, path)
        self.file = open(path, "a", newline="")  # noqa: SIM115 - kept open for the run
        self.writer = csv.DictWriter(self.file, fieldnames=self.columns, extrasaction="ignore")
        if tensorboard is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: tensorboard is a dependency

                self.tb = SummaryWriter(str(out / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None)
            except ImportError:
                self.tb = None
        if wandb is not None:
            import wandb as wandb_mod  # optional extra: pip install jowa[wandb]

            self.wandb = wandb_mod.init(dir=str(out), resume="allow", **wandb)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.writer.writerow({k: "" if row.get(k) is None else row[k] for k in self.columns})
        self.file.flush()
        step = int(float(row["step"]))
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{self.prefix}/{k}", v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def close(self) -> None:
        """Close the files; the run is over, so its lock (``prepare_run``) is released."""
        release_output(self.out)
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
