"""Score normalisation and aggregate metrics (pure numpy).

Conventions (see ``docs/report.md``):

* HNS = (s - min(random, human)) / |human - random|; DNS likewise with the DQN score. Reference scores come from
  the game registry (:mod:`jowa_core.games`), which records where each one comes from.
* Point estimates are computed over **per-game mean scores** (one number per game), as in the paper's Table 2
  and the official ``results/results.py``: mean, median, IQM (``scipy.stats.trim_mean(x, 0.25)``: the mean of
  the middle 50%, cutting ``int(0.25 n)`` values at each end) and the number of games with a normalised score
  above 1 (super-human for HNS, above DQN for DNS).
* Confidence intervals come from a stratified bootstrap (rliable-style): the runs (episodes) of every game are
  resampled with replacement within that game, the per-game means recomputed and the statistic taken over
  games. When every game has a single score, the games themselves are resampled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from jowa_core import games as _games

__all__ = [
    "STATS",
    "aggregate",
    "iqm",
    "normalized",
    "performance_profile",
    "reference",
    "stratified_bootstrap_ci",
    "superhuman_count",
]

KINDS = ("human", "dqn")


def reference(game: str, kind: str = "human") -> tuple[float, float]:
    """(random, reference) scores of ``game`` for ``kind`` 'human' or 'dqn', from the game registry."""
    if kind not in KINDS:
        raise ValueError(f"normalisation must be one of {KINDS}, got {kind!r}")
    info = _games.get(game)
    ref = info.human if kind == "human" else info.dqn
    if info.random is None or ref is None:
        raise ValueError(f"{info.name}: no random/{kind} reference score in the game registry")
    if ref.value == info.random.value:
        raise ValueError(f"{info.name}: random and {kind} reference scores are equal")
    return info.random.value, ref.value


def normalized(score: float | np.ndarray, game: str, kind: str = "human") -> float | np.ndarray:
    """Normalised score(s): (s - min(random, ref)) / |ref - random|, ref = human or DQN score of ``game``."""
    rand, ref = reference(game, kind)
    out = (np.asarray(score, dtype=np.float64) - min(rand, ref)) / abs(ref - rand)
    return float(out) if out.ndim == 0 else out


# ---------------------------------------------------------------------------------------------------------------
# Statistics over games (vectorised along the last axis)
# ---------------------------------------------------------------------------------------------------------------
def iqm(x: np.ndarray | Sequence[float], axis: int = -1) -> float | np.ndarray:
    """Interquartile mean: ``scipy.stats.trim_mean(x, 0.25)``, cutting ``int(0.25 n)`` values at each end."""
    arr = np.sort(np.asarray(x, dtype=np.float64), axis=axis)
    n = arr.shape[axis]
    if n == 0:
        raise ValueError("iqm of an empty array")
    cut = int(0.25 * n)
    out = np.take(arr, np.arange(cut, n - cut), axis=axis).mean(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def superhuman_count(norm_scores: np.ndarray | Sequence[float], axis: int = -1) -> float | np.ndarray:
    """Number of games whose normalised score is above 1 (score above the human, or DQN, reference)."""
    out = (np.asarray(norm_scores, dtype=np.float64) > 1.0).sum(axis=axis)
    return float(out) if np.ndim(out) == 0 else out.astype(np.float64)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _median(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(x, axis=axis)


STATS: dict[str, Callable[..., float | np.ndarray]] = {
    "mean": _mean,
    "median": _median,
    "iqm": iqm,
    "superhuman": superhuman_count,
}


def _per_game_means(scores: np.ndarray | Sequence[np.ndarray | Sequence[float] | float]) -> np.ndarray:
    """One number per game: a 1-D array as is, the column means of a 2-D (runs x games) matrix, or the mean of
    each entry of a list of per-game arrays (ragged allowed)."""
    if isinstance(scores, np.ndarray):
        if scores.ndim == 1:
            return scores.astype(np.float64)
        if scores.ndim == 2:
            return scores.astype(np.float64).mean(axis=0)
        raise ValueError(f"scores must be 1-D (games) or 2-D (runs x games), got shape {scores.shape}")
    out = []
    for s in scores:
        a = np.asarray(s, dtype=np.float64).ravel()
        if a.size == 0:
            raise ValueError("a game has no scores")
        out.append(a.mean())
    return np.asarray(out, dtype=np.float64)


def aggregate(scores: np.ndarray | Sequence) -> dict[str, float]:
    """Mean, median, IQM and super-human count over games of (normalised) scores.

    ``scores``: per-game scores (1-D), a (runs x games) matrix or a list of per-game run arrays; games are
    first reduced to their mean score.
    """
    per_game = _per_game_means(scores)
    if per_game.size == 0:
        raise ValueError("no games to aggregate")
    return {name: float(fn(per_game)) for name, fn in STATS.items()}


def _stat_fn(stat: str | Callable[..., float | np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    if isinstance(stat, str):
        if stat not in STATS:
            raise ValueError(f"unknown statistic {stat!r}; choose from {sorted(STATS)}")
        fn = STATS[stat]
        return lambda m: np.asarray(fn(m, axis=-1), dtype=np.float64)
    return lambda m: np.apply_along_axis(lambda row: float(stat(row)), -1, m)


def stratified_bootstrap_ci(
    per_game_runs: Sequence[np.ndarray | Sequence[float] | float],
    stat: str | Callable[..., float | np.ndarray] = "iqm",
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """(point, low, high): ``stat`` over per-game means, with a stratified-bootstrap percentile interval.

    Each bootstrap replicate resamples, with replacement, the runs of every game within that game (rliable's
    stratified bootstrap) and applies ``stat`` to the resampled per-game means. If every game has a single
    score, the games are resampled instead. ``stat`` is a name from ``STATS`` or a function of a 1-D array.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    runs = [np.asarray(r, dtype=np.float64).ravel() for r in per_game_runs]
    if not runs or any(r.size == 0 for r in runs):
        raise ValueError("every game needs at least one score")
    fn = _stat_fn(stat)
    means = np.array([r.mean() for r in runs])
    point = float(fn(means[None, :])[0])
    rng = np.random.default_rng(seed)
    if all(r.size == 1 for r in runs):
        idx = rng.integers(0, means.size, size=(reps, means.size))
        boot = means[idx]
    else:
        boot = np.empty((reps, len(runs)))
        for g, r in enumerate(runs):
            boot[:, g] = r[rng.integers(0, r.size, size=(reps, r.size))].mean(axis=1) if r.size > 1 else r[0]
    values = fn(boot)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
    return point, float(low), float(high)


def performance_profile(
    norm_scores: np.ndarray | Sequence[np.ndarray | Sequence[float] | float], taus: np.ndarray | Sequence[float]
) -> np.ndarray:
    """Fraction of runs with normalised score > tau, averaged over games (rliable's score distribution).

    ``norm_scores``: per-game scores (1-D), a (runs x games) matrix or a list of per-game run arrays.
    Returns an array with one value per tau.
    """
    if isinstance(norm_scores, np.ndarray) and norm_scores.ndim == 2:
        runs = [norm_scores[:, g] for g in range(norm_scores.shape[1])]
    elif isinstance(norm_scores, np.ndarray) and norm_scores.ndim == 1:
        runs = [norm_scores[g : g + 1] for g in range(norm_scores.size)]
    else:
        runs = [np.asarray(r, dtype=np.float64).ravel() for r in norm_scores]
    if not runs:
        raise ValueError("no games")
    t = np.asarray(taus, dtype=np.float64)
    fractions = np.stack([(np.asarray(r)[None, :] > t.reshape(-1, 1)).mean(axis=1) for r in runs])
    return fractions.mean(axis=0).reshape(t.shape)
