"""Catch: a small built-in pixel game for tests and learning checks, played like an Atari game.

The screen is a 6x6 grid of 14x14-pixel cells (84x84 grayscale, the tokenizer's own 6x6 token grid; objects
fill whole cells, so each token's patch shows one thing, which a briefly trained tokenizer can keep apart). A ball
appears in a random column of the top row and falls one row per step; the paddle lives in the bottom row and
moves one column per step (actions NOOP, RIGHT, LEFT: full ALE indices 0, 3, 4, so the game has an action
mask like any Atari game). When the ball reaches the bottom row the step pays +1 if the paddle is under it and
0 otherwise, and the next ball appears at the top. An episode is ``BALLS`` balls (``BALLS * FALL`` steps).

Each ball gives the agent exactly ``FALL`` = 5 moves and the paddle is at most 5 columns away, so perfect
play catches every ball (return ``BALLS``); a uniformly random policy catches about one ball in five
(``random_policy_return()`` computes the expectation exactly). The reward needs a skill a random policy
rarely shows: tracking the ball for several steps.

``CatchEnv`` has the interface of :class:`jowa_core.envs.atari.AtariEnv` and reads the same settings:
``sticky_actions`` repeats the previous action with that probability (per agent step: the game has one tick
per step, so ``frame_skip`` and ``max_pool`` change nothing); ``max_episode_steps`` truncates as in Dopamine.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from jowa_core import games
from jowa_core.envs.atari import AtariSettings

__all__ = ["ACTION_SET", "BALLS", "FALL", "GRID", "RULES", "RULES_MD5", "CatchEnv", "all_states",
           "random_policy_return", "render"]

GRID = 6  # cells per side
CELL = 14  # pixels per cell: GRID * CELL = 84
FALL = GRID - 1  # steps from the top row to the bottom row
BALLS = games.CATCH_BALLS  # balls per episode
ACTION_SET = games.CATCH_ACTIONS  # NOOP, RIGHT, LEFT as full ALE action indices
_MOVES = np.array([0, 1, -1])  # paddle column change per minimal action
BALL_VALUE, PADDLE_VALUE = 255, 128
RULES = (f"jowa-catch-v2 grid={GRID} cell={CELL} balls={BALLS} actions={ACTION_SET} ball={BALL_VALUE} "
         f"paddle={PADDLE_VALUE}")
RULES_MD5 = hashlib.md5(RULES.encode()).hexdigest()  # stands in for a ROM's md5


def render(ball_row: int, ball_col: int, paddle: int, size: int = GRID * CELL) -> np.ndarray:
    """The (size, size) uint8 screen: the ball and the paddle each fill their 14x14 cell (one token's patch)."""
    screen = np.zeros((GRID * CELL, GRID * CELL), np.uint8)
    screen[ball_row * CELL:(ball_row + 1) * CELL, ball_col * CELL:(ball_col + 1) * CELL] = BALL_VALUE
    screen[FALL * CELL:, paddle * CELL:(paddle + 1) * CELL] = PADDLE_VALUE
    if size != GRID * CELL:
        import cv2

        screen = np.asarray(cv2.resize(screen, (size, size), interpolation=cv2.INTER_AREA), np.uint8)
    return screen


def all_states() -> list[tuple[int, int, int]]:
    """Every (ball row, ball column, paddle column) a screen can show: 5 x 6 x 6 = 180."""
    return [(r, c, p) for r in range(FALL) for c in range(GRID) for p in range(GRID)]


def random_policy_return(balls: int = BALLS) -> float:
    """Exact expected return of the uniformly random policy (no sticky actions), by dynamic programming over
    the paddle's column distribution (the ball's column is uniform and independent of it)."""
    move = np.zeros((GRID, GRID))  # one random step of the paddle: (from, to)
    for p in range(GRID):
        for d in _MOVES:
            move[p, min(max(p + d, 0), GRID - 1)] += 1 / len(_MOVES)
    fall = np.linalg.matrix_power(move, FALL)  # paddle column after a ball's FALL steps
    dist = np.full(GRID, 1 / GRID)  # the paddle starts in a uniform column
    total = 0.0
    for _ in range(balls):
        total += float(dist @ fall @ np.full(GRID, 1 / GRID))  # P(paddle column == ball column)
        dist = dist @ fall
    return total


class CatchEnv:
    """One Catch game with :class:`~jowa_core.envs.atari.AtariEnv`'s interface. Actions are minimal indices
    (0 NOOP, 1 RIGHT, 2 LEFT)."""

    def __init__(self, game: str = "Catch", settings: Any = None, seed: int = 0):
        self.info = games.get(game)
        self.settings = settings = settings or AtariSettings()
        if not 0 <= int(seed) < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {seed}")
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.action_set: tuple[int, ...] = ACTION_SET
        self.rom_md5 = RULES_MD5
        self.lives = 0
        self.game_over = self.truncated = self.terminal = False
        self.episode_steps = 0
        self._needs_reset = True
        self._last_action = 0
        self.ball_row = self.ball_col = self.paddle = self.caught = self.balls = 0

    @property
    def num_actions(self) -> int:
        return len(ACTION_SET)

    def _obs(self) -> np.ndarray:
        return render(self.ball_row, self.ball_col, self.paddle, int(self.settings.screen_size))

    def reset(self) -> np.ndarray:
        """Start a new game; returns the first (screen_size, screen_size) uint8 observation."""
        self.paddle = int(self.rng.integers(GRID))
        self.ball_row, self.ball_col = 0, int(self.rng.integers(GRID))
        self.balls = self.caught = 0
        self.game_over = self.truncated = self.terminal = False
        self.episode_steps = 0
        self._needs_reset = False
        self._last_action = 0
        return self._obs()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        """Play one step: ``(obs, reward, game_over, truncated)``, as ``AtariEnv.step``."""
        if self._needs_reset:
            raise RuntimeError("call reset() before step(): the episode has ended or never started")
        a = int(action)
        if not 0 <= a < len(ACTION_SET):
            raise ValueError(f"action {action} out of range [0, {len(ACTION_SET)}) for {self.info.name}")
        if self.settings.sticky_actions and self.rng.random() < float(self.settings.sticky_actions):
            a = self._last_action
        self._last_action = a
        self.paddle = min(max(self.paddle + int(_MOVES[a]), 0), GRID - 1)
        self.ball_row += 1
        reward = 0.0
        game_over = False
        if self.ball_row == FALL:
            reward = float(self.paddle == self.ball_col)
            self.caught += int(reward)
            self.balls += 1
            game_over = self.balls >= BALLS
            self.ball_row, self.ball_col = 0, int(self.rng.integers(GRID))
        self.episode_steps += 1
        limit = int(self.settings.max_episode_steps)
        truncated = not game_over and limit > 0 and self.episode_steps >= limit
        self.game_over, self.truncated = game_over, truncated
        self.terminal = game_over or truncated
        self._needs_reset = game_over or truncated
        return self._obs(), reward, game_over, truncated

    def close(self) -> None:
        pass
