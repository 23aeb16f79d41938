"""Measure the MinAtar reference scores of the game registry (docs/games.md): the uniform random policy and the
emulator-lookahead policy, MinAtar's sticky actions 0.1, whole episodes (no step cap).

    python benchmarks/minatar_references.py [--random 500] [--lookahead 10] [--seed 0]

Prints a Markdown table (mean, standard error, episodes); the means, rounded to 2 digits, are what
``jowa_core/games.py`` holds in ``MINATAR_GAMES_TABLE``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from jowa_core import games
from jowa_core.envs.minatar import policy_returns

FREEWAY_RANDOM_EPISODES = 100  # Freeway's episodes are 2,500 steps long


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=500, help="random-policy episodes per game")
    parser.add_argument("--lookahead", type=int, default=10, help="lookahead-policy episodes per game")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| game | random (mean ± s.e., episodes) | lookahead (mean ± s.e., episodes) | wall |")
    print("|---|---|---|---|")
    for name in games.MINATAR_GAMES:
        t0 = time.time()
        n_random = min(args.random, FREEWAY_RANDOM_EPISODES) if name == "MinAtarFreeway" else args.random
        cells = []
        for policy, n in (("random", n_random), ("lookahead", args.lookahead)):
            x = np.asarray(policy_returns(name, policy, n, seed=args.seed))
            cells.append(f"{x.mean():.2f} ± {x.std(ddof=1) / np.sqrt(len(x)):.2f} ({len(x)})")
        print(f"| {name} | {cells[0]} | {cells[1]} | {time.time() - t0:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
