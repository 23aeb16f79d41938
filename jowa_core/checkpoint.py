"""Checkpoint directories: safetensors weights + JSON metadata, written atomically.

A *model checkpoint* is a directory with
  ``checkpoint.json``   {"format": "jowa-checkpoint", "version": 1, "kind": "tokenizer" | "world_action",
                         "config": <resolved model config>, ...extra}
  ``model.safetensors`` the tensors (loaded without pickle).
A *training checkpoint* adds ``optimizer.pt`` (loaded with ``weights_only=True``), ``rng.safetensors`` and
``state.json``. A *run directory* holds ``checkpoints/step_XXXXXXXX/`` and ``checkpoints/latest`` (the name of
the newest complete one). Every directory is written under a temporary name and renamed when complete, so a
kill never leaves a half-written checkpoint behind a final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from jowa_core.outputs import atomic_file, write_json_atomic

FORMAT = "jowa-checkpoint"
VERSION = 1
META = "checkpoint.json"
WEIGHTS = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or of the wrong kind; the message names the path."""


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes (checkpoint fingerprints in metadata and result files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"{path} already exists")
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors file of CPU, contiguous, unshared copies of ``tensors``. An I/O failure (disk full) is the
    OSError it was, not safetensors' own error type."""
    try:
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(path))
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from None


def load_optimizer_state(opt: torch.optim.Optimizer, path: str | Path, device: str | torch.device = "cpu") -> None:
    """Restore ``opt`` from a torch file (``weights_only=True``); a missing, corrupt or mismatched file is a
    CheckpointError naming it (never a traceback)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: the checkpoint is incomplete")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt, or not a torch file
        raise CheckpointError(f"{path}: cannot read the optimiser state ({type(e).__name__}: {e})") from None
    try:
        opt.load_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{path}: does not fit this run's optimiser ({e})") from None


def write_model_files(directory: Path, kind: str, config: dict[str, Any], tensors: dict[str, torch.Tensor],
                      **extra: Any) -> None:
    """Write ``model.safetensors`` and ``checkpoint.json`` (with the weights' sha256) into an existing directory."""
    save_tensors(directory / WEIGHTS, tensors)
    write_json_atomic(directory / META, {"format": FORMAT, "version": VERSION, "kind": kind, "config": config,
                                         **extra, "weights_sha256": sha256_file(directory / WEIGHTS)})


def check_weights(directory: str | Path, meta: Mapping[str, Any]) -> None:
    """The weights file against the sha256 its ``checkpoint.json`` records (checkpoints written before it was
    recorded, and imported ones, have none and pass): a flipped bit in the weights is a CheckpointError."""
    want = meta.get("weights_sha256")
    path = Path(directory) / WEIGHTS
    if want and path.is_file() and sha256_file(path) != want:
        raise CheckpointError(f"{path}: its sha256 is not the one {META} records: the weights are corrupt or were "
                              f"replaced; use another checkpoint (jowa verify lists the good ones)")


def load_checkpoint_tensors(directory: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of the model checkpoint ``directory``, checked against its recorded sha256."""
    check_weights(directory, read_meta(directory))
    return load_tensors(Path(directory) / WEIGHTS, device)


def save_model(path: str | Path, kind: str, config: dict[str, Any], tensors: dict[str, torch.Tensor],
               **extra: Any) -> Path:
    """A model checkpoint directory at ``path`` (replaced atomically)."""
    with atomic_dir(path) as tmp:
        write_model_files(tmp, kind, config, tensors, **extra)
    return Path(path)


def check_tokens_tokenizer(meta: dict[str, Any], tokenizer_sha256: str, model_path: Any, tokenizer_path: Any) -> None:
    """A world-action model reads the tokens it was trained on: refuse a tokenizer other than the one that made
    them (``tokens_tokenizer_sha256`` in the model's metadata, written by pretraining on tokens; absent in
    imported or older checkpoints, which are not checked)."""
    want = meta.get("tokens_tokenizer_sha256")
    if want and want != tokenizer_sha256:
        raise CheckpointError(
            f"{model_path} was trained on tokens made by another tokenizer (sha256 {want[:12]}...) than "
            f"{tokenizer_path} (sha256 {tokenizer_sha256[:12]}...): its observations would be read as the wrong "
            f"codes. Use the tokenizer that tokenized its training data (the one given to jowa tokenize)")


def resolve(path: str | Path, kind: str | None = None) -> Path:
    """A checkpoint directory from a checkpoint directory or a run directory (its latest checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if not (path / META).is_file():
        latest = path / "checkpoints" / "latest"
        if latest.is_file():
            path = path / "checkpoints" / latest.read_text().strip()
        elif (path / "final" / META).is_file():
            path = path / "final"
        else:
            raise CheckpointError(f"{path}: not a checkpoint (no {META}) and not a run directory with checkpoints")
    meta = read_meta(path)
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{path}: a {meta.get('kind')!r} checkpoint, expected {kind!r}")
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        meta = read_json(path / META)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {META}; is this a jowa checkpoint?") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / META}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / META}: not a jowa checkpoint")
    if int(meta.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta['version']} is newer than this jowa ({VERSION})")
    return meta


def load_model(path: str | Path, kind: str | None = None,
               device: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a model checkpoint (or of a run directory's latest checkpoint)."""
    path = resolve(path, kind)
    return read_meta(path), load_checkpoint_tensors(path, device)


def mark_latest(run_dir: str | Path, name: str, keep: int = 3) -> None:
    """Point ``checkpoints/latest`` at ``name`` and delete all but the newest ``keep`` step_* checkpoints."""
    ckpts = Path(run_dir) / "checkpoints"
    latest = ckpts / "latest"
    with atomic_file(latest) as tmp:
        tmp.write_text(name + "\n")
    if keep > 0:
        steps = sorted(p for p in ckpts.glob("step_*") if p.is_dir())
        for old in steps[:-keep]:
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    latest = Path(run_dir) / "checkpoints" / "latest"
    if not latest.is_file():
        return None
    path = latest.parent / latest.read_text().strip()
    return path if (path / META).is_file() else None


# --------------------------------------------------------------------------------------------------------
# Foreign state dicts (official .pt files, LPIPS weights): one reader, one prefix rule, one key/shape check.

# Prefixes that wrappers add to every key: DDP (``module.``), torch.compile (``_orig_mod.``), both. Longest first.
WRAPPER_PREFIXES = ("_orig_mod.module.", "module.", "_orig_mod.")


def strip_wrapper_prefix(state: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(the state dict without the wrapper prefix all its keys share, the prefix removed: '' when none)."""
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}, prefix
    return dict(state), ""


def read_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch file loaded with ``weights_only=True`` (no pickle code);
    ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers are opened."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        return load_tensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt file, pickle with code, not a torch file
        raise CheckpointError(f"{path}: cannot read as a torch file with weights_only=True ({e})") from None
    for key in ("state_dict", "model"):  # common wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def some_keys(keys: list[str], n: int = 8) -> str:
    """The first ``n`` keys, and how many there are when there are more."""
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def state_dict_problems(expected: Mapping[str, tuple[int, ...]], actual: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps ``actual`` from having exactly ``expected``'s keys and shapes (empty when it does)."""
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    wrong = sorted(k for k in set(expected) & set(actual) if tuple(actual[k].shape) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"missing keys: {some_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {some_keys(unexpected)}")
    if wrong:
        problems.append("shape mismatch: " + some_keys([f"{k} {tuple(actual[k].shape)} vs {tuple(expected[k])}"
                                                        for k in wrong]))
    return problems


def load_state_dict_checked(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: Any) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming ``source`` and the bad keys."""
    problems = state_dict_problems({k: tuple(v.shape) for k, v in module.state_dict().items()}, state)
    if problems:
        raise CheckpointError(f"{source}: does not fit the model; " + "; ".join(problems))
    module.load_state_dict(state, strict=True)
