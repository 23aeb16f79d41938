"""Reading Dopamine / DQN-Replay logs: discovery, validation and streaming of gzip'd ``np.save`` arrays.

A run directory ``<Game>/<run>/replay_logs/`` holds, per checkpoint N, six files:
``$store$_{observation,action,reward,terminal}_ckpt.N.gz``, ``add_count_ckpt.N.gz`` and
``invalid_range_ckpt.N.gz``. Observation files are (C, 84, 84) uint8 (7 GB for C = 1,000,000), so they
are only ever streamed; the others are small and loaded whole. Every problem is reported as a
``SourceError`` naming the file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from jowa_core.constants import FRAME_SHAPE

try:  # ISA-L's gzip is ~2x faster than zlib; optional (`pip install jowa[fast-gzip]`)
    from isal import igzip as _gzip_impl
except ImportError:  # pragma: no cover - depends on the environment
    _gzip_impl = gzip

STORE_PREFIX = "$store$_"
MEMBERS = ("observation", "action", "reward", "terminal", "add_count", "invalid_range")
_FILE_RE = re.compile(r"^(?:\$store\$_)?(observation|action|reward|terminal|add_count|invalid_range)_ckpt\.(\d+)\.gz$")


class SourceError(ValueError):
    """Bad or missing input data; the message names the file and the problem."""


@dataclass(frozen=True)
class Checkpoint:
    """The six files of one logged checkpoint of one run."""

    game: str
    run: int
    ckpt: int
    paths: dict[str, str]  # member -> path (in the fsspec filesystem)
    sizes: dict[str, int]  # member -> compressed bytes

    def path(self, member: str) -> str:
        return self.paths[member]


@dataclass
class Source:
    """A local directory or fsspec URL holding ``<Game>/<run>/replay_logs/`` trees."""

    url: str
    fs: Any = field(repr=False)
    root: str

    @classmethod
    def open(cls, url: str) -> Source:
        import fsspec

        try:
            # public buckets (DQN-Replay, RL Unplugged) are read anonymously
            kwargs = {"token": "anon"} if str(url).startswith(("gs://", "gcs://")) else {}
            fs, root = fsspec.core.url_to_fs(str(url), **kwargs)
        except (ImportError, ValueError) as e:
            raise SourceError(
                f"{url}: cannot open ({e}); remote URLs need the `remote` extra: pip install 'jowa[remote]'"
            ) from e
        try:
            found = fs.isdir(root)
        except Exception as e:  # noqa: BLE001 - any backend's connection or auth failure
            raise SourceError(f"{url}: cannot open ({type(e).__name__}: {e})") from e
        if not found:
            remote = "://" in str(url) and not str(url).startswith("file://")
            raise SourceError(f"{url}: no such directory{' (or not reachable)' if remote else ''}")
        return cls(url=str(url), fs=fs, root=root.rstrip("/"))

    def game_dir(self, game: str) -> str:
        """The directory of ``game`` (exact CamelCase name, else a case-insensitive match)."""
        exact = f"{self.root}/{game}"
        if self.fs.isdir(exact):
            return exact
        wanted = game.lower().replace("_", "").replace("-", "")
        for entry in self.fs.ls(self.root, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.lower().replace("_", "").replace("-", "") == wanted and self.fs.isdir(entry):
                return entry.rstrip("/")
        raise SourceError(f"{exact}: no directory for game {game} in {self.url}")

    def runs(self, game: str) -> list[int]:
        gdir = self.game_dir(game)
        out = []
        for entry in self.fs.ls(gdir, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.isdigit() and self.fs.isdir(f"{gdir}/{name}/replay_logs"):
                out.append(int(name))
        return sorted(out)

    def checkpoints(self, game: str, run: int) -> dict[int, Checkpoint]:
        """All complete checkpoints of a run, by number; a checkpoint missing a member is an error."""
        rdir = f"{self.game_dir(game)}/{run}/replay_logs"
        if not self.fs.isdir(rdir):
            raise SourceError(f"{rdir}: no such directory (run {run} of {game})")
        found: dict[int, dict[str, tuple[str, int]]] = {}
        for info in self.fs.ls(rdir, detail=True):
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            m = _FILE_RE.match(name)
            if m:
                found.setdefault(int(m.group(2)), {})[m.group(1)] = (info["name"], int(info.get("size") or 0))
        out = {}
        for n, members in sorted(found.items()):
            missing = [m for m in MEMBERS if m not in members]
            if missing:
                prefix = STORE_PREFIX if missing[0] in ("observation", "action", "reward", "terminal") else ""
                raise SourceError(f"{rdir}/{prefix}{missing[0]}_ckpt.{n}.gz: missing (checkpoint {n} is incomplete)")
            out[n] = Checkpoint(
                game=game,
                run=run,
                ckpt=n,
                paths={m: members[m][0] for m in MEMBERS},
                sizes={m: members[m][1] for m in MEMBERS},
            )
        return out


@contextmanager
def _open_gz(fs: Any, path: str) -> Iterator[BinaryIO]:
    """Open a gzip'd file; any read failure inside the block becomes a SourceError naming ``path``."""
    try:
        with fs.open(path, "rb") as raw, _gzip_impl.GzipFile(fileobj=raw, mode="rb") as f:
            yield f
    except SourceError:
        raise
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile) as e:
        raise SourceError(f"{path}: corrupt or truncated gzip ({e})") from e


def _read_header(f: BinaryIO, path: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(f)
    except (ValueError, EOFError, OSError, zlib.error) as e:
        raise SourceError(f"{path}: not a gzip'd .npy array ({e})") from e
    if fortran:
        raise SourceError(f"{path}: Fortran-ordered arrays are not supported")
    return tuple(shape), np.dtype(dtype)


def read_header(fs: Any, path: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a gzip'd .npy file, reading only its first bytes."""
    with _open_gz(fs, path) as f:
        return _read_header(f, path)


def load_array(fs: Any, path: str) -> np.ndarray:
    """Load a small gzip'd .npy array whole, turning every failure into a SourceError naming the file."""
    with _open_gz(fs, path) as f:
        shape, dtype = _read_header(f, path)
        count = int(np.prod(shape)) if shape else 1
        data = f.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise SourceError(f"{path}: truncated (expected {count * dtype.itemsize} bytes of data)")
        if f.read(1):
            raise SourceError(f"{path}: trailing bytes after the array")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def load_add_count(fs: Any, ck: Checkpoint) -> int:
    """The checkpoint's add_count (a scalar integer array)."""
    add = load_array(fs, ck.path("add_count"))
    if add.shape not in ((), (1,)) or add.dtype.kind not in "iu":
        raise SourceError(f"{ck.path('add_count')}: expected a scalar integer, got {add.shape} {add.dtype}")
    return int(add.reshape(()))


def iter_frames(fs: Any, path: str, block_rows: int = 4096):
    """Yield (row_offset, frames) blocks of a (C, 84, 84) uint8 observation file, streaming.

    Peak memory is one block (~29 MB for 4096 rows). Raises SourceError on a bad header, truncation or a
    failed gzip check (which Python's and ISA-L's gzip readers verify at the end of the stream).
    """
    with _open_gz(fs, path) as f:
        shape, dtype = _read_header(f, path)
        if dtype != np.uint8 or len(shape) != 3 or shape[1:] != FRAME_SHAPE:
            raise SourceError(f"{path}: observation array is {shape} {dtype}, expected (C, 84, 84) uint8")
        rows = shape[0]
        buf = np.empty((block_rows, *FRAME_SHAPE), np.uint8)
        row = 0
        while row < rows:
            n = min(block_rows, rows - row)
            view = memoryview(buf[:n]).cast("B")
            got = 0
            while got < view.nbytes:
                k = f.readinto(view[got:])
                if not k:
                    raise SourceError(f"{path}: truncated after {row + got // (84 * 84)} of {rows} rows")
                got += k
            yield row, buf[:n]
            row += n
        if f.read(1):
            raise SourceError(f"{path}: trailing bytes after the array")


def read_rows(fs: Any, path: str, rows: list[int]) -> dict[int, np.ndarray]:
    """Frames of the given rows of an observation file, streaming only as far as the largest row."""
    want, out = set(rows), {}
    for row0, frames in iter_frames(fs, path):
        for r in [r for r in want if row0 <= r < row0 + frames.shape[0]]:
            out[r] = frames[r - row0].copy()
            want.discard(r)
        if not want:
            break
    return out


@dataclass
class CheckpointArrays:
    """The small arrays of one checkpoint, validated."""

    add_count: int
    action: np.ndarray  # (C,) integer, minimal-action index
    reward: np.ndarray  # (C,) float32
    terminal: np.ndarray  # (C,) uint8 / bool
    capacity: int


def load_checkpoint(fs: Any, ck: Checkpoint) -> CheckpointArrays:
    """Load and validate add_count, terminal, action and reward of a checkpoint (and the obs header)."""
    add_count = load_add_count(fs, ck)
    terminal = load_array(fs, ck.path("terminal"))
    if terminal.ndim != 1 or terminal.dtype.kind not in "iub":
        raise SourceError(f"{ck.path('terminal')}: expected a 1-D integer array, got {terminal.shape} {terminal.dtype}")
    if terminal.size and (terminal.min() < 0 or terminal.max() > 1):
        raise SourceError(f"{ck.path('terminal')}: values outside 0/1 (min {terminal.min()}, max {terminal.max()})")
    capacity = int(terminal.shape[0])
    action = load_array(fs, ck.path("action"))
    reward = load_array(fs, ck.path("reward"))
    for name, arr, kinds in (("action", action, "iu"), ("reward", reward, "f")):
        if arr.ndim != 1 or arr.dtype.kind not in kinds:
            raise SourceError(
                f"{ck.path(name)}: expected a 1-D {'integer' if kinds == 'iu' else 'float'} array, "
                f"got {arr.shape} {arr.dtype}"
            )
        if arr.shape[0] != capacity:
            raise SourceError(f"{ck.path(name)}: {arr.shape[0]} rows, but terminal has {capacity}")
    shape, dtype = read_header(fs, ck.path("observation"))
    if len(shape) != 3 or shape[1:] != FRAME_SHAPE or dtype != np.uint8:
        raise SourceError(f"{ck.path('observation')}: observation array is {shape} {dtype}, expected (C, 84, 84) uint8")
    if shape[0] != capacity:
        raise SourceError(f"{ck.path('observation')}: {shape[0]} rows, but terminal has {capacity}")
    return CheckpointArrays(add_count, action, reward.astype(np.float32, copy=False), terminal, capacity)
