"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Many tiny forwards: one intra-op thread avoids OpenMP stragglers on a shared 2-core machine (restored
    afterwards). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def quantise(frames, vocab: int):
    """A fixed 'tokenizer' for tests: 6x6 block means in ``vocab`` levels -> (N, 36) int16."""
    import numpy as np

    blocks = frames.astype(np.float32).reshape(-1, 6, 14, 6, 14).mean((2, 4)).reshape(-1, 36)
    return np.minimum(blocks / 256 * vocab * 4, vocab - 1).astype(np.int16)


def make_token_stores(root, games: list[str], num_steps: int, capacity: int, vocab: int, workers: int = 1):
    """Emulator data for ``games`` -> prepare-data stores under ``root/data`` with quantised ``obs_tokens``."""
    import zarr

    from jowa_core.data.collect import collect
    from jowa_core.data.convert import PrepareOptions, prepare_data
    from jowa_core.data.store import open_store

    collect(games, [1], root / "raw", num_steps=num_steps, capacity=capacity, seed=0, workers=workers)
    prepare_data(PrepareOptions(source=str(root / "raw"), out=str(root / "data"), games=games, workers=1))
    for g in games:
        path = root / "data" / f"{g}.zarr"
        s = open_store(path)
        tok = quantise(s.frames.read_range(0, s.num_steps), vocab)
        arr = zarr.open_group(str(path), mode="r+", zarr_format=3).create_array(
            "obs_tokens", shape=tok.shape, dtype="int16", chunks=(4096, 36))
        arr[:] = tok
        arr.attrs["tokenizer_config"] = {"vocab_size": vocab}
    return root / "data"
