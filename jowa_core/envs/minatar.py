"""MinAtar (Young & Tian 2019, PyPI ``minatar``) games played like Atari games.

MinAtar's five games (Asterix, Breakout, Freeway, Seaquest, Space Invaders) run on a 10x10 grid with one binary
channel per kind of object. ``MinAtarEnv`` keeps MinAtar's own dynamics (its ``Environment`` class: difficulty
ramping on, its own sticky actions and random stream) and gives them :class:`jowa_core.envs.atari.AtariEnv`'s
interface:

* **Screen.** ``render`` turns the (10, 10, C) state into an 84x84 uint8 grayscale frame. Channel ``c`` of a
  C-channel game has the gray level ``channel_levels(C)[c]`` = 64 + round(191 c / (C - 1)) (64 ... 255, evenly
  spaced; empty cells are 0). Where several channels are set in one cell the highest channel index wins, as in
  MinAtar's own ``display_state``. The 10x10 image is upscaled by nearest neighbour: pixel ``i`` shows cell
  ``(10 i) // 84`` (cells are 8 or 9 pixels wide), so every frame is exact and deterministic.
* **Actions.** MinAtar's six actions (n, l, u, r, d, f) are the full ALE actions NOOP, LEFT, UP, RIGHT, DOWN,
  FIRE (0, 4, 2, 3, 5, 1). Each game's minimal set (``games.MINATAR_MINIMAL``, MinAtar's ``minimal_action_set``
  order) becomes its registry action set, and ``step`` takes an index into it, as ``AtariEnv`` does.
* **Sticky actions** are MinAtar's own (``Environment.act``: with probability p the previous action is played),
  with p = ``settings.sticky_actions``. MinAtar's default, and the value its published results use, is 0.1;
  ``docs/games.md`` says why jowa collects and evaluates MinAtar at 0.1 (``STICKY_ACTIONS``).
* One MinAtar step is one agent step: ``frame_skip`` and ``max_pool`` change nothing; ``max_episode_steps``
  truncates as in Dopamine; rewards are returned raw (MinAtar's are 0 or 1).

``lookahead_action`` is a behaviour policy with access to the emulator (copies of the game, random rollouts): the
better-than-random policy the MinAtar suite's data mixes in (``jowa collect --policy lookahead:EPS``).
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import numpy as np

from jowa_core import games
from jowa_core.envs.atari import AtariSettings

__all__ = ["GRID", "MINATAR_TO_FULL", "STICKY_ACTIONS", "MinAtarEnv", "cell_values", "channel_levels", "render",
           "rules_md5"]

GRID = 10  # MinAtar's grid side
SCREEN = 84
STICKY_ACTIONS = 0.1  # MinAtar's default sticky_action_prob, used by its published evaluations
MINATAR_TO_FULL: tuple[int, ...] = (0, 4, 2, 3, 5, 1)  # MinAtar's n, l, u, r, d, f as full ALE action indices
_PIXEL_TO_CELL = (np.arange(SCREEN) * GRID) // SCREEN  # (84,) nearest-neighbour cell of each pixel row/column


def channel_levels(channels: int) -> np.ndarray:
    """(channels,) uint8 gray level of each channel: evenly spaced from 64 to 255."""
    if channels == 1:
        return np.array([255], np.uint8)
    return np.round(64 + 191 * np.arange(channels) / (channels - 1)).astype(np.uint8)


def render(state: np.ndarray, size: int = SCREEN) -> np.ndarray:
    """(size, size) uint8 frame of a MinAtar state (10, 10, C) bool: the highest set channel's gray level per
    cell, upscaled by nearest neighbour."""
    state = np.asarray(state, dtype=bool)
    levels = np.concatenate([[0], channel_levels(state.shape[2])]).astype(np.uint8)  # (C + 1,): 0 = empty
    top = np.max(state * np.arange(1, state.shape[2] + 1), axis=2)  # (10, 10) highest set channel + 1, 0 empty
    cells = levels[top]  # (10, 10) uint8
    screen = cells[_PIXEL_TO_CELL][:, _PIXEL_TO_CELL]  # (84, 84)
    if size != SCREEN:
        import cv2

        screen = np.asarray(cv2.resize(screen, (size, size), interpolation=cv2.INTER_AREA), np.uint8)
    return np.ascontiguousarray(screen)


def cell_values(frames: np.ndarray) -> np.ndarray:
    """(..., 84, 84) frames -> (..., 10, 10): the value at the middle pixel of each cell, the inverse of ``render``
    on its own frames and a reading of approximate ones (a tokenizer's reconstructions)."""
    mid = np.array([np.flatnonzero(c == _PIXEL_TO_CELL).mean() for c in range(GRID)]).astype(int)  # (10,)
    return np.asarray(frames)[..., mid[:, None], mid[None, :]]


def rules_md5(game: str) -> str:
    """Stands in for a ROM's md5: the MinAtar version, the game and the rendering rules."""
    from importlib.metadata import version

    info = games.get(game)
    rules = (f"minatar-{version('minatar')} {info.rom} actions={info.minimal_actions} screen={SCREEN} "
             f"levels=64..255 nearest")
    return hashlib.md5(rules.encode()).hexdigest()


class MinAtarEnv:
    """One MinAtar game with :class:`~jowa_core.envs.atari.AtariEnv`'s interface; actions are minimal indices."""

    def __init__(self, game: str, settings: Any = None, seed: int = 0):
        from minatar import Environment

        self.info = games.get(game)
        if not self.info.rom.startswith("minatar:"):
            raise ValueError(f"{self.info.name} is not a MinAtar game")
        self.settings = settings = settings or AtariSettings(sticky_actions=STICKY_ACTIONS)
        if not 0 <= int(seed) < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {seed}")
        self.seed = int(seed)
        self._env = Environment(self.info.rom.split(":", 1)[1], sticky_action_prob=float(settings.sticky_actions),
                                difficulty_ramping=True)
        self._env.seed(self.seed)
        full_to_minatar = {f: i for i, f in enumerate(MINATAR_TO_FULL)}
        self._minatar_actions = [full_to_minatar[a] for a in self.info.minimal_actions]  # minimal -> MinAtar index
        self.action_set: tuple[int, ...] = self.info.minimal_actions
        self.rom_md5 = rules_md5(self.info.name)
        self.lives = 0
        self.game_over = self.truncated = self.terminal = False
        self.episode_steps = 0
        self._needs_reset = True

    @property
    def num_actions(self) -> int:
        return len(self.action_set)

    def state(self) -> np.ndarray:
        """MinAtar's own state (10, 10, C) bool."""
        return self._env.state()

    def _obs(self) -> np.ndarray:
        return render(self._env.state(), int(self.settings.screen_size))

    def reset(self) -> np.ndarray:
        """Start a new game; returns the first (screen_size, screen_size) uint8 observation."""
        self._env.reset()
        self._env.last_action = 0
        self.game_over = self.truncated = self.terminal = False
        self.episode_steps = 0
        self._needs_reset = False
        return self._obs()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        """Play one step: ``(obs, reward, game_over, truncated)``, as ``AtariEnv.step``."""
        if self._needs_reset:
            raise RuntimeError("call reset() before step(): the episode has ended or never started")
        a = int(action)
        if not 0 <= a < self.num_actions:
            raise ValueError(f"action {action} out of range [0, {self.num_actions}) for {self.info.name}")
        reward, game_over = self._env.act(self._minatar_actions[a])
        self.episode_steps += 1
        limit = int(self.settings.max_episode_steps)
        truncated = not game_over and limit > 0 and self.episode_steps >= limit
        self.game_over, self.truncated = bool(game_over), truncated
        self.terminal = self.game_over or truncated
        self._needs_reset = self.terminal
        return self._obs(), float(reward), self.game_over, truncated

    def lookahead_values(self, rng: np.random.Generator, horizon: int = 8, rollouts: int = 2) -> np.ndarray:
        """(num_actions,) summed reward of ``rollouts`` random rollouts per minimal action from copies of the current
        game (``horizon`` steps each, the first action fixed, fresh random streams), an episode's end counting -1.
        The emulator's own state is not touched."""
        values = np.zeros(self.num_actions)
        for a in range(self.num_actions):
            for _ in range(rollouts):
                sim = copy.deepcopy(self._env)
                sim.seed(int(rng.integers(2**31)))
                r, done = sim.act(self._minatar_actions[a])
                total = float(r)
                for _ in range(horizon - 1):
                    if done:
                        break
                    r, done = sim.act(self._minatar_actions[int(rng.integers(self.num_actions))])
                    total += float(r)
                values[a] += total - float(done)
        return values

    def lookahead_action(self, rng: np.random.Generator, horizon: int = 8, rollouts: int = 2) -> int:
        """The minimal action with the highest ``lookahead_values``; ties (often all actions: nothing happens within
        the horizon) are broken at random."""
        values = self.lookahead_values(rng, horizon, rollouts)
        best = np.flatnonzero(values == values.max())
        return int(rng.choice(best))

    def close(self) -> None:
        pass


def policy_returns(game: str, policy: str, episodes: int, seed: int = 0,
                   sticky_actions: float = STICKY_ACTIONS) -> list[float]:
    """Returns of ``episodes`` whole episodes of ``policy`` ('random': uniform over the minimal set, or
    'lookahead': ``lookahead_action``) in ``game``, episode e on seed ``seed + e``; how the registry's MinAtar
    references were measured (``benchmarks/minatar_references.py``)."""
    if policy not in ("random", "lookahead"):
        raise ValueError(f"unknown reference policy {policy!r}; use random or lookahead")
    settings = AtariSettings(sticky_actions=sticky_actions, max_episode_steps=0)
    rng = np.random.default_rng(seed)
    returns = []
    for e in range(episodes):
        env = MinAtarEnv(game, settings, seed=seed + e)
        env.reset()
        total, done = 0.0, False
        while not done:
            a = int(rng.integers(env.num_actions)) if policy == "random" else env.lookahead_action(rng)
            _, reward, done, _ = env.step(a)
            total += reward
        returns.append(total)
    return returns
