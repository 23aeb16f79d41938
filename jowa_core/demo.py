"""`make demo` / `jowa demo`: every stage that exists, end to end, on an embedded default, no downloads.

Stages so far: emulator data in DQN-Replay format (collect) → Zarr stores (prepare-data) → game-balanced
training segments (segment loader). Later stages (tokenizer, pretraining, evaluation with planning,
report) join here as they land. Sized to finish in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from jowa_core.progress import Reporter, make_reporter

DEMO_GAMES = ("Pong", "SpaceInvaders")


def run_demo(out: str | Path, steps: int = 12_000, capacity: int = 4_000, reporter: Reporter | None = None,
             seed: int = 0) -> dict[str, Any]:
    from jowa_core.data.collect import collect
    from jowa_core.data.convert import PrepareOptions, prepare_data
    from jowa_core.data.segments import make_loader
    from jowa_core.data.store import open_store

    reporter = reporter or make_reporter()
    out = Path(out)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    reporter.log(f"[1/3] collect: random policy, {steps} steps per game, DQN-Replay logs (capacity {capacity})")
    collected = collect(list(DEMO_GAMES), [1], out / "raw", num_steps=steps, capacity=capacity, seed=seed,
                        workers=2, reporter=reporter)
    timings["collect_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    reporter.log("[2/3] prepare-data: logs → Zarr stores")
    stores = prepare_data(PrepareOptions(source=str(out / "raw"), out=str(out / "data"), games=list(DEMO_GAMES),
                                         seed=seed, workers=2), reporter)
    timings["prepare_data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    reporter.log("[3/3] segment loader: game-balanced batches of 8-step segments")
    loader = make_loader(out / "data", batch_size=64, seed=seed)
    counts: dict[int, int] = {}
    for n_batches, batch in enumerate(loader, start=1):
        ids, c = np.unique(batch["game_id"].numpy(), return_counts=True)
        for i, k in zip(ids.tolist(), c.tolist(), strict=True):
            counts[i] = counts.get(i, 0) + k
        if n_batches == 20:
            break
    timings["loader_s"] = time.perf_counter() - t0

    per_game = []
    for name in DEMO_GAMES:
        s = open_store(out / "data" / f"{name}.zarr")
        returns = s.episode_returns()
        per_game.append({"game": name, "steps": s.num_steps, "episodes": s.num_episodes,
                         "mean_clipped_return": float(returns.mean()) if returns.size else None,
                         "segments_in_20_batches": counts.get(int(s.attrs["task_id"]), 0)})
    summary = {"games": per_game, "timings": timings, "collect": collected, "stores": stores}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
