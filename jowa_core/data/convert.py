"""`prepare-data`: DQN-Replay / Dopamine logs → one Zarr store per game (see store.py for the contract).

Per game the work is planned from the small arrays only (add counts, terminals, actions, rewards):
reconstruct the chronological stream (stream.py), find complete episodes, choose the subset, and map every
kept row of every observation file to its row in the store. Then each observation file is streamed once by
a worker, which writes the store's frame shards that only it contributes to and leaves the frames of shards
shared with a neighbouring file in small edge files that the parent merges at the end.

Atomic and resumable: a store is built in ``.<Game>.zarr.partial`` with bookkeeping in ``.<Game>.zarr.jobs``
(plan fingerprint, one marker per finished file) and renamed to ``<Game>.zarr`` only when complete. A rerun
with the same options resumes; a finished store is left alone unless ``overwrite``; bad input removes the
partial build and raises a one-line error naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jowa_core import games
from jowa_core.constants import jowa_version
from jowa_core.data import rlu
from jowa_core.data import store as st
from jowa_core.data.dopamine import (
    Checkpoint,
    Source,
    SourceError,
    iter_frames,
    load_add_count,
    load_checkpoint,
    read_rows,
)
from jowa_core.data.stream import (
    PADDING_ROWS,
    Cover,
    StreamError,
    contiguous_blocks,
    file_covers,
    find_episodes,
    select_episodes,
)
from jowa_core.outputs import atomic_file, lock_output, refuse_inputs_inside, release_output
from jowa_core.procs import die_with_parent
from jowa_core.progress import NullReporter, Reporter

SPLITS = ("all", "first20", "last20")
BLOCK_ROWS = 4096


@dataclass
class PrepareOptions:
    source: str
    out: str
    games: list[str]
    runs: list[int] | None = None  # None: every run found
    checkpoints: tuple[int, int] | None = None  # inclusive range of checkpoint numbers; None: all
    split: str = "all"  # all | first20 | last20 of the selected checkpoints
    subsample: float | None = None  # fraction of transitions, drawn as whole episodes
    replacement: bool = False  # draw episodes with replacement (the official code's sampler)
    max_transitions: int | None = None
    seed: int = 0
    workers: int = 1
    overwrite: bool = False
    shard_frames: int = st.OBS_SHARD_FRAMES  # frames per obs shard file (a multiple of 4)
    format: str = "auto"  # auto | dqn (DQN-Replay / Dopamine logs) | rlu (RL Unplugged episodes)

    def fingerprint_fields(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("out", "workers", "overwrite", "games", "shard_frames"):
            d.pop(k)
        return d


@dataclass
class FileJob:
    """One observation file to stream: which of its rows go where in the store."""

    job_id: str
    fs: Any
    obs_path: str
    pieces: np.ndarray  # (P, 3) int64: [row_start, row_end, store_row_start], sorted by row_start
    partial: str  # the store being built
    jobs_dir: str
    n_steps: int
    owned: frozenset[int]  # shards only this job writes to
    shard_frames: int
    format: str = "dqn"  # dqn: a gzip'd .npy observation file; rlu: a GZIP TFRecord shard of episodes
    file_rows: int = 0  # rlu: stored steps in the file, checked while streaming


@dataclass
class GamePlan:
    game: str
    n_steps: int
    action: np.ndarray
    reward: np.ndarray
    terminal: np.ndarray
    episode_start: np.ndarray
    episode_length: np.ndarray
    jobs: list[FileJob]
    shared: dict[int, list[str]]  # shard -> contributing job ids (shards written from edge files)
    provenance: dict[str, Any]
    fingerprint: str
    warnings: list[str] = field(default_factory=list)


def parse_range(text: str | None) -> tuple[int, int] | None:
    """'1-50' → (1, 50); '7' → (7, 7); None/'' → None."""
    if not text:
        return None
    try:
        lo, _, hi = text.partition("-")
        a, b = int(lo), int(hi or lo)
    except ValueError as e:
        raise ValueError(f"bad checkpoint range {text!r}; expected N or N-M, e.g. 1-50") from e
    if a > b or a < 0:
        raise ValueError(f"bad checkpoint range {text!r}: start must be ≤ end and ≥ 0")
    return a, b


def parse_int_list(text: str | None) -> list[int] | None:
    """'1,2' or '1-3' or '1,4-5' → sorted unique ints; None/'' → None."""
    if not text:
        return None
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        r = parse_range(part)
        assert r is not None
        out.update(range(r[0], r[1] + 1))
    return sorted(out)


def split_checkpoints(ckpts: list[int], split: str) -> list[int]:
    """The paper's subsets: first/last 20% of a run's checkpoints (at least one)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "all" or not ckpts:
        return ckpts
    k = max(1, round(0.2 * len(ckpts)))
    return ckpts[:k] if split == "first20" else ckpts[-k:]


# --------------------------------------------------------------------------------------------------------
# Planning


def plan_game(source: Source, game: str, opts: PrepareOptions, out_root: Path, warn, pool=None) -> GamePlan:
    fmt = opts.format if opts.format != "auto" else rlu.detect_format(source, game)
    if fmt == "rlu":
        return _plan_rlu(source, game, opts, out_root, pool)
    info = games.get(game)
    available = source.runs(game)
    runs = opts.runs if opts.runs is not None else available
    for r in runs:
        if r not in available:
            raise SourceError(f"{source.game_dir(game)}/{r}/replay_logs: no such run (found runs: {available})")
    if not runs:
        raise SourceError(f"{source.game_dir(game)}: no runs (<run>/replay_logs/) found")

    candidates: list[tuple[int, int, int]] = []  # (run, first add, end add)
    run_covers: dict[int, dict[int, Cover]] = {}
    files_meta: list[dict[str, Any]] = []
    ckpt_files: dict[tuple[int, int], Checkpoint] = {}
    stats = defaultdict(int)
    for run in runs:
        label = f"{game} run {run}: "
        all_ckpts = source.checkpoints(game, run)
        nums = sorted(all_ckpts)
        if opts.checkpoints is not None:
            nums = [n for n in nums if opts.checkpoints[0] <= n <= opts.checkpoints[1]]
        selected = split_checkpoints(nums, opts.split)
        if not selected:
            continue
        # per file only what planning needs: terminal flags and "all-zero row" flags (2 bytes per row)
        flags = {n: _row_flags(load_checkpoint(source.fs, all_ckpts[n])) for n in selected}
        capacities = {f[0].shape[0] for f in flags.values()}
        if len(capacities) != 1:
            raise SourceError(f"{label}checkpoints have different capacities {sorted(capacities)}")
        C = capacities.pop()
        add_counts = {n: flags[n][2] if n in flags else load_add_count(source.fs, all_ckpts[n]) for n in all_ckpts}

        def row_values(n: int, _all=all_ckpts, _flags=flags, _c=C) -> tuple[np.ndarray, np.ndarray, int]:
            f = _flags.get(n) or _row_flags(load_checkpoint(source.fs, _all[n]))
            if f[0].shape[0] != _c:
                raise SourceError(f"{_all[n].path('terminal')}: capacity {f[0].shape[0]}, other checkpoints {_c}")
            return f

        def stale_match(prev: int, final: int, r0: int, r1: int) -> bool:
            (tp, zp, _), (tf, zf, _) = row_values(prev), row_values(final)
            return bool(np.array_equal(tp[r0:r1], tf[r0:r1]) and np.array_equal(zp[r0:r1], zf[r0:r1]))

        def final_alone(final: int, cursor: int, _all=all_ckpts) -> str:
            return _final_alone_kind(source.fs, _all[final].path("observation"), row_values(final)[1], cursor)

        covers = file_covers(add_counts, C, stale_match, warn=warn, label=label, final_alone=final_alone)
        run_covers[run] = {n: covers[n] for n in selected}
        for block in contiguous_blocks([covers[n] for n in selected]):
            term = np.concatenate([c.chrono(flags[c.ckpt][0]) for c in block.covers])
            zero = np.concatenate([c.chrono(flags[c.ckpt][1]) for c in block.covers])
            head = None
            if block.covers[0].after_lost_lap:
                first = block.covers[0]
                head = _lost_lap_head(source.fs, all_ckpts[first.ckpt].path("observation"), first, zero)
                stats["lost_lap_windows"] += 1
            found = find_episodes(block.start, term, zero, label=label, head_padding=head)
            stats["rows_skipped_after_gaps"] += found.skipped_head
            stats["rows_in_unfinished_episodes"] += found.dropped_tail
            candidates.extend((run, int(s), int(e)) for s, e in zip(found.starts, found.ends, strict=True))
        for n in selected:
            ck = all_ckpts[n]
            ckpt_files[(run, n)] = ck
            files_meta.append(
                {
                    "run": run,
                    "ckpt": n,
                    "add_count": add_counts[n],
                    "capacity": C,
                    "holds_adds": [covers[n].start, covers[n].end],
                    "files": {m: {"name": p.rsplit("/", 1)[-1], "size": ck.sizes[m]} for m, p in ck.paths.items()},
                }
            )
        del flags
    if not candidates:
        what = "no checkpoints selected" if not files_meta else "no complete episode in the selected checkpoints"
        raise SourceError(
            f"{source.game_dir(game)}: empty selection ({what}; runs {runs}, "
            f"checkpoints {opts.checkpoints or 'all'}, split {opts.split})"
        )

    lengths = np.array([e - s for _, s, e in candidates], dtype=np.int64)
    sel = select_episodes(
        lengths, opts.subsample, opts.max_transitions, opts.replacement, seed=[opts.seed, info.task_id]
    )
    kept = sel.lengths
    episode_start = np.concatenate([[0], np.cumsum(kept)[:-1]]).astype(np.int64)
    n_steps = int(kept.sum())

    # map every kept add index to (checkpoint, row) → store row, as contiguous pieces per file
    pieces: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)
    for k, cand in enumerate(sel.order.tolist()):
        run, a0, _ = candidates[cand]
        a1 = a0 + int(kept[k])
        dest = int(episode_start[k])
        for cover in sorted(run_covers[run].values(), key=lambda c: c.start):
            lo, hi = max(a0, cover.start), min(a1, cover.end)
            if lo >= hi:
                continue
            d = dest + (lo - a0)
            for r0, r1 in cover.rows(lo, hi):
                pieces[(run, cover.ckpt)].append((r0, r1, d))
                d += r1 - r0

    action = np.zeros(n_steps, np.int16)
    reward = np.zeros(n_steps, np.float32)
    terminal = np.zeros(n_steps, bool)
    full_len = lengths[sel.order]
    ends = episode_start + kept - 1
    terminal[ends[kept == full_len]] = True
    for (run, n), plist in pieces.items():
        ck = ckpt_files[(run, n)]
        a = load_checkpoint(source.fs, ck)
        for r0, r1, d in plist:
            raw = a.action[r0:r1]
            if raw.size and (raw.min() < 0 or raw.max() >= info.num_actions):
                bad = int(np.flatnonzero((raw < 0) | (raw >= info.num_actions))[0]) + r0
                raise SourceError(
                    f"{ck.path('action')}: action {int(a.action[bad])} at row {bad} is outside "
                    f"{info.name}'s {info.num_actions}-action minimal set"
                )
            action[d : d + r1 - r0] = info.to_full(raw)
            reward[d : d + r1 - r0] = a.reward[r0:r1]

    obs_paths = {k: ck.path("observation") for k, ck in ckpt_files.items()}
    jobs, shared = _make_jobs(source, obs_paths, pieces, n_steps, out_root, game, opts.shard_frames)
    provenance = {
        "source": source.url,
        "format": "dqn",
        "options": opts.fingerprint_fields(),
        "files": files_meta,
        "episodes_found": len(candidates),
        "steps_found": int(lengths.sum()),
        "episodes_kept": int(kept.shape[0]),
        "unique_episodes_kept": int(np.unique(sel.order).shape[0]),
        "steps_kept": n_steps,
        "truncated_episodes": int((kept < full_len).sum()),
        **stats,
    }
    return GamePlan(
        game=info.name,
        n_steps=n_steps,
        action=action,
        reward=reward,
        terminal=terminal,
        episode_start=episode_start,
        episode_length=kept.astype(np.int64),
        jobs=jobs,
        shared=shared,
        provenance=provenance,
        fingerprint=_fingerprint(opts, files_meta, info.name),
    )


def _plan_rlu(source: Source, game: str, opts: PrepareOptions, out_root: Path, pool=None) -> GamePlan:
    """Plan a game from RL Unplugged shards: one indexing pass (no image decoding) per selected shard."""
    info = games.get(game)
    gdir = source.game_dir(game)
    found = rlu.discover(source, game)
    available = sorted(found)
    runs = opts.runs if opts.runs is not None else available
    for r in runs:
        if r not in available:
            raise SourceError(f"{gdir}/run_{r}-*: no such run (found runs: {available})")
    chosen: list[rlu.RluFile] = []
    for run in runs:
        total = next(iter(found[run].values())).total
        nums = list(range(total))
        if opts.checkpoints is not None:
            nums = [n for n in nums if opts.checkpoints[0] <= n <= opts.checkpoints[1]]
        for n in split_checkpoints(nums, opts.split):
            if n not in found[run]:
                raise SourceError(f"{rlu.shard_path(gdir, run, n, total)}: missing shard (checkpoint {n} of run {run})")
            chosen.append(found[run][n])
    if not chosen:
        raise SourceError(
            f"{gdir}: empty selection (no checkpoints selected; runs {runs}, "
            f"checkpoints {opts.checkpoints or 'all'}, split {opts.split})"
        )
    args = [(source.fs, f.path, info.num_actions, info.name) for f in chosen]
    if pool is not None:
        indexes = list(pool.map(_index_rlu_file, args))
    else:
        indexes = [_index_rlu_file(a) for a in args]

    # candidates: every non-empty episode, in (run, checkpoint, record) order
    cand_file, cand_row, lengths, cand_term = [], [], [], []
    files_meta: list[dict[str, Any]] = []
    file_rows: dict[tuple[int, int], int] = {}
    stats: dict[str, int] = defaultdict(int)
    for k, (f, ix) in enumerate(zip(chosen, indexes, strict=True)):
        offsets = np.concatenate([[0], np.cumsum(ix.rows)[:-1]]).astype(np.int64)
        keep = ix.rows > 0
        cand_file.append(np.full(int(keep.sum()), k))
        cand_row.append(offsets[keep])
        lengths.append(ix.rows[keep])
        cand_term.append(ix.terminal[keep])
        file_rows[(f.run, f.shard)] = int(ix.rows.sum())
        stats["terminal_episodes"] += int((ix.terminal & keep).sum())
        stats["cut_episodes"] += int((~ix.terminal & keep).sum())
        stats["empty_episodes"] += ix.stats["empty_episodes"]
        meta = {"run": f.run, "ckpt": f.shard, "name": f.name, "size": f.size, "sha256": ix.sha256}
        if f.etag:
            meta["etag"] = f.etag
        files_meta.append({**meta, "episodes": int(ix.rows.shape[0]), "steps": file_rows[(f.run, f.shard)]})
    c_file, c_row = np.concatenate(cand_file), np.concatenate(cand_row)
    c_len, c_term = np.concatenate(lengths).astype(np.int64), np.concatenate(cand_term)
    if not c_len.size:
        raise SourceError(f"{gdir}: empty selection (no episode with steps in the selected shards)")

    sel = select_episodes(c_len, opts.subsample, opts.max_transitions, opts.replacement, seed=[opts.seed, info.task_id])
    kept = sel.lengths
    episode_start = np.concatenate([[0], np.cumsum(kept)[:-1]]).astype(np.int64)
    n_steps = int(kept.sum())
    action = np.zeros(n_steps, np.int16)
    reward = np.zeros(n_steps, np.float32)
    terminal = np.zeros(n_steps, bool)
    pieces: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)
    for k, cand in enumerate(sel.order.tolist()):
        f, ix = chosen[int(c_file[cand])], indexes[int(c_file[cand])]
        r0, n, d = int(c_row[cand]), int(kept[k]), int(episode_start[k])
        pieces[(f.run, f.shard)].append((r0, r0 + n, d))
        action[d : d + n] = info.to_full(ix.action[r0 : r0 + n])
        reward[d : d + n] = ix.reward[r0 : r0 + n]
        terminal[d + n - 1] = bool(c_term[cand]) and n == c_len[cand]
    obs_paths = {(f.run, f.shard): f.path for f in chosen}
    jobs, shared = _make_jobs(
        source, obs_paths, pieces, n_steps, out_root, info.name, opts.shard_frames, "rlu", file_rows
    )
    provenance = {
        "source": source.url,
        "format": "rlu",
        "reward": "clipped_rewards",
        "options": opts.fingerprint_fields(),
        "files": files_meta,
        "episodes_found": int(c_len.shape[0]),
        "steps_found": int(c_len.sum()),
        "episodes_kept": int(kept.shape[0]),
        "unique_episodes_kept": int(np.unique(sel.order).shape[0]),
        "steps_kept": n_steps,
        "truncated_episodes": int((kept < c_len[sel.order]).sum()),
        "cut_episodes_kept": int((~c_term[sel.order]).sum()),
        **stats,
    }
    return GamePlan(
        game=info.name,
        n_steps=n_steps,
        action=action,
        reward=reward,
        terminal=terminal,
        episode_start=episode_start,
        episode_length=kept.astype(np.int64),
        jobs=jobs,
        shared=shared,
        provenance=provenance,
        fingerprint=_fingerprint(opts, files_meta, info.name),
    )


def _index_rlu_file(args: tuple[Any, str, int, str]) -> rlu.FileIndex:
    fs, path, num_actions, game = args
    return rlu.index_file(fs, path, num_actions, game)


def _fingerprint(opts: PrepareOptions, files_meta: list[dict[str, Any]], game: str) -> str:
    """What a resumed build must share with the interrupted one: options, source files, store layout."""
    fp_src = json.dumps(
        {
            "options": opts.fingerprint_fields(),
            "files": files_meta,
            "game": game,
            "format": st.FORMAT_VERSION,
            "shards": [st.OBS_CHUNK_FRAMES, opts.shard_frames],
        },
        sort_keys=True,
    )
    return hashlib.sha256(fp_src.encode()).hexdigest()[:16]


def _final_alone_kind(fs: Any, obs_path: str, zero: np.ndarray, cursor: int) -> str:
    """``file_covers``' ``final_alone``: did the buffer of a run's only file (the final one, add_count = the
    cursor) wrap? ``zero`` (C,) marks its all-zero rows (action, reward, terminal).

    Rows a buffer never wrote are zero. If it wrapped, the lap whose save was lost ended in padding that jumped
    over C - 1, right after a terminal, so rows [cursor, C) hold a terminal or are all padding; in the second
    case rows 0-2 are not padding again (padding comes 3 rows at a time). Only then are frames read: rows 0-2,
    at the start of the file.
    """
    if not zero[cursor:].all():
        return "wrapped"
    head = list(range(min(PADDING_ROWS, cursor)))  # the run's first padding rows, if it never wrapped
    if zero[head].all() and not any(f.any() for f in read_rows(fs, obs_path, head).values()):
        return "fresh"
    return "wrapped_on_padding"


def _lost_lap_head(fs: Any, obs_path: str, cover: Cover, zero: np.ndarray) -> int:
    """Padding rows (0-3) at the start of a window that follows a lost lap.

    The add that jumped over C - 1 wrote 3 padding rows and an episode's first step, so the window starts on
    one of the padding rows or on the step itself (a regular file's window: padding row 1 or 2 or the step). A
    row with non-zero action/reward/terminal is the step; when flags cannot tell (a first step can be a no-op
    with zero reward), the frames decide: padding frames are all zero. Reading them streams the file (row C-1
    is its last row), which only this rare case pays.
    """
    n = 0
    while n < min(PADDING_ROWS, zero.shape[0] - 1) and zero[n]:
        n += 1
    if n == 0:
        return 0
    rows = [(cover.start + i) % cover.capacity for i in range(n)]
    frames = read_rows(fs, obs_path, rows)
    k = 0
    while k < n and not frames[rows[k]].any():
        k += 1
    return k


def _row_flags(a) -> tuple[np.ndarray, np.ndarray, int]:
    """(terminal (C,) bool, all-zero row (C,) bool, add_count) of a loaded checkpoint."""
    terminal = a.terminal.astype(bool)
    return terminal, (a.action == 0) & (a.reward == 0) & ~terminal, a.add_count


def _shard_spans(d0: int, d1: int, S: int):
    """(shard, local_start, local_stop, offset) spans of store rows [d0, d1), S rows per shard."""
    d = d0
    while d < d1:
        s, lo = divmod(d, S)
        n = min(d1 - d, S - lo)
        yield s, lo, lo + n, d - d0
        d += n


def _make_jobs(
    source, obs_paths, pieces, n_steps, out_root, game, S, fmt: str = "dqn", file_rows=None
) -> tuple[list[FileJob], dict[int, list[str]]]:
    contributors: dict[int, set[str]] = defaultdict(set)
    arrays: dict[str, np.ndarray] = {}
    for (run, n), plist in pieces.items():
        job_id = f"r{run}c{n}"
        arr = np.array(sorted(plist), dtype=np.int64).reshape(-1, 3)
        arrays[job_id] = arr
        for r0, r1, d in arr.tolist():
            for s, *_ in _shard_spans(d, d + r1 - r0, S):
                contributors[s].add(job_id)
    shared = {s: sorted(j) for s, j in contributors.items() if len(j) > 1}
    owned: dict[str, set[int]] = defaultdict(set)
    for s, j in contributors.items():
        if len(j) == 1:
            owned[next(iter(j))].add(s)
    jobs = []
    for (run, n), _ in sorted(pieces.items()):
        job_id = f"r{run}c{n}"
        jobs.append(
            FileJob(
                job_id=job_id,
                fs=source.fs,
                obs_path=obs_paths[(run, n)],
                pieces=arrays[job_id],
                partial=str(st.partial_path(out_root, game)),
                jobs_dir=str(jobs_path(out_root, game)),
                n_steps=n_steps,
                owned=frozenset(owned[job_id]),
                shard_frames=S,
                format=fmt,
                file_rows=(file_rows or {}).get((run, n), 0),
            )
        )
    return jobs, shared


def jobs_path(root: Path, game: str) -> Path:
    return Path(root) / f".{game}.zarr.jobs"


# --------------------------------------------------------------------------------------------------------
# Streaming one observation file (runs in worker processes)

_progress_queue = None


def _init_worker(queue, parent_pid: int) -> None:
    """Worker set-up: the progress queue; the worker dies with the parent (even on kill -9)."""
    die_with_parent(parent_pid)
    global _progress_queue
    _progress_queue = queue


def _shard_rows(shard: int, n_steps: int, S: int) -> int:
    return min(S, n_steps - shard * S)


def convert_file(job: FileJob, progress=None) -> dict[str, Any]:
    """Stream one observation file into the store's shards (owned) and edge files (shared)."""
    t0 = time.time()
    obs_dir = Path(job.partial) / "obs"
    edges = Path(job.jobs_dir) / "edges"
    expected: dict[int, int] = defaultdict(int)
    for r0, r1, d in job.pieces.tolist():
        for s, lo, hi, _ in _shard_spans(d, d + r1 - r0, job.shard_frames):
            expected[s] += hi - lo
    buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    filled: dict[int, int] = defaultdict(int)
    done_shards = 0
    p0, p1 = job.pieces[:, 0], job.pieces[:, 1]
    raw = 0
    if job.format == "rlu":
        blocks = rlu.iter_frames(job.fs, job.obs_path, job.pieces, job.file_rows)
    else:
        blocks = iter_frames(job.fs, job.obs_path, BLOCK_ROWS)
    for row0, frames in blocks:
        row1 = row0 + frames.shape[0]
        raw += frames.nbytes
        for i in np.flatnonzero((p0 < row1) & (p1 > row0)).tolist():
            r0, r1, d = job.pieces[i].tolist()
            a, b = max(r0, row0), min(r1, row1)
            for s, lo, hi, off in _shard_spans(d + a - r0, d + b - r0, job.shard_frames):
                if s not in buffers:
                    n = _shard_rows(s, job.n_steps, job.shard_frames)
                    buffers[s] = (np.zeros((n, *st.FRAME_SHAPE), np.uint8), np.zeros(n, bool))
                buf, mask = buffers[s]
                src = a - row0 + off
                buf[lo:hi] = frames[src : src + hi - lo]
                mask[lo:hi] = True
                filled[s] += hi - lo
                if filled[s] == expected[s]:
                    _flush(job, s, buf, mask, obs_dir, edges)
                    del buffers[s]
                    done_shards += 1
        report = progress or (_progress_queue.put if _progress_queue is not None else None)
        if report is not None:
            report(("bytes", frames.nbytes))
    if buffers:
        raise RuntimeError(f"{job.obs_path}: shards {sorted(buffers)} incomplete after streaming (plan bug)")
    marker = Path(job.jobs_dir) / "done" / job.job_id
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"raw_bytes": raw, "seconds": time.time() - t0}))
    if os.environ.get("JOWA_TEST_SLOW_FILES"):  # lets the kill -9 test interrupt a run mid-way
        time.sleep(float(os.environ["JOWA_TEST_SLOW_FILES"]))
    return {"job": job.job_id, "raw_bytes": raw, "seconds": time.time() - t0, "shards": done_shards}


def _flush(job: FileJob, shard: int, buf: np.ndarray, mask: np.ndarray, obs_dir: Path, edges: Path) -> None:
    if shard in job.owned:
        st.write_shard_atomic(obs_dir, shard, st.encode_shard(buf, job.shard_frames))
        return
    edges.mkdir(parents=True, exist_ok=True)
    target = edges / f"{shard}.{job.job_id}.npz"
    with atomic_file(target, edges / f".{shard}.{job.job_id}.tmp{os.getpid()}.npz") as tmp:
        np.savez(tmp, rows=np.flatnonzero(mask).astype(np.int32), frames=buf[mask])


def _merge_shared(plan: GamePlan, partial: Path, jobs_dir: Path, S: int) -> None:
    for shard, contributors in sorted(plan.shared.items()):
        n = _shard_rows(shard, plan.n_steps, S)
        buf = np.zeros((n, *st.FRAME_SHAPE), np.uint8)
        seen = np.zeros(n, bool)
        for job_id in contributors:
            with np.load(jobs_dir / "edges" / f"{shard}.{job_id}.npz") as z:
                buf[z["rows"]] = z["frames"]
                seen[z["rows"]] = True
        if not seen.all():
            raise RuntimeError(f"shard {shard} of {plan.game}: {int((~seen).sum())} rows missing after merge")
        st.write_shard_atomic(partial / "obs", shard, st.encode_shard(buf, S))


# --------------------------------------------------------------------------------------------------------
# Orchestration


def prepare_data(opts: PrepareOptions, reporter: Reporter | None = None) -> list[dict[str, Any]]:
    """Convert the selected games; returns one summary dict per game (status built/resumed/skipped)."""
    reporter = reporter or NullReporter()
    names = games.resolve(opts.games)
    out_root = Path(opts.out)
    if opts.format not in rlu.FORMATS:
        raise ValueError(f"unknown --format {opts.format!r}; choose one of {', '.join(rlu.FORMATS)}")
    source = Source.open(opts.source)
    if opts.subsample is not None and not 0 < opts.subsample <= 1:
        raise ValueError(f"--subsample must be a fraction in (0, 1], got {opts.subsample}")
    if opts.max_transitions is not None and opts.max_transitions <= 0:
        raise ValueError(f"--max-transitions must be positive, got {opts.max_transitions}")
    split_checkpoints([], opts.split)
    for name in names:  # every game's folder exists before any store is built
        try:
            source.game_dir(name)
        except SourceError as e:
            hint = ""
            if name not in rlu.GAMES and opts.format != "dqn":
                hint = (
                    f" (RL Unplugged does not publish {name}: collect it with `jowa collect` or leave it out, "
                    "see docs/reproduce.md)"
                )
            raise SourceError(f"{e}{hint}") from None
    out_root.mkdir(parents=True, exist_ok=True)
    locked = lock_output(out_root)  # one prepare-data per --out: a second one is refused
    summaries = []
    pool = None
    try:
        if opts.workers > 1:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            pool = ProcessPoolExecutor(opts.workers, mp_context=ctx, initializer=_init_worker,
                                       initargs=(queue, os.getpid()))
        else:
            queue = None
        for name in names:
            summaries.append(_prepare_game(source, name, opts, out_root, reporter, pool, queue))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if locked:
            release_output(out_root)
    return summaries


def _prepare_game(source, name, opts, out_root, reporter, pool, queue) -> dict[str, Any]:
    final = st.store_path(out_root, name)
    partial = st.partial_path(out_root, name)
    jobs_dir = jobs_path(out_root, name)
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        reporter.log(f"warning: {msg}")

    if final.exists() and opts.overwrite:  # --overwrite replaces only a store prepare-data wrote, never an input
        refuse_inputs_inside(final, [opts.source], "store")
        if not (final / "zarr.json").is_file():
            raise ValueError(f"{final} exists but is not a Zarr store: --overwrite replaces only stores; move it away")
    if final.exists() and not opts.overwrite:
        if jobs_dir.exists():  # killed between publish and cleanup
            shutil.rmtree(jobs_dir)
        reporter.log(f"{name}: {final} exists; skipping (use --overwrite to rebuild)")
        return {"game": name, "status": "skipped", "path": str(final)}

    reporter.log(f"{name}: planning from {source.url}")
    try:
        plan = plan_game(source, name, opts, out_root, warn, pool)
    except (SourceError, StreamError):
        _discard(partial, jobs_dir)
        raise
    resumed = _resume_ok(jobs_dir, partial, plan.fingerprint)
    if not resumed:
        _discard(partial, jobs_dir)
        jobs_dir.mkdir(parents=True)
        info = games.get(name)
        attrs = {
            "game": info.name,
            "task_id": info.task_id,
            "num_actions": info.num_actions,
            "action_set": list(info.minimal_actions),
        }
        group = st.create_store(partial, plan.n_steps, len(plan.episode_start), attrs, opts.shard_frames)
        group["action"][:] = plan.action
        group["reward"][:] = plan.reward
        group["terminal"][:] = plan.terminal
        group["episode_start"][:] = plan.episode_start
        group["episode_length"][:] = plan.episode_length
        (jobs_dir / "plan.json").write_text(json.dumps({"fingerprint": plan.fingerprint}))
    done = {p.name for p in (jobs_dir / "done").glob("*")} if (jobs_dir / "done").exists() else set()
    todo = [j for j in plan.jobs if j.job_id not in done]
    if resumed:
        reporter.log(f"{name}: resuming; {len(done)} of {len(plan.jobs)} files already converted")
        _remove_temp_files(partial, jobs_dir)
    t0 = time.time()
    raw_total = 0
    try:
        raw_total = _run_jobs(name, todo, len(plan.jobs), source, reporter, pool, queue)
        _merge_shared(plan, partial, jobs_dir, opts.shard_frames)
    except (SourceError, StreamError):
        _discard(partial, jobs_dir)
        raise
    elapsed = time.time() - t0
    plan.provenance["warnings"] = warnings
    plan.provenance["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    plan.provenance["fingerprint"] = plan.fingerprint
    plan.provenance["jowa_version"] = jowa_version()
    st.write_attrs_json(partial, {"provenance": plan.provenance})
    _remove_temp_files(partial, jobs_dir)  # a store holds only its own files
    st.publish(partial, final)
    shutil.rmtree(jobs_dir, ignore_errors=True)
    mbps = raw_total / max(elapsed, 1e-9) / 1e6
    reporter.log(
        f"{name}: wrote {final} ({plan.n_steps} steps, {len(plan.episode_start)} episodes, {mbps:.0f} MB/s of frames)"
    )
    return {
        "game": name,
        "status": "resumed" if resumed else "built",
        "path": str(final),
        "steps": plan.n_steps,
        "episodes": int(len(plan.episode_start)),
        "raw_bytes": raw_total,
        "seconds": elapsed,
        "warnings": warnings,
    }


def _run_jobs(name, todo, n_total, source, reporter, pool, queue) -> int:
    files_task = reporter.task(f"{name}: files", total=n_total, unit="files")
    reporter.advance(files_task, n_total - len(todo))
    bytes_task = reporter.task(f"{name}: frames", total=None, unit="MB")
    raw = 0
    if pool is None:
        for job in todo:
            res = convert_file(job, progress=lambda m: reporter.advance(bytes_task, m[1] / 1e6))
            raw += res["raw_bytes"]
            reporter.advance(files_task, 1)
        return raw
    futures: dict[Future, FileJob] = {pool.submit(convert_file, job): job for job in todo}
    try:
        while futures:
            finished, _ = wait(list(futures), timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(queue, reporter, bytes_task)
            for fut in finished:
                futures.pop(fut)
                res = fut.result()  # re-raises a worker's SourceError
                raw += res["raw_bytes"]
                reporter.advance(files_task, 1)
    except BaseException:
        for fut in futures:
            fut.cancel()
        wait(list(futures))
        raise
    _drain(queue, reporter, bytes_task)
    return raw


def _drain(queue, reporter, task) -> None:
    if queue is None:
        return
    while True:
        try:
            kind, amount = queue.get_nowait()
        except Exception:  # noqa: BLE001 - queue.Empty from a manager proxy
            return
        reporter.advance(task, amount / 1e6)


def _resume_ok(jobs_dir: Path, partial: Path, fingerprint: str) -> bool:
    plan_file = jobs_dir / "plan.json"
    if not (plan_file.exists() and partial.exists()):
        return False
    try:
        return json.loads(plan_file.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def _remove_temp_files(partial: Path, jobs_dir: Path) -> None:
    """Delete temporary files of writers killed mid-write (an interrupted run's, or a crashed worker's): no other
    process writes here (the --out lock), so every temporary file is stale."""
    for p in [*partial.glob("obs/c/*/0/.0.tmp*"), *jobs_dir.rglob(".*.tmp*.npz")]:
        p.unlink(missing_ok=True)


def _discard(partial: Path, jobs_dir: Path) -> None:
    for p in (partial, jobs_dir):
        if p.exists():
            shutil.rmtree(p)
