"""`jowa collect`: the Dopamine-format writer (against the logger oracle), the Atari environment, the
collector and its CLI. Real ALE emulation on Pong/Breakout, kept to a few thousand frames."""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from dopamine_emulator import EmulatedLogger, Transition, make_frame
from typer.testing import CliRunner

from jowa_cli import collect_cmd
from jowa_core import games
from jowa_core.data import collect as collect_mod
from jowa_core.data import dopamine_writer
from jowa_core.data.collect import collect, collect_run, make_policy
from jowa_core.data.dopamine_writer import LoggedReplayWriter, ckpt_file_names
from jowa_core.envs.atari import AtariEnv, AtariSettings


def load_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.load(f, allow_pickle=False)


def assert_same_logs(a: Path, b: Path) -> None:
    names_a, names_b = sorted(os.listdir(a)), sorted(os.listdir(b))
    assert names_a == names_b
    for name in names_a:
        x, y = load_gz(a / name), load_gz(b / name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def synthetic_stream(seed: int = 0, episodes: int = 20):
    rng = np.random.default_rng(seed)
    lengths = [int(x) for x in rng.integers(1, 70, size=episodes)]
    for e, length in enumerate(lengths):
        for s in range(length):
            yield Transition(
                obs=make_frame(e, s, rng),
                action=int(rng.integers(6)),
                reward=float(rng.choice([-1.0, 0.0, 0.5, 1.0])),
                terminal=s == length - 1,
                key=(e, s),
            )


def laps_reached(add_count: int, capacity: int) -> int:
    """How many times add_count passed a value == C-1 (mod C): what would be logged without padding."""
    return sum(1 for k in range(add_count) if k % capacity == capacity - 1)


# --------------------------------------------------------------------------------------------------
# (a) LoggedReplayWriter == the batch_rl logger oracle
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("capacity", [50, 64])
@pytest.mark.parametrize("memmap", [False, True])
def test_writer_matches_logger_oracle(tmp_path, monkeypatch, capacity, memmap):
    if memmap:
        monkeypatch.setattr(dopamine_writer, "MEMMAP_THRESHOLD_BYTES", 0)
    oracle = EmulatedLogger(tmp_path / "oracle", capacity)
    with LoggedReplayWriter(tmp_path / "ours", capacity) as writer:
        assert writer.uses_memmap is memmap
        for t in synthetic_stream():
            oracle.add(t)
            writer.add(t.obs, t.action, t.reward, t.terminal)
            assert writer.add_count == int(oracle.add_count)
        oracle.log_final_buffer()
        writer.log_final_buffer()
        assert [f["add_count"] for f in oracle.run.files] == [f["add_count"] for f in writer.logged]
    # the stream really makes padding jump over C-1 at least once (a lap of the buffer is never logged)
    assert oracle.log_count - 1 < laps_reached(int(oracle.add_count), capacity)
    assert_same_logs(tmp_path / "oracle", tmp_path / "ours")
    # exactly the six files per checkpoint, no temporary or memory-map files left behind
    expected = sorted(n for c in range(oracle.log_count) for n in ckpt_file_names(c))
    assert sorted(os.listdir(tmp_path / "ours")) == expected


def test_writer_final_log_of_empty_buffer_matches_oracle(tmp_path):
    oracle = EmulatedLogger(tmp_path / "oracle", 8)
    oracle.log_final_buffer()
    with LoggedReplayWriter(tmp_path / "ours", 8) as writer:
        writer.log_final_buffer()
    assert_same_logs(tmp_path / "oracle", tmp_path / "ours")
    assert load_gz(tmp_path / "ours" / "invalid_range_ckpt.0.gz").dtype == np.float64


def test_writer_never_leaves_a_torn_file(tmp_path, monkeypatch):
    writer = LoggedReplayWriter(tmp_path, 5)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    stream = synthetic_stream(seed=1)
    writer.add(*_fields(next(stream)))  # 3 padding rows + 1: add_count 4 == C-1, first checkpoint written
    assert (tmp_path / "add_count_ckpt.0.gz").exists()
    monkeypatch.setattr(dopamine_writer.np, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        writer.log_final_buffer()
    assert sorted(os.listdir(tmp_path)) == sorted(ckpt_file_names(0))  # nothing of ckpt 1, no tmp files


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="capacity"):
        LoggedReplayWriter(tmp_path, 4)
    with LoggedReplayWriter(tmp_path, 10) as writer, pytest.raises(ValueError, match="84"):
        writer.add(np.zeros((84, 83), np.uint8), 0, 0.0, False)


def _fields(t: Transition):
    return t.obs, t.action, t.reward, t.terminal


# --------------------------------------------------------------------------------------------------
# (c) AtariEnv: Dopamine preprocessing
# --------------------------------------------------------------------------------------------------
def _twin_ale(seed: int, sticky: float) -> AtariEnv:
    """An unpreprocessed twin: same ROM, seed and sticky probability, stepped frame by frame."""
    twin = AtariEnv("Pong", AtariSettings(sticky_actions=sticky, frame_skip=1, max_pool=False), seed=seed)
    twin.reset()
    return twin


@pytest.mark.parametrize("max_pool, frame_skip", [(True, 4), (False, 4), (True, 3)])
def test_env_frames_match_manual_dopamine_preprocessing(max_pool, frame_skip):
    settings = AtariSettings(sticky_actions=0.25, max_pool=max_pool, frame_skip=frame_skip)
    env = AtariEnv("Pong", settings, seed=7)
    twin = _twin_ale(seed=7, sticky=0.25)
    assert env.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)

    first = env.reset()
    assert first.shape == (84, 84) and first.dtype == np.uint8
    screen = twin.ale.getScreenGrayscale()
    # reset: second pooling buffer zeroed, so the first observation is the reset screen itself
    np.testing.assert_array_equal(first, cv2.resize(screen, (84, 84), interpolation=cv2.INTER_AREA))

    rng = np.random.default_rng(0)
    pooled_differs = 0
    rewards_before_last_frame = 0
    for _ in range(300):
        a = int(rng.integers(env.num_actions))
        obs, reward, game_over, truncated = env.step(a)
        frame_rewards, screens = [], []
        for _ in range(frame_skip):
            frame_rewards.append(twin.ale.act(twin._actions[a]))
            screens.append(twin.ale.getScreenGrayscale())
        last2 = np.maximum(screens[-2], screens[-1]) if max_pool else screens[-1]
        expected = cv2.resize(last2, (84, 84), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(obs, expected)
        assert reward == sum(frame_rewards) and not game_over and not truncated
        rewards_before_last_frame += int(any(frame_rewards[:-1]))
        pooled_differs += int(not np.array_equal(np.maximum(screens[-2], screens[-1]), screens[-1]))
    assert pooled_differs > 10  # max-pooling is observable on these frames, so the check means something
    if frame_skip == 3:  # (Pong scores only on every 4th frame: with skip 4 always on the last one)
        assert rewards_before_last_frame >= 2  # rewards of all skipped frames are summed: exercised
    # a later reset zeroes the second pooling buffer again: the observation is the reset screen alone
    again = env.reset()
    twin.reset()
    screen = twin.ale.getScreenGrayscale()
    np.testing.assert_array_equal(again, cv2.resize(screen, (84, 84), interpolation=cv2.INTER_AREA))


def test_env_truncation_is_terminal_and_requires_reset():
    env = AtariEnv("Pong", AtariSettings(max_episode_steps=10), seed=0)
    env.reset()
    for i in range(10):
        _, _, game_over, truncated = env.step(0)
        assert not game_over
        assert truncated == (i == 9) and env.terminal == (i == 9)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.reset()
    _, _, _, truncated = env.step(0)
    assert not truncated and env.episode_steps == 1


def test_env_life_loss_terminal_and_settings():
    env = AtariEnv("Breakout", AtariSettings(terminal_on_life_loss=True, sticky_actions=0.0), seed=1)
    assert env.ale.getFloat("repeat_action_probability") == 0.0
    assert env.action_set == games.get("Breakout").minimal_actions
    assert len(env.rom_md5) == 32
    env.reset()
    lives = env.ale.lives()
    rng = np.random.default_rng(0)
    for _ in range(2000):
        _, _, game_over, _ = env.step(int(rng.integers(env.num_actions)))
        if env.terminal:
            break
    assert env.terminal and not game_over and env.ale.lives() == lives - 1
    with pytest.raises(ValueError, match="out of range"):
        env.step(4)
    with pytest.raises(ValueError, match="sticky"):
        AtariSettings(sticky_actions=1.5)
    assert AtariSettings.from_dict(AtariSettings(frame_skip=3).to_dict()) == AtariSettings(frame_skip=3)


# --------------------------------------------------------------------------------------------------
# (b) collect_run on real Pong
# --------------------------------------------------------------------------------------------------
STEPS, CAPACITY = 640, 128
SETTINGS = AtariSettings(max_episode_steps=250)  # two truncated episodes, then an unfinished one


def _oracle_for(summary: dict, tmp: Path) -> EmulatedLogger:
    """Replay the run's terminal pattern through the logger oracle (frames don't affect add counts)."""
    oracle = EmulatedLogger(tmp, summary["capacity"])
    oracle._log = lambda: oracle.run.files.append(  # record checkpoints only, write nothing
        {"add_count": int(oracle.add_count), "terminal": oracle.store["terminal"].copy(),
         "row_adds": oracle.row_adds.copy()}
    )
    zero = np.zeros((84, 84), np.uint8)
    finished = len(summary["episode_lengths"])
    for e, length in enumerate([*summary["episode_lengths"], summary["unfinished_episode_steps"]]):
        for s in range(length):
            oracle.add(Transition(zero, 0, 0.0, s == length - 1 and e < finished, key=(e, s)))
    saved = oracle.add_count
    oracle.add_count = np.array(oracle._cursor())
    oracle._log()
    oracle.add_count = saved
    return oracle


@pytest.fixture(scope="module")
def pong_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("collect")
    stale = root / "Pong" / ".1.partial"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("left by an interrupted run")
    summary = collect_run("Pong", root, 1, STEPS, capacity=CAPACITY, seed=3, settings=SETTINGS)
    return root, summary


def test_collect_run_writes_dqn_replay_logs(pong_run, tmp_path):
    root, summary = pong_run
    run = root / "Pong" / "1"
    logs = run / "replay_logs"
    assert summary["path"] == str(run) and not summary["skipped"]
    assert sorted(os.listdir(root / "Pong")) == ["1"]  # stale .partial replaced, nothing else left
    assert sorted(os.listdir(run)) == ["collect.json", "replay_logs"]
    n = summary["num_checkpoints"]
    assert n >= 5 and summary["num_files"] == 6 * n
    assert sorted(os.listdir(logs)) == sorted(name for c in range(n) for name in ckpt_file_names(c))

    assert summary["episode_lengths"] == [250, 250] and summary["truncated_episodes"] == [0, 1]
    assert summary["unfinished_episode_steps"] == STEPS - 500
    oracle = _oracle_for(summary, tmp_path)
    assert [f["add_count"] for f in oracle.run.files] == [c["add_count"] for c in summary["checkpoints"]]
    for c, expected in enumerate(oracle.run.files):
        obs = load_gz(logs / f"$store$_observation_ckpt.{c}.gz")
        action = load_gz(logs / f"$store$_action_ckpt.{c}.gz")
        reward = load_gz(logs / f"$store$_reward_ckpt.{c}.gz")
        terminal = load_gz(logs / f"$store$_terminal_ckpt.{c}.gz")
        add_count = load_gz(logs / f"add_count_ckpt.{c}.gz")
        assert obs.shape == (CAPACITY, 84, 84) and obs.dtype == np.uint8
        assert action.shape == (CAPACITY,) and action.dtype == np.int32
        assert reward.shape == (CAPACITY,) and reward.dtype == np.float32
        assert terminal.shape == (CAPACITY,) and terminal.dtype == np.uint8
        assert add_count.shape == () and add_count.dtype == np.int64
        assert int(add_count) == expected["add_count"]
        if c < n - 1:
            assert int(add_count) % CAPACITY == CAPACITY - 1  # batch_rl's logging rule
        np.testing.assert_array_equal(terminal, expected["terminal"])  # truncation stored as terminal
        assert action.min() >= 0 and action.max() < 6
        assert np.all(np.abs(reward) <= 1.0)
        real = np.array([a >= 0 and oracle.run.adds[a] is not None for a in expected["row_adds"]])
        row_max = obs.reshape(CAPACITY, -1).max(axis=1)
        assert np.all(row_max[~real] == 0) and np.all(row_max[real] > 0)  # padding rows: zero frames
        assert np.all(action[~real] == 0) and np.all(reward[~real] == 0)
    # the first stored frame is the reset observation of the run's ALE seed (rows 0-2 are padding)
    first = load_gz(logs / "$store$_observation_ckpt.0.gz")[3]
    env = AtariEnv("Pong", SETTINGS, seed=summary["ale_seed"])
    np.testing.assert_array_equal(first, env.reset())

    on_disk = json.loads((run / "collect.json").read_text())
    for key in ("game", "run", "seed", "policy", "num_steps", "capacity", "episode_returns", "rom_md5"):
        assert on_disk[key] == summary[key]
    assert on_disk["game"] == "Pong" and on_disk["seed"] == 3 and on_disk["policy"] == "random"
    assert on_disk["settings"] == SETTINGS.to_dict() and on_disk["settings"]["sticky_actions"] == 0.25
    assert on_disk["num_steps"] == STEPS and on_disk["capacity"] == CAPACITY
    assert on_disk["episodes_completed"] == 2 and len(on_disk["episode_returns"]) == 2
    assert all(-21 <= r <= 21 for r in on_disk["episode_returns"])
    assert on_disk["rom_md5"] == env.rom_md5
    assert on_disk["versions"]["ale_py"] and on_disk["versions"]["jowa"]
    assert on_disk["wall_time_s"] > 0


def test_collect_run_is_deterministic(pong_run, tmp_path):
    root, summary = pong_run
    again = collect_run("Pong", tmp_path, 1, STEPS, capacity=CAPACITY, seed=3, settings=SETTINGS)
    assert again["episode_returns"] == summary["episode_returns"]
    a, b = root / "Pong" / "1" / "replay_logs", tmp_path / "Pong" / "1" / "replay_logs"
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    for name in os.listdir(a):  # byte-identical, gzip headers included
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    other = collect_run("Pong", tmp_path / "other", 1, 100, capacity=CAPACITY, seed=4, settings=SETTINGS)
    name = "$store$_action_ckpt.0.gz"
    acts = [load_gz(Path(s["path"]) / "replay_logs" / name)[:100] for s in (again, other)]
    assert not np.array_equal(*acts)


def test_collect_run_skips_complete_runs_unless_overwrite(tmp_path):
    kwargs = dict(capacity=32, seed=0, settings=SETTINGS)
    first = collect_run("Pong", tmp_path, 2, 60, **kwargs)
    summary_file = tmp_path / "Pong" / "2" / "collect.json"
    stamp = summary_file.stat().st_mtime_ns
    skipped = collect_run("Pong", tmp_path, 2, 60, **kwargs)
    assert skipped["skipped"] and summary_file.stat().st_mtime_ns == stamp
    assert skipped["episode_returns"] == first["episode_returns"]
    # a finished run collected with other steps or settings is not silently reused
    with pytest.raises(ValueError, match=r"other num_steps \(num_steps: 60 there, 80 asked\).*--overwrite"):
        collect_run("Pong", tmp_path, 2, 80, **kwargs)
    sticky = AtariSettings(**{**SETTINGS.to_dict(), "sticky_actions": 0.5})
    with pytest.raises(ValueError, match="other settings"):
        collect_run("Pong", tmp_path, 2, 60, capacity=32, seed=0, settings=sticky)
    assert summary_file.stat().st_mtime_ns == stamp
    redone = collect_run("Pong", tmp_path, 2, 80, overwrite=True, **kwargs)
    assert not redone["skipped"] and json.loads(summary_file.read_text())["num_steps"] == 80
    assert sorted(os.listdir(tmp_path / "Pong")) == ["2"]  # no .old / .partial left
    # a directory not written by `jowa collect` (e.g. downloaded DQN-Replay data) is never touched
    (tmp_path / "Pong" / "5" / "replay_logs").mkdir(parents=True)
    with pytest.raises(ValueError, match="not written by `jowa collect`"):
        collect_run("Pong", tmp_path, 5, 60, **kwargs)


def test_collect_clips_stored_rewards_not_returns(tmp_path, monkeypatch):
    class BigRewards(AtariEnv):
        def step(self, action):
            obs, _, game_over, truncated = super().step(action)
            return obs, 3.0, game_over, truncated

    monkeypatch.setattr(collect_mod, "make_env", lambda game, settings, seed: BigRewards(game, settings, seed))
    settings = AtariSettings(max_episode_steps=20)
    s = collect_run("Pong", tmp_path, 1, 45, capacity=64, settings=settings)
    assert s["episode_returns"] == [60.0, 60.0]
    rewards = load_gz(tmp_path / "Pong" / "1" / "replay_logs" / "$store$_reward_ckpt.0.gz")
    real = np.r_[3:23, 26:46, 49:54]  # after the 3 padding rows of each episode
    assert np.all(rewards[real] == 1.0) and np.all(np.delete(rewards, real) == 0.0)
    raw = collect_run("Pong", tmp_path / "raw", 1, 45, capacity=64,
                      settings=AtariSettings(max_episode_steps=20, clip_rewards=False))
    assert np.all(load_gz(Path(raw["path"]) / "replay_logs" / "$store$_reward_ckpt.0.gz")[real] == 3.0)


def test_collect_parallel_equals_sequential(tmp_path):
    kwargs = dict(num_steps=120, capacity=32, seed=1, settings=SETTINGS)
    seq = collect("Pong,Breakout", [1], tmp_path / "seq", workers=1, **kwargs)
    par = collect(["Pong", "Breakout"], [1], tmp_path / "par", workers=2, **kwargs)
    assert [(s["game"], s["run"]) for s in par] == [("Pong", 1), ("Breakout", 1)]
    for s, p in zip(seq, par, strict=True):
        assert_same_logs(Path(s["path"]) / "replay_logs", Path(p["path"]) / "replay_logs")


def test_policies():
    policy = make_policy("random", 6, np.random.SeedSequence(0))
    acts = {policy.act(np.zeros((84, 84), np.uint8)) for _ in range(200)}
    assert acts == set(range(6))
    with pytest.raises(ValueError, match="checkpoint.*jowa pretrain"):
        make_policy("eps-greedy", 6)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("greedy", 6)
    a, b = collect_mod.derive_seeds(0, "Pong", 1), collect_mod.derive_seeds(0, "Pong", 2)
    assert a[1] != b[1] and 0 <= a[1] < 2**31


# --------------------------------------------------------------------------------------------------
# (d) CLI
# --------------------------------------------------------------------------------------------------
def _app() -> typer.Typer:
    from jowa_cli.main import app  # the real CLI: also checks that `collect` is registered

    return app


def test_cli_collect(tmp_path):
    runner = CliRunner()
    args = ["collect", "--games", "Pong", "--runs", "1-2", "--steps", "50", "--capacity", "16",
            "--out", str(tmp_path), "--sticky-actions", "0.1", "--max-episode-steps", "40", "--json", "-", "--quiet"]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    runs = [(r["game"], r["run"], r["skipped"]) for r in report["runs"]]
    assert runs == [("Pong", 1, False), ("Pong", 2, False)]
    saved = json.loads((tmp_path / "Pong" / "2" / "collect.json").read_text())
    assert saved["settings"]["sticky_actions"] == 0.1 and saved["settings"]["max_episode_steps"] == 40
    assert saved["episode_lengths"] == [40]
    scores = tmp_path / "scores" / "data.csv"
    again = runner.invoke(_app(), [*args[:-3], "--scores-csv", str(scores)])
    assert again.exit_code == 0 and "already complete" in again.stdout
    # the data's own raw returns, as rows that `jowa report` reads (skipped runs included)
    expect = [r for run in report["runs"] for r in run["episode_returns"]]
    with scores.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["game"]) for r in rows] == [("data (random)", "Pong")] * len(expect) and expect
    assert [float(r["score"]) for r in rows] == pytest.approx(expect)
    from jowa_core.evaluation.report import load_results

    (method,) = load_results([scores])
    assert method.name == "data (random)" and list(method.scores["Pong"]) == pytest.approx(expect)
    # no completed episode: a clear error and no file
    short = runner.invoke(_app(), ["collect", "--games", "Pong", "--runs", "3", "--steps", "10", "--capacity", "16",
                                   "--out", str(tmp_path), "--quiet", "--scores-csv", str(tmp_path / "none.csv")])
    assert short.exit_code == 2 and "no completed episodes" in short.stderr
    assert not (tmp_path / "none.csv").exists()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--games", "Pongg"], "Pongg"),
        (["--games", "Pong", "--policy", "eps-greedy"], "jowa pretrain"),
        (["--games", "Pong", "--runs", "2-1"], "range"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, extra, needle):
    result = CliRunner().invoke(_app(), ["collect", "--steps", "10", "--out", str(tmp_path), *extra])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert not (tmp_path / "Pong").exists()


def test_cli_help_summary():
    assert collect_cmd.collect.__doc__.splitlines()[0] == (
        "Play Atari games in the emulator and write DQN-Replay-format logs."
    )
    assert collect_cmd.parse_runs("1,3-5, 2") == [1, 2, 3, 4, 5]
    result = CliRunner().invoke(_app(), ["collect", "--help"])
    assert result.exit_code == 0 and "--max-episode-steps" in result.stdout
