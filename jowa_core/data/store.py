"""The game store: one Zarr v3 group per game, the contract every later stage reads.

Layout of ``<root>/<Game>.zarr`` (format_version 1; see docs/data-format.md):

    obs            (N, 84, 84) uint8   frames, chunks of OBS_CHUNK_FRAMES inside shards of OBS_SHARD_FRAMES, zstd
    action         (N,)  int16         index in the full 18-action ALE space
    reward         (N,)  float32       as stored in the source (DQN-Replay: clipped to [-1, 1])
    terminal       (N,)  bool          true only on an episode's last step
    episode_start  (E,)  int64         row of each episode's first step
    episode_length (E,)  int64
    attributes: game, num_actions, action_set, format_version, task_id, provenance (source files, options)

Frames are written and read here with a direct implementation of the Zarr v3 ``sharding_indexed`` codec
(bytes + zstd inner codecs with frame checksums, index at the end with crc32c) because zarr-python's generic
pipeline is an order of magnitude slower for thousands of tiny chunks (docs/benchmarks.md). Anything written here is an
ordinary Zarr v3 array: ``zarr.open_group(path)["obs"][i:j]`` reads it, and tests check that it does.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
import zstandard
from zarr.codecs import ZstdCodec

from jowa_core import games
from jowa_core.constants import FRAME_BYTES, FRAME_SHAPE, NUM_FULL_ACTIONS
from jowa_core.outputs import atomic_file

FORMAT_VERSION = 1
OBS_CHUNK_FRAMES = 4  # a random 8-step segment touches 2-3 chunks: little decoded in vain
OBS_SHARD_FRAMES = 8192  # ~1,200 files per 10M frames; a shard is ~58 MB raw, ~3 MB compressed
ZSTD_LEVEL = 3
STEP_ARRAY_CHUNK = 1 << 20
_EMPTY = np.uint64(2**64 - 1)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_CHECKSUM_FLAG = 0x04  # Content_Checksum_flag of the frame header descriptor

STEP_ARRAYS = {"action": np.int16, "reward": np.float32, "terminal": np.bool_}
EPISODE_ARRAYS = {"episode_start": np.int64, "episode_length": np.int64}


class StoreError(ValueError):
    """A store is missing, unreadable or violates the contract."""


def store_path(root: str | os.PathLike, game: str) -> Path:
    return Path(root) / f"{game}.zarr"


def partial_path(root: str | os.PathLike, game: str) -> Path:
    """Where a store is built before it becomes visible (renamed to ``store_path`` when complete)."""
    return Path(root) / f".{game}.zarr.partial"


def list_stores(root: str | os.PathLike) -> list[Path]:
    """Finished stores under ``root`` (a directory of ``<Game>.zarr``) or ``root`` itself if it is one."""
    root = Path(root)
    if root.suffix == ".zarr" and (root / "zarr.json").exists():
        return [root]
    if not root.is_dir():
        raise StoreError(f"{root}: no such directory; expected a folder of <Game>.zarr stores")
    stores = sorted(p for p in root.glob("*.zarr") if (p / "zarr.json").exists())
    if not stores:
        raise StoreError(f"{root}: contains no <Game>.zarr stores; run `jowa prepare-data` first")
    return stores


# --------------------------------------------------------------------------------------------------------
# Writing


def create_store(
    path: Path, n_steps: int, n_episodes: int, attrs: dict[str, Any], shard_frames: int = OBS_SHARD_FRAMES
) -> zarr.Group:
    """Create an empty group with every array of the contract sized for ``n_steps`` and ``n_episodes``."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array(
        "obs",
        shape=(n_steps, *FRAME_SHAPE),
        dtype="uint8",
        chunks=(OBS_CHUNK_FRAMES, *FRAME_SHAPE),
        shards=(shard_frames, *FRAME_SHAPE),
        compressors=ZstdCodec(level=ZSTD_LEVEL, checksum=True),
        fill_value=0,
    )
    for name, dtype in STEP_ARRAYS.items():
        group.create_array(
            name, shape=(n_steps,), dtype=dtype, chunks=(STEP_ARRAY_CHUNK,),
            compressors=ZstdCodec(level=3, checksum=True),
        )
    for name, dtype in EPISODE_ARRAYS.items():
        group.create_array(
            name,
            shape=(n_episodes,),
            dtype=dtype,
            chunks=(max(1, min(n_episodes, STEP_ARRAY_CHUNK)),),
            compressors=ZstdCodec(level=3, checksum=True),
        )
    group.attrs.update({"format_version": FORMAT_VERSION, **attrs})
    return group


def encode_shard(frames: np.ndarray, shard_frames: int = OBS_SHARD_FRAMES) -> bytes:
    """Encode up to ``shard_frames`` frames (n, 84, 84) uint8 as one Zarr v3 shard file.

    A shard shorter than ``shard_frames`` is the array's last: chunks fully past the end are marked
    empty, a chunk straddling the end is zero-padded (the fill value).
    """
    n = frames.shape[0]
    if frames.shape[1:] != FRAME_SHAPE or frames.dtype != np.uint8 or not 0 < n <= shard_frames:
        raise ValueError(f"bad shard contents: {frames.shape} {frames.dtype}")
    n_chunks = shard_frames // OBS_CHUNK_FRAMES
    index = np.full((n_chunks, 2), _EMPTY, dtype="<u8")
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)  # every chunk verifiable
    parts: list[bytes] = []
    offset = 0
    for c in range(-(-n // OBS_CHUNK_FRAMES)):
        chunk = frames[c * OBS_CHUNK_FRAMES : (c + 1) * OBS_CHUNK_FRAMES]
        if chunk.shape[0] < OBS_CHUNK_FRAMES:
            chunk = np.concatenate([chunk, np.zeros((OBS_CHUNK_FRAMES - chunk.shape[0], *FRAME_SHAPE), np.uint8)])
        data = compressor.compress(np.ascontiguousarray(chunk).data)
        index[c] = (offset, len(data))
        parts.append(data)
        offset += len(data)
    index_bytes = index.tobytes()
    parts.append(index_bytes)
    parts.append(np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes())
    return b"".join(parts)


def shard_file(obs_path: Path, shard: int) -> Path:
    return obs_path / "c" / str(shard) / "0" / "0"


def write_shard_atomic(obs_path: Path, shard: int, data: bytes) -> None:
    """Write one shard file via a temporary name, so a killed writer never leaves a torn shard."""
    target = shard_file(obs_path, shard)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target, target.with_name(f".0.tmp{os.getpid()}")) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_attrs_json(path: Path, attrs: dict[str, Any]) -> None:
    group = zarr.open_group(str(path), mode="r+", zarr_format=3)
    group.attrs.update(attrs)


def write_obs(obs_path: Path, frames: np.ndarray, shard_frames: int = OBS_SHARD_FRAMES) -> None:
    """Write all frames (N, 84, 84) of an ``obs`` array created by ``create_store`` (in memory; small stores)."""
    n = frames.shape[0]
    for shard in range(-(-n // shard_frames)):
        part = frames[shard * shard_frames : (shard + 1) * shard_frames]
        write_shard_atomic(obs_path, shard, encode_shard(part, shard_frames))


def write_store(
    path: str | os.PathLike,
    game: str,
    obs: np.ndarray,
    action: np.ndarray,
    reward: np.ndarray,
    terminal: np.ndarray,
    episode_start: np.ndarray,
    episode_length: np.ndarray,
    attrs: dict[str, Any] | None = None,
    shard_frames: int = OBS_SHARD_FRAMES,
) -> Path:
    """Write a complete store from in-memory arrays, atomically (built beside ``path``, then renamed).

    For small stores (tests, emulator data); ``prepare-data`` streams instead.
    """
    path = Path(path)
    info = games.get(game)
    partial = path.with_name(f".{path.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    n, e = int(obs.shape[0]), int(episode_start.shape[0])
    meta = {
        "game": info.name,
        "task_id": info.task_id,
        "num_actions": len(info.minimal_actions),
        "action_set": list(info.minimal_actions),
        **(attrs or {}),
    }
    group = create_store(partial, n, e, meta, shard_frames)
    write_obs(partial / "obs", np.ascontiguousarray(obs, dtype=np.uint8), shard_frames)
    for name, values in (("action", action), ("reward", reward), ("terminal", terminal)):
        group[name][:] = np.asarray(values, dtype=STEP_ARRAYS[name])
    group["episode_start"][:] = np.asarray(episode_start, dtype=np.int64)
    group["episode_length"][:] = np.asarray(episode_length, dtype=np.int64)
    publish(partial, path)
    return path


def publish(partial: Path, final: Path) -> None:
    """Make a finished store visible in one rename."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)


# --------------------------------------------------------------------------------------------------------
# Reading


@dataclass
class GameStore:
    """An opened store: small arrays in memory, frames read on demand through ``frames``."""

    path: Path
    attrs: dict[str, Any]
    action: np.ndarray  # (N,) int16
    reward: np.ndarray  # (N,) float32
    terminal: np.ndarray  # (N,) bool
    episode_start: np.ndarray  # (E,) int64
    episode_length: np.ndarray  # (E,) int64
    frames: FrameReader

    @property
    def game(self) -> str:
        return str(self.attrs["game"])

    @property
    def num_steps(self) -> int:
        return int(self.action.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_start.shape[0])

    def episode_returns(self) -> np.ndarray:
        """(E,) sum of stored rewards per episode."""
        csum = np.concatenate([[0.0], np.cumsum(self.reward, dtype=np.float64)])
        return csum[self.episode_start + self.episode_length] - csum[self.episode_start]


def open_store(path: str | os.PathLike) -> GameStore:
    """Open a finished store and check it against the contract (raises StoreError with the reason)."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise StoreError(f"{path}: not a Zarr store (no zarr.json)")
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
    except Exception as e:  # noqa: BLE001 - any failure here means the store cannot be used
        raise StoreError(f"{path}: cannot open as a Zarr v3 group: {e}") from e
    attrs = dict(group.attrs)
    if attrs.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"{path}: format_version {attrs.get('format_version')!r}, this jowa reads {FORMAT_VERSION}")
    arrays = {}
    for name, dtype in {**STEP_ARRAYS, **EPISODE_ARRAYS}.items():
        if name not in group:
            raise StoreError(f"{path}: array {name!r} is missing")
        try:
            arr = group[name][:]
        except Exception as e:  # noqa: BLE001 - a corrupt chunk (checksum, codec) makes the store unusable
            raise StoreError(f"{path}/{name}: cannot be read ({type(e).__name__}: {e})") from None
        if arr.dtype != dtype:
            raise StoreError(f"{path}/{name}: dtype {arr.dtype}, expected {np.dtype(dtype)}")
        arrays[name] = arr
    n = arrays["action"].shape[0]
    for name in STEP_ARRAYS:
        if arrays[name].shape != (n,):
            raise StoreError(f"{path}/{name}: shape {arrays[name].shape}, expected ({n},)")
    if group["obs"].shape != (n, *FRAME_SHAPE):
        raise StoreError(f"{path}/obs: shape {group['obs'].shape}, expected ({n}, 84, 84)")
    starts, lengths = arrays["episode_start"], arrays["episode_length"]
    if starts.shape != lengths.shape or (lengths.size and int(lengths.sum()) != n):
        raise StoreError(f"{path}: episode_start/episode_length do not cover the {n} steps")
    check_consistency(path, arrays, attrs.get("game"))
    return GameStore(path=path, attrs=attrs, frames=FrameReader(path / "obs"), **arrays)


def check_consistency(path: Path, arrays: dict[str, np.ndarray], game: str | None = None) -> None:
    """Cross-check the small arrays (raises StoreError): episodes contiguous from row 0 with positive lengths,
    terminal only on an episode's last step, actions in the full action space and in ``game``'s minimal action
    set (a game the registry knows), rewards finite."""
    starts, lengths = arrays["episode_start"], arrays["episode_length"]
    if lengths.size:
        expected = np.concatenate([[0], np.cumsum(lengths[:-1])])
        bad = np.flatnonzero((starts != expected) | (lengths < 1))
        if bad.size:
            e = int(bad[0])
            raise StoreError(f"{path}: episode {e} starts at row {int(starts[e])} with length {int(lengths[e])}; "
                             f"episodes must be contiguous from row 0 (expected start {int(expected[e])}, length >= 1)")
        last = np.zeros(arrays["terminal"].shape, bool)
        last[starts + lengths - 1] = True
        stray = np.flatnonzero(arrays["terminal"] & ~last)
        if stray.size:
            raise StoreError(f"{path}: terminal set on row {int(stray[0])}, which is not an episode's last step")
    action = arrays["action"]
    wrong = np.flatnonzero((action < 0) | (action >= NUM_FULL_ACTIONS))
    if wrong.size:
        raise StoreError(f"{path}: action {int(action[wrong[0]])} on row {int(wrong[0])} is outside the "
                         f"{NUM_FULL_ACTIONS}-action ALE space ({wrong.size} rows)")
    if game is not None and game in games.REGISTRY:
        valid = games.get(game).action_mask()
        wrong = np.flatnonzero(~valid[action])
        if wrong.size:
            raise StoreError(f"{path}: action {int(action[wrong[0]])} on row {int(wrong[0])} is not in {game}'s "
                             f"minimal action set {np.flatnonzero(valid).tolist()} ({wrong.size} rows)")
    nonfinite = np.flatnonzero(~np.isfinite(arrays["reward"]))
    if nonfinite.size:
        raise StoreError(f"{path}: reward {arrays['reward'][nonfinite[0]]} on row {int(nonfinite[0])} is not finite "
                         f"({nonfinite.size} rows)")


class FrameReader:
    """Random access to ``obs`` rows: pread + zstd per 4-frame chunk, shard indexes cached lazily.

    Falls back to zarr-python for arrays whose codecs are not the layout this module writes. Safe to use
    after fork (file descriptors are reopened per process).
    """

    def __init__(self, obs_path: Path):
        self.path = Path(obs_path)
        meta = json.loads((self.path / "zarr.json").read_text())
        self.shape = tuple(meta["shape"])
        self._fast = _is_fast_layout(meta)
        if self._fast:
            self.shard_frames = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
            self.chunk_frames = int(meta["codecs"][0]["configuration"]["chunk_shape"][0])
            zstd = meta["codecs"][0]["configuration"]["codecs"][1].get("configuration", {})
            self.checksummed = bool(zstd.get("checksum", False))  # stores written before checksums: False
        self._indexes: dict[int, np.ndarray] = {}
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        self._dctx = zstandard.ZstdDecompressor()
        self._zarr: zarr.Array | None = None

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds.clear()
        self._indexes.clear()

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: descriptors and decompressor belong to the parent
            self._fds, self._indexes, self._pid = {}, {}, os.getpid()
            self._dctx = zstandard.ZstdDecompressor()
        fd = self._fds.get(shard)
        if fd is None:
            fd = os.open(shard_file(self.path, shard), os.O_RDONLY)
            self._fds[shard] = fd
        return fd

    def _index(self, shard: int) -> np.ndarray:
        index = self._indexes.get(shard)
        if index is None:
            fd = self._fd(shard)
            n_chunks = self.shard_frames // self.chunk_frames
            size = os.fstat(fd).st_size
            raw = os.pread(fd, n_chunks * 16 + 4, size - n_chunks * 16 - 4)
            if np.uint32(google_crc32c.value(raw[:-4])).astype("<u4").tobytes() != raw[-4:]:
                raise StoreError(f"{shard_file(self.path, shard)}: shard index checksum mismatch")
            index = np.frombuffer(raw[:-4], dtype="<u8").reshape(n_chunks, 2)
            self._indexes[shard] = index
        return index

    def _chunk(self, chunk: int) -> bytes:
        shard, local = divmod(chunk * self.chunk_frames, self.shard_frames)
        offset, nbytes = self._index(shard)[local // self.chunk_frames]
        if offset == _EMPTY:
            return bytes(self.chunk_frames * FRAME_BYTES)
        data = os.pread(self._fd(shard), int(nbytes), int(offset))
        size = self.chunk_frames * FRAME_BYTES
        where = f"{shard_file(self.path, shard)}: chunk {local // self.chunk_frames}"
        # A checksummed store's chunks must carry the checksum flag (a flipped flag would skip the check).
        if len(data) < 5 or data[:4] != _ZSTD_MAGIC or (self.checksummed and not data[4] & _ZSTD_CHECKSUM_FLAG):
            raise StoreError(f"{where} is corrupt (bad zstd frame header)")
        try:
            out = self._dctx.decompress(data, max_output_size=size)
        except zstandard.ZstdError as e:
            raise StoreError(f"{where} is corrupt ({e})") from None
        if len(out) != size:
            raise StoreError(f"{where} is corrupt ({len(out)} bytes decoded, expected {size})")
        return out

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Frames [start, stop) as (stop - start, 84, 84) uint8."""
        if not 0 <= start <= stop <= self.shape[0]:
            raise IndexError(f"rows [{start}, {stop}) outside obs of length {self.shape[0]}")
        if start == stop:
            return np.zeros((0, *FRAME_SHAPE), np.uint8)
        if not self._fast:
            return self._zarr_array()[start:stop]
        c0, c1 = start // self.chunk_frames, (stop - 1) // self.chunk_frames
        buf = b"".join(self._chunk(c) for c in range(c0, c1 + 1))
        first = start - c0 * self.chunk_frames
        flat = np.frombuffer(buf, np.uint8).reshape(-1, *FRAME_SHAPE)
        return flat[first : first + stop - start]

    def read_segments(self, starts: Iterable[int], lengths: Iterable[int], seq_len: int) -> np.ndarray:
        """(B, seq_len, 84, 84) uint8: rows [start, start + length) of each segment, zeros after them."""
        starts, lengths = np.asarray(starts), np.asarray(lengths)
        out = np.zeros((len(starts), seq_len, *FRAME_SHAPE), np.uint8)
        for i, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
            out[i, :n] = self.read_range(s, s + n)
        return out

    def _zarr_array(self) -> zarr.Array:
        if self._zarr is None:
            self._zarr = zarr.open_array(str(self.path), mode="r")
        return self._zarr


def _is_fast_layout(meta: dict[str, Any]) -> bool:
    """True when ``meta`` is the obs layout ``create_store`` writes (any shard length, 4-frame chunks)."""
    try:
        (codec,) = meta["codecs"]
        cfg = codec["configuration"]
        inner = [c["name"] for c in cfg["codecs"]]
        index = [c["name"] for c in cfg["index_codecs"]]
        return (
            codec["name"] == "sharding_indexed"
            and meta["data_type"] == "uint8"
            and list(meta["chunk_grid"]["configuration"]["chunk_shape"])[1:] == list(FRAME_SHAPE)
            and list(cfg["chunk_shape"]) == [OBS_CHUNK_FRAMES, *FRAME_SHAPE]
            and meta["chunk_grid"]["configuration"]["chunk_shape"][0] % OBS_CHUNK_FRAMES == 0
            and inner == ["bytes", "zstd"]
            and index == ["bytes", "crc32c"]
            and cfg.get("index_location", "end") == "end"
            and meta["chunk_key_encoding"]["name"] == "default"
            and meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/") == "/"
        )
    except (KeyError, TypeError, ValueError):
        return False
