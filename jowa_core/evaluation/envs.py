"""The evaluation protocol (paper Table 15, official code) and a batched Atari env over many episodes at once.

``EvalSettings`` pins the protocol: no sticky actions, frame skip 4 with a max-pool of the last two frames,
grayscale 84x84 (``cv2.INTER_AREA``), a single frame per observation (history comes from the model's context),
no no-op starts, no fire on reset, no life-loss terminals, raw (unclipped) rewards, an episode ends at game
over or at ``max_frames`` emulator frames (agent steps x frame skip), epsilon 0.001.

``VecAtari`` plays one episode in each of N (game, seed) slots with one ``step`` call for all of them. Two
backends give identical observations and rewards (tested):

* ``vector``: ale-py's ``AtariVectorEnv`` (C++ ALE with a thread pool), one per game, created with the
  protocol's options (``stack_num=1, noop_max=0, use_fire_reset=False, reward_clipping=False,
  episodic_life=False``). ale-py vector envs hold a single game and auto-reset, so all games' batches are sent
  before any is received (the games run in parallel) and a finished slot keeps playing a discarded episode
  until its game's last slot ends.
* ``loop``: our ``AtariEnv`` (Dopamine's preprocessing) in a Python loop; finished slots cost nothing. It also
  runs the games jowa plays itself (``jowa_core.envs.catch``, ``jowa_core.envs.minatar``), which ``auto``
  therefore sends to it.

``auto`` picks ``vector`` when ale-py has it. The only difference between the two is the observation returned
with the game-over step itself (Dopamine's stale second buffer), which no agent ever acts on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jowa_core import games as _games
from jowa_core.config import from_dict
from jowa_core.envs import builtin_md5, make_env
from jowa_core.envs.atari import AtariSettings

__all__ = ["BACKENDS", "EvalSettings", "VecAtari", "resolve_backend", "rom_md5"]

BACKENDS = ("auto", "vector", "loop")
_NO_CAP = 2**31 - 1  # ale-py's frame cap when the protocol has none


@dataclass
class EvalSettings:
    """Evaluation protocol. Defaults: paper Table 15 and the official code (reference §6.1), except that the cap
    is counted in emulator frames as the paper says (108K frames = 27K agent steps); the official code stops at
    108K *agent steps* (``max_frames=432_000``)."""

    sticky_actions: float = 0.0  # ALE repeat_action_probability
    frame_skip: int = 4  # emulator frames per agent step, rewards summed
    max_pool: bool = True  # pixel-wise max of the last two skipped frames
    screen_size: int = 84  # square grayscale output, cv2.INTER_AREA
    grayscale: bool = True  # fixed: the tokenizer reads one grayscale channel
    frame_stack: int = 1  # fixed: no stacking; history is the model's context
    noop_max: int = 0  # fixed: no random no-op starts
    fire_reset: bool = False  # fixed: no FIRE after reset
    terminal_on_life_loss: bool = False  # fixed: an episode ends at game over
    clip_rewards: bool = False  # fixed: returns are raw game scores
    max_frames: int = 108_000  # emulator frames per episode (agent steps x frame_skip); 0 = no cap
    epsilon: float = 0.001  # probability of a uniformly random valid action at each step

    _FIXED = {"grayscale": True, "frame_stack": 1, "noop_max": 0, "fire_reset": False,
              "terminal_on_life_loss": False, "clip_rewards": False}

    def __post_init__(self) -> None:
        for name, value in self._FIXED.items():
            if getattr(self, name) != value:
                raise ValueError(f"evaluation setting {name}={getattr(self, name)!r} is not supported "
                                 f"(the protocol fixes {name}={value!r})")
        if not 0.0 <= float(self.sticky_actions) <= 1.0:
            raise ValueError(f"sticky_actions must be in [0, 1], got {self.sticky_actions}")
        if int(self.frame_skip) < 1:
            raise ValueError(f"frame_skip must be >= 1, got {self.frame_skip}")
        if int(self.screen_size) < 1:
            raise ValueError(f"screen_size must be >= 1, got {self.screen_size}")
        if int(self.max_frames) < 0 or int(self.max_frames) % int(self.frame_skip):
            raise ValueError(f"max_frames must be >= 0 (0: no cap) and a multiple of frame_skip={self.frame_skip}, "
                             f"got {self.max_frames}")
        if not 0.0 <= float(self.epsilon) <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")

    @property
    def max_steps(self) -> int:
        """Agent steps per episode (0 = no cap)."""
        return int(self.max_frames) // int(self.frame_skip)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalSettings:
        """Inverse of ``to_dict``; unknown keys and wrong types are an error (``jowa_core.config.from_dict``)."""
        return from_dict(cls, d)

    def atari_settings(self) -> AtariSettings:
        """The same protocol as ``AtariEnv`` settings (minimal action set, cap in agent steps)."""
        return AtariSettings(sticky_actions=float(self.sticky_actions), frame_skip=int(self.frame_skip),
                             max_pool=bool(self.max_pool), screen_size=int(self.screen_size), clip_rewards=False,
                             terminal_on_life_loss=False, max_episode_steps=self.max_steps, full_action_space=False)


def rom_md5(game: str) -> str:
    """md5 of the ROM file ale-py loads for ``game``."""
    from ale_py import roms

    info = _games.get(game)
    if info.builtin:
        return builtin_md5(info.name)
    path = roms.get_rom_path(info.rom)
    if path is None:
        raise FileNotFoundError(f"ALE ROM {info.rom!r} for {info.name} is not installed")
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _vector_available() -> bool:
    try:
        from ale_py.vector_env import AtariVectorEnv  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, games: Sequence[str]) -> str:
    """``vector`` or ``loop`` for ``games``: ``auto`` is ``vector`` when ale-py has it and every game is an ALE
    game; built-in games need ``loop``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown env backend {backend!r}; use one of {', '.join(BACKENDS)}")
    builtin = list(dict.fromkeys(g for g in games if _games.get(g).builtin))
    if backend == "auto":
        return "vector" if _vector_available() and not builtin else "loop"
    if backend == "vector" and builtin:
        raise ValueError(f"the vector backend runs ALE games only; {', '.join(builtin)} needs backend='loop' "
                         "(or 'auto')")
    return backend


class VecAtari:
    """N Atari episodes, one per (game, seed) slot, stepped together; actions are full (18-action) indices.

    ``reset()`` starts every episode; ``step(actions)`` advances every running episode by one agent step and
    returns ``(obs (N, 84, 84) uint8, reward (N,) float64 raw, done (N,) bool, info)``. ``done`` is True for
    every slot whose episode has ended (at this step or before); a finished slot's action is ignored, its
    reward is 0 and its observation is the last one. ``info``: ``ended`` (N,) the slots that ended at this
    step, ``game_over``, ``truncated`` (frame cap), ``steps`` (agent steps so far), ``returns`` (raw) and
    ``clipped_returns`` (sum of sign(reward)), all (N,). A full action that is not valid in the slot's game is
    a ValueError.
    """

    def __init__(self, episodes: Sequence[tuple[str, int]], settings: EvalSettings | None = None,
                 backend: str = "auto", num_threads: int = 0):
        if not episodes:
            raise ValueError("no episodes")
        self.settings = settings = settings or EvalSettings()
        self.infos = [_games.get(g) for g, _ in episodes]
        self.games = [i.name for i in self.infos]
        self.seeds = np.array([int(s) for _, s in episodes], dtype=np.int64)
        if (self.seeds < 0).any() or (self.seeds >= 2**31).any():
            raise ValueError("ALE seeds must be in [0, 2**31)")
        self.num_envs = n = len(episodes)
        self.task_ids = np.array([i.task_id for i in self.infos], dtype=np.int64)
        self.action_masks = np.stack([i.action_mask() for i in self.infos])
        self.backend = backend = resolve_backend(backend, self.games)
        self.rom_md5 = {g: rom_md5(g) for g in dict.fromkeys(self.games)}
        size = int(settings.screen_size)
        self._obs = np.zeros((n, size, size), np.uint8)
        self.done = np.ones(n, bool)
        self.game_over = np.zeros(n, bool)
        self.truncated = np.zeros(n, bool)
        self.steps = np.zeros(n, np.int64)
        self.returns = np.zeros(n, np.float64)
        self.clipped_returns = np.zeros(n, np.float64)
        names = np.asarray(self.games)
        self._groups = {g: np.flatnonzero(names == g) for g in dict.fromkeys(self.games)}  # slots per game
        self._fresh = True  # no step since the envs were created or reset
        self._pending: tuple | None = None  # (running, minimal actions, games sent) between step_async and wait
        if backend == "loop":
            atari = settings.atari_settings()
            self._envs = [make_env(g, atari, seed=int(s)) for g, s in zip(self.games, self.seeds, strict=True)]
        else:
            from ale_py.vector_env import AtariVectorEnv

            per_game = max(1, (os.cpu_count() or 1) // len(self._groups))
            self._vec = {}
            for g, rows in self._groups.items():
                threads = num_threads or min(len(rows), per_game)
                self._vec[g] = AtariVectorEnv(
                    _games.get(g).rom, len(rows), num_threads=threads,
                    max_num_frames_per_episode=int(settings.max_frames) or _NO_CAP,
                    repeat_action_probability=float(settings.sticky_actions), full_action_space=False,
                    img_height=size, img_width=size, grayscale=True, stack_num=1, frameskip=int(settings.frame_skip),
                    maxpool=bool(settings.max_pool), noop_max=0, episodic_life=False, reward_clipping=False,
                    use_fire_reset=False, autoreset_mode="NextStep")

    def reset(self) -> np.ndarray:
        """Start (or restart) every slot's episode from its seed; the first observations (N, 84, 84)."""
        if self._pending is not None:
            raise RuntimeError("reset during a step: call step_wait first")
        if self.backend == "loop":
            for i, env in enumerate(self._envs):
                if not self._fresh:  # a restart replays the seed's stream, as the first run did
                    env = self._envs[i] = make_env(self.games[i], env.settings, seed=int(self.seeds[i]))
                self._obs[i] = env.reset()
        else:
            for g, rows in self._groups.items():
                obs, info = self._vec[g].reset(seed=self.seeds[rows].copy())
                self._obs[rows[np.asarray(info["env_id"])]] = obs[:, 0]
        self._fresh = False
        self.done[:] = False
        self.game_over[:] = False
        self.truncated[:] = False
        self.steps[:] = 0
        self.returns[:] = 0.0
        self.clipped_returns[:] = 0.0
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: np.ndarray) -> None:
        """Start a step (``step`` = ``step_async`` + ``step_wait``). The vector backend's emulators then run in
        ale-py's threads while the caller does other work (plans for other slots); the loop backend steps in
        ``step_wait``."""
        if self._pending is not None:
            raise RuntimeError("step_async called twice without step_wait")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions of shape {actions.shape}; expected ({self.num_envs},)")
        running = ~self.done
        minimal = np.zeros(self.num_envs, np.int64)
        for g, rows in self._groups.items():
            rows = rows[running[rows]]
            if rows.size:
                minimal[rows] = _games.get(g).to_minimal(actions[rows])
        sent = []
        if self.backend == "vector":
            sent = [g for g, rows in self._groups.items() if running[rows].any()]
            for g in sent:  # all games first: their ALE thread pools run concurrently
                self._vec[g].send(minimal[self._groups[g]].astype(np.int32))
        self._pending = (running, minimal, sent)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Finish the step ``step_async`` started; returns what ``step`` returns."""
        if self._pending is None:
            raise RuntimeError("step_wait called without step_async")
        (running, minimal, sent), self._pending = self._pending, None
        reward = np.zeros(self.num_envs, np.float64)
        game_over = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        if self.backend == "loop":
            for i in np.flatnonzero(running):
                self._obs[i], reward[i], game_over[i], truncated[i] = self._envs[i].step(int(minimal[i]))
        else:
            for g in sent:
                obs, r, term, trunc, info = self._vec[g].recv()
                rows = self._groups[g][np.asarray(info["env_id"])]
                live = running[rows]
                rows, obs, r, term, trunc = rows[live], obs[live], r[live], term[live], trunc[live]
                self._obs[rows] = obs[:, 0]
                reward[rows] = r
                game_over[rows] = term
                truncated[rows] = trunc & ~term
        self.steps[running] += 1
        self.returns += reward
        self.clipped_returns += np.sign(reward)
        ended = running & (game_over | truncated)
        self.game_over |= ended & game_over
        self.truncated |= ended & truncated
        self.done |= ended
        info = {"ended": ended, "game_over": self.game_over.copy(), "truncated": self.truncated.copy(),
                "steps": self.steps.copy(), "returns": self.returns.copy(),
                "clipped_returns": self.clipped_returns.copy()}
        return self._obs.copy(), reward, self.done.copy(), info

    @property
    def frames(self) -> np.ndarray:
        """Emulator frames played per slot (agent steps x frame skip)."""
        return self.steps * int(self.settings.frame_skip)

    def close(self) -> None:
        if self.backend == "loop":
            for env in self._envs:
                env.close()
        else:
            for v in self._vec.values():
                v.close()
