"""The built-in Catch game: rules, the exact random-policy return, and its plumbing through the registry, the
environment factory, the batched evaluator and `jowa collect` / `prepare-data`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jowa_core import games
from jowa_core.data.collect import collect
from jowa_core.data.convert import PrepareOptions, prepare_data
from jowa_core.data.store import open_store
from jowa_core.envs import catch as C
from jowa_core.envs import make_env
from jowa_core.envs.atari import AtariEnv, AtariSettings
from jowa_core.evaluation.envs import EvalSettings, VecAtari, rom_md5
from jowa_core.models.tokenizer import restart_dead_codes


def _state(obs: np.ndarray) -> tuple[int, int, int]:
    """(ball row, ball column, paddle column) read back from a screen."""
    cells = obs.reshape(C.GRID, C.CELL, C.GRID, C.CELL).max(axis=(1, 3))
    ball = np.argwhere(cells == C.BALL_VALUE)
    paddle = np.argwhere(cells[C.FALL] == C.PADDLE_VALUE)
    assert len(ball) == 1 and len(paddle) == 1
    return int(ball[0][0]), int(ball[0][1]), int(paddle[0][0])


def _oracle(obs: np.ndarray) -> int:
    """Perfect play: move towards the ball's column (minimal actions 0 NOOP, 1 RIGHT, 2 LEFT)."""
    _, col, paddle = _state(obs)
    return 0 if col == paddle else (1 if col > paddle else 2)


def test_registry_entry():
    info = games.get("catch")
    assert info.builtin and info.name == "Catch" and info.task_id == 60 and info.rom == "builtin:catch"
    assert info.action_names == ("NOOP", "RIGHT", "LEFT")
    assert info.action_mask().sum() == 3
    assert "Catch" not in games.GAMES and "Catch" not in games.GROUPS["all"]
    assert games.resolve("builtin") == ["Catch"]
    assert info.human.value == C.BALLS and info.random.source == "builtin"


def test_render_and_rules():
    env = make_env("Catch", AtariSettings(sticky_actions=0.0), seed=3)
    assert not isinstance(env, AtariEnv)
    obs = env.reset()
    assert obs.shape == (84, 84) and obs.dtype == np.uint8
    row, col, paddle = _state(obs)
    assert row == 0
    rewards = []
    for t in range(C.FALL):
        obs, r, over, trunc = env.step(1)  # always RIGHT
        rewards.append(r)
        if t < C.FALL - 1:
            assert _state(obs)[:2] == (t + 1, col)  # the ball falls one row per step
    assert _state(obs)[0] == 0  # a new ball at the top
    assert rewards[:-1] == [0.0] * (C.FALL - 1)
    assert rewards[-1] == float(min(paddle + C.FALL, C.GRID - 1) == col)
    assert not over and not trunc


def test_perfect_play_and_episode_length():
    env = make_env("Catch", AtariSettings(sticky_actions=0.0), seed=0)
    obs, total, steps, over = env.reset(), 0.0, 0, False
    while not over:
        obs, r, over, trunc = env.step(_oracle(obs))
        total += r
        steps += 1
        assert not trunc
    assert total == C.BALLS and steps == C.BALLS * C.FALL and env.terminal
    with pytest.raises(RuntimeError):
        env.step(0)


def test_random_return_matches_simulation():
    """The exact expectation (dynamic programming) agrees with many simulated random episodes."""
    assert C.random_policy_return() == pytest.approx(C.BALLS / C.GRID)  # the clipped walk keeps columns uniform
    env = make_env("Catch", AtariSettings(sticky_actions=0.0), seed=1)
    rng = np.random.default_rng(0)
    returns = []
    for _ in range(600):
        env.reset()
        total, over = 0.0, False
        while not over:
            _, r, over, _ = env.step(int(rng.integers(3)))
            total += r
        returns.append(total)
    se = np.std(returns) / np.sqrt(len(returns))
    assert abs(np.mean(returns) - C.random_policy_return()) < 4 * se


def test_sticky_actions_and_truncation():
    env = make_env("Catch", AtariSettings(sticky_actions=1.0, max_episode_steps=7), seed=0)
    obs = env.reset()
    paddle = _state(obs)[2]
    for _ in range(3):  # sticky 1.0: the first action (NOOP, the reset default) repeats forever
        obs, *_ = env.step(1)
    assert _state(obs)[2] == paddle
    for _ in range(4):
        obs, r, over, trunc = env.step(1)
    assert trunc and not over and env.terminal


def test_vec_env_runs_catch_like_atari():
    settings = EvalSettings()
    vec = VecAtari([("Catch", 5), ("Catch", 6)], settings)
    assert vec.backend == "loop"  # auto: ale-py's vector env runs ROMs only
    obs = vec.reset()
    singles = [make_env("Catch", settings.atari_settings(), seed=s) for s in (5, 6)]
    for i, env in enumerate(singles):
        np.testing.assert_array_equal(obs[i], env.reset())
    full = games.get("Catch").to_full(np.array([1, 2]))  # RIGHT, LEFT as full actions
    for _ in range(C.BALLS * C.FALL):
        obs, reward, done, info = vec.step(full)
        for i, env in enumerate(singles):
            if not env._needs_reset:
                o, r, *_ = env.step([1, 2][i])
                np.testing.assert_array_equal(obs[i], o)
                assert reward[i] == r
    assert done.all() and info["game_over"].all()
    assert vec.rom_md5["Catch"] == rom_md5("Catch") == singles[0].rom_md5
    with pytest.raises(ValueError, match="loop"):
        VecAtari([("Catch", 0)], settings, backend="vector")


def test_collect_and_prepare(tmp_path):
    summary = collect(["Catch"], [1], tmp_path / "raw", num_steps=600, capacity=300, seed=0, workers=1)[0]
    assert summary["episodes_completed"] == 600 // (C.BALLS * C.FALL) and summary["action_set"] == list(C.ACTION_SET)
    prepare_data(PrepareOptions(source=str(tmp_path / "raw"), out=str(tmp_path / "data"), games=["Catch"]))
    store = open_store(tmp_path / "data" / "Catch.zarr")
    assert store.num_steps == 600 and int(store.attrs["task_id"]) == 60
    np.testing.assert_allclose(np.sort(store.episode_returns()), np.sort(summary["episode_returns"]))


def test_restart_dead_codes():
    torch.manual_seed(0)
    codebook = torch.zeros(6, 2)
    age = torch.tensor([0, 4, 1, 9, 0, 0])
    latents = torch.arange(10.0).view(5, 2) + 1
    tokens = torch.tensor([[0, 1, 1]])  # codes 0 and 1 used this step
    n = restart_dead_codes(codebook, age, tokens, latents, patience=3)
    assert n == 1  # ages after the step [0, 0, 2, 10, 1, 1]: only code 3 reached the patience (code 1 was used)
    assert age.tolist() == [0, 0, 2, 0, 1, 1]
    restarted = codebook[3]
    assert any(torch.equal(restarted, z) for z in latents)
    assert torch.equal(codebook[[0, 1, 2, 4, 5]], torch.zeros(5, 2))


def test_the_game_table_holds_the_rules_exact_random_return():
    assert round(C.random_policy_return(), 4) == games.CATCH_RANDOM_RETURN
    assert games.get("Catch").minimal_actions == C.ACTION_SET
