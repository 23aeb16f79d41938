"""`jowa verify`: check a store, a folder of stores, a model checkpoint or a run directory in full.

What each kind is checked for (every check reads everything; nothing is written):

* **store** (``<Game>.zarr``): everything ``open_store`` checks (format, arrays, dtypes, shapes, episodes
  contiguous, terminals, actions in the game's minimal set, finite rewards); then every frame chunk decoded
  against its zstd checksum and every shard index against its CRC; ``obs_tokens`` (when tokenized) within the
  tokenizer's vocabulary. A store written before chunk checksums is reported (``notes``), not failed.
* **checkpoint** (a directory with ``checkpoint.json``): the metadata; the weights against the sha256
  ``checkpoint.json`` records (``checkpoint.check_weights``); the model rebuilt from its config with every tensor's
  name and shape checked; every weight finite. A training checkpoint also has its ``state.json``, optimiser state
  and RNG state read.
* **run** (a directory with ``checkpoints/`` or ``final/``): every checkpoint in it, ``checkpoints/latest``
  pointing at a complete one, ``metrics.csv`` readable with steps in order, no leftover ``*.partial`` directories,
  and whether a live process holds its lock (a note).

``verify(path)`` returns ``{"path", "kind", "ok", "problems": [...], "notes": [...], "checked": {...}}``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jowa_core import checkpoint as ckpt
from jowa_core.constants import (
    BEST_DIR,
    CHECKPOINTS_DIR,
    FINAL_DIR,
    METRICS_FILE,
    OBS_TOKENS,
    OPTIMIZER_FILE,
    STATE_FILE,
)
from jowa_core.data.segments import load_obs_tokens
from jowa_core.data.store import StoreError, list_stores, open_store
from jowa_core.evaluation import baselines
from jowa_core.models.tokenizer import load_tokenizer
from jowa_core.models.world_action import load_world_action
from jowa_core.outputs import lock_owner
from jowa_core.progress import NullReporter, Reporter

KINDS = ("store", "stores", "checkpoint", "run")
FRAMES_PER_READ = 4096  # frames decoded per read while checking a store (~29 MB)


def detect_kind(path: Path) -> str:
    """``store``, ``stores``, ``checkpoint`` or ``run`` for an existing directory; ValueError otherwise."""
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if (path / "zarr.json").is_file():
        return "store"
    if (path / ckpt.META).is_file():
        return "checkpoint"
    if (path / CHECKPOINTS_DIR).is_dir() or (path / FINAL_DIR).is_dir():
        return "run"
    if path.is_dir() and list_stores(path):
        return "stores"
    raise ValueError(f"{path}: not a store (no zarr.json), a checkpoint (no {ckpt.META}), a run directory (no "
                     f"{CHECKPOINTS_DIR}/ or {FINAL_DIR}/) or a folder of *.zarr stores")


def verify(path: str | Path, reporter: Reporter | None = None) -> dict[str, Any]:
    """Check ``path`` in full (its kind detected); the report dict described in the module docstring."""
    path = Path(path)
    kind = detect_kind(path)
    reporter = reporter or NullReporter()
    report: dict[str, Any] = {"path": str(path), "kind": kind, "problems": [], "notes": [], "checked": {}}
    check = {"store": _check_store, "stores": _check_stores, "checkpoint": _check_checkpoint, "run": _check_run}
    check[kind](path, report, reporter)
    report["ok"] = not report["problems"]
    return report


# --------------------------------------------------------------------------------------------------------
# Stores


def _check_stores(root: Path, report: dict[str, Any], reporter: Reporter) -> None:
    for store in list_stores(root):
        _check_store(store, report, reporter)


def _check_store(path: Path, report: dict[str, Any], reporter: Reporter) -> None:
    try:
        store = open_store(path)
    except StoreError as e:
        report["problems"].append(str(e))
        return
    frames = store.frames
    if getattr(frames, "checksummed", True) is False:
        report["notes"].append(f"{path}/obs: written before chunk checksums; a flipped bit in a frame cannot be "
                               "detected (re-run prepare-data to add them)")
    n = len(frames)
    task = reporter.task(f"verify {path.name}", total=n, unit="frames")
    try:
        for start in range(0, n, FRAMES_PER_READ):
            stop = min(n, start + FRAMES_PER_READ)
            frames.read_range(start, stop)
            reporter.advance(task, stop - start)
    except (StoreError, OSError) as e:
        report["problems"].append(f"{path}/obs: {e}")
    finally:
        frames.close()
    checked = {"steps": store.num_steps, "episodes": store.num_episodes, "frames_decoded": n}
    if (path / OBS_TOKENS).is_dir():
        try:
            checked["obs_tokens"] = int(load_obs_tokens(store).shape[0])
        except (StoreError, OSError, ValueError) as e:
            report["problems"].append(str(e))
    report["checked"][str(path)] = checked


# --------------------------------------------------------------------------------------------------------
# Checkpoints and runs


def _check_checkpoint(path: Path, report: dict[str, Any], reporter: Reporter | None = None) -> None:
    try:
        meta = ckpt.read_meta(path)
        kind = meta.get("kind")
        if kind == "world_action":
            model, _ = load_world_action(str(path))  # sha256, config bounds, names and shapes
        elif kind == "tokenizer":
            model = load_tokenizer(path)
        elif kind in baselines.KINDS:  # the paper's baselines (docs/baselines.md)
            model, _, _ = baselines.load_baseline(path, kind, "cpu")
        else:
            raise ckpt.CheckpointError(f"{path}: unknown checkpoint kind {kind!r}")
    except (ckpt.CheckpointError, ValueError, OSError) as e:
        report["problems"].append(str(e).splitlines()[0])
        return
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        report["problems"].append(f"{path}: non-finite weights in {len(bad)} tensor(s), e.g. {bad[0]}")
    if not meta.get("weights_sha256"):
        report["notes"].append(f"{path}: no recorded sha256 (written before jowa recorded it, or imported); the "
                               "weights were read but a flipped bit cannot be detected")
    report["checked"][str(path)] = {"kind": kind, "step": meta.get("step"),
                                    "parameters": sum(t.numel() for t in model.state_dict().values())}
    if (path / STATE_FILE).exists() or (path / OPTIMIZER_FILE).exists():
        _check_training_state(path, report)


def _check_training_state(path: Path, report: dict[str, Any]) -> None:
    """state.json, the optimiser state and the RNG files of a training checkpoint are readable."""
    try:
        json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        report["problems"].append(f"{path / STATE_FILE}: cannot be read ({e})")
    try:
        torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - missing, truncated or not a torch file
        report["problems"].append(f"{path / OPTIMIZER_FILE}: cannot be read ({type(e).__name__}: {e})")
    for rng in sorted(path.glob("rng*.safetensors")):
        try:
            ckpt.load_tensors(rng)
        except ckpt.CheckpointError as e:
            report["problems"].append(str(e))


def _check_run(path: Path, report: dict[str, Any], reporter: Reporter) -> None:
    ckpts = path / CHECKPOINTS_DIR
    steps = sorted(p for p in ckpts.glob("step_*") if p.is_dir()) if ckpts.is_dir() else []
    for d in steps + [path / name for name in (FINAL_DIR, BEST_DIR) if (path / name).is_dir()]:
        _check_checkpoint(d, report)
    latest = ckpts / "latest"
    if latest.is_file():
        target = ckpts / latest.read_text().strip()
        if not (target / ckpt.META).is_file():
            report["problems"].append(f"{latest}: points at {target.name}, which is not a complete checkpoint")
    elif steps:
        report["problems"].append(f"{ckpts}: no 'latest' file although it holds checkpoints")
    leftovers = sorted(str(p) for p in path.rglob("*.partial"))
    if leftovers:
        report["notes"].append(f"{len(leftovers)} unfinished temporary director(y/ies) left by a killed writer, "
                               f"e.g. {leftovers[0]} (the next --resume removes them)")
    _check_metrics(path / METRICS_FILE, report)
    owner = lock_owner(path)
    if owner:
        report["notes"].append(f"{path} is being written now ({owner}): what is checked may change under it")


def _check_metrics(path: Path, report: dict[str, Any]) -> None:
    if not path.is_file():
        return
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        steps = [int(r["step"]) for r in rows]
    except (OSError, csv.Error, KeyError, ValueError, TypeError) as e:
        report["problems"].append(f"{path}: cannot be read as the metrics table ({type(e).__name__}: {e})")
        return
    if any(b < a for a, b in zip(steps, steps[1:], strict=False)):
        report["problems"].append(f"{path}: steps out of order (two writers, or a resume that did not truncate)")
    losses = [float(r["loss"]) for r in rows if r.get("loss") not in (None, "")]
    if any(not math.isfinite(x) for x in losses):
        report["problems"].append(f"{path}: a non-finite loss was logged")
    report["checked"][str(path)] = {"rows": len(rows), "last_step": steps[-1] if steps else None,
                                    "finite_losses": bool(np.isfinite(losses).all()) if losses else None}
