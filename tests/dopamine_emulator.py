"""Test oracle: a literal, independent transcription of batch_rl's logged replay buffer.

Follows Dopamine's ``OutOfGraphReplayBuffer.add`` (3 zero padding rows before each episode when
stack_size=4; every add, padding included, advances ``add_count``) and batch_rl's
``OutOfGraphLoggedReplayBuffer`` (after each ``add``: log when ``add_count % C == C - 1``;
``log_final_buffer`` writes once more with ``add_count`` replaced by the cursor). It records, for every
logged file, which add index each row holds, so tests can say exactly which transitions are recoverable.
Deliberately written without importing anything from ``jowa_core``.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STACK_SIZE = 4


@dataclass
class Transition:
    obs: np.ndarray  # (84, 84) uint8
    action: int  # minimal-action index
    reward: float
    terminal: bool
    key: tuple[int, int] | None = None  # (episode id, step) for real rows, None for padding


@dataclass
class LoggedRun:
    capacity: int
    files: list[dict] = field(default_factory=list)  # {"ckpt", "add_count", "row_adds": (C,) int64 or -1}
    adds: list[tuple[int, int] | None] = field(default_factory=list)  # key of each add index
    episodes: dict[int, list[Transition]] = field(default_factory=dict)


class EmulatedLogger:
    def __init__(self, log_dir: Path, capacity: int, frame_shape=(84, 84), compresslevel: int = 1):
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.C = capacity
        self.store = {
            "observation": np.zeros((capacity, *frame_shape), np.uint8),
            "action": np.zeros((capacity,), np.int32),
            "reward": np.zeros((capacity,), np.float32),
            "terminal": np.zeros((capacity,), np.uint8),
        }
        self.row_adds = np.full((capacity,), -1, np.int64)
        self.add_count = np.array(0)
        self.invalid_range = np.zeros((STACK_SIZE,))
        self.log_count = 0
        self.level = compresslevel
        self.run = LoggedRun(capacity)

    def _cursor(self) -> int:
        return int(self.add_count % self.C)

    def _add_transition(self, t: Transition) -> None:
        cursor = self._cursor()
        self.store["observation"][cursor] = t.obs
        self.store["action"][cursor] = t.action
        self.store["reward"][cursor] = t.reward
        self.store["terminal"][cursor] = t.terminal
        self.row_adds[cursor] = int(self.add_count)
        self.run.adds.append(t.key)
        self.add_count += 1
        # Dopamine's invalid_range(cursor, capacity, stack_size, update_horizon=1)
        # Dopamine invalid_range(cursor, C, stack_size, update_horizon=1): stack_size + 1 entries
        self.invalid_range = np.array([(int(self.add_count) % self.C - 1 + i) % self.C for i in range(STACK_SIZE + 1)])

    def add(self, t: Transition) -> None:
        is_empty = int(self.add_count) == 0
        if is_empty or self.store["terminal"][self._cursor() - 1] == 1:
            for _ in range(STACK_SIZE - 1):
                zero = Transition(np.zeros_like(t.obs), 0, 0.0, False, None)
                self._add_transition(zero)
        self._add_transition(t)
        if int(self.add_count) % self.C == self.C - 1:
            self._log()

    def _log(self) -> None:
        names = {f"$store$_{k}": v for k, v in self.store.items()}
        names["add_count"] = self.add_count
        names["invalid_range"] = self.invalid_range
        for name, array in names.items():
            with gzip.open(self.dir / f"{name}_ckpt.{self.log_count}.gz", "wb", compresslevel=self.level) as f:
                np.save(f, array, allow_pickle=False)
        self.run.files.append(
            {"ckpt": self.log_count, "add_count": int(self.add_count), "row_adds": self.row_adds.copy()}
        )
        self.log_count += 1

    def log_final_buffer(self) -> None:
        saved = self.add_count
        self.add_count = np.array(self._cursor())
        self._log()
        self.run.files[-1]["final"] = True
        self.add_count = saved


def make_frame(episode: int, step: int, rng: np.random.Generator) -> np.ndarray:
    """A frame that is never all-zero and encodes (episode, step) in its first bytes."""
    frame = rng.integers(0, 4, size=(84, 84), dtype=np.uint8)  # compressible, like Atari screens
    frame[0, :8] = np.frombuffer(np.array([episode, step], dtype="<i4").tobytes(), np.uint8)
    frame[1, 0] = 255
    return frame


def frame_key(frame: np.ndarray) -> tuple[int, int]:
    episode, step = np.frombuffer(frame[0, :8].tobytes(), dtype="<i4")
    return int(episode), int(step)


def write_run(
    log_dir: Path,
    episode_lengths: list[int],
    capacity: int,
    num_actions: int = 6,
    seed: int = 0,
    final: bool = True,
) -> LoggedRun:
    """Log ``episode_lengths`` synthetic episodes through the emulated logger into ``log_dir``."""
    rng = np.random.default_rng(seed)
    logger = EmulatedLogger(log_dir, capacity)
    for e, length in enumerate(episode_lengths):
        steps = []
        for s in range(length):
            t = Transition(
                obs=make_frame(e, s, rng),
                action=int(rng.integers(num_actions)),
                reward=float(rng.choice([-1.0, 0.0, 0.0, 1.0])),
                terminal=s == length - 1,
                key=(e, s),
            )
            steps.append(t)
            logger.add(t)
        logger.run.episodes[e] = steps
    if final:
        logger.log_final_buffer()
    return logger.run


def recoverable_episodes(run: LoggedRun, ckpts: set[int] | None = None, visible_starts: bool = True) -> list[int]:
    """Episodes a correct converter must output, in chronological order.

    An episode is recoverable when all its rows, and the add index just before its padding (the previous
    episode's terminal, or the very start of the run), lie in one contiguous range of add indices held by
    the selected logged files. Rows a file holds that an earlier file already held (the stale rows of the
    final file) do not count: the store takes no stale duplicates. (After a gap, the converter cannot tell
    where an episode starts until it sees a terminal.) With ``visible_starts``, an episode is also recoverable
    when a selected regular file logged after a lost lap (adds never logged just before its window) begins
    inside the episode's padding or on its first step, and every add from there to its terminal is held. A run
    whose only file is the final one and whose buffer wrapped (its first lap lost) shows an episode's start the
    same way when the window begins in the padding that jumped over row C - 1, and the episode's first step comes
    after that row.
    """
    held: set[int] = set()
    windows: list[tuple[int, int]] = []  # (first add of the window, first add its episode's first step may have)
    newest = -1  # newest add index held by any earlier file: older rows of a file are stale copies
    C = run.capacity
    for f in run.files:
        fresh = [int(a) for a in f["row_adds"] if a > newest]
        if ckpts is None or f["ckpt"] in ckpts:
            held.update(fresh)
            w = min(fresh) if fresh else 0
            if fresh and w > newest + 1 and not f.get("final") and newest >= 0:
                windows.append((w, w))
            if fresh and w > 0 and f.get("final") and newest < 0:  # the only file, wrapped
                windows.append((w, w + (C - 1 - w % C) + 1))  # the first step comes after row C - 1's add
        newest = max([newest, *fresh])
    # add indices of each episode
    first_add: dict[int, int] = {}
    last_add: dict[int, int] = {}
    for i, key in enumerate(run.adds):
        if key is None:
            continue
        first_add.setdefault(key[0], i)
        last_add[key[0]] = i
    out = []
    for e in sorted(first_add):
        if e not in last_add or run.episodes[e][-1].key != run.adds[last_add[e]]:
            continue  # episode not finished when the run stopped
        start = first_add[e] - (STACK_SIZE - 1) - 1  # the previous terminal (or -1 at the run start)
        needed = range(max(start, 0), last_add[e] + 1)
        first = first_add[e]
        visible = [w for w, lo in windows if first - (STACK_SIZE - 1) <= w <= first and first >= lo]
        visible = visible if visible_starts else []
        if all(i in held for i in needed) or any(all(i in held for i in range(w, last_add[e] + 1)) for w in visible):
            out.append(e)
    return out
