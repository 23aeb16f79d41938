"""Does a world-action model's Q head rank actions, or only value states? For each game of a data folder, on data
segments: how often the greedy action is the game's most frequent one, the gap between the best and second-best
legal action's Q-hat, and the spread of max Q-hat over states (docs/results.md §2, claim 1).

    python benchmarks/q_action_gaps.py RUN_OR_CHECKPOINT DATA_FOLDER [--batches 40] [--seed 1]
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
import torch

from jowa_core import games
from jowa_core.data.segments import make_loader
from jowa_core.models.world_action import load_world_action, segment_tokens


def action_gaps(run: str, data: str, batches: int, seed: int) -> dict[str, dict[str, float]]:
    """Per game: 'states', 'constant' (share of the most frequent greedy action), 'distinct' (greedy actions seen),
    'gap' and 'gap_p90' (best minus second-best legal Q-hat), 'q_max_mean' and 'q_max_sd'."""
    model, _ = load_world_action(run)
    loader = make_loader(data, 64, seq_len=8, stride=1, seed=seed, num_workers=0, observations="tokens")
    argmax, gap, q_max = (collections.defaultdict(list) for _ in range(3))
    batch_iter = iter(loader)
    with torch.no_grad():
        for _ in range(batches):
            b = next(batch_iter)
            out = model(segment_tokens(b["obs_tokens"], b["action"]), b["game_id"], heads=("q",))
            q = model.q_values(out.q_logits).masked_fill(~b["action_mask"][:, None], -np.inf)  # (B, L, A)
            top2 = q.topk(2, dim=-1).values  # (B, L, 2)
            for i, task in enumerate(b["game_id"].tolist()):
                v = b["valid"][i]
                argmax[task] += q[i].argmax(-1)[v].tolist()
                gap[task] += (top2[i, :, 0] - top2[i, :, 1])[v].tolist()
                q_max[task] += top2[i, :, 0][v].tolist()
    names = {info.task_id: name for name, info in games.REGISTRY.items()}
    result = {}
    for task in sorted(argmax):
        counts = collections.Counter(argmax[task])
        result[names[task]] = {
            "states": len(argmax[task]), "constant": counts.most_common(1)[0][1] / len(argmax[task]),
            "distinct": len(counts), "gap": float(np.mean(gap[task])), "gap_p90": float(np.quantile(gap[task], 0.9)),
            "q_max_mean": float(np.mean(q_max[task])), "q_max_sd": float(np.std(q_max[task]))}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a world-action checkpoint or run directory")
    parser.add_argument("data", help="folder of <Game>.zarr stores with obs_tokens (jowa tokenize)")
    parser.add_argument("--batches", type=int, default=40, help="batches of 64 segments of 8 steps")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print("| game | states | top greedy action share | greedy actions seen | best − second Q̂ (p90) | max Q̂ mean (sd) |")
    print("|---|---|---|---|---|---|")
    for name, r in action_gaps(args.run, args.data, args.batches, args.seed).items():
        print(f"| {name} | {r['states']} | {r['constant']:.2f} | {r['distinct']} | {r['gap']:.4f} ({r['gap_p90']:.4f}) "
              f"| {r['q_max_mean']:.3f} ({r['q_max_sd']:.3f}) |")


if __name__ == "__main__":
    main()
