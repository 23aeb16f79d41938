"""How decisive is the emulator-lookahead policy (``MinAtarEnv.lookahead_action``)? For each MinAtar game, the
share of states where one action has the highest lookahead value ("unique") and where every action ties ("all
tied"; the policy then plays uniformly at random), on the states of a ``lookahead:0.5`` run, MinAtar's sticky
actions 0.1. This is why the MinAtar suite's data mixes low-epsilon runs (docs/results.md §2).

    python benchmarks/minatar_lookahead_ties.py [--steps 400] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from jowa_core import games
from jowa_core.envs.minatar import MinAtarEnv


def tie_shares(game: str, steps: int, seed: int, eps: float = 0.5) -> tuple[float, float]:
    """(unique, all tied) shares over ``steps`` states of a ``lookahead:eps`` run of ``game``."""
    env = MinAtarEnv(game, seed=seed)
    env.reset()
    rng = np.random.default_rng(seed)
    unique = tied = 0
    for _ in range(steps):
        values = env.lookahead_values(rng)
        best = np.flatnonzero(values == values.max())
        unique += len(best) == 1
        tied += len(best) == env.num_actions
        action = int(rng.integers(env.num_actions)) if rng.random() < eps else int(rng.choice(best))
        _, _, game_over, truncated = env.step(action)
        if game_over or truncated:
            env.reset()
    return unique / steps, tied / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="states per game")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| game | actions | unique best action | all actions tied |")
    print("|---|---|---|---|")
    for name in games.MINATAR_GAMES:
        unique, tied = tie_shares(name, args.steps, args.seed)
        print(f"| {name} | {MinAtarEnv(name).num_actions} | {unique:.2f} | {tied:.2f} |", flush=True)


if __name__ == "__main__":
    main()
