"""Write DQN-Replay-format logs: batch_rl's ``OutOfGraphLoggedReplayBuffer``, reimplemented.

The DQN-Replay dataset is what batch_rl's logger wrote while a DQN agent trained. The logger is a
Dopamine ``OutOfGraphReplayBuffer`` (stack size 4, update horizon 1) that, after every ``add``, saves its
whole circular buffer when ``add_count % capacity == capacity - 1``:

* before the first transition of every episode (and of the run) it adds ``STACK_SIZE - 1`` zero padding
  rows (zero frame, action 0, reward 0, not terminal); padding advances ``add_count`` too, and the save
  check only runs after the real transition, so when padding steps over ``capacity - 1`` that lap of the
  buffer is never saved;
* checkpoint ``N`` is six files in ``log_dir``, each a gzip'd ``np.save`` array:
  ``$store$_{observation,action,reward,terminal}_ckpt.N.gz`` ((C,84,84) uint8, (C,) int32, (C,) float32,
  (C,) uint8), ``add_count_ckpt.N.gz`` (0-d int64) and ``invalid_range_ckpt.N.gz``;
* ``log_final_buffer`` saves once more with ``add_count`` replaced by the cursor (``add_count % C``).

``LoggedReplayWriter`` produces the same files with the same decompressed contents as the test oracle
``tests/dopamine_emulator.py``, built for full-size runs: the observation buffer (7 GB at the real
capacity of 1,000,000) is a memory map over an already-unlinked temporary file in ``log_dir`` once it
is larger than ``MEMMAP_THRESHOLD_BYTES``; arrays are streamed through gzip (never a whole compressed
file in memory); each file is written under a temporary name, fsync'd and renamed, so a reader never
sees a torn ``.gz``. gzip headers carry the final file name and mtime 0, so identical streams give
byte-identical files.

``invalid_range`` is Dopamine's: zeros((4,)) float64 before the first add (``np.zeros(stack_size)``),
then ``stack_size + update_horizon`` = 5 int64 indices ``(cursor - 1 + i) % C`` for i in 0..4. Nothing in
jowa reads the array; it is written for format fidelity.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["LoggedReplayWriter", "STACK_SIZE", "MEMMAP_THRESHOLD_BYTES", "STORE_NAMES", "ckpt_file_names"]

STACK_SIZE = 4
INVALID_RANGE_LEN = STACK_SIZE + 1  # Dopamine: stack_size + update_horizon (1) entries
MEMMAP_THRESHOLD_BYTES = 256 * 2**20  # observation buffers larger than this live in a memory map
STORE_NAMES = ("observation", "action", "reward", "terminal")
_DTYPES = {"observation": np.uint8, "action": np.int32, "reward": np.float32, "terminal": np.uint8}


def ckpt_file_names(ckpt: int) -> list[str]:
    """The six file names of checkpoint ``ckpt``, in the order they are written."""
    names = [f"$store$_{k}" for k in STORE_NAMES] + ["add_count", "invalid_range"]
    return [f"{n}_ckpt.{ckpt}.gz" for n in names]


class LoggedReplayWriter:
    """Append transitions; checkpoints are written to ``log_dir`` exactly when batch_rl's logger would.

    Use as a context manager (or call ``close``) to release the observation buffer.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        capacity: int,
        compresslevel: int = 1,
        frame_shape: tuple[int, int] = (84, 84),
        fsync: bool = True,
    ):
        capacity = int(capacity)
        if capacity < STACK_SIZE + 1:
            raise ValueError(f"capacity must be at least {STACK_SIZE + 1} (stack size + update horizon)")
        if not 0 <= int(compresslevel) <= 9:
            raise ValueError(f"compresslevel must be in [0, 9], got {compresslevel}")
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self.compresslevel = int(compresslevel)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.fsync = fsync
        obs_shape = (capacity, *self.frame_shape)
        obs_bytes = int(np.prod(obs_shape))
        self._mmap_path: Path | None = None
        if obs_bytes > MEMMAP_THRESHOLD_BYTES:
            observation = self._make_memmap(obs_shape)
        else:
            observation = np.zeros(obs_shape, np.uint8)
        self.store: dict[str, np.ndarray] = {"observation": observation}
        for k in STORE_NAMES[1:]:
            self.store[k] = np.zeros((capacity,), _DTYPES[k])
        self.add_count = 0
        self.invalid_range = np.zeros((STACK_SIZE,), np.float64)
        self.log_count = 0
        self.logged: list[dict[str, int]] = []  # {"ckpt": N, "add_count": value saved}

    # ----------------------------------------------------------------------------------------------
    def _make_memmap(self, shape: tuple[int, ...]) -> np.ndarray:
        fd, name = tempfile.mkstemp(prefix=".observation-buffer-", suffix=".tmp", dir=self.dir)
        os.close(fd)
        path = Path(name)
        try:
            mm = np.memmap(path, dtype=np.uint8, mode="w+", shape=shape)  # sparse, reads as zeros
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        try:
            path.unlink()  # the mapping keeps the data; nothing is left behind if the process dies
        except OSError:  # platforms that cannot unlink an open file: remove it in close()
            self._mmap_path = path
        return mm

    @property
    def cursor(self) -> int:
        return self.add_count % self.capacity

    @property
    def uses_memmap(self) -> bool:
        return isinstance(self.store["observation"], np.memmap)

    def _add_row(self, obs, action: int, reward: float, terminal: bool) -> None:
        c = self.add_count % self.capacity
        self.store["observation"][c] = obs
        self.store["action"][c] = action
        self.store["reward"][c] = reward
        self.store["terminal"][c] = terminal
        self.add_count += 1
        base = self.add_count % self.capacity - 1
        self.invalid_range = np.array(
            [(base + i) % self.capacity for i in range(INVALID_RANGE_LEN)], np.int64
        )

    def add(self, obs: np.ndarray, action: int, reward: float, terminal: bool) -> None:
        """Add one transition: (frame seen, minimal action taken, stored reward, episode ended)."""
        obs = np.asarray(obs)
        if obs.shape != self.frame_shape or obs.dtype != np.uint8:
            raise ValueError(f"observation must be {self.frame_shape} uint8, got {obs.shape} {obs.dtype}")
        if self.add_count == 0 or self.store["terminal"][self.cursor - 1] == 1:
            for _ in range(STACK_SIZE - 1):
                self._add_row(0, 0, 0.0, False)
        self._add_row(obs, int(action), float(reward), bool(terminal))
        if self.add_count % self.capacity == self.capacity - 1:
            self._log(self.add_count)

    def log_final_buffer(self) -> None:
        """Save the buffer once more, with add_count replaced by the cursor (batch_rl's final log)."""
        self._log(self.cursor)

    # ----------------------------------------------------------------------------------------------
    def _log(self, add_count: int) -> None:
        arrays = [self.store[k] for k in STORE_NAMES]
        arrays += [np.array(add_count, dtype=np.int64), self.invalid_range]
        for name, array in zip(ckpt_file_names(self.log_count), arrays, strict=True):
            self._write_array(self.dir / name, array)
        self.logged.append({"ckpt": self.log_count, "add_count": int(add_count)})
        self.log_count += 1

    def _write_array(self, path: Path, array: np.ndarray) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "wb") as raw:
                with gzip.GzipFile(
                    filename=path.name, mode="wb", fileobj=raw, compresslevel=self.compresslevel, mtime=0
                ) as gz:
                    np.save(gz, array, allow_pickle=False)  # streams in 16 MiB pieces
                if self.fsync:
                    raw.flush()
                    os.fsync(raw.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        obs = self.store.get("observation")
        if isinstance(obs, np.memmap):
            mm = getattr(obs, "_mmap", None)
            self.store["observation"] = np.zeros((0, *self.frame_shape), np.uint8)
            del obs
            if mm is not None:
                # still referenced elsewhere (BufferError): freed with the last reference
                with contextlib.suppress(BufferError, ValueError):
                    mm.close()
        if self._mmap_path is not None:
            self._mmap_path.unlink(missing_ok=True)
            self._mmap_path = None

    def __enter__(self) -> LoggedReplayWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
