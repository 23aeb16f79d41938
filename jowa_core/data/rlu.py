"""Reading RL Unplugged Atari episodes (``gs://rl_unplugged/atari_episodes_ordered``): discovery and episodes.

Layout: ``<root>/<Game>/run_<N>-<shard:05d>-of-<total:05d>``, GZIP-compressed TFRecord files; shard k holds
checkpoint k (1M agent steps, in time order). Each record is one episode, a ``tf.train.Example`` with
``checkpoint_idx``, ``episode_idx``, ``episode_return``, ``clipped_episode_return`` and per-step lists
``observations`` (one 84x84x1 PNG each), ``actions``, ``unclipped_rewards``, ``clipped_rewards``,
``discounts``, all of the same length N.

Step alignment (docs/prepare-data.md): step i is (observation i, action i, reward after action i). When the
last discount is 0 the episode ended in a terminal state and its last step carries only that terminal
observation (TFDS ``atari_example_to_rlds``): the store keeps steps 0..N-2 and marks N-2 terminal. Otherwise
the episode was cut: all N steps are kept and none is terminal. Rewards are the clipped ones, as in
DQN-Replay.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from jowa_core.constants import FRAME_SHAPE
from jowa_core.data.dopamine import Source, SourceError
from jowa_core.data.tfrecord import BYTES, FLOAT, INT64, iter_records, parse_example

try:  # ISA-L's gzip is ~2x faster than zlib; optional (`pip install jowa[fast-gzip]`)
    from isal import igzip as _gzip_impl
except ImportError:  # pragma: no cover - depends on the environment
    _gzip_impl = gzip

FORMATS = ("auto", "dqn", "rlu")
FILE_RE = re.compile(r"^run_(\d+)-(\d{5})-of-(\d{5})$")
STEP_FEATURES = {
    "observations": BYTES,
    "actions": INT64,
    "unclipped_rewards": FLOAT,
    "clipped_rewards": FLOAT,
    "discounts": FLOAT,
}
# the 46 games RL Unplugged publishes (TFDS rl_unplugged/atari_utils.py); Berzerk, in the paper's atari15, is not one
GAMES = (
    "Alien", "Amidar", "Assault", "Asterix", "Atlantis", "BankHeist", "BattleZone", "BeamRider", "Boxing",
    "Breakout", "Carnival", "Centipede", "ChopperCommand", "CrazyClimber", "DemonAttack", "DoubleDunk", "Enduro",
    "FishingDerby", "Freeway", "Frostbite", "Gopher", "Gravitar", "Hero", "IceHockey", "Jamesbond", "Kangaroo",
    "Krull", "KungFuMaster", "MsPacman", "NameThisGame", "Phoenix", "Pong", "Pooyan", "Qbert", "Riverraid",
    "RoadRunner", "Robotank", "Seaquest", "SpaceInvaders", "StarGunner", "TimePilot", "UpNDown", "VideoPinball",
    "WizardOfWor", "YarsRevenge", "Zaxxon",
)
SARSA_FEATURES = ("o_t", "o_tp1", "a_t", "r_t", "d_t")
RETRIES = 5


@dataclass(frozen=True)
class RluFile:
    """One shard of one run: checkpoint ``shard`` of ``total``."""

    run: int
    shard: int
    total: int
    path: str
    size: int
    etag: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass
class FileIndex:
    """What planning needs from one shard: per-episode rows and terminal flags, per-row actions/rewards."""

    rows: np.ndarray  # (E,) int64 stored rows per episode (N - 1 if terminal else N)
    terminal: np.ndarray  # (E,) bool: the last discount is 0
    action: np.ndarray  # (sum rows,) int64 minimal-action index
    reward: np.ndarray  # (sum rows,) float32 clipped reward after the action
    sha256: str
    stats: dict[str, int] = field(default_factory=dict)


def detect_format(source: Source, game: str) -> str:
    """'rlu' when the game folder holds ``run_<N>-XXXXX-of-XXXXX`` files, 'dqn' when it holds run folders."""
    gdir = source.game_dir(game)
    names = [e.rstrip("/").rsplit("/", 1)[-1] for e in source.fs.ls(gdir, detail=False)]
    if any(FILE_RE.match(n) for n in names):
        return "rlu"
    if any(n.isdigit() for n in names):
        return "dqn"
    raise SourceError(
        f"{gdir}: neither DQN-Replay (<run>/replay_logs/) nor RL Unplugged (run_<N>-XXXXX-of-XXXXX) files found"
    )


def discover(source: Source, game: str) -> dict[int, dict[int, RluFile]]:
    """Every shard file of every run of ``game``: {run: {shard: file}}; runs must agree on their total."""
    gdir = source.game_dir(game)
    out: dict[int, dict[int, RluFile]] = {}
    for info in source.fs.ls(gdir, detail=True):
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        m = FILE_RE.match(name)
        if not m:
            continue
        run, shard, total = (int(x) for x in m.groups())
        etag = info.get("etag") or info.get("ETag") or info.get("md5Hash")
        f = RluFile(run, shard, total, info["name"], int(info.get("size") or 0), str(etag) if etag else None)
        files = out.setdefault(run, {})
        other = next(iter(files.values()), None)
        if other is not None and other.total != total:
            raise SourceError(f"{f.path}: says {total} shards, but {other.name} says {other.total}")
        if shard >= total:
            raise SourceError(f"{f.path}: shard {shard} is not below its total {total}")
        files[shard] = f
    if not out:
        raise SourceError(f"{gdir}: no RL Unplugged files (run_<N>-XXXXX-of-XXXXX) found")
    return out


def shard_path(gdir: str, run: int, shard: int, total: int) -> str:
    return f"{gdir}/run_{run}-{shard:05d}-of-{total:05d}"


# --------------------------------------------------------------------------------------------------------
# Streaming


class _RetryingReader(io.RawIOBase):
    """A read-only stream over an fsspec file that reopens and seeks on transient errors."""

    def __init__(self, fs: Any, path: str, hasher: Any = None):
        self.fs, self.path, self.pos, self.hasher = fs, path, 0, hasher
        self.f = fs.open(path, "rb")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        for attempt in range(RETRIES + 1):
            try:
                n = self.f.readinto(b) if hasattr(self.f, "readinto") else self._read_copy(b)
                break
            except (FileNotFoundError, PermissionError):
                raise
            except Exception as e:  # noqa: BLE001 - connection resets, timeouts, backend-specific errors
                if attempt == RETRIES:
                    raise SourceError(f"{self.path}: read failed {RETRIES + 1} times ({type(e).__name__}: {e})") from e
                time.sleep(min(30.0, 0.5 * 2**attempt))
                with contextlib.suppress(Exception):  # the old handle may be unusable
                    self.f.close()
                self.f = self.fs.open(self.path, "rb")
                self.f.seek(self.pos)
        self.pos += n
        if self.hasher is not None:
            self.hasher.update(memoryview(b)[:n])
        return n

    def _read_copy(self, b) -> int:
        data = self.f.read(len(b))
        memoryview(b)[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self.f.close()
        finally:
            super().close()


def iter_examples(fs: Any, path: str, hasher: Any = None) -> Iterator[tuple[int, dict[str, tuple[str, Any]]]]:
    """Yield (record index, parsed Example) of a GZIP TFRecord file, streaming; errors name ``path``."""
    raw = _RetryingReader(fs, path, hasher)
    try:
        with io.BufferedReader(raw, 1 << 20) as buffered, _gzip_impl.GzipFile(fileobj=buffered, mode="rb") as f:
            for i, rec in enumerate(iter_records(f, path)):  # type: ignore[arg-type]
                yield i, parse_example(rec, path, i)
    except SourceError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise SourceError(f"{path}: corrupt or truncated gzip ({e})") from e
    except OSError as e:
        if isinstance(e, FileNotFoundError | PermissionError):
            raise SourceError(f"{path}: cannot read ({e})") from e
        raise SourceError(f"{path}: corrupt or truncated gzip ({e})") from e
    finally:
        raw.close()


@dataclass
class Episode:
    """One record's stored steps (before PNG decoding)."""

    rows: int
    terminal: bool
    pngs: list[memoryview]
    action: np.ndarray
    reward: np.ndarray


def episode_from_example(ex: dict[str, tuple[str, Any]], path: str, record: int) -> Episode:
    """Validate one episode record and apply the step alignment (see the module docstring)."""
    where = f"{path}: record {record}"
    if "observations" not in ex and all(k in ex for k in SARSA_FEATURES[:2]):
        raise SourceError(
            f"{path}: RL Unplugged shuffled SARSA layout (one transition per record, shuffled across shards); "
            "episodes cannot be rebuilt from it, use gs://rl_unplugged/atari_episodes_ordered"
        )
    lengths = {}
    for name, kind in STEP_FEATURES.items():
        if name not in ex:
            raise SourceError(f"{where}: missing feature {name!r}")
        if ex[name][0] != kind and len(ex[name][1]):
            raise SourceError(f"{where}: feature {name!r} is a {ex[name][0]} list, expected {kind}")
        lengths[name] = len(ex[name][1])
    if len(set(lengths.values())) != 1:
        detail = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise SourceError(f"{where}: arrays of unequal length ({detail})")
    n = lengths["actions"]
    discounts = np.asarray(ex["discounts"][1], np.float32)
    terminal = bool(n and discounts[-1] == 0.0)
    rows = n - 1 if terminal else n
    action = np.asarray(ex["actions"][1], np.int64)[:rows] if n else np.zeros(0, np.int64)
    reward = np.asarray(ex["clipped_rewards"][1], np.float32)[:rows] if n else np.zeros(0, np.float32)
    return Episode(rows, terminal, list(ex["observations"][1])[:rows], action, reward)


def index_file(fs: Any, path: str, num_actions: int, game: str = "") -> FileIndex:
    """One pass over a shard without decoding images: per-episode rows/terminal, actions, rewards, sha256."""
    hasher = hashlib.sha256()
    rows, term, actions, rewards = [], [], [], []
    stats = {"empty_episodes": 0}
    for i, ex in iter_examples(fs, path, hasher):
        ep = episode_from_example(ex, path, i)
        if ep.action.size and (ep.action.min() < 0 or ep.action.max() >= num_actions):
            k = int(np.flatnonzero((ep.action < 0) | (ep.action >= num_actions))[0])
            raise SourceError(
                f"{path}: record {i}: action {int(ep.action[k])} at step {k} is outside "
                f"{game}'s {num_actions}-action minimal set"
            )
        stats["empty_episodes"] += int(ep.rows == 0)
        rows.append(ep.rows)
        term.append(ep.terminal)
        actions.append(ep.action)
        rewards.append(ep.reward)
    cat = np.concatenate
    return FileIndex(
        rows=np.array(rows, np.int64),
        terminal=np.array(term, bool),
        action=cat(actions) if actions else np.zeros(0, np.int64),
        reward=cat(rewards) if rewards else np.zeros(0, np.float32),
        sha256=hasher.hexdigest(),
        stats=stats,
    )


def decode_png(data: memoryview | bytes, where: str) -> np.ndarray:
    """One 84x84 grayscale PNG → (84, 84) uint8 (OpenCV: the fastest decoder measured, docs/benchmarks.md)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise SourceError(f"{where}: undecodable PNG")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.shape != FRAME_SHAPE or img.dtype != np.uint8:
        raise SourceError(f"{where}: image is {img.shape} {img.dtype}, expected 84x84x1 uint8")
    return img


def iter_frames(fs: Any, path: str, pieces: np.ndarray, expected_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (row offset, frames) per episode of a shard that overlaps ``pieces`` ([row0, row1, ...] rows).

    Rows count stored steps of all episodes in file order. Only overlapping episodes' PNGs are decoded;
    peak memory is one episode's record and frames.
    """
    p0, p1 = pieces[:, 0], pieces[:, 1]
    row = 0
    for i, ex in iter_examples(fs, path):
        ep = episode_from_example(ex, path, i)
        r1 = row + ep.rows
        if ep.rows and np.any((p0 < r1) & (p1 > row)):
            frames = np.empty((ep.rows, *FRAME_SHAPE), np.uint8)
            for k, png in enumerate(ep.pngs):
                frames[k] = decode_png(png, f"{path}: record {i} step {k}")
            yield row, frames
        row = r1
    if row != expected_rows:
        raise SourceError(f"{path}: holds {row} steps, {expected_rows} when planned (the file changed)")
