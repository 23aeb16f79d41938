"""`jowa bench data`: converter and loader throughput, each next to a baseline measured in the same run.

* Converter: DQN-Replay-format logs are made from real Atari frames (ale-py, random policy, frames tiled to
  the requested capacity) through the production logger writer, then converted by the prepare-data pipeline in
  a fresh (spawned) process. Reported: MB/s of raw frames per worker, peak RSS of the largest single process
  (sampled every 50 ms), and the ratio to plain gzip decoding of the same observation file (the floor
  any converter pays).
* RL Unplugged converter (``--format rlu``): GZIP TFRecord episode shards of the same real frames as PNGs;
  decoded-frame MB/s per worker and peak RSS, next to bare PNG decoding of the same bytes (OpenCV, Pillow).
* Loader: random 8-step segments per second from the frame store in one process, against zarr-python
  reading the same segments one slice at a time.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from jowa_core.bench.table import append_section
from jowa_core.data.convert import PrepareOptions, prepare_data
from jowa_core.data.dopamine_writer import LoggedReplayWriter
from jowa_core.data.segments import benchmark_loader
from jowa_core.data.store import open_store
from jowa_core.data.tfrecord import masked_crc32c
from jowa_core.envs.atari import AtariEnv, AtariSettings

GAME = "SpaceInvaders"


def _real_frames(n: int, seed: int = 0) -> np.ndarray:
    env = AtariEnv(GAME, AtariSettings(), seed=seed)
    rng = np.random.default_rng(seed)
    frames = [env.reset()]
    while len(frames) < n:
        obs, _, game_over, truncated = env.step(int(rng.integers(env.num_actions)))
        frames.append(obs)
        if game_over or truncated:
            frames.append(env.reset())
    return np.stack(frames[:n])


def make_logs(root: Path, capacity: int, files: int, pool_frames: int = 4000, seed: int = 0) -> Path:
    """Write ``files`` full checkpoints of ``capacity`` rows for GAME/1 (plus the final file)."""
    pool = _real_frames(pool_frames, seed)
    rng = np.random.default_rng(seed)
    log_dir = root / GAME / "1" / "replay_logs"
    with LoggedReplayWriter(log_dir, capacity, compresslevel=1, fsync=False) as writer:
        i = 0
        while len(writer.logged) < files:
            length = int(rng.integers(200, 2000))
            for t in range(length):
                writer.add(pool[i % pool_frames], int(rng.integers(6)), float(rng.random() < 0.02), t == length - 1)
                i += 1
        writer.log_final_buffer()
    return log_dir


def _prepare_in_child(opts: PrepareOptions, summary_path: str) -> None:
    """The converter in a child process (spawned), its summary written as JSON (the process's RSS is measured)."""
    Path(summary_path).write_text(json.dumps({"stores": prepare_data(opts)}, default=str))


def _run_measuring_rss(opts: PrepareOptions, summary_path: Path) -> float:
    """Run the converter in a fresh process; return the peak RSS (MB) of its largest single process (parent or
    worker), sampled every 50 ms."""
    import psutil

    proc = multiprocessing.get_context("spawn").Process(target=_prepare_in_child, args=(opts, str(summary_path)))
    proc.start()
    peak: dict[int, int] = {}
    ps = psutil.Process(proc.pid)
    while proc.is_alive():
        try:
            for p in [ps, *ps.children(recursive=True)]:
                peak[p.pid] = max(peak.get(p.pid, 0), p.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    proc.join()
    if proc.exitcode:
        raise RuntimeError(f"prepare-data failed in the benchmark (exit code {proc.exitcode})")
    return max(peak.values(), default=0) / 1e6


def _gzip_decode_mb_s(path: Path) -> float:
    t0 = time.perf_counter()
    n = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            n += len(chunk)
    return n / (time.perf_counter() - t0) / 1e6


def _zarr_baseline(store: Path, starts: np.ndarray, seq_len: int = 8) -> float:
    import zarr

    obs = zarr.open_group(str(store), mode="r")["obs"]
    t0 = time.perf_counter()
    for s in starts.tolist():
        obs[s : s + seq_len]
    return len(starts) / (time.perf_counter() - t0)


def bench_data(
    frames: int = 100_000,
    files: int = 2,
    workers: int = 1,
    seconds: float = 5.0,
    batch_size: int = 256,
    workdir: str | None = None,
    markdown: str | None = None,
) -> dict[str, Any]:
    tmp = tempfile.TemporaryDirectory(dir=workdir)
    root = Path(tmp.name)
    t0 = time.perf_counter()
    log_dir = make_logs(root / "src", frames, files)
    make_s = time.perf_counter() - t0

    gzip_mb_s = _gzip_decode_mb_s(log_dir / "$store$_observation_ckpt.1.gz")

    out = root / "out"
    summary_path = root / "summary.json"
    opts = PrepareOptions(source=str(root / "src"), out=str(out), games=[GAME], workers=workers)
    t0 = time.perf_counter()
    peak_rss_mb = _run_measuring_rss(opts, summary_path)
    wall = time.perf_counter() - t0
    (store_summary,) = json.loads(summary_path.read_text())["stores"]
    raw_mb = store_summary["raw_bytes"] / 1e6
    busy = min(workers, files + 1)
    convert_mb_s = raw_mb / store_summary["seconds"]
    per_worker = convert_mb_s / busy

    store = out / f"{GAME}.zarr"
    loader = benchmark_loader(out, batch_size=batch_size, seconds=seconds)
    n_steps = open_store(store).num_steps
    starts = np.random.default_rng(0).integers(0, n_steps - 8, 2000)
    zarr_seg_s = _zarr_baseline(store, starts)
    size_mb = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 1e6

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
                  f"{platform.python_version()}",
        "capacity": frames, "files": files, "workers": workers, "make_logs_s": make_s,
        "converter": {"raw_mb": raw_mb, "wall_s": wall, "mb_s": convert_mb_s, "mb_s_per_worker": per_worker,
                      "peak_rss_mb": peak_rss_mb, "gzip_decode_mb_s": gzip_mb_s,
                      "ratio_to_gzip_decode": per_worker / gzip_mb_s, "store_mb": size_mb},
        "loader": {**loader, "zarr_python_segments_per_s": zarr_seg_s,
                   "ratio_to_zarr_python": loader["segments_per_s"] / zarr_seg_s},
    }
    result["summary"] = [
        f"converter: {per_worker:.0f} MB/s of raw frames per worker ({workers} worker(s), {raw_mb:.0f} MB), "
        f"{result['converter']['ratio_to_gzip_decode']:.2f}x plain gzip decoding ({gzip_mb_s:.0f} MB/s); "
        f"peak RSS {peak_rss_mb:.0f} MB; store {size_mb:.1f} MB",
        f"loader: {loader['segments_per_s']:.0f} segments/s ({loader['frames_mb_per_s']:.0f} MB/s of frames), "
        f"{result['loader']['ratio_to_zarr_python']:.1f}x zarr-python slicing ({zarr_seg_s:.0f} segments/s)",
    ]
    if markdown:
        _append_markdown(Path(markdown), result)
    tmp.cleanup()
    return result


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _ld(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _rlu_example(pngs: list[bytes], actions: np.ndarray, rewards: np.ndarray, discounts: np.ndarray) -> bytes:
    """A serialized tf.train.Example episode (wire format written directly; the bench needs no protobuf)."""
    feats = {
        "observations": _ld(1, b"".join(_ld(1, p) for p in pngs)),
        "actions": _ld(3, _ld(1, b"".join(_varint(int(a)) for a in actions))),
        "clipped_rewards": _ld(2, _ld(1, rewards.astype("<f4").tobytes())),
        "unclipped_rewards": _ld(2, _ld(1, rewards.astype("<f4").tobytes())),
        "discounts": _ld(2, _ld(1, discounts.astype("<f4").tobytes())),
    }
    entries = b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, v)) for k, v in feats.items())
    return _ld(1, entries)


def make_rlu_shards(root: Path, steps: int, files: int, pool_frames: int = 4000, seed: int = 0) -> list[bytes]:
    """Write ``files`` RL Unplugged shards of about ``steps`` steps each for GAME run 1; returns shard 0's PNGs."""
    import cv2

    pool = _real_frames(pool_frames, seed)
    pngs = [cv2.imencode(".png", f)[1].tobytes() for f in pool]
    rng = np.random.default_rng(seed)
    game_dir = root / GAME
    game_dir.mkdir(parents=True, exist_ok=True)
    first: list[bytes] = []
    i = 0
    for shard in range(files):
        with gzip.open(game_dir / f"run_1-{shard:05d}-of-{files:05d}", "wb", compresslevel=1) as f:
            n_shard = 0
            while n_shard < steps:
                n = int(min(rng.integers(200, 2000), steps - n_shard + 1))
                ep = [pngs[(i + k) % pool_frames] for k in range(n)]
                i += n
                n_shard += n - 1
                if shard == 0:
                    first.extend(ep[:-1])
                discounts = np.ones(n, np.float32)
                discounts[-1] = 0.0
                data = _rlu_example(ep, rng.integers(0, 6, n), (rng.random(n) < 0.02).astype(np.float32), discounts)
                length = np.uint64(len(data)).tobytes()
                crc = np.uint32(masked_crc32c(length)).tobytes()
                f.write(length + crc + data + np.uint32(masked_crc32c(data)).tobytes())
    return first


def _png_decode_mb_s(pngs: list[bytes]) -> dict[str, float]:
    """Decoded-frame MB/s of bare PNG decoding of ``pngs`` (in memory): OpenCV and Pillow."""
    import io

    import cv2
    from PIL import Image

    out = {}
    for name, dec in (
        ("opencv", lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)),
        ("pillow", lambda b: np.asarray(Image.open(io.BytesIO(b)))),
    ):
        t0 = time.perf_counter()
        n = sum(dec(b).nbytes for b in pngs)
        out[name] = n / (time.perf_counter() - t0) / 1e6
    return out


def bench_rlu(
    steps: int = 100_000, files: int = 2, workers: int = 1, workdir: str | None = None, markdown: str | None = None
) -> dict[str, Any]:
    """prepare-data on RL Unplugged shards of real frames: decoded-frame MB/s per worker and peak RSS, next to
    bare PNG decoding of the same bytes."""
    tmp = tempfile.TemporaryDirectory(dir=workdir)
    root = Path(tmp.name)
    pngs = make_rlu_shards(root / "src", steps, files)
    bare = _png_decode_mb_s(pngs)
    summary_path = root / "summary.json"
    opts = PrepareOptions(source=str(root / "src"), out=str(root / "out"), games=[GAME], workers=workers,
                          format="rlu")
    t0 = time.perf_counter()
    peak_rss_mb = _run_measuring_rss(opts, summary_path)
    wall = time.perf_counter() - t0
    (st,) = json.loads(summary_path.read_text())["stores"]
    raw_mb = st["raw_bytes"] / 1e6
    busy = min(workers, files)
    per_worker = raw_mb / st["seconds"] / busy
    end_to_end = raw_mb / wall / busy
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
                  f"{platform.python_version()}",
        "steps": steps, "files": files, "workers": workers,
        "rlu": {"raw_mb": raw_mb, "wall_s": wall, "mb_s_per_worker": per_worker,
                "end_to_end_mb_s_per_worker": end_to_end, "peak_rss_mb": peak_rss_mb,
                "png_decode_mb_s": bare["opencv"], "pillow_decode_mb_s": bare["pillow"],
                "ratio_to_png_decode": per_worker / bare["opencv"],
                "end_to_end_ratio_to_png_decode": end_to_end / bare["opencv"]},
    }
    r = result["rlu"]
    result["summary"] = [
        f"rlu converter: {per_worker:.0f} MB/s of decoded frames per worker while streaming, {end_to_end:.0f} MB/s "
        f"end to end incl. the indexing pass ({workers} worker(s), {raw_mb:.0f} MB); bare PNG decoding of the same "
        f"bytes {bare['opencv']:.0f} MB/s with OpenCV ({r['ratio_to_png_decode']:.2f}x, end to end "
        f"{r['end_to_end_ratio_to_png_decode']:.2f}x), {bare['pillow']:.0f} MB/s with Pillow; "
        f"peak RSS {peak_rss_mb:.0f} MB",
    ]
    if markdown:
        append_section(Path(markdown), [
            f"\n## RL Unplugged converter — {result['date']} — {result['device']}\n",
            f"`jowa bench data --format rlu --frames {steps} --files {files} --workers {workers}`\n",
            "| measure | value | baseline (same run) | ratio |",
            "|---|---|---|---|",
            f"| decoded frames per worker, streaming | {per_worker:.0f} MB/s | OpenCV PNG decode only "
            f"{bare['opencv']:.0f} MB/s | {r['ratio_to_png_decode']:.2f} |",
            f"| decoded frames per worker, end to end (with indexing pass) | {end_to_end:.0f} MB/s | same | "
            f"{r['end_to_end_ratio_to_png_decode']:.2f} |",
            f"| Pillow PNG decode only | {bare['pillow']:.0f} MB/s | OpenCV {bare['opencv']:.0f} MB/s | "
            f"{bare['pillow'] / bare['opencv']:.2f} |",
            f"| peak RSS (largest process) | {peak_rss_mb:.0f} MB | | |",
            "",
        ])
    tmp.cleanup()
    return result


def _append_markdown(path: Path, r: dict[str, Any]) -> None:
    c, ld = r["converter"], r["loader"]
    lines = [
        f"\n## Data pipeline — {r['date']} — {r['device']}\n",
        f"`jowa bench data --frames {r['capacity']} --files {r['files']} --workers {r['workers']}`\n",
        "| measure | value | baseline (same run) | ratio |",
        "|---|---|---|---|",
        f"| converter, raw frames per worker | {c['mb_s_per_worker']:.0f} MB/s | gzip decode only "
        f"{c['gzip_decode_mb_s']:.0f} MB/s | {c['ratio_to_gzip_decode']:.2f} |",
        f"| converter peak RSS (largest process) | {c['peak_rss_mb']:.0f} MB | | |",
        f"| loader, random 8-step segments, 1 process | {ld['segments_per_s']:.0f} /s | zarr-python slices "
        f"{ld['zarr_python_segments_per_s']:.0f} /s | {ld['ratio_to_zarr_python']:.1f} |",
        f"| store size | {c['store_mb']:.1f} MB for {c['raw_mb']:.0f} MB of raw frames | | |",
        "",
    ]
    append_section(path, lines)
