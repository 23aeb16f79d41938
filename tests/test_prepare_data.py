"""prepare-data: round trips against the logger emulator, subsampling, resumability and bad input."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from dopamine_emulator import frame_key, recoverable_episodes, write_run
from typer.testing import CliRunner

from jowa_cli.main import app
from jowa_core import games
from jowa_core.data import convert
from jowa_core.data.convert import PrepareOptions, prepare_data
from jowa_core.data.dopamine import SourceError
from jowa_core.data.store import open_store
from jowa_core.data.stream import select_episodes

GAME = "Pong"


def _opts(src: Path, out: Path, **kw) -> PrepareOptions:
    kw.setdefault("shard_frames", 8)  # tiny shards: many shards shared between files
    return PrepareOptions(source=str(src), out=str(out), games=[GAME], **kw)


def _check_store(path: Path, runs: dict[int, object], expected: list[tuple[int, int]]) -> None:
    """The store holds exactly ``expected`` (run, episode) in order, with the logged values."""
    s = open_store(path)
    info = games.get(GAME)
    assert s.num_episodes == len(expected)
    assert s.attrs["game"] == GAME and s.attrs["num_actions"] == 6 and s.attrs["task_id"] == 39
    for k, (run, e) in enumerate(expected):
        steps = runs[run].episodes[e]
        a, n = int(s.episode_start[k]), int(s.episode_length[k])
        assert n == len(steps)
        frames = s.frames.read_range(a, a + n)
        assert [frame_key(f) for f in frames] == [(e, i) for i in range(n)]
        assert np.array_equal(frames, np.stack([t.obs for t in steps]))
        assert np.array_equal(s.action[a : a + n], info.to_full(np.array([t.action for t in steps])))
        assert np.array_equal(s.reward[a : a + n], np.array([t.reward for t in steps], np.float32))
        assert np.array_equal(s.terminal[a : a + n], np.array([t.terminal for t in steps]))
    # plain zarr reads the same frames as the fast reader
    z = zarr.open_group(str(path), mode="r")
    assert np.array_equal(z["obs"][:], s.frames.read_range(0, s.num_steps))


@pytest.mark.parametrize("seed", range(6))
def test_round_trip_matches_logger_oracle(tmp_path, seed):
    rng = np.random.default_rng(seed)
    capacity = int(rng.integers(16, 48))
    runs = {}
    for run in (1, 2):
        lengths = [int(x) for x in rng.integers(1, 40, size=int(rng.integers(8, 20)))]
        runs[run] = write_run(tmp_path / "src" / GAME / str(run) / "replay_logs", lengths, capacity, seed=seed + run)
    n_files = len(runs[1].files)
    if seed % 2:  # a checkpoint range: gaps at the selection boundaries
        lo, hi = 1, max(1, n_files - 2)
        expected = [(r, e) for r in (1, 2) for e in recoverable_episodes(runs[r], set(range(lo, hi + 1)))]
        opts = _opts(tmp_path / "src", tmp_path / "out", checkpoints=(lo, hi))
    else:
        expected = [(r, e) for r in (1, 2) for e in recoverable_episodes(runs[r])]
        opts = _opts(tmp_path / "src", tmp_path / "out")
    assert expected, "test data should hold recoverable episodes"
    (summary,) = prepare_data(opts)
    assert summary["status"] == "built"
    _check_store(tmp_path / "out" / f"{GAME}.zarr", runs, expected)


def test_lost_lap_is_cut_and_warned(tmp_path):
    # capacity 16, episodes of length 10 → 3 padding + 10 rows per episode; a padding jump skips C-1
    run = write_run(tmp_path / "src" / GAME / "1" / "replay_logs", [10] * 12, 16, seed=3)
    adds = [f["add_count"] for f in run.files if f["add_count"] >= 15]
    assert any(b - a > 16 for a, b in zip(adds, adds[1:], strict=False)), "fixture must contain a lost lap"
    (summary,) = prepare_data(_opts(tmp_path / "src", tmp_path / "out"))
    assert any("lost lap" in w for w in summary["warnings"])
    _check_store(tmp_path / "out" / f"{GAME}.zarr", {1: run}, [(1, e) for e in recoverable_episodes(run)])


def test_split_selects_first_and_last_fifth(tmp_path):
    run = write_run(tmp_path / "src" / GAME / "1" / "replay_logs", [7, 11, 5, 13] * 12, 20, seed=4)
    ckpts = sorted(f["ckpt"] for f in run.files)
    k = max(1, round(0.2 * len(ckpts)))
    for split, chosen in (("first20", ckpts[:k]), ("last20", ckpts[-k:])):
        out = tmp_path / split
        prepare_data(_opts(tmp_path / "src", out, split=split))
        _check_store(out / f"{GAME}.zarr", {1: run}, [(1, e) for e in recoverable_episodes(run, set(chosen))])
        files = open_store(out / f"{GAME}.zarr").attrs["provenance"]["files"]
        assert sorted(f["ckpt"] for f in files) == chosen


def test_workers_give_identical_store(tmp_path):
    run = write_run(tmp_path / "src" / GAME / "1" / "replay_logs", [9, 30, 4, 17, 22] * 6, 24, seed=5)
    prepare_data(_opts(tmp_path / "src", tmp_path / "w1", workers=1))
    prepare_data(_opts(tmp_path / "src", tmp_path / "w2", workers=2))
    a, b = open_store(tmp_path / "w1" / f"{GAME}.zarr"), open_store(tmp_path / "w2" / f"{GAME}.zarr")
    assert np.array_equal(a.frames.read_range(0, a.num_steps), b.frames.read_range(0, b.num_steps))
    assert np.array_equal(a.action, b.action) and np.array_equal(a.episode_start, b.episode_start)
    _check_store(tmp_path / "w2" / f"{GAME}.zarr", {1: run}, [(1, e) for e in recoverable_episodes(run)])


def test_provenance_records_choices_and_files(tmp_path):
    write_run(tmp_path / "src" / GAME / "1" / "replay_logs", [12] * 10, 32, seed=6)
    prepare_data(_opts(tmp_path / "src", tmp_path / "out", subsample=0.5, seed=3))
    prov = open_store(tmp_path / "out" / f"{GAME}.zarr").attrs["provenance"]
    assert prov["options"]["subsample"] == 0.5 and prov["options"]["seed"] == 3
    assert prov["options"]["replacement"] is False and prov["options"]["split"] == "all"
    f0 = prov["files"][0]
    assert {"run", "ckpt", "add_count", "files"} <= set(f0)
    obs = f0["files"]["observation"]
    real = tmp_path / "src" / GAME / "1" / "replay_logs" / obs["name"]
    assert obs["size"] == real.stat().st_size
    with gzip.open(real.parent / f"add_count_ckpt.{f0['ckpt']}.gz") as f:
        assert f0["add_count"] == int(np.load(f))


# ---------------------------------------------------------------------------------------------- selection


def test_subsample_without_replacement_takes_whole_episodes():
    lengths = np.arange(1, 101)
    sel = select_episodes(lengths, fraction=0.1, seed=0)
    assert len(set(sel.order.tolist())) == len(sel.order)  # no duplicates
    assert np.all(np.diff(sel.order) > 0)  # chronological
    total = lengths[sel.order].sum()
    assert total >= 0.1 * lengths.sum()
    assert total - lengths[sel.order].min() < 0.1 * lengths.sum() + lengths.max()
    assert np.array_equal(sel.lengths, lengths[sel.order])
    again = select_episodes(lengths, fraction=0.1, seed=0)
    assert np.array_equal(again.order, sel.order)
    assert not np.array_equal(select_episodes(lengths, fraction=0.1, seed=1).order, sel.order)


def test_subsample_with_replacement_matches_official_count():
    lengths = np.full(50, 10)
    sel = select_episodes(lengths, fraction=0.5, replacement=True, seed=0)
    assert len(sel.order) == int(np.ceil(0.5 * 500 / 10))
    assert np.all(np.diff(sel.order) >= 0)
    many = select_episodes(np.full(10, 10), fraction=1.0 - 1e-9, replacement=True, seed=1)
    assert len(set(many.order.tolist())) < len(many.order)  # duplicates occur


def test_max_transitions_is_exact_and_truncates_one_episode(tmp_path):
    lengths = np.array([30, 40, 50, 60])
    sel = select_episodes(lengths, max_transitions=100, seed=0)
    assert sel.lengths.sum() == 100
    assert int((sel.lengths < lengths[sel.order]).sum()) <= 1
    run = write_run(tmp_path / "src" / GAME / "1" / "replay_logs", [25] * 12, 64, seed=7)
    (summary,) = prepare_data(_opts(tmp_path / "src", tmp_path / "out", max_transitions=60))
    s = open_store(tmp_path / "out" / f"{GAME}.zarr")
    assert s.num_steps == 60 and summary["steps"] == 60
    assert s.terminal.sum() == s.num_episodes - 1  # the cut episode has no terminal
    assert s.attrs["provenance"]["truncated_episodes"] == 1
    del run


# ---------------------------------------------------------------------------------------------- resume


def test_interrupted_run_resumes_to_identical_store(tmp_path, monkeypatch):
    write_run(tmp_path / "src" / GAME / "1" / "replay_logs", [9, 30, 4, 17, 22] * 8, 24, seed=8)
    prepare_data(_opts(tmp_path / "src", tmp_path / "ref"))
    real = convert.convert_file
    calls = {"n": 0}

    def flaky(job, progress=None):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(job, progress)

    monkeypatch.setattr(convert, "convert_file", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(_opts(tmp_path / "src", tmp_path / "out"))
    assert not (tmp_path / "out" / f"{GAME}.zarr").exists()  # nothing visible
    assert (tmp_path / "out" / f".{GAME}.zarr.partial").exists()
    monkeypatch.setattr(convert, "convert_file", real)
    (summary,) = prepare_data(_opts(tmp_path / "src", tmp_path / "out"))
    assert summary["status"] == "resumed"
    a, b = open_store(tmp_path / "ref" / f"{GAME}.zarr"), open_store(tmp_path / "out" / f"{GAME}.zarr")
    assert np.array_equal(a.frames.read_range(0, a.num_steps), b.frames.read_range(0, b.num_steps))
    assert np.array_equal(a.reward, b.reward)
    assert not (tmp_path / "out" / f".{GAME}.zarr.partial").exists()
    assert not (tmp_path / "out" / f".{GAME}.zarr.jobs").exists()


def test_kill_9_then_rerun_completes(tmp_path):
    src = tmp_path / "src"
    write_run(src / GAME / "1" / "replay_logs", [50, 120, 80, 200, 30] * 30, 400, seed=9)
    cmd = [sys.executable, "-m", "jowa_cli.main", "prepare-data", "--source", str(src), "--games", GAME,
           "--out", str(tmp_path / "out"), "--quiet"]
    env = {**os.environ, "JOWA_TEST_SLOW_FILES": "0.3"}
    proc = subprocess.Popen(cmd, env=env)
    done_dir = tmp_path / "out" / f".{GAME}.zarr.jobs" / "done"
    deadline = time.time() + 60
    while time.time() < deadline and not (done_dir.exists() and any(done_dir.iterdir())):
        time.sleep(0.02)
    assert proc.poll() is None, "conversion finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out" / f"{GAME}.zarr").exists()
    subprocess.run(cmd, check=True)
    ref = tmp_path / "ref"
    prepare_data(PrepareOptions(source=str(src), out=str(ref), games=[GAME]))
    a, b = open_store(ref / f"{GAME}.zarr"), open_store(tmp_path / "out" / f"{GAME}.zarr")
    assert np.array_equal(a.frames.read_range(0, a.num_steps), b.frames.read_range(0, b.num_steps))
    assert np.array_equal(a.action, b.action)


def test_finished_store_is_skipped_unless_overwrite(tmp_path):
    write_run(tmp_path / "src" / GAME / "1" / "replay_logs", [12] * 10, 32, seed=10)
    prepare_data(_opts(tmp_path / "src", tmp_path / "out"))
    path = tmp_path / "out" / f"{GAME}.zarr"
    stamp = (path / "zarr.json").stat().st_mtime_ns
    (summary,) = prepare_data(_opts(tmp_path / "src", tmp_path / "out", subsample=0.5))
    assert summary["status"] == "skipped" and (path / "zarr.json").stat().st_mtime_ns == stamp
    (summary,) = prepare_data(_opts(tmp_path / "src", tmp_path / "out", subsample=0.5, overwrite=True))
    assert summary["status"] == "built"
    assert open_store(path).attrs["provenance"]["options"]["subsample"] == 0.5


# ---------------------------------------------------------------------------------------------- bad input


def _gz_save(path: Path, array: np.ndarray) -> None:
    with gzip.open(path, "wb", compresslevel=1) as f:
        np.save(f, array)


def _bad_source(tmp_path: Path) -> Path:
    write_run(tmp_path / "src" / GAME / "1" / "replay_logs", [12, 20, 9] * 6, 32, seed=11)
    return tmp_path / "src" / GAME / "1" / "replay_logs"


def _break_missing(d):
    (d / "$store$_action_ckpt.1.gz").unlink()
    return "$store$_action_ckpt.1.gz"


def _break_corrupt(d):
    (d / "$store$_reward_ckpt.0.gz").write_bytes(b"not a gzip file at all")
    return "$store$_reward_ckpt.0.gz"


def _break_truncated_obs(d):
    p = d / "$store$_observation_ckpt.1.gz"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return "$store$_observation_ckpt.1.gz"


def _break_shape(d):
    _gz_save(d / "$store$_action_ckpt.0.gz", np.zeros(31, np.int32))
    return "$store$_action_ckpt.0.gz"


def _break_obs_dtype(d):
    _gz_save(d / "$store$_observation_ckpt.0.gz", np.zeros((32, 84, 84), np.float32))
    return "$store$_observation_ckpt.0.gz"


def _break_action_range(d):
    with gzip.open(d / "$store$_action_ckpt.1.gz") as f:
        a = np.load(f)
    a[a.argmax()] = 17
    _gz_save(d / "$store$_action_ckpt.1.gz", a)
    return "$store$_action_ckpt.1.gz"


@pytest.mark.parametrize(
    "breaker", [_break_missing, _break_corrupt, _break_truncated_obs, _break_shape, _break_obs_dtype,
                _break_action_range],
)
def test_bad_input_names_file_and_leaves_nothing(tmp_path, breaker):
    name = breaker(_bad_source(tmp_path))
    with pytest.raises(SourceError, match=name.replace("$", r"\$")):
        prepare_data(_opts(tmp_path / "src", tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    d = _bad_source(tmp_path)
    _break_truncated_obs(d)
    runner = CliRunner()
    base = ["prepare-data", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--quiet"]
    res = runner.invoke(app, [*base, "--games", GAME])
    assert res.exit_code == 2
    lines = [x for x in res.output.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "observation_ckpt.1.gz" in lines[0] and "truncated" in lines[0]
    res = runner.invoke(app, [*base, "--games", "Pongg"])
    assert res.exit_code == 2 and "Pongg" in res.output
    res = runner.invoke(app, [*base, "--games", GAME, "--checkpoints", "90-95"])
    assert res.exit_code == 2 and "empty selection" in res.output
    res = runner.invoke(app, [*base, "--games", "Breakout"])
    assert res.exit_code == 2 and "Breakout" in res.output
    assert not any((tmp_path / "out").glob("*Pong*"))


def test_cli_json_summary(tmp_path):
    run = write_run(tmp_path / "src" / GAME / "1" / "replay_logs", [12] * 10, 32, seed=12)
    res = CliRunner().invoke(app, ["prepare-data", "--source", str(tmp_path / "src"), "--games", GAME, "--out",
                                   str(tmp_path / "out"), "--json", "-", "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["stores"][0]["game"] == GAME
    assert data["stores"][0]["steps"] == 12 * len(recoverable_episodes(run)) > 0


def test_help_lists_commands():
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("prepare-data", "collect", "bench"):
        assert cmd in res.output


def test_find_episodes_run_start_without_any_terminal():
    from jowa_core.data.stream import find_episodes

    eps = find_episodes(0, np.zeros(150, bool), zero_row=np.ones(150, bool))
    assert eps.starts.size == 0 and eps.ends.size == 0 and eps.dropped_tail == 150


# ---------------------------------------------------------------------------------------------- lost laps


def _run_noop_first(log_dir: Path, lengths: list[int], capacity: int, seed: int):
    """Like write_run, but every episode's first step is a no-op with reward 0: its row has all-zero flags,
    like a padding row, so only the frames can tell where the episode starts."""
    from dopamine_emulator import EmulatedLogger, Transition, make_frame

    rng = np.random.default_rng(seed)
    logger = EmulatedLogger(log_dir, capacity)
    for e, n in enumerate(lengths):
        steps = [
            Transition(make_frame(e, s, rng), 0 if s == 0 else int(rng.integers(1, 6)),
                       0.0 if s == 0 else 1.0, s == n - 1, key=(e, s))
            for s in range(n)
        ]
        for t in steps:
            logger.add(t)
        logger.run.episodes[e] = steps
    logger.log_final_buffer()
    return logger.run


def test_only_file_final_whose_buffer_wrapped(tmp_path):
    """Capacity about the run's length: the first lap's save falls on padding, so the final file is the run's only
    file and its cursor hides that the buffer wrapped (found collecting MinAtar with --capacity = --steps)."""
    kinds = set()
    for capacity in range(20, 44):
        d = tmp_path / str(capacity)
        lengths = [3 + (capacity * k) % 7 for k in range(capacity // 4)] if capacity > 20 else [5, 6]
        run = write_run(d / "src" / GAME / "1" / "replay_logs", lengths, capacity, seed=capacity)
        if len(run.files) != 1:
            continue
        (summary,) = prepare_data(_opts(d / "src", d / "out"))
        expected = recoverable_episodes(run)
        assert expected
        _check_store(d / "out" / f"{GAME}.zarr", {1: run}, [(1, e) for e in expected])
        row_adds, cursor = run.files[0]["row_adds"], run.files[0]["add_count"]
        if row_adds.max() < capacity:  # never wrapped
            kinds.add("fresh")
            assert not any("wrapped" in w for w in summary["warnings"])
            continue
        assert any("buffer wrapped" in w for w in summary["warnings"])
        tail_is_padding = all(run.adds[a] is None for a in row_adds[cursor:])
        kinds.add("wrapped, tail padding" if tail_is_padding else "wrapped, tail holds a terminal")
    assert kinds == {"fresh", "wrapped, tail padding", "wrapped, tail holds a terminal"}


@pytest.mark.parametrize("noop_first", [False, True])
def test_episode_whose_start_is_visible_after_lost_lap_is_kept(tmp_path, noop_first):
    offsets = set()
    for length in range(4, 16):
        d = tmp_path / str(length)
        logs = d / "src" / GAME / "1" / "replay_logs"
        if noop_first:
            run = _run_noop_first(logs, [length] * 10, 16, seed=length)
        else:
            run = write_run(logs, [length] * 10, 16, seed=length)
        expected = recoverable_episodes(run)
        new = sorted(set(expected) - set(recoverable_episodes(run, visible_starts=False)))
        (summary,) = prepare_data(_opts(d / "src", d / "out"))
        _check_store(d / "out" / f"{GAME}.zarr", {1: run}, [(1, e) for e in expected])
        for e in new:  # where the window after the lost lap began: 0-2 rows before the first step
            first = run.adds.index((e, 0))
            held = {int(a) for f in run.files for a in f["row_adds"]}
            offsets.add(first - min(a for a in range(first - 3, first + 1) if a in held))
    assert offsets == {0, 1, 2}  # every position of the window start was exercised
