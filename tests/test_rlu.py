"""prepare-data on RL Unplugged Atari episode shards: format, step alignment, equivalence with the DQN-Replay
path on the same collected episodes, selection, resume and bad input. Fixtures come from tests/rlu_writer.py
(protobuf library + Pillow + pure-Python CRC32C), independent of the reader."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from dopamine_emulator import frame_key, make_frame
from rlu_writer import (
    RluEpisode,
    cut_episode,
    episodes_from_single_file_logs,
    frame,
    shard_name,
    terminal_episode,
    write_shard,
)
from typer.testing import CliRunner

from jowa_cli.main import app
from jowa_core import games
from jowa_core.data import convert
from jowa_core.data.collect import collect_run
from jowa_core.data.convert import PrepareOptions, prepare_data
from jowa_core.data.dopamine import SourceError
from jowa_core.data.store import open_store
from jowa_core.data.tfrecord import iter_records, parse_example
from jowa_core.envs.atari import AtariSettings

GAME = "Pong"


def _opts(src: Path, out: Path, **kw) -> PrepareOptions:
    kw.setdefault("shard_frames", 8)
    return PrepareOptions(source=str(src), out=str(out), games=[GAME], **kw)


def _synthetic(root: Path, runs=(1,), shards: int = 3, seed: int = 0, total: int | None = None) -> dict:
    """Shards of short episodes with keyed frames; returns {(run, shard): [(frames, actions, rewards, term)]}."""
    rng = np.random.default_rng(seed)
    expected: dict = {}
    eid = 0
    for run in runs:
        for shard in range(shards):
            eps, stored = [], []
            for k in range(int(rng.integers(2, 6))):
                n = int(rng.integers(1, 12))
                frames = np.stack([make_frame(eid, s, rng) for s in range(n)])
                actions = [int(a) for a in rng.integers(0, 6, n)]
                rewards = [float(r) for r in rng.choice([-1.0, 0.0, 1.0], n)]
                cut = k == 0 and shard % 2 == 1  # some episodes are cut (no zero discount)
                if cut:
                    eps.append(cut_episode(frames, actions, rewards, checkpoint=shard, index=k))
                else:
                    term_frame = np.full((84, 84), 200, np.uint8)
                    eps.append(terminal_episode(frames, actions, rewards, term_frame, checkpoint=shard, index=k))
                stored.append((frames, actions, rewards, not cut))
                eid += 1
            write_shard(root / GAME / shard_name(run, shard, total or shards), eps)
            expected[(run, shard)] = stored
    return expected


def _check(path: Path, episodes: list) -> None:
    s = open_store(path)
    info = games.get(GAME)
    assert s.num_episodes == len(episodes)
    for k, (frames, actions, rewards, term) in enumerate(episodes):
        a, n = int(s.episode_start[k]), int(s.episode_length[k])
        assert n == len(actions)
        assert np.array_equal(s.frames.read_range(a, a + n), frames)
        assert np.array_equal(s.action[a : a + n], info.to_full(np.array(actions)))
        assert np.array_equal(s.reward[a : a + n], np.array(rewards, np.float32))
        assert s.terminal[a : a + n].tolist() == [False] * (n - 1) + [term]


# ---------------------------------------------------------------------------------------------- format


def test_reader_parses_independent_writer_records():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (4, 84, 84), dtype=np.uint8)
    ep = RluEpisode(frames, [0, 5, 300, 2**40], [0.5, -1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], checkpoint=7, index=-3)
    raw = frame(ep.example()) + frame(b"")
    recs = list(iter_records(io.BytesIO(raw), "f"))
    assert len(recs) == 2 and recs[1] == b""
    ex = parse_example(recs[0])
    assert ex["actions"][1].tolist() == [0, 5, 300, 2**40]  # one- and multi-byte varints
    assert ex["episode_idx"][1].tolist() == [-3]  # negative int64 (ten-byte varint)
    assert ex["discounts"][1].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert ex["clipped_rewards"][1].dtype == np.float32
    from rlu_writer import png

    assert [bytes(p) for p in ex["observations"][1]] == [png(f) for f in frames]


def test_step_alignment_terminal_frame_dropped_cut_episode_kept(tmp_path):
    expected = _synthetic(tmp_path / "src", shards=2, seed=1)
    (summary,) = prepare_data(_opts(tmp_path / "src", tmp_path / "out"))
    assert summary["status"] == "built"
    flat = [e for key in sorted(expected) for e in expected[key]]
    _check(tmp_path / "out" / f"{GAME}.zarr", flat)
    prov = open_store(tmp_path / "out" / f"{GAME}.zarr").attrs["provenance"]
    assert prov["format"] == "rlu" and prov["reward"] == "clipped_rewards"
    assert prov["cut_episodes"] == sum(not e[3] for e in flat) == 1
    assert prov["terminal_episodes"] == sum(e[3] for e in flat)
    f0 = prov["files"][0]
    real = tmp_path / "src" / GAME / f0["name"]
    assert f0["size"] == real.stat().st_size and f0["sha256"] == hashlib.sha256(real.read_bytes()).hexdigest()
    assert frame_key(open_store(tmp_path / "out" / f"{GAME}.zarr").frames.read_range(0, 1)[0]) == (0, 0)


def test_runs_checkpoints_and_split_select_shards(tmp_path):
    expected = _synthetic(tmp_path / "src", runs=(1, 2), shards=5, seed=2)
    prepare_data(_opts(tmp_path / "src", tmp_path / "a", runs=[2], checkpoints=(1, 3)))
    _check(tmp_path / "a" / f"{GAME}.zarr", [e for s in (1, 2, 3) for e in expected[(2, s)]])
    prepare_data(_opts(tmp_path / "src", tmp_path / "b", runs=[1], split="last20"))
    _check(tmp_path / "b" / f"{GAME}.zarr", expected[(1, 4)])
    files = open_store(tmp_path / "b" / f"{GAME}.zarr").attrs["provenance"]["files"]
    assert [(f["run"], f["ckpt"]) for f in files] == [(1, 4)]


def test_max_transitions_and_subsample(tmp_path):
    _synthetic(tmp_path / "src", shards=4, seed=3)
    (s,) = prepare_data(_opts(tmp_path / "src", tmp_path / "m", max_transitions=13))
    store = open_store(tmp_path / "m" / f"{GAME}.zarr")
    assert s["steps"] == store.num_steps == 13
    total = prepare_data(_opts(tmp_path / "src", tmp_path / "all"))[0]["steps"]
    a = prepare_data(_opts(tmp_path / "src", tmp_path / "s1", subsample=0.5, seed=4))[0]
    b = prepare_data(_opts(tmp_path / "src", tmp_path / "s2", subsample=0.5, seed=4, workers=2))[0]
    assert a["steps"] == b["steps"] and 0.5 * total <= a["steps"] < total
    x, y = open_store(tmp_path / "s1" / f"{GAME}.zarr"), open_store(tmp_path / "s2" / f"{GAME}.zarr")
    assert np.array_equal(x.frames.read_range(0, x.num_steps), y.frames.read_range(0, y.num_steps))


# ---------------------------------------------------------------------------------------------- equivalence


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A real Pong run (ALE, random policy) logged in one DQN-Replay file, and the same episodes as RLU shards."""
    root = tmp_path_factory.mktemp("rlu_collect")
    collect_run(GAME, root / "dqn", 1, 330, capacity=1024, seed=5, settings=AtariSettings(max_episode_steps=45))
    done, tail = episodes_from_single_file_logs(root / "dqn" / GAME / "1" / "replay_logs")
    assert len(done) >= 6 and tail is not None
    last_frame = np.full((84, 84), 17, np.uint8)  # the terminal observation Dopamine never logs
    eps = [terminal_episode(f, a, r, last_frame) for f, a, r in done]
    half = len(eps) // 2
    write_shard(root / "rlu" / GAME / shard_name(1, 0, 2), eps[:half])
    write_shard(root / "rlu" / GAME / shard_name(1, 1, 2), eps[half:])
    write_shard(root / "rlu_cut" / GAME / shard_name(1, 0, 1), [*eps, cut_episode(*tail)])
    return root, done, tail


def test_rlu_store_equals_dqn_replay_store_on_same_episodes(collected, tmp_path):
    root, done, _ = collected
    for kw in ({}, {"subsample": 0.5, "seed": 2}, {"max_transitions": 100, "seed": 1, "workers": 2}):
        prepare_data(_opts(root / "dqn", tmp_path / "dqn", overwrite=True, **kw))
        prepare_data(_opts(root / "rlu", tmp_path / "rlu", overwrite=True, **kw))
        a, b = open_store(tmp_path / "dqn" / f"{GAME}.zarr"), open_store(tmp_path / "rlu" / f"{GAME}.zarr")
        assert a.num_steps == b.num_steps > 0
        assert np.array_equal(a.frames.read_range(0, a.num_steps), b.frames.read_range(0, b.num_steps))
        for name in ("action", "reward", "terminal", "episode_start", "episode_length"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    full = open_store(tmp_path / "dqn" / f"{GAME}.zarr")
    assert full.attrs["provenance"]["episodes_found"] == len(done)


def test_cut_episode_kept_without_terminal(collected, tmp_path):
    root, done, tail = collected
    prepare_data(_opts(root / "dqn", tmp_path / "dqn"))
    prepare_data(_opts(root / "rlu_cut", tmp_path / "rlu"))
    a, b = open_store(tmp_path / "dqn" / f"{GAME}.zarr"), open_store(tmp_path / "rlu" / f"{GAME}.zarr")
    assert b.num_episodes == a.num_episodes + 1 and b.num_steps == a.num_steps + len(tail[1])
    assert np.array_equal(b.frames.read_range(0, a.num_steps), a.frames.read_range(0, a.num_steps))
    assert np.array_equal(b.frames.read_range(a.num_steps, b.num_steps), tail[0])
    assert not b.terminal[a.num_steps :].any() and b.terminal.sum() == a.terminal.sum() == len(done)
    assert b.attrs["provenance"]["cut_episodes"] == 1


# ---------------------------------------------------------------------------------------------- resume, CLI


def test_interrupted_run_resumes_to_identical_store(tmp_path, monkeypatch):
    _synthetic(tmp_path / "src", shards=5, seed=6)
    prepare_data(_opts(tmp_path / "src", tmp_path / "ref"))
    real = convert.convert_file
    calls = {"n": 0}

    def flaky(job, progress=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(job, progress)

    monkeypatch.setattr(convert, "convert_file", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(_opts(tmp_path / "src", tmp_path / "out"))
    assert not (tmp_path / "out" / f"{GAME}.zarr").exists()
    monkeypatch.setattr(convert, "convert_file", real)
    (summary,) = prepare_data(_opts(tmp_path / "src", tmp_path / "out"))
    assert summary["status"] == "resumed"
    a, b = open_store(tmp_path / "ref" / f"{GAME}.zarr"), open_store(tmp_path / "out" / f"{GAME}.zarr")
    assert np.array_equal(a.frames.read_range(0, a.num_steps), b.frames.read_range(0, b.num_steps))
    assert not (tmp_path / "out" / f".{GAME}.zarr.jobs").exists()


def test_kill_9_then_rerun_completes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    _synthetic(tmp_path / "src", shards=6, seed=11)
    cmd = [sys.executable, "-m", "jowa_cli.main", "prepare-data", "--source", str(tmp_path / "src"), "--games", GAME,
           "--out", str(tmp_path / "out"), "--quiet"]
    proc = subprocess.Popen(cmd, env={**os.environ, "JOWA_TEST_SLOW_FILES": "0.5"})
    done_dir = tmp_path / "out" / f".{GAME}.zarr.jobs" / "done"
    deadline = time.time() + 60
    while time.time() < deadline and not (done_dir.exists() and any(done_dir.iterdir())):
        time.sleep(0.02)
    assert proc.poll() is None, "conversion finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out" / f"{GAME}.zarr").exists()
    subprocess.run([*cmd, "--json", str(tmp_path / "s.json")], check=True)
    assert json.loads((tmp_path / "s.json").read_text())["stores"][0]["status"] == "resumed"
    prepare_data(PrepareOptions(source=str(tmp_path / "src"), out=str(tmp_path / "ref"), games=[GAME]))
    a, b = open_store(tmp_path / "ref" / f"{GAME}.zarr"), open_store(tmp_path / "out" / f"{GAME}.zarr")
    assert np.array_equal(a.frames.read_range(0, a.num_steps), b.frames.read_range(0, b.num_steps))
    assert np.array_equal(a.action, b.action) and np.array_equal(a.terminal, b.terminal)


def test_cli_format_option_and_json(tmp_path):
    _synthetic(tmp_path / "src", shards=2, seed=7)
    base = ["prepare-data", "--source", str(tmp_path / "src"), "--games", GAME, "--quiet", "--json", "-"]
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a"), "--format", "rlu"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["stores"][0]["status"] == "built"
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "b"), "--format", "dqn"])
    assert res.exit_code == 2 and "no runs" in res.output
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "c"), "--format", "tfds"])
    assert res.exit_code == 2 and "--format" in res.output


# ---------------------------------------------------------------------------------------------- bad input


def _one_shard(tmp_path: Path, **kw) -> Path:
    _synthetic(tmp_path / "src", shards=2, seed=8)
    return tmp_path / "src" / GAME / shard_name(1, 1, 2)


def _rewrite(path: Path, episodes: list[RluEpisode], raw_hook=None) -> None:
    write_shard(path, episodes, raw_hook)


def _ep(n: int = 4, **kw) -> RluEpisode:
    rng = np.random.default_rng(0)
    frames = np.stack([make_frame(99, s, rng) for s in range(n)])
    return terminal_episode(frames[:-1], [1] * (n - 1), [0.0] * (n - 1), frames[-1], **kw)


def _truncated(p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    return "truncated"


def _truncated_record(p):
    _rewrite(p, [_ep(), _ep()], raw_hook=lambda raw: raw[:-30])
    return "truncated in record 1"


def _crc_data(p):
    _rewrite(p, [_ep()], raw_hook=lambda raw: raw[:40] + bytes([raw[40] ^ 1]) + raw[41:])
    return "CRC mismatch in the data of record 0"


def _crc_length(p):
    _rewrite(p, [_ep()], raw_hook=lambda raw: raw[:8] + bytes([raw[8] ^ 1]) + raw[9:])
    return "CRC mismatch in the length"


def _corrupt_gzip(p):
    data = bytearray(p.read_bytes())
    data[-6] ^= 0xFF  # the gzip trailer's CRC32: the records themselves stay intact
    p.write_bytes(bytes(data))
    return "corrupt or truncated gzip"


def _bad_png(p):
    ep = _ep()
    ep.pngs = [b"\x89PNG not really"] * 4
    _rewrite(p, [ep])
    return "record 0 step 0: undecodable PNG"


def _wrong_size(p):
    ep = _ep()
    from rlu_writer import png

    ep.pngs = [png(np.zeros((84, 80), np.uint8))] * 4
    _rewrite(p, [ep])
    return r"image is \(84, 80\)"


def _missing_feature(p):
    _rewrite(p, [_ep(drop=("discounts",))])
    return "missing feature 'discounts'"


def _unequal(p):
    ep = _ep()
    ep.clipped_rewards = ep.clipped_rewards[:-1]
    _rewrite(p, [ep])
    return "arrays of unequal length"


def _bad_action(p):
    ep = _ep()
    ep.actions[1] = 6
    _rewrite(p, [ep])
    return "action 6 at step 1 is outside Pong's 6-action minimal set"


def _missing_shard(p):
    p.unlink()
    return "missing shard"


def _sarsa(p):
    ep = _ep(drop=("observations", "actions", "unclipped_rewards", "clipped_rewards", "discounts"))
    ep.extra = {"o_t": ("bytes", [b"x"] * 4), "o_tp1": ("bytes", [b"x"] * 4), "a_t": ("int64", [1])}
    _rewrite(p, [ep])
    return "shuffled SARSA layout"


BREAKERS = [_truncated, _truncated_record, _crc_data, _crc_length, _corrupt_gzip, _bad_png, _wrong_size,
            _missing_feature, _unequal, _bad_action, _missing_shard, _sarsa]


@pytest.mark.parametrize("breaker", BREAKERS, ids=[b.__name__.strip("_") for b in BREAKERS])
def test_bad_input_is_one_clear_error_and_leaves_nothing(tmp_path, breaker):
    path = _one_shard(tmp_path)
    problem = breaker(path)
    with pytest.raises(SourceError, match=problem) as err:
        prepare_data(_opts(tmp_path / "src", tmp_path / "out"))
    assert str(err.value).startswith(str(path))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []
    res = CliRunner().invoke(app, ["prepare-data", "--source", str(tmp_path / "src"), "--games", GAME, "--out",
                                   str(tmp_path / "out"), "--quiet"])
    lines = [x for x in res.output.strip().splitlines() if x.startswith("error:")]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {path}: ")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_unknown_game_and_absent_game(tmp_path):
    _synthetic(tmp_path / "src", shards=1, seed=9)
    base = ["prepare-data", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--quiet"]
    res = CliRunner().invoke(app, [*base, "--games", "Pongg"])
    assert res.exit_code == 2 and "Pongg" in res.output
    res = CliRunner().invoke(app, [*base, "--games", "Berzerk"])  # not published by RL Unplugged
    assert res.exit_code == 2 and "jowa collect" in res.output and res.output.count("error:") == 1
    res = CliRunner().invoke(app, [*base, "--games", f"{GAME},Berzerk"])  # checked before any store is built
    assert res.exit_code == 2 and not (tmp_path / "out" / f"{GAME}.zarr").exists()


def test_gzip_member_is_plain_tfrecord(tmp_path):
    """The fixture writer's files are GZIP TFRecords: what TensorFlow's TFRecordDataset(compression_type='GZIP')
    reads (checked here on the framing only, by decompressing with gzip)."""
    p = write_shard(tmp_path / "f", [_ep(3)])
    with gzip.open(p) as f:
        (rec,) = list(iter_records(f, str(p)))
    assert parse_example(rec)["actions"][1].tolist() == [1, 1, 0]


def test_transient_read_errors_are_retried(tmp_path, monkeypatch):
    import fsspec

    from jowa_core.data import rlu

    monkeypatch.setattr(rlu.time, "sleep", lambda s: None)
    _synthetic(tmp_path / "src", shards=1, seed=10)
    path = str(tmp_path / "src" / GAME / shard_name(1, 0, 1))
    local = fsspec.filesystem("file")
    failures = {"left": 2}

    class FlakyFile:
        def __init__(self, f):
            self.f, self.calls = f, 0

        def readinto(self, b):
            self.calls += 1
            if (self.calls == 2 or failures["left"] > 10) and failures["left"]:
                failures["left"] -= 1
                raise ConnectionError("connection reset by peer")
            return self.f.readinto(memoryview(b)[:1000])  # small reads: several calls per file

        def seek(self, pos):
            return self.f.seek(pos)

        def close(self):
            self.f.close()

    class FlakyFS:
        def open(self, p, mode="rb"):
            return FlakyFile(local.open(p, mode))

    a, b = rlu.index_file(local, path, 6, GAME), rlu.index_file(FlakyFS(), path, 6, GAME)
    assert failures["left"] == 0
    assert a.sha256 == b.sha256 and np.array_equal(a.action, b.action) and np.array_equal(a.rows, b.rows)
    failures["left"] = 100  # a source that keeps failing: one clear error after the retries
    with pytest.raises(SourceError, match="read failed 6 times .ConnectionError"):
        rlu.index_file(FlakyFS(), path, 6, GAME)


def test_bench_shards_are_read_back(tmp_path, monkeypatch):
    """`jowa bench data --format rlu` writes its shards with its own encoder: the reader must accept them."""
    from jowa_core.bench import data as bench

    rng = np.random.default_rng(0)
    monkeypatch.setattr(bench, "_real_frames", lambda n, seed=0: rng.integers(0, 255, (n, 84, 84), dtype=np.uint8))
    pngs = bench.make_rlu_shards(tmp_path / "src", 700, 2, pool_frames=50)
    (s,) = prepare_data(PrepareOptions(source=str(tmp_path / "src"), out=str(tmp_path / "out"), games=[bench.GAME]))
    store = open_store(tmp_path / "out" / f"{bench.GAME}.zarr")
    import cv2

    first = np.stack([cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_UNCHANGED) for p in pngs])
    assert s["steps"] >= 1400 and np.array_equal(store.frames.read_range(0, len(first)), first)
    assert store.terminal.sum() == store.num_episodes
