"""MinAtar as Atari-like games: registry entries, rendering and action mapping against MinAtar's own state,
MinAtar's dynamics and sticky actions kept, collect -> prepare-data, the evaluator's loop backend, references."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("minatar")
from minatar import Environment  # noqa: E402

from jowa_core import games  # noqa: E402
from jowa_core.data.collect import collect, make_policy  # noqa: E402
from jowa_core.data.convert import PrepareOptions, prepare_data  # noqa: E402
from jowa_core.data.store import open_store  # noqa: E402
from jowa_core.envs import make_env  # noqa: E402
from jowa_core.envs.atari import AtariSettings  # noqa: E402
from jowa_core.envs.minatar import (  # noqa: E402
    GRID,
    MINATAR_TO_FULL,
    STICKY_ACTIONS,
    MinAtarEnv,
    channel_levels,
    policy_returns,
    render,
)
from jowa_core.evaluation.envs import EvalSettings, VecAtari, rom_md5  # noqa: E402

NAMES = list(games.MINATAR_GAMES)
MODULES = {n: games.get(n).rom.split(":", 1)[1] for n in NAMES}


def _cells(frame: np.ndarray) -> np.ndarray:
    """(10, 10) gray level at the first pixel of each cell (pixel i shows cell (10 i) // 84)."""
    first = np.searchsorted((np.arange(84) * GRID) // 84, np.arange(GRID))
    return frame[np.ix_(first, first)]


def _top_channel(state: np.ndarray) -> np.ndarray:
    """(10, 10): the highest set channel + 1, 0 where empty (MinAtar's display_state rule)."""
    return np.max(state * np.arange(1, state.shape[2] + 1), axis=2)


def test_registry_entries():
    assert NAMES == ["MinAtarAsterix", "MinAtarBreakout", "MinAtarFreeway", "MinAtarSeaquest",
                     "MinAtarSpaceInvaders"]
    assert [games.get(n).task_id for n in NAMES] == [61, 62, 63, 64, 65]
    assert games.resolve("minatar") == NAMES and games.get("minatar-breakout").name == "MinAtarBreakout"
    assert games.get("Breakout").name == "Breakout"  # the Atari game keeps its name
    assert not set(NAMES) & set(games.resolve("all")) and "MinAtarBreakout" not in games.resolve("builtin")
    for n in NAMES:
        info = games.get(n)
        assert info.builtin and info.random.source == info.dqn.source == "minatar-measured"
        assert info.dqn.value > info.random.value  # the lookahead reference beats random play (DNS is defined)
        # the minimal set is MinAtar's own minimal_action_set, each action mapped to its full ALE index
        env = Environment(MODULES[n])
        assert info.minimal_actions == tuple(MINATAR_TO_FULL[a] for a in env.minimal_action_set())
        mask = info.action_mask()
        assert mask.sum() == len(env.minimal_action_set()) and mask[0]
    assert [games.FULL_ACTIONS[a] for a in MINATAR_TO_FULL] == ["NOOP", "LEFT", "UP", "RIGHT", "DOWN", "FIRE"]


def test_channel_levels_are_distinct_and_documented():
    for c in (4, 6, 7, 10):
        levels = channel_levels(c)
        assert levels[0] == 64 and levels[-1] == 255 and len(set(levels.tolist())) == c
        assert (np.diff(levels.astype(int)) >= 20).all()


@pytest.mark.parametrize("name", NAMES)
def test_render_and_actions_follow_minatar(name):
    """Our env and MinAtar's own Environment with the same seed and sticky actions stay in the same state through
    the same (mapped) actions, and every frame shows that state: the game and the action mapping are MinAtar's."""
    info = games.get(name)
    ours = MinAtarEnv(name, AtariSettings(sticky_actions=STICKY_ACTIONS, max_episode_steps=0), seed=3)
    ref = Environment(MODULES[name], sticky_action_prob=STICKY_ACTIONS)
    ref.seed(3)
    ref.reset()
    obs = ours.reset()
    np.testing.assert_array_equal(ours.state(), ref.state())
    rng = np.random.default_rng(0)
    levels = np.concatenate([[0], channel_levels(ref.state().shape[2])])
    for _ in range(300):
        assert obs.shape == (84, 84) and obs.dtype == np.uint8
        np.testing.assert_array_equal(_cells(obs), levels[_top_channel(ref.state())])
        a = int(rng.integers(info.num_actions))
        obs, r, over, trunc = ours.step(a)
        r_ref, over_ref = ref.act(ref.minimal_action_set()[a])
        assert (r, over) == (float(r_ref), bool(over_ref)) and not trunc
        np.testing.assert_array_equal(ours.state(), ref.state())
        if over:
            obs = ours.reset()
            ref.reset()
            ref.last_action = 0


def test_breakout_actions_move_the_paddle():
    env = MinAtarEnv("MinAtarBreakout", AtariSettings(sticky_actions=0.0), seed=0)
    env.reset()
    paddle = int(np.flatnonzero(env.state()[9, :, 0])[0])
    left, right = env.info.to_minimal(np.array([4, 3]))  # full LEFT, RIGHT -> minimal indices
    env.step(int(right))
    assert int(np.flatnonzero(env.state()[9, :, 0])[0]) == min(paddle + 1, 9)
    env.step(int(left))
    env.step(int(left))
    assert int(np.flatnonzero(env.state()[9, :, 0])[0]) == max(min(paddle + 1, 9) - 2, 0)


def test_render_nearest_neighbour_and_overlap():
    state = np.zeros((10, 10, 4), bool)
    state[0, 0, 0] = state[9, 9, 3] = True
    state[5, 5, [1, 2]] = True  # two channels in one cell: the higher one shows
    frame = render(state)
    levels = channel_levels(4)
    assert frame[:9, :9].min() == frame[:9, :9].max() == levels[0] and frame[0, 9] == 0  # cell 0: pixels 0-8
    assert (frame[76:, 76:] == levels[3]).all() and frame[75, 75] == 0  # cell 9: pixels 76-83
    assert (_cells(frame)[5, 5] == levels[2]) and render(state, 42).shape == (42, 42)


def test_sticky_actions_are_minatar_own():
    """sticky_actions 0 plays exactly the chosen actions; 0.1 repeats the previous one about 10% of the time."""
    for p in (0.0, STICKY_ACTIONS):
        env = MinAtarEnv("MinAtarBreakout", AtariSettings(sticky_actions=p), seed=1)
        assert env._env.sticky_action_prob == p
    env = MinAtarEnv("MinAtarFreeway", AtariSettings(sticky_actions=0.0, max_episode_steps=50), seed=0)
    env.reset()
    for _ in range(50):
        _, _, over, trunc = env.step(1)  # UP
        assert env._env.last_action == env._minatar_actions[1]
    assert trunc and not over and env.terminal
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env = MinAtarEnv("MinAtarFreeway")
    env.reset()
    with pytest.raises(ValueError, match="out of range"):
        env.step(3)


def test_lookahead_policy_beats_random_and_leaves_the_game_alone():
    env = MinAtarEnv("MinAtarBreakout", AtariSettings(sticky_actions=0.0), seed=0)
    env.reset()
    before = env.state().copy()
    env.lookahead_action(np.random.default_rng(0))
    np.testing.assert_array_equal(env.state(), before)
    random = np.mean(policy_returns("MinAtarBreakout", "random", 20, seed=0))
    look = np.mean(policy_returns("MinAtarBreakout", "lookahead", 5, seed=0))
    assert look > random + 1.0
    with pytest.raises(ValueError, match="lookahead:EPS"):
        make_policy("lookahead:2", 3)
    with pytest.raises(ValueError, match="MinAtar"):
        make_policy("lookahead:0.5", 3, env=make_env("Catch"))


def test_lookahead_action_plays_a_best_lookahead_value():
    """Same random stream: the action is one of the highest-valued; ties are broken among the best only."""
    env = MinAtarEnv("MinAtarSpaceInvaders", AtariSettings(sticky_actions=0.0), seed=3)
    env.reset()
    seen_unique = False
    for t in range(30):
        values = env.lookahead_values(np.random.default_rng(t))
        assert values.shape == (env.num_actions,)
        action = env.lookahead_action(np.random.default_rng(t))
        assert values[action] == values.max(), (t, values, action)
        seen_unique |= int((values == values.max()).sum()) == 1
        env.step(int(np.random.default_rng(100 + t).integers(env.num_actions)))
    assert seen_unique  # the check above is not vacuous


def test_registry_random_reference_matches_a_fresh_measurement():
    for name in ("MinAtarBreakout", "MinAtarSpaceInvaders"):
        x = np.asarray(policy_returns(name, "random", 200, seed=12345))
        se = x.std(ddof=1) / np.sqrt(len(x))
        assert abs(x.mean() - games.get(name).random.value) < 4 * se + 0.05, (name, x.mean())


def test_collect_and_prepare(tmp_path):
    summaries = collect(["MinAtarBreakout", "MinAtarSpaceInvaders"], [1], tmp_path / "raw", num_steps=400,
                        capacity=200, seed=0, workers=1, policy="lookahead:0.5",
                        settings=AtariSettings(sticky_actions=STICKY_ACTIONS))
    for s in summaries:
        assert s["episodes_completed"] >= 1 and s["action_set"] == list(games.get(s["game"]).minimal_actions)
    prepare_data(PrepareOptions(source=str(tmp_path / "raw"), out=str(tmp_path / "data"),
                                games=["MinAtarBreakout", "MinAtarSpaceInvaders"]))
    for s in summaries:
        store = open_store(tmp_path / "data" / f"{s['game']}.zarr")
        assert int(store.attrs["task_id"]) == games.get(s["game"]).task_id
        assert store.num_steps >= sum(s["episode_lengths"])
        np.testing.assert_allclose(np.sort(store.episode_returns())[-len(s["episode_returns"]):],
                                   np.sort(s["episode_returns"]))
        frames = store.frames.read_range(0, 50)  # (50, 84, 84): the rendered screens, gray levels only
        assert set(np.unique(frames).tolist()) <= {0, *channel_levels(4).tolist(), *channel_levels(6).tolist()}


def test_vec_env_runs_minatar_like_atari():
    settings = EvalSettings(sticky_actions=STICKY_ACTIONS)
    vec = VecAtari([("MinAtarBreakout", 5), ("MinAtarAsterix", 6)], settings)
    assert vec.backend == "loop"
    obs = vec.reset()
    singles = [make_env(g, settings.atari_settings(), seed=s) for g, s in (("MinAtarBreakout", 5),
                                                                          ("MinAtarAsterix", 6))]
    for i, env in enumerate(singles):
        np.testing.assert_array_equal(obs[i], env.reset())
    full = np.array([3, 2])  # RIGHT in Breakout, UP in Asterix (full ALE indices)
    for _ in range(2000):
        obs, reward, done, info = vec.step(full)
        for i, env in enumerate(singles):
            if not env._needs_reset:
                o, r, *_ = env.step(int(env.info.to_minimal(full[i:i + 1])[0]))
                np.testing.assert_array_equal(obs[i], o)
                assert reward[i] == r
        if done.all():
            break
    assert done.all()
    assert vec.rom_md5["MinAtarBreakout"] == rom_md5("MinAtarBreakout") != rom_md5("MinAtarAsterix")
    vec = VecAtari([("MinAtarBreakout", 0)], settings)
    vec.reset()
    with pytest.raises(ValueError):
        vec.step(np.array([1]))  # FIRE is not a Breakout action in MinAtar
