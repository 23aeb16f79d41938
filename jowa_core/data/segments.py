"""Training segments: fixed-length windows of steps inside episodes, sampled game-balanced.

The rules (docs/loader.md):

* A segment starts at episode offsets ``0, stride, 2*stride, ... < T`` and covers steps
  ``[offset, min(offset + L, T))``: it never crosses an episode boundary and is right-padded at the end of an
  episode (the last segments of an episode hold 1..L-1 valid steps ending with the episode's last step).
  Padded positions hold obs 0, action 0, reward 0, terminal False, valid False.
* A batch holds (as equally as possible) the same number of segments from every game; segments of a game
  are drawn from a per-game permutation reshuffled each epoch, smaller games cycle through theirs.

Pieces: ``SegmentIndex`` (flat arrays of all segments), ``BalancedBatchSampler`` (batches of segment ids,
sharded across ranks), ``SegmentDataset`` (reads a batch of ids into a dict of tensors), ``make_loader``
(all three in a ``DataLoader``) and ``benchmark_loader`` (segments/s, for ``jowa bench data``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset, Sampler

from jowa_core.constants import NUM_FULL_ACTIONS, OBS_TOKENS, TOKENS_PER_OBS
from jowa_core.data.store import FRAME_BYTES, FRAME_SHAPE, GameStore, StoreError, list_stores, open_store
from jowa_core.data.tokenize import existing_tokens_attrs

Observations = Literal["frames", "tokens", "none"]
EpochLength = Literal["total", "max"] | int


# --------------------------------------------------------------------------------------------------------
# Index


@dataclass
class SegmentIndex:
    """Every segment of a list of stores as flat arrays; segment ``i`` is rows
    ``[start[i], start[i] + length[i])`` of store ``store[i]``.

    Segments of store ``s`` are the contiguous ids ``store_offsets[s]:store_offsets[s + 1]``, in episode
    order. ``store_group[s]`` says which game store ``s`` belongs to (stores of one game are balanced as one).
    """

    store: np.ndarray  # (M,) int16
    start: np.ndarray  # (M,) int64, row in its store
    length: np.ndarray  # (M,) int16, valid steps 1..seq_len
    store_offsets: np.ndarray  # (S + 1,) int64
    store_group: np.ndarray  # (S,) int64
    seq_len: int
    stride: int
    group_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.start.shape[0])

    @property
    def num_stores(self) -> int:
        return int(self.store_offsets.shape[0] - 1)

    @classmethod
    def from_episodes(
        cls,
        episodes: Sequence[tuple[np.ndarray, np.ndarray]],
        seq_len: int = 8,
        stride: int = 4,
        store_group: Sequence[int] | None = None,
        group_names: Sequence[str] | None = None,
    ) -> SegmentIndex:
        """Index from ``(episode_start, episode_length)`` of each store (vectorised, no per-segment loop)."""
        if not 1 <= seq_len <= np.iinfo(np.int16).max:
            raise ValueError(f"seq_len must be in 1..32767, got {seq_len}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if len(episodes) > np.iinfo(np.int16).max:
            raise ValueError(f"at most 32767 stores, got {len(episodes)}")
        parts_store, parts_start, parts_length, counts = [], [], [], []
        for s, (ep_start, ep_length) in enumerate(episodes):
            ep_start = np.asarray(ep_start, np.int64)
            ep_length = np.asarray(ep_length, np.int64)
            n_seg = -(-ep_length // stride)  # offsets 0, stride, ... < T
            total = int(n_seg.sum())
            episode = np.repeat(np.arange(len(ep_start)), n_seg)
            first = np.cumsum(n_seg) - n_seg  # id of each episode's first segment
            offset = (np.arange(total, dtype=np.int64) - first[episode]) * stride
            parts_store.append(np.full(total, s, np.int16))
            parts_start.append(ep_start[episode] + offset)
            parts_length.append(np.minimum(seq_len, ep_length[episode] - offset).astype(np.int16))
            counts.append(total)
        groups = np.arange(len(episodes)) if store_group is None else np.asarray(store_group, np.int64)
        if groups.shape != (len(episodes),):
            raise ValueError("store_group needs one entry per store")
        names = (
            list(group_names) if group_names is not None else [str(g) for g in range(int(groups.max(initial=-1)) + 1)]
        )
        return cls(
            store=np.concatenate(parts_store) if parts_store else np.zeros(0, np.int16),
            start=np.concatenate(parts_start) if parts_start else np.zeros(0, np.int64),
            length=np.concatenate(parts_length) if parts_length else np.zeros(0, np.int16),
            store_offsets=np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64),
            store_group=groups.astype(np.int64),
            seq_len=int(seq_len),
            stride=int(stride),
            group_names=names,
        )

    @classmethod
    def from_stores(cls, stores: Sequence[GameStore], seq_len: int = 8, stride: int = 4) -> SegmentIndex:
        """Index of opened stores; stores of the same game (``attrs["game"]``) form one balancing group."""
        names: list[str] = []
        groups = []
        for st in stores:
            if st.game not in names:
                names.append(st.game)
            groups.append(names.index(st.game))
        return cls.from_episodes(
            [(st.episode_start, st.episode_length) for st in stores],
            seq_len=seq_len,
            stride=stride,
            store_group=groups,
            group_names=names,
        )

    def group_ranges(self) -> list[list[tuple[int, int]]]:
        """For each group, the ``(lo, hi)`` id ranges of its stores' segments."""
        n_groups = int(self.store_group.max(initial=-1)) + 1
        ranges: list[list[tuple[int, int]]] = [[] for _ in range(n_groups)]
        for s, g in enumerate(self.store_group.tolist()):
            lo, hi = int(self.store_offsets[s]), int(self.store_offsets[s + 1])
            if hi > lo:
                ranges[g].append((lo, hi))
        return ranges


# --------------------------------------------------------------------------------------------------------
# Sampler


class _GameStream:
    """Segment ids of one game in the order an epoch draws them: permutation after permutation (one per
    cycle through the game), each seeded by (seed, epoch, game, cycle)."""

    def __init__(self, ranges: list[tuple[int, int]], seed: int, epoch: int, key: int):
        self.lo = np.array([r[0] for r in ranges], np.int64)
        self.cum = np.cumsum([0] + [r[1] - r[0] for r in ranges]).astype(np.int64)
        self.size = int(self.cum[-1])
        self.seed, self.epoch, self.key = seed, epoch, key
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, cycle: int) -> np.ndarray:
        perm = self._perms.get(cycle)
        if perm is None:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, self.key, cycle]))
            perm = np.arange(self.size, dtype=np.int32 if self.size < 2**31 else np.int64)
            rng.shuffle(perm)  # int32 halves the memory of large games' permutations
            self._perms = {c: p for c, p in self._perms.items() if c >= cycle - 1}  # keep at most 2
            self._perms[cycle] = perm
        return perm

    def take(self, position: int, count: int) -> np.ndarray:
        """Ids at stream positions ``[position, position + count)``."""
        pos = np.arange(position, position + count, dtype=np.int64)
        cycle, local = np.divmod(pos, self.size)
        out = np.empty(count, np.int64)
        for c in np.unique(cycle).tolist():
            sel = cycle == c
            out[sel] = self._perm(c)[local[sel]]
        if len(self.lo) == 1:
            return out + self.lo[0]
        r = np.searchsorted(self.cum, out, side="right") - 1
        return self.lo[r] + (out - self.cum[r])


class BalancedBatchSampler(Sampler[list[int]]):
    """Batches of segment ids with the same number of segments from every game, sharded across ranks.

    Batch composition: with G games (index groups that have segments) and batch size B, every game gets
    ``B // G`` segments per batch and the ``B % G`` remaining slots go round-robin over the games, continuing
    from batch to batch (so per-batch counts differ by at most 1 and every game gets the same share over
    G consecutive batches). Segments of a game come from a permutation of that game's segments, shuffled
    anew for every epoch and every cycle through the game (small games cycle, large ones may not be
    exhausted). Everything is a function of ``(seed, epoch)``: call ``set_epoch(e)`` before each epoch.

    Epoch length (``epoch_length``), in global batches: ``"total"`` (default) ceil(segments / B), i.e. as
    many segments as the index holds; ``"max"`` the fewest batches in which the largest game is drawn
    completely; or an int. The global batch stream is dealt out round-robin: rank r yields global batches
    r, r + W, r + 2W, ... and every rank yields ``ceil(global_batches / W)`` batches, so W ranks together
    see exactly the first W * len(self) batches one process (world_size 1) would see.
    ``batch_size`` is the per-rank batch size.
    """

    def __init__(
        self,
        index: SegmentIndex,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_length: EpochLength = "total",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank {rank} for world_size {world_size}")
        if seed < 0:
            raise ValueError("seed must be >= 0")
        self.index = index
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.start_batch = 0
        all_ranges = index.group_ranges()
        self.group_ids = [g for g, r in enumerate(all_ranges) if r]  # games with at least one segment
        if not self.group_ids:
            raise ValueError("no segments to sample: every store is empty")
        self._ranges = [all_ranges[g] for g in self.group_ids]
        self.group_sizes = np.array([sum(hi - lo for lo, hi in r) for r in self._ranges], np.int64)
        self.num_games = len(self.group_ids)
        self.base, self.rem = divmod(self.batch_size, self.num_games)
        self.global_batches = self._global_batches(epoch_length)
        self.epoch_length = epoch_length

    def _drawn_before(self, j: int) -> np.ndarray:
        """(G,) segments drawn from each game in global batches 0..j-1."""
        extra_slots = j * self.rem  # round-robin slot k goes to game k % G
        g = np.arange(self.num_games)
        return j * self.base + np.maximum(0, (extra_slots - g + self.num_games - 1) // self.num_games)

    def _global_batches(self, policy: EpochLength) -> int:
        if isinstance(policy, (int, np.integer)) and not isinstance(policy, bool):
            if policy < 1:
                raise ValueError("epoch_length must be >= 1 batch")
            return int(policy)
        if policy == "total":
            return max(1, -(-int(self.group_sizes.sum()) // self.batch_size))
        if policy == "max":
            j = max(1, int(self.group_sizes.max()) * self.num_games // self.batch_size)
            while np.any(self._drawn_before(j) < self.group_sizes):
                j += 1
            return j
        raise ValueError(f"epoch_length must be 'total', 'max' or an int, got {policy!r}")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; the next iteration starts at this rank's batch ``start_batch`` (for resuming)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside 0..{len(self)}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def __len__(self) -> int:
        return -(-self.global_batches // self.world_size)

    def counts(self, j: int) -> np.ndarray:
        """(G,) segments each game contributes to global batch ``j``."""
        return self._drawn_before(j + 1) - self._drawn_before(j)

    def global_batch(self, j: int, streams: list[_GameStream] | None = None) -> list[int]:
        """Global batch ``j`` of the current epoch (what the rank owning it yields)."""
        if streams is None:
            streams = self._streams()
        pos, cnt = self._drawn_before(j), self.counts(j)
        parts = [streams[g].take(int(pos[g]), int(cnt[g])) for g in range(self.num_games) if cnt[g]]
        return np.concatenate(parts).tolist()

    def _streams(self) -> list[_GameStream]:
        return [_GameStream(r, self.seed, self.epoch, g) for g, r in zip(self.group_ids, self._ranges, strict=True)]

    def __iter__(self) -> Iterator[list[int]]:
        streams = self._streams()
        for k in range(self.start_batch, len(self)):
            yield self.global_batch(k * self.world_size + self.rank, streams)


# --------------------------------------------------------------------------------------------------------
# Dataset


def _as_store(s: GameStore | str | os.PathLike) -> GameStore:
    return s if isinstance(s, GameStore) else open_store(s)


def tokens_tokenizer(stores: Sequence[GameStore]) -> str | None:
    """sha256 of the tokenizer whose ``obs_tokens`` the stores hold (``jowa tokenize`` records it); None when no
    store records one. Stores tokenized by different tokenizers cannot train one model: that is an error."""
    shas: dict[str, str] = {}
    for st in stores:
        sha = (existing_tokens_attrs(st.path) or {}).get("tokenizer_sha256")
        if sha:
            shas.setdefault(str(sha), str(st.path))
    if len(shas) > 1:
        listed = "; ".join(f"{p} (sha256 {s[:12]}...)" for s, p in shas.items())
        raise StoreError(f"the stores were tokenized by different tokenizers: {listed}. Re-tokenize them with one "
                         f"tokenizer (jowa tokenize --overwrite)")
    return next(iter(shas), None)


def load_obs_tokens(store: GameStore) -> np.ndarray:
    """The store's ``obs_tokens`` (N, 36) int16, fully in memory."""
    group = zarr.open_group(str(store.path), mode="r", zarr_format=3)
    if OBS_TOKENS not in group:
        raise StoreError(f"{store.path}: no obs_tokens array; tokenize the store first")
    tokens = group[OBS_TOKENS][:]
    if tokens.shape != (store.num_steps, TOKENS_PER_OBS):
        raise StoreError(f"{store.path}/obs_tokens: shape {tokens.shape}, expected ({store.num_steps}, 36)")
    vocab = (group[OBS_TOKENS].attrs.get("tokenizer_config") or {}).get("vocab_size")
    low, high = (int(tokens.min()), int(tokens.max())) if tokens.size else (0, 0)
    if low < 0 or (vocab and high >= int(vocab)):  # the model's embedding would clamp them silently
        raise StoreError(f"{store.path}/obs_tokens: values in [{low}, {high}], outside the tokenizer's vocabulary "
                         f"[0, {vocab})" if vocab else f"{store.path}/obs_tokens: negative token {low}")
    return tokens


class SegmentDataset(Dataset):
    """Reads segments of an index into tensors. ``__getitems__(ids)`` returns one batch dict:

    ``obs`` (B, L, 84, 84) uint8 (``observations="frames"``) or ``obs_tokens`` (B, L, 36) int64
    (``"tokens"``) or neither (``"none"``); ``action`` (B, L) int64 full-action index; ``reward`` (B, L)
    float32; ``terminal`` (B, L) bool; ``valid`` (B, L) bool; ``game_id`` (B,) int64 task id;
    ``action_mask`` (B, 18) bool. ``__getitem__(i)`` gives the same without the batch dimension.

    Step arrays of all stores are concatenated in memory; frames are read per segment with each store's
    FrameReader (which pickles by path, so the dataset works in fork and spawn workers).
    """

    def __init__(
        self,
        stores: Sequence[GameStore | str | os.PathLike],
        index: SegmentIndex,
        seq_len: int | None = None,
        observations: Observations = "frames",
    ):
        stores = [_as_store(s) for s in stores]
        if index.num_stores != len(stores):
            raise ValueError(f"index covers {index.num_stores} stores, got {len(stores)}")
        if observations not in ("frames", "tokens", "none"):
            raise ValueError(f"observations must be 'frames', 'tokens' or 'none', got {observations!r}")
        self.seq_len = int(index.seq_len if seq_len is None else seq_len)
        if len(index) and int(index.length.max()) > self.seq_len:
            raise ValueError(f"index has segments of {int(index.length.max())} steps > seq_len {self.seq_len}")
        self.index = index
        self.observations = observations
        self.paths = [st.path for st in stores]
        self.games = [st.game for st in stores]
        self.readers = [st.frames for st in stores] if observations == "frames" else []
        sizes = [st.num_steps for st in stores]
        self.base = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)[:-1]
        self.action = np.concatenate([st.action for st in stores]) if stores else np.zeros(0, np.int16)
        self.reward = np.concatenate([st.reward for st in stores]) if stores else np.zeros(0, np.float32)
        self.terminal = np.concatenate([st.terminal for st in stores]) if stores else np.zeros(0, bool)
        self.tokens = np.concatenate([load_obs_tokens(st) for st in stores]) if observations == "tokens" else None
        self.tokens_tokenizer = tokens_tokenizer(stores) if observations == "tokens" else None  # sha256 or None
        self.task_id = np.array([int(st.attrs["task_id"]) for st in stores], np.int64)
        self.action_mask = np.zeros((len(stores), NUM_FULL_ACTIONS), bool)
        for s, st in enumerate(stores):
            self.action_mask[s, np.asarray(st.attrs["action_set"], np.int64)] = True

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, ids: Sequence[int]) -> dict[str, torch.Tensor]:
        ids = np.asarray(ids, np.int64)
        L = self.seq_len
        store = self.index.store[ids].astype(np.int64)
        start = self.index.start[ids]
        length = self.index.length[ids].astype(np.int64)
        steps = np.arange(L)
        valid = steps[None, :] < length[:, None]
        rows = np.where(valid, (self.base[store] + start)[:, None] + steps[None, :], 0)
        action = np.where(valid, self.action[rows], 0).astype(np.int64)
        reward = np.where(valid, self.reward[rows], np.float32(0)).astype(np.float32)
        terminal = valid & self.terminal[rows]
        batch = {}
        if self.observations == "frames":
            obs = _new_tensor((len(ids), L, *FRAME_SHAPE), torch.uint8)
            out = obs.numpy()
            for i, (s, st, n) in enumerate(zip(store.tolist(), start.tolist(), length.tolist(), strict=True)):
                out[i, :n] = self.readers[s].read_range(st, st + n)
                if n < L:
                    out[i, n:] = 0
            batch["obs"] = obs
        elif self.observations == "tokens":
            tok = self.tokens[rows].astype(np.int64)
            tok[~valid] = 0
            batch["obs_tokens"] = torch.from_numpy(tok)
        batch.update(
            action=torch.from_numpy(action),
            reward=torch.from_numpy(reward),
            terminal=torch.from_numpy(terminal),
            valid=torch.from_numpy(valid),
            game_id=torch.from_numpy(self.task_id[store]),
            action_mask=torch.from_numpy(self.action_mask[store]),
        )
        return batch


def _new_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker, allocated in shared memory so that sending it to
    the main process does not copy it (what default_collate does)."""
    if torch.utils.data.get_worker_info() is not None:
        try:
            numel = math.prod(shape)
            storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)
            return torch.empty(0, dtype=dtype).new(storage).view(shape)
        except (AttributeError, RuntimeError, TypeError):  # private API changed: fall back to a copy
            pass
    return torch.empty(shape, dtype=dtype)


# --------------------------------------------------------------------------------------------------------
# Loader


def _identity(batch: Any) -> Any:
    return batch


def open_stores(
    roots_or_stores: str | os.PathLike | GameStore | Sequence[str | os.PathLike | GameStore],
    games: Sequence[str] | None = None,
) -> list[GameStore]:
    """Stores from a root folder of ``<Game>.zarr``, a single store, a GameStore, or a list of those;
    ``games`` keeps only those games (error if one is missing)."""
    items = roots_or_stores if isinstance(roots_or_stores, (list, tuple)) else [roots_or_stores]
    stores: list[GameStore] = []
    for item in items:
        if isinstance(item, GameStore):
            stores.append(item)
        else:
            stores.extend(open_store(p) for p in list_stores(Path(item)))
    if games is not None:
        wanted = list(games)
        missing = sorted(set(wanted) - {s.game for s in stores})
        if missing:
            raise StoreError(f"no store for game(s) {', '.join(missing)} in {roots_or_stores}")
        stores = [s for s in stores if s.game in wanted]
    if not stores:
        raise StoreError(f"no stores found in {roots_or_stores}")
    return stores


def make_loader(
    roots_or_stores: str | os.PathLike | GameStore | Sequence[str | os.PathLike | GameStore],
    batch_size: int,
    seq_len: int = 8,
    stride: int = 4,
    seed: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    observations: Observations = "frames",
    games: Sequence[str] | None = None,
    epoch_length: EpochLength = "total",
    pin_memory: bool = False,
    multiprocessing_context: str | None = None,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader of game-balanced segment batches (dicts, see SegmentDataset).

    Call ``loader.batch_sampler.set_epoch(epoch)`` before each epoch. Workers are persistent.
    """
    stores = open_stores(roots_or_stores, games)
    index = SegmentIndex.from_stores(stores, seq_len=seq_len, stride=stride)
    dataset = SegmentDataset(stores, index, seq_len=seq_len, observations=observations)
    sampler = BalancedBatchSampler(
        index, batch_size, seed=seed, rank=rank, world_size=world_size, epoch_length=epoch_length
    )
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, multiprocessing_context=multiprocessing_context)
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        # its own generator: starting an iteration must not draw from the global RNG (exact resume)
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        collate_fn=_identity,
        pin_memory=pin_memory,
        **kwargs,
    )


def benchmark_loader(
    root: str | os.PathLike,
    batch_size: int = 256,
    seconds: float = 5.0,
    num_workers: int = 0,
    seq_len: int = 8,
    stride: int = 4,
    observations: Observations = "frames",
) -> dict[str, Any]:
    """Iterate a loader over ``root`` for about ``seconds`` (after one warm-up batch) and report its speed:
    ``segments_per_s``, ``batches_per_s``, ``frames_mb_per_s`` (decoded valid frames, 1 MB = 1e6 bytes)."""
    t_open = time.perf_counter()
    loader = make_loader(
        root, batch_size, seq_len=seq_len, stride=stride, num_workers=num_workers, observations=observations
    )
    open_s = time.perf_counter() - t_open
    sampler = loader.batch_sampler
    segments = batches = valid_steps = 0
    epoch = 0
    t0 = None
    while True:
        sampler.set_epoch(epoch)
        for batch in loader:
            if t0 is None:  # first batch: warm-up (worker start, shard indexes)
                t0 = time.perf_counter()
                continue
            batches += 1
            segments += int(batch["valid"].shape[0])
            valid_steps += int(batch["valid"].sum())
            if time.perf_counter() - t0 >= seconds:
                break
        else:
            epoch += 1
            continue
        break
    elapsed = time.perf_counter() - t0
    frame_bytes = valid_steps * FRAME_BYTES if observations == "frames" else 0
    return {
        "segments_per_s": segments / elapsed,
        "batches_per_s": batches / elapsed,
        "frames_mb_per_s": frame_bytes / elapsed / 1e6,
        "segments": segments,
        "batches": batches,
        "seconds": elapsed,
        "open_seconds": open_s,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "num_workers": num_workers,
        "games": sorted(set(loader.dataset.games)),
        "index_segments": len(loader.dataset.index),
    }
