"""`jowa tokenize`: encode every frame of every game store once, into the store's ``obs_tokens`` array.

``<Game>.zarr/obs_tokens``: (N, 36) int16 (row i = the tokens of ``obs[i]``, row-major over the 6x6 grid),
chunks of ``TOKEN_CHUNK_ROWS`` rows, zstd. Its attributes record what made it:

    tokenizer_path     the checkpoint directory (or state-dict file) that was loaded
    tokenizer_sha256   sha256 of its weights file: the fingerprint compared on reruns
    tokenizer_config   the TokenizerConfig
    precision          "bf16" (autocast, as the official token dataset) or "fp32"
    num_frames, created, jowa_version

Atomic and resumable: the array is built beside the store, in ``.<Game>.zarr.obs_tokens.partial`` (a
standalone Zarr v3 array whose ``done_rows`` attribute advances after each fully written chunk), and renamed
to ``<Game>.zarr/obs_tokens`` when complete, so ``obs_tokens`` is never half-written; a rerun after a kill
continues the partial array if it was made by the same tokenizer with the same precision. A store whose
``obs_tokens`` came from the same tokenizer is skipped; from another one it is an error unless
``overwrite``.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.codecs import ZstdCodec

from jowa_core import devices
from jowa_core.config import to_dict
from jowa_core.constants import OBS_TOKENS, TOKENS_PER_OBS, jowa_version
from jowa_core.data.store import StoreError, list_stores, open_store
from jowa_core.devices import pick_device
from jowa_core.models.tokenizer import fingerprint as tokenizer_fingerprint
from jowa_core.models.tokenizer import load_tokenizer, resolve_tokenizer
from jowa_core.progress import NullReporter, Reporter

ARRAY = OBS_TOKENS
TOKEN_CHUNK_ROWS = 65536  # 4.7 MB raw per chunk; the resume granularity


class TokenizeError(ValueError):
    """Bad tokenize input (tokenizer mismatch, unusable store); the message says what to do."""


def partial_tokens_path(store_path: Path) -> Path:
    return store_path.parent / f".{store_path.name}.{ARRAY}.partial"


def existing_tokens_attrs(store_path: Path) -> dict[str, Any] | None:
    """Attributes of the store's finished ``obs_tokens`` array, or None when it has none."""
    group = zarr.open_group(str(store_path), mode="r", zarr_format=3)
    if ARRAY not in group:
        return None
    return dict(group[ARRAY].attrs)


def _resolve_precision(precision: str, device: torch.device) -> str:
    """The precision recorded with the tokens: bf16 or fp32 (``devices.use_bf16`` decides "auto")."""
    if precision not in devices.PRECISIONS:
        raise TokenizeError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return "bf16" if devices.use_bf16(device, precision) else "fp32"


def _resolve_device(name: str) -> torch.device:
    try:
        return pick_device(name)
    except ValueError as e:
        raise TokenizeError(str(e)) from None


def _open_partial(path: Path, n: int, meta: dict[str, Any]) -> tuple[zarr.Array, int]:
    """The partial array at ``path`` and the rows already done: continued if it matches ``meta``, else new."""
    if path.exists():
        try:
            arr = zarr.open_array(str(path), mode="r+", zarr_format=3)
            attrs = dict(arr.attrs)
            same = all(attrs.get(k) == meta[k] for k in ("tokenizer_sha256", "precision", "num_frames"))
            if same and arr.shape == (n, TOKENS_PER_OBS):
                return arr, int(attrs.get("done_rows", 0))
        except Exception:  # noqa: BLE001 - an unreadable leftover is simply rebuilt
            pass
        shutil.rmtree(path)
    arr = zarr.create_array(
        store=str(path),
        shape=(n, TOKENS_PER_OBS),
        dtype="int16",
        chunks=(max(1, min(n, TOKEN_CHUNK_ROWS)), TOKENS_PER_OBS),
        compressors=ZstdCodec(level=3, checksum=True),
        fill_value=0,
        zarr_format=3,
        attributes={**meta, "done_rows": 0},
    )
    return arr, 0


def _publish(partial: Path, store_path: Path) -> None:
    """Move the finished array into the store (replacing an older ``obs_tokens``)."""
    target = store_path / ARRAY
    old = store_path.parent / f".{store_path.name}.{ARRAY}.old"
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old, ignore_errors=True)


def tokenize_stores(
    data: str | os.PathLike,
    tokenizer_path: str | os.PathLike,
    batch_size: int = 1024,
    device: str = "auto",
    overwrite: bool = False,
    reporter: Reporter | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Write ``obs_tokens`` into every store under ``data`` (a folder of ``<Game>.zarr`` or one store).

    ``precision``: "auto" (bf16 autocast on CUDA, as the official token dataset; fp32 on CPU), "bf16" or
    "fp32". Returns a summary with one entry per store (status "tokenized" or "skipped").
    """
    reporter = reporter or NullReporter()
    if batch_size < 1:
        raise TokenizeError(f"batch_size must be >= 1, got {batch_size}")
    store_paths = list_stores(data)
    stores = [open_store(p) for p in store_paths]
    dev = _resolve_device(device)
    prec = _resolve_precision(precision, dev)
    source = resolve_tokenizer(tokenizer_path)
    fingerprint = tokenizer_fingerprint(tokenizer_path)
    tok = load_tokenizer(tokenizer_path, device=dev)
    if tok.tokens_per_frame != TOKENS_PER_OBS:
        raise TokenizeError(f"{source}: the tokenizer makes {tok.tokens_per_frame} tokens per frame; the store "
                            f"layout needs {TOKENS_PER_OBS}")
    meta = {
        "tokenizer_path": str(source.resolve()),
        "tokenizer_sha256": fingerprint,
        "tokenizer_config": to_dict(tok.config),
        "precision": prec,
    }

    # Check every store first, so a mismatch fails before any work is done.
    plans = []
    for st in stores:
        attrs = existing_tokens_attrs(st.path)
        if attrs is not None and not overwrite:
            if attrs.get("tokenizer_sha256") == fingerprint:
                plans.append((st, "skip"))
                continue
            raise TokenizeError(
                f"{st.path}/{ARRAY} was made by another tokenizer ({attrs.get('tokenizer_path')}, sha256 "
                f"{str(attrs.get('tokenizer_sha256'))[:12]}...); pass --overwrite to replace it"
            )
        plans.append((st, "encode"))

    autocast = devices.autocast(dev, prec)
    results = []
    t_all = time.perf_counter()
    encoded_frames = 0
    pool = ThreadPoolExecutor(max_workers=1)  # reads the next batch of frames while this one encodes
    try:
        for st, action in plans:
            n = st.num_steps
            if action == "skip":
                reporter.log(f"{st.game}: {ARRAY} from this tokenizer already present; skipped")
                results.append({"game": st.game, "path": str(st.path), "frames": n, "status": "skipped"})
                continue
            t0 = time.perf_counter()
            partial = partial_tokens_path(st.path)
            arr, done = _open_partial(partial, n, {**meta, "num_frames": n})
            if done:
                reporter.log(f"{st.game}: continuing a partial {ARRAY} at row {done}/{n}")
            task = reporter.task(f"tokenize {st.game}", total=n, unit="frames", completed=done)
            reader = st.frames

            def read(lo: int, hi: int, reader=reader) -> np.ndarray:
                return reader.read_range(lo, hi)

            chunk = arr.chunks[0]
            for c0 in range(done, n, chunk):
                c1 = min(c0 + chunk, n)
                out = np.empty((c1 - c0, TOKENS_PER_OBS), np.int16)
                bounds = [(b, min(b + batch_size, c1)) for b in range(c0, c1, batch_size)]
                nxt: Future = pool.submit(read, *bounds[0])
                for j, (lo, hi) in enumerate(bounds):
                    frames = nxt.result()
                    if j + 1 < len(bounds):
                        nxt = pool.submit(read, *bounds[j + 1])
                    with torch.no_grad(), autocast():
                        tokens = tok.encode(frames)
                    out[lo - c0 : hi - c0] = tokens.cpu().numpy().astype(np.int16)
                    reporter.advance(task, hi - lo)
                arr[c0:c1] = out
                arr.attrs["done_rows"] = c1
                encoded_frames += c1 - c0
            attrs = dict(arr.attrs)
            attrs.pop("done_rows", None)
            attrs.update(created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), jowa_version=jowa_version())
            arr.attrs.put(attrs)
            _publish(partial, st.path)
            secs = time.perf_counter() - t0
            results.append({"game": st.game, "path": str(st.path), "frames": n, "status": "tokenized",
                            "seconds": round(secs, 2), "frames_per_s": round(n / max(secs, 1e-9), 1)})
    finally:
        pool.shutdown(wait=True)
    secs = time.perf_counter() - t_all
    return {
        "tokenizer": str(source),
        "tokenizer_sha256": fingerprint,
        "device": str(dev),
        "precision": prec,
        "batch_size": batch_size,
        "stores": results,
        "encoded_frames": encoded_frames,
        "seconds": round(secs, 2),
        "frames_per_s": round(encoded_frames / max(secs, 1e-9), 1),
    }


__all__ = ["TokenizeError", "tokenize_stores", "existing_tokens_attrs", "StoreError"]
