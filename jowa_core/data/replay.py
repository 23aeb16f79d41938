"""Transitions in memory for online training: a growing replay buffer and offline stores, sampled as segments.

Rows are transitions ``(o_t tokens, a_t, r_t, d_t)`` as in a store (docs/data-format.md). Each row has a ``next``
pointer: the row of the same episode's next step, or -1 (the episode's last step so far). A segment of L steps
starting at row r follows the pointers, so the replay buffer can append the steps of N environments interleaved,
and an episode still running is sampled like a finished one (its segments end at its newest step).

``SegmentTable`` holds the arrays and gathers batches in the segment loader's format (``SegmentDataset``:
``obs_tokens`` (B, L, 36) int64, ``action``, ``reward``, ``terminal``, ``valid``, ``game_id``, ``action_mask``).
``ReplayBuffer`` appends per-environment steps and writes/reads itself as a store of the Zarr contract
(episodes contiguous; an episode still running when it is written is stored cut, without a terminal step) with
an ``obs_tokens`` array, so ``jowa finetune`` (``train_tokenizer=false``) and ``pretrain`` can read it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import Tensor
from zarr.codecs import ZstdCodec

from jowa_core import games as _games
from jowa_core.constants import FRAME_SHAPE, NUM_FULL_ACTIONS, OBS_TOKENS, TOKENS_PER_OBS
from jowa_core.data.segments import load_obs_tokens
from jowa_core.data.store import GameStore, open_store, store_path, write_store

__all__ = ["ReplayBuffer", "SegmentTable", "mix_counts"]


def mix_counts(batch_size: int, fractions: Sequence[float]) -> list[int]:
    """Rows per source of a batch: ``fractions`` (each in [0, 1], summing to at most 1) of ``batch_size`` rounded
    by largest remainder; the first source (the online replay) takes what is left. Exact and deterministic."""
    if any(f < 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"mixing fractions must be >= 0 with a sum <= 1, got {list(fractions)}")
    raw = np.asarray([batch_size * f for f in fractions], dtype=np.float64)
    counts = np.floor(raw).astype(np.int64)
    spare = int(round(float(raw.sum()))) - int(counts.sum())
    for i in np.argsort(-(raw - counts), kind="stable")[:max(spare, 0)]:
        counts[i] += 1
    return [batch_size - int(counts.sum()), *counts.tolist()]


class SegmentTable:
    """Rows of transitions with ``next`` pointers; ``gather`` reads segments, ``sample`` draws uniform starts."""

    def __init__(self, tokens: np.ndarray, action: np.ndarray, reward: np.ndarray, terminal: np.ndarray,
                 nxt: np.ndarray, task_id: np.ndarray, masks: dict[int, np.ndarray]):
        """tokens (N, 36) int16; action (N,) full-action index; reward (N,) float32; terminal (N,) bool;
        nxt (N,) int64 next row or -1; task_id (N,) int64; masks: each task id's (18,) valid actions."""
        self.tokens, self.action, self.reward, self.terminal = tokens, action, reward, terminal
        self.next, self.task_id = nxt, task_id
        self._n = int(action.shape[0])
        self.masks = masks

    def __len__(self) -> int:
        return self._n

    @classmethod
    def from_stores(cls, stores: Sequence[GameStore | str | os.PathLike]) -> SegmentTable:
        """The rows of tokenized stores (``obs_tokens``), episodes chained, one table."""
        opened = [s if isinstance(s, GameStore) else open_store(s) for s in stores]
        parts = [_store_arrays(st) for st in opened]
        base = np.cumsum([0] + [len(p["action"]) for p in parts])
        nxt = [np.where(p["next"] >= 0, p["next"] + b, -1) for p, b in zip(parts, base, strict=False)]
        return cls(*(np.concatenate([p[k] for p in parts]) for k in ("tokens", "action", "reward", "terminal")),
                   np.concatenate(nxt), np.concatenate([p["task_id"] for p in parts]),
                   {int(st.attrs["task_id"]): _games.get(st.game).action_mask() for st in opened})

    def rows(self, starts: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, L) rows of the segments starting at ``starts`` and their validity (False past the episode's end)."""
        rows = np.zeros((len(starts), seq_len), np.int64)
        valid = np.zeros((len(starts), seq_len), bool)
        cur = np.asarray(starts, np.int64).copy()
        for t in range(seq_len):
            ok = cur >= 0
            valid[:, t] = ok
            rows[:, t] = np.where(ok, cur, 0)
            cur = np.where(ok, self.next[np.where(ok, cur, 0)], -1)
        return rows, valid

    def gather(self, starts: np.ndarray, seq_len: int) -> dict[str, Tensor]:
        """The segments starting at ``starts`` in the segment loader's batch format (padding as there)."""
        rows, valid = self.rows(starts, seq_len)
        tok = self.tokens[rows].astype(np.int64)
        tok[~valid] = 0
        task = self.task_id[np.asarray(starts, np.int64)]
        return {
            "obs_tokens": torch.from_numpy(tok),
            "action": torch.from_numpy(np.where(valid, self.action[rows], 0).astype(np.int64)),
            "reward": torch.from_numpy(np.where(valid, self.reward[rows], 0).astype(np.float32)),
            "terminal": torch.from_numpy(valid & self.terminal[rows]),
            "valid": torch.from_numpy(valid),
            "game_id": torch.from_numpy(task.astype(np.int64)),
            "action_mask": torch.from_numpy(np.stack([self.masks[int(t)] for t in task])
                                            if len(task) else np.zeros((0, NUM_FULL_ACTIONS), bool)),
        }

    def sample(self, n: int, seq_len: int, rng: np.random.Generator,
               among: np.ndarray | None = None) -> dict[str, Tensor]:
        """``n`` segments with starts drawn uniformly from every row (or from the rows ``among``)."""
        if n and (len(self) == 0 or (among is not None and len(among) == 0)):
            raise ValueError("cannot sample segments from an empty source")
        starts = rng.integers(0, len(self), n) if among is None else among[rng.integers(0, len(among), n)]
        return self.gather(starts, seq_len)


def _store_arrays(st: GameStore) -> dict[str, np.ndarray]:
    n = st.num_steps
    nxt = np.arange(1, n + 1, dtype=np.int64)
    nxt[st.episode_start + st.episode_length - 1] = -1
    return {"tokens": load_obs_tokens(st), "action": st.action.astype(np.int16), "reward": st.reward,
            "terminal": st.terminal, "next": nxt, "task_id": np.full(n, int(st.attrs["task_id"]), np.int64)}


class ReplayBuffer(SegmentTable):
    """The online replay of one game: frames, tokens and transitions of N environments appended step by step."""

    def __init__(self, game: str, num_envs: int, capacity: int = 1024):
        self.info = _games.get(game)
        self.num_envs = num_envs
        self.frames = np.zeros((capacity, *FRAME_SHAPE), np.uint8)
        self.episode = np.zeros(capacity, np.int64)
        super().__init__(np.zeros((capacity, TOKENS_PER_OBS), np.int16), np.zeros(capacity, np.int16),
                         np.zeros(capacity, np.float32), np.zeros(capacity, bool), np.full(capacity, -1, np.int64),
                         np.full(capacity, self.info.task_id, np.int64), {self.info.task_id: self.info.action_mask()})
        self._n = 0  # rows used; the arrays are the capacity
        self.last = np.full(num_envs, -1, np.int64)  # each environment's newest row of its running episode
        self.env_episode = np.full(num_envs, -1, np.int64)  # its running episode's id
        self.num_episodes = 0  # episode ids handed out (stored and running)
        self.finished: list[int] = []  # ids of the finished episodes, in the order they ended

    _ARRAYS = ("frames", "episode", "tokens", "action", "reward", "terminal", "next", "task_id")

    def _grow(self, need: int) -> None:
        cap = self.action.shape[0]
        if need <= cap:
            return
        new = max(need, 2 * cap)
        for name in self._ARRAYS:
            old = getattr(self, name)
            fill = -1 if name == "next" else (self.info.task_id if name == "task_id" else 0)
            arr = np.full((new, *old.shape[1:]), fill, old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)

    def add(self, frames: np.ndarray, tokens: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
            terminal: np.ndarray, ended: np.ndarray) -> None:
        """One step of every environment: frames (N, 84, 84) on which the full ``actions`` (N,) were taken,
        their tokens (N, 36), ``rewards`` (N,) as stored (clipped), ``terminal`` (N,) game over, ``ended`` (N,)
        game over or cut (the environment starts a new episode at its next step)."""
        n, i = self.num_envs, self._n
        self._grow(i + n)
        rows = np.arange(i, i + n)
        new = self.last < 0
        self.env_episode[new] = self.num_episodes + np.arange(int(new.sum()))
        self.num_episodes += int(new.sum())
        self.next[self.last[~new]] = rows[~new]
        self.frames[rows], self.tokens[rows] = frames, tokens
        self.action[rows], self.reward[rows] = actions, rewards
        self.terminal[rows], self.episode[rows] = terminal, self.env_episode
        self._n += n
        self.last = np.where(ended, -1, rows)
        self.finished.extend(self.env_episode[ended].tolist())

    # ---- the store

    def store_order(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows in store order (episodes contiguous, by id, steps in time order), episode starts and lengths."""
        ep = self.episode[:self._n]
        order = np.lexsort((np.arange(self._n), ep))
        _, length = np.unique(ep[order], return_counts=True)
        start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
        return order, start, length.astype(np.int64)

    def save(self, root: Path, tokenizer_sha256: str, attrs: dict[str, Any] | None = None,
             tokenizer_config: dict[str, Any] | None = None) -> Path:
        """Write the replay as ``root/<Game>.zarr`` with ``obs_tokens`` (attributes as ``jowa tokenize`` writes:
        ``tokenizer_sha256``, ``tokenizer_config``); the previous store stays readable until the new one is
        complete (``root/.<Game>.zarr.old`` in between; ``load`` finds either). ``attrs``: provenance."""
        if self._n == 0:
            raise ValueError("the replay is empty")
        root.mkdir(parents=True, exist_ok=True)
        final = store_path(root, self.info.name)
        building = root / f".{final.name}.build"
        old = root / f".{final.name}.old"
        order, start, length = self.store_order()
        shutil.rmtree(building, ignore_errors=True)
        write_store(building, self.info.name, self.frames[order], self.action[order], self.reward[order],
                    self.terminal[order], start, length,
                    attrs={"provenance": {"format": "online", **(attrs or {})}})
        zarr.create_array(store=str(building / OBS_TOKENS), data=self.tokens[order],
                          chunks=(max(1, min(self._n, 65536)), TOKENS_PER_OBS),
                          compressors=ZstdCodec(level=3, checksum=True), zarr_format=3,
                          attributes={"tokenizer_sha256": tokenizer_sha256, "num_frames": self._n,
                                      "tokenizer_config": tokenizer_config or {}})
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(building, final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    @classmethod
    def load(cls, root: Path, game: str, num_envs: int, tokenizer_sha256: str) -> ReplayBuffer | None:
        """The replay written by ``save`` under ``root`` (None when there is none). Its running episodes were
        stored cut: they are finished here, and the environments start new ones."""
        final = store_path(root, _games.get(game).name)
        path = final if final.exists() else root / f".{final.name}.old"
        if not path.exists():
            return None
        st = open_store(path)
        sha = (dict(zarr.open_array(str(path / OBS_TOKENS), mode="r").attrs)).get("tokenizer_sha256")
        if sha != tokenizer_sha256:
            raise ValueError(f"{path} holds tokens of another tokenizer ({str(sha)[:12]}...)")
        buf = cls(game, num_envs, capacity=max(st.num_steps, 1))
        a = _store_arrays(st)
        n = st.num_steps
        buf.frames[:n] = st.frames.read_range(0, n)
        for k in ("tokens", "action", "reward", "terminal", "next"):
            getattr(buf, k)[:n] = a[k]
        buf.episode[:n] = np.repeat(np.arange(st.num_episodes), st.episode_length)
        buf._n, buf.num_episodes = n, st.num_episodes
        buf.finished = list(range(st.num_episodes))
        return buf
