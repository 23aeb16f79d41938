"""Segments, balanced batches and the loader, checked exactly against small synthetic stores."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import zarr

from jowa_core.data.segments import (
    BalancedBatchSampler,
    SegmentDataset,
    SegmentIndex,
    benchmark_loader,
    make_loader,
    open_stores,
)
from jowa_core.data.store import StoreError, open_store, write_store

# Episode lengths per game: very different sizes; lengths 1, < stride, == stride, == L, multiples, odd.
# The last episode of every game is truncated (its last step is not terminal).
EPISODES = {
    "Pong": [1, 8, 13, 4, 30, 9],
    "Breakout": [int(x) for x in np.random.default_rng(7).integers(20, 90, size=24)],
    "Qbert": [3, 9],
}


def _game_arrays(game_no: int, lengths: list[int], action_set: list[int]) -> dict[str, np.ndarray]:
    """Frames encode (game, episode, step); everything else is derived from the row too."""
    lengths_a = np.array(lengths, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths_a)[:-1]]).astype(np.int64)
    n = int(lengths_a.sum())
    episode = np.repeat(np.arange(len(lengths)), lengths_a)
    step = np.arange(n) - starts[episode]
    obs = np.empty((n, 84, 84), np.uint8)
    obs[:] = ((np.arange(n) * 37 + 11) % 200 + 50).astype(np.uint8)[:, None, None]  # never 0
    obs[:, 0, 0] = game_no + 1
    obs[:, 0, 1] = episode + 1
    obs[:, 0, 2] = step + 1
    rng = np.random.default_rng(game_no)
    action = np.array(action_set, np.int16)[rng.integers(0, len(action_set), n)]
    action[action == 0] = action_set[-1]  # never 0, so padding is distinguishable
    reward = (1 + step + 0.25 * episode).astype(np.float32)
    terminal = np.zeros(n, bool)
    terminal[(starts + lengths_a - 1)[:-1]] = True  # the last episode is truncated
    return dict(
        obs=obs,
        action=action,
        reward=reward,
        terminal=terminal,
        episode_start=starts,
        episode_length=lengths_a,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from jowa_core import games

    root = tmp_path_factory.mktemp("stores")
    arrays = {}
    for game_no, (game, lengths) in enumerate(EPISODES.items()):
        arrs = _game_arrays(game_no, lengths, list(games.get(game).minimal_actions))
        write_store(root / f"{game}.zarr", game, **arrs)
        arrays[game] = arrs
    return root, arrays


def reference_segments(lengths_per_store, seq_len, stride):
    out = []
    for s, lengths in enumerate(lengths_per_store):
        start = 0
        for t in lengths:
            for off in range(0, t, stride):
                out.append((s, start + off, min(seq_len, t - off)))
            start += t
    return out


# --------------------------------------------------------------------------------------------------------
# Index


@pytest.mark.parametrize(("seq_len", "stride"), [(8, 4), (8, 1), (5, 3), (4, 8), (1, 1)])
def test_index_matches_reference(data, seq_len, stride):
    root, _ = data
    stores = open_stores(root)
    index = SegmentIndex.from_stores(stores, seq_len=seq_len, stride=stride)
    ref = reference_segments([st.episode_length.tolist() for st in stores], seq_len, stride)
    got = list(zip(index.store.tolist(), index.start.tolist(), index.length.tolist(), strict=True))
    assert got == ref
    assert index.store_offsets.tolist() == [0, *np.cumsum(np.bincount(index.store, minlength=3)).tolist()]
    assert [index.group_names[g] for g in index.store_group] == [st.game for st in stores]


def test_index_empty_episodes_and_stores():
    index = SegmentIndex.from_episodes(
        [(np.array([0, 0, 5]), np.array([0, 5, 0])), (np.zeros(0, np.int64), np.zeros(0, np.int64))],
        seq_len=8,
        stride=4,
    )
    assert list(zip(index.store.tolist(), index.start.tolist(), index.length.tolist(), strict=True)) == [
        (0, 0, 5),
        (0, 4, 1),
    ]
    assert index.store_offsets.tolist() == [0, 2, 2]


def test_index_is_fast_for_10m_steps():
    lengths = np.random.default_rng(0).integers(1, 4000, size=5000)
    lengths = lengths * (10_000_000 // int(lengths.sum()) + 1)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    assert lengths.sum() >= 10_000_000
    t0 = time.perf_counter()
    index = SegmentIndex.from_episodes([(starts, lengths)], seq_len=8, stride=4)
    elapsed = time.perf_counter() - t0
    assert len(index) == int((-(-lengths // 4)).sum())
    assert elapsed < 1.0, elapsed


# --------------------------------------------------------------------------------------------------------
# Dataset contents


@pytest.mark.parametrize("stride", [4, 1])
def test_every_segment_exact(data, stride):
    root, arrays = data
    stores = open_stores(root)
    L = 8
    index = SegmentIndex.from_stores(stores, seq_len=L, stride=stride)
    ds = SegmentDataset(stores, index)
    ids = list(range(len(index)))
    batch = {k: [] for k in ("obs", "action", "reward", "terminal", "valid", "game_id", "action_mask")}
    for i in range(0, len(ids), 97):
        b = ds.__getitems__(ids[i : i + 97])
        for k in batch:
            batch[k].append(b[k])
    b = {k: torch.cat(v) for k, v in batch.items()}
    assert b["obs"].shape == (len(ids), L, 84, 84) and b["obs"].dtype == torch.uint8
    assert b["action"].dtype == torch.int64 and b["reward"].dtype == torch.float32
    assert b["terminal"].dtype == torch.bool and b["valid"].dtype == torch.bool
    assert b["game_id"].shape == (len(ids),) and b["game_id"].dtype == torch.int64
    assert b["action_mask"].shape == (len(ids), 18) and b["action_mask"].dtype == torch.bool
    from jowa_core import games

    ref = reference_segments([st.episode_length.tolist() for st in stores], L, stride)
    for i, (s, start, n) in enumerate(ref):
        game = stores[s].game
        a = arrays[game]
        sl = slice(start, start + n)
        assert torch.equal(b["valid"][i], torch.arange(L) < n)
        np.testing.assert_array_equal(b["obs"][i, :n].numpy(), a["obs"][sl])
        np.testing.assert_array_equal(b["action"][i, :n].numpy(), a["action"][sl])
        np.testing.assert_array_equal(b["reward"][i, :n].numpy(), a["reward"][sl])
        np.testing.assert_array_equal(b["terminal"][i, :n].numpy(), a["terminal"][sl])
        # padding
        assert not b["obs"][i, n:].any() and not b["action"][i, n:].any() and not b["reward"][i, n:].any()
        assert not b["terminal"][i, n:].any()
        # within one episode, consecutive steps (decoded from the frames themselves)
        ep = b["obs"][i, :n, 0, 1].numpy()
        stp = b["obs"][i, :n, 0, 2].numpy().astype(int)
        assert (b["obs"][i, :n, 0, 0] == list(EPISODES).index(game) + 1).all()
        assert (ep == ep[0]).all() and (np.diff(stp) == 1).all()
        e = int(ep[0]) - 1
        t_len = EPISODES[game][e]
        assert (stp[0] - 1) % stride == 0
        if n < L:  # a short segment ends exactly at the episode's last step
            assert stp[-1] == t_len
        # terminal only on the episode's last step, never on the truncated last episode
        is_last = stp == t_len
        expected_term = is_last & (e != len(EPISODES[game]) - 1)
        np.testing.assert_array_equal(b["terminal"][i, :n].numpy(), expected_term)
        info = games.get(game)
        assert int(b["game_id"][i]) == info.task_id == stores[s].attrs["task_id"]
        assert b["action_mask"][i].nonzero().flatten().tolist() == sorted(info.minimal_actions)


def test_getitem_matches_getitems(data):
    root, _ = data
    stores = open_stores(root)
    index = SegmentIndex.from_stores(stores)
    ds = SegmentDataset(stores, index)
    ids = [0, 5, len(index) - 1, 17]
    batch = ds.__getitems__(ids)
    for j, i in enumerate(ids):
        one = ds[i]
        assert one.keys() == batch.keys()
        for k in one:
            assert torch.equal(one[k], batch[k][j]), k


def test_tokens_mode(data, tmp_path):
    root, arrays = data
    import shutil

    for game in ("Pong", "Qbert"):
        shutil.copytree(root / f"{game}.zarr", tmp_path / f"{game}.zarr")
        n = len(arrays[game]["action"])
        tokens = (np.arange(n * 36).reshape(n, 36) % 1000 + 1).astype(np.int16)
        g = zarr.open_group(str(tmp_path / f"{game}.zarr"), mode="r+", zarr_format=3)
        g.create_array("obs_tokens", shape=(n, 36), dtype="int16", chunks=(1024, 36))
        g["obs_tokens"][:] = tokens
        arrays[game + "_tokens"] = tokens
    stores = open_stores(tmp_path)
    index = SegmentIndex.from_stores(stores)
    ds = SegmentDataset(stores, index, observations="tokens")
    b = ds.__getitems__(list(range(len(index))))
    assert "obs" not in b and b["obs_tokens"].shape == (len(index), 8, 36) and b["obs_tokens"].dtype == torch.int64
    for i in range(len(index)):
        s, start, n = int(index.store[i]), int(index.start[i]), int(index.length[i])
        tok = arrays[stores[s].game + "_tokens"]
        np.testing.assert_array_equal(b["obs_tokens"][i, :n].numpy(), tok[start : start + n])
        assert not b["obs_tokens"][i, n:].any()
    # same non-observation fields as frames mode
    f = SegmentDataset(stores, index).__getitems__(list(range(len(index))))
    for k in ("action", "reward", "terminal", "valid", "game_id", "action_mask"):
        assert torch.equal(f[k], b[k])
    with pytest.raises(StoreError, match="obs_tokens"):
        SegmentDataset(open_stores(root), SegmentIndex.from_stores(open_stores(root)), observations="tokens")


# --------------------------------------------------------------------------------------------------------
# Sampler


def _game_of(index, ids):
    return index.store_group[index.store[np.asarray(ids)]]


@pytest.mark.parametrize("batch_size", [2, 7, 9, 64])
def test_batches_are_balanced(data, batch_size):
    root, _ = data
    index = SegmentIndex.from_stores(open_stores(root))
    sizes = np.bincount(index.store_group[index.store], minlength=3)
    assert sizes.max() > 20 * sizes.min()  # very different sizes
    sampler = BalancedBatchSampler(index, batch_size, seed=3, epoch_length=60)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 60
    totals = np.zeros(3, np.int64)
    draws = {g: [] for g in range(3)}
    for j, batch in enumerate(batches):
        assert len(batch) == batch_size
        g = _game_of(index, batch)
        counts = np.bincount(g, minlength=3)
        assert counts.max() - counts.min() <= 1, counts
        totals += counts
        if (j + 1) % 3 == 0:  # every game gets the same share over G consecutive batches
            assert totals.max() == totals.min()
        for gg in range(3):
            draws[gg].extend(np.asarray(batch)[g == gg].tolist())
    # each game's draws are successive permutations of its segments (small games cycle)
    for gg in range(3):
        d, n = draws[gg], int(sizes[gg])
        for c in range(len(d) // n):
            assert sorted(d[c * n : (c + 1) * n]) == sorted(np.flatnonzero(index.store_group[index.store] == gg))
        rest = d[(len(d) // n) * n :]
        assert len(set(rest)) == len(rest)


def test_sampler_determinism_and_epochs(data):
    root, _ = data
    index = SegmentIndex.from_stores(open_stores(root))

    def run(seed, epoch):
        s = BalancedBatchSampler(index, 16, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    e0 = run(0, 0)
    assert e0 == run(0, 0)
    assert e0 != run(0, 1) and run(0, 1) == run(0, 1)
    assert e0 != run(1, 0)
    s = BalancedBatchSampler(index, 16, seed=0)
    assert list(s) == e0
    s.set_epoch(1)
    assert list(s) == run(0, 1)
    s.set_epoch(0)
    assert list(s) == e0


def test_epoch_length_policies(data):
    root, _ = data
    index = SegmentIndex.from_stores(open_stores(root))
    total = BalancedBatchSampler(index, 10)
    assert len(total) == -(-len(index) // 10)
    game = index.store_group[index.store]
    biggest = np.flatnonzero(game == np.argmax(np.bincount(game)))
    full = BalancedBatchSampler(index, 10, epoch_length="max")
    seen = {i for b in full for i in b}
    assert set(biggest.tolist()) <= seen
    shorter = BalancedBatchSampler(index, 10, epoch_length=len(full) - 1)
    assert not set(biggest.tolist()) <= {i for b in shorter for i in b}
    assert len(BalancedBatchSampler(index, 10, epoch_length=5)) == 5
    with pytest.raises(ValueError):
        BalancedBatchSampler(index, 10, epoch_length="forever")


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_shard_the_single_process_stream(data, world_size):
    root, _ = data
    index = SegmentIndex.from_stores(open_stores(root))
    ranks = [list(BalancedBatchSampler(index, 12, seed=5, rank=r, world_size=world_size)) for r in range(world_size)]
    assert len({len(r) for r in ranks}) == 1
    per_rank = len(ranks[0])
    global_batches = -(-len(index) // 12)
    assert per_rank == -(-global_batches // world_size)
    single = list(BalancedBatchSampler(index, 12, seed=5, epoch_length=per_rank * world_size))
    interleaved = [ranks[j % world_size][j // world_size] for j in range(per_rank * world_size)]
    assert interleaved == single


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_are_disjoint(world_size):
    # 3 games x 36 segments, batch 6: 18 global batches draw every segment exactly once
    eps = [(np.arange(0, 36 * 4, 4), np.full(36, 4)) for _ in range(3)]
    index = SegmentIndex.from_episodes(eps, seq_len=8, stride=4)
    assert len(index) == 108
    ids = []
    lens = set()
    for r in range(world_size):
        sampler = BalancedBatchSampler(index, 6, seed=1, rank=r, world_size=world_size)
        sampler.set_epoch(2)
        batches = list(sampler)
        lens.add(len(batches))
        ids.extend(i for b in batches for i in b)
    assert lens == {18 // world_size}
    assert sorted(ids) == list(range(108))


def test_sampler_groups_stores_of_one_game(data):
    root, _ = data
    stores = open_stores(root)
    pong = [s for s in stores if s.game == "Pong"]
    index = SegmentIndex.from_stores([*stores, *pong])  # Pong twice: one game, two stores
    assert index.store_group.tolist()[-1] == index.store_group.tolist()[stores.index(pong[0])]
    sampler = BalancedBatchSampler(index, 9, epoch_length=20)
    assert sampler.num_games == 3
    for batch in sampler:
        counts = np.bincount(_game_of(index, batch), minlength=3)
        assert counts.tolist() == [3, 3, 3]


# --------------------------------------------------------------------------------------------------------
# Loader


def _collect(loader, epoch):
    loader.batch_sampler.set_epoch(epoch)
    return list(loader)


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_loader_workers_match_single_process(data, context):
    root, _ = data
    kw = dict(batch_size=10, seed=4, epoch_length=6)
    ref = make_loader(root, num_workers=0, **kw)
    par = make_loader(root, num_workers=2, multiprocessing_context=context, **kw)
    for epoch in (0, 1):
        _assert_same(_collect(ref, epoch), _collect(par, epoch))
    b = _collect(ref, 0)
    assert b[0]["obs"].shape == (10, 8, 84, 84)
    assert not torch.equal(b[0]["obs"], _collect(ref, 1)[0]["obs"])


def test_make_loader_games_and_ranks(data):
    root, _ = data
    loader = make_loader(root, batch_size=4, games=["Qbert", "Pong"], epoch_length=4)
    for batch in loader:
        ids = set(batch["game_id"].tolist())
        assert ids == {open_store(root / f"{g}.zarr").attrs["task_id"] for g in ("Qbert", "Pong")}
    with pytest.raises(StoreError, match="Seaquest"):
        make_loader(root, batch_size=4, games=["Seaquest"])
    r0 = make_loader(root, batch_size=4, rank=0, world_size=2, stride=1)
    r1 = make_loader(root, batch_size=4, rank=1, world_size=2, stride=1)
    assert len(r0) == len(r1)
    assert len(r0.dataset.index) == sum(sum(v) for v in EPISODES.values())


def test_benchmark_loader(data):
    root, _ = data
    result = benchmark_loader(root, batch_size=32, seconds=0.3)
    assert result["segments_per_s"] > 0 and result["frames_mb_per_s"] > 0
    assert result["segments"] == result["batches"] * 32
    assert result["games"] == sorted(EPISODES)


def test_padding_is_written_not_assumed(data, monkeypatch):
    # frames of padded positions must be zeroed explicitly: the output buffer may be reused memory
    import jowa_core.data.segments as seg

    monkeypatch.setattr(seg, "_new_tensor", lambda shape, dtype: torch.full(shape, 255, dtype=dtype))
    root, _ = data
    stores = open_stores(root)
    index = SegmentIndex.from_stores(stores)
    short = np.flatnonzero(index.length < 8)
    b = SegmentDataset(stores, index).__getitems__(short.tolist())
    assert (~b["valid"]).any() and not b["obs"][~b["valid"]].any()
