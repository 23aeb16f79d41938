"""An ALE environment with Dopamine's Atari preprocessing, the one DQN-Replay was recorded with.

``AtariEnv`` reproduces ``dopamine.discrete_domains.atari_lib.AtariPreprocessing`` wrapped around
gym's ``<Game>NoFrameskip-v0`` (``repeat_action_probability=0.25``, ALE frame skip 1), driven by
Dopamine's ``Runner``:

* each agent step repeats the action for ``frame_skip`` emulator frames and sums their rewards; the loop
  stops early on game over (or on a life loss when ``terminal_on_life_loss``);
* the observation is the pixel-wise max of the grayscale screens of the last two skipped frames, kept in
  two buffers that are updated in place exactly as Dopamine does (so after an early stop the stale
  buffer contents are pooled, as in the original), resized to 84x84 with ``cv2.INTER_AREA``;
* ``reset`` fills the first buffer with the reset screen and zeroes the second;
* the Runner cuts an episode after ``max_episode_steps`` agent steps (27,000 = 108,000 frames) and
  stores that last step as terminal; ``step`` reports it as ``truncated`` and ``terminal``.

Sticky actions are ALE's own ``repeat_action_probability``, applied per emulator frame as in gym's v0
environments. Rewards are returned raw; clipping (Dopamine's ``np.clip(reward, -1, 1)``) is applied by
the caller to the stored reward only, never to reported episode returns.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from ale_py import ALEInterface, LoggerMode, roms

from jowa_core import games
from jowa_core.config import from_dict

__all__ = ["AtariEnv", "AtariSettings"]


@dataclass
class AtariSettings:
    """Emulator and preprocessing settings. The defaults are those DQN-Replay was recorded with."""

    sticky_actions: float = 0.25  # ALE repeat_action_probability (gym v0 environments)
    frame_skip: int = 4  # emulator frames per agent step
    max_pool: bool = True  # max over the grayscale screens of the last 2 skipped frames
    screen_size: int = 84  # square output, cv2.INTER_AREA
    clip_rewards: bool = True  # stored reward clipped to [-1, 1]; episode returns stay raw
    terminal_on_life_loss: bool = False
    max_episode_steps: int = 27_000  # agent steps; the cut step is stored as terminal; 0 = no limit
    full_action_space: bool = False  # True: all 18 ALE actions instead of the minimal set

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.sticky_actions) <= 1.0:
            raise ValueError(f"sticky_actions must be in [0, 1], got {self.sticky_actions}")
        if int(self.frame_skip) < 1:
            raise ValueError(f"frame_skip must be >= 1, got {self.frame_skip}")
        if int(self.screen_size) < 1:
            raise ValueError(f"screen_size must be >= 1, got {self.screen_size}")
        if int(self.max_episode_steps) < 0:
            raise ValueError(f"max_episode_steps must be >= 0 (0: no limit), got {self.max_episode_steps}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AtariSettings:
        """Inverse of ``to_dict``; unknown keys and wrong types are an error (``jowa_core.config.from_dict``)."""
        return from_dict(cls, d)


class AtariEnv:
    """One ALE emulator with Dopamine's preprocessing. Actions are indices into the game's action set
    (the ALE minimal set unless ``settings.full_action_space``), like DQN-Replay's stored actions."""

    def __init__(self, game: str, settings: AtariSettings | None = None, seed: int = 0):
        self.info = games.get(game)
        self.settings = settings = settings or AtariSettings()
        if not 0 <= int(seed) < 2**31:
            raise ValueError(f"ALE seed must be in [0, 2**31), got {seed}")
        self.seed = int(seed)
        ALEInterface.setLoggerMode(LoggerMode.Error)
        ale = ALEInterface()
        ale.setInt("random_seed", self.seed)
        ale.setFloat("repeat_action_probability", float(settings.sticky_actions))
        ale.setInt("frame_skip", 1)  # skipping is done here, as gym's NoFrameskip environments do
        self._rom_path = roms.get_rom_path(self.info.rom)
        if self._rom_path is None:
            raise FileNotFoundError(f"ALE ROM {self.info.rom!r} for {self.info.name} is not installed")
        ale.loadROM(str(self._rom_path))
        self.ale = ale

        minimal = [int(a.value) for a in ale.getMinimalActionSet()]
        if minimal != list(self.info.minimal_actions):
            raise ValueError(
                f"{self.info.name}: ale-py's minimal action set {minimal} differs from the registry's "
                f"{list(self.info.minimal_actions)}; stored action indices would be wrong"
            )
        action_set = ale.getLegalActionSet() if settings.full_action_space else ale.getMinimalActionSet()
        self._actions = list(action_set)
        self.action_set: tuple[int, ...] = tuple(int(a.value) for a in action_set)

        h, w = ale.getScreenDims()
        self._buffers = [np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)]
        self._pool = bool(settings.max_pool) and int(settings.frame_skip) > 1
        self.lives = 0
        self.game_over = False
        self.truncated = False
        self.terminal = False  # what Dopamine stores: game over, life loss (if enabled) or truncation
        self.episode_steps = 0
        self._needs_reset = True

    @property
    def num_actions(self) -> int:
        return len(self._actions)

    @cached_property
    def rom_md5(self) -> str:
        return hashlib.md5(Path(self._rom_path).read_bytes()).hexdigest()

    def reset(self) -> np.ndarray:
        """Start a new game; returns the first (screen_size, screen_size) uint8 observation."""
        self.ale.reset_game()
        self.lives = self.ale.lives()
        self.ale.getScreenGrayscale(self._buffers[0])
        self._buffers[1].fill(0)
        self.game_over = self.truncated = self.terminal = False
        self.episode_steps = 0
        self._needs_reset = False
        return self._pool_and_resize()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        """Play ``action`` for ``frame_skip`` frames: ``(obs, raw reward, game_over, truncated)``.

        ``self.terminal`` then holds the flag Dopamine stores with this step. After game over or
        truncation, ``reset`` must be called before the next step.
        """
        if self._needs_reset:
            raise RuntimeError("call reset() before step(): the episode has ended or never started")
        a = int(action)
        if not 0 <= a < len(self._actions):
            raise ValueError(f"action {action} out of range [0, {len(self._actions)}) for {self.info.name}")
        ale_action = self._actions[a]
        frame_skip = int(self.settings.frame_skip)
        ale = self.ale
        reward = 0.0
        game_over = is_terminal = False
        for t in range(frame_skip):
            reward += ale.act(ale_action)
            game_over = ale.game_over()
            if self.settings.terminal_on_life_loss:
                lives = ale.lives()
                is_terminal = game_over or lives < self.lives
                self.lives = lives
            else:
                is_terminal = game_over
            if self._pool:
                if t >= frame_skip - 2:
                    ale.getScreenGrayscale(self._buffers[t - (frame_skip - 2)])
            elif t == frame_skip - 1 or is_terminal:
                ale.getScreenGrayscale(self._buffers[0])
            if is_terminal:
                break
        obs = self._pool_and_resize()
        self.episode_steps += 1
        limit = int(self.settings.max_episode_steps)
        truncated = not game_over and limit > 0 and self.episode_steps >= limit
        self.game_over, self.truncated = game_over, truncated
        self.terminal = is_terminal or truncated
        self._needs_reset = game_over or truncated
        return obs, float(reward), game_over, truncated

    def _pool_and_resize(self) -> np.ndarray:
        if self._pool:  # in place, as Dopamine does: buffer 0 keeps the pooled screen
            np.maximum(self._buffers[0], self._buffers[1], out=self._buffers[0])
        size = int(self.settings.screen_size)
        return np.asarray(
            cv2.resize(self._buffers[0], (size, size), interpolation=cv2.INTER_AREA), dtype=np.uint8
        )

    def close(self) -> None:
        self.ale = None  # type: ignore[assignment]
