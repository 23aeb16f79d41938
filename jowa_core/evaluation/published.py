"""Published results: the JOWA paper's Table 2, transcribed as printed.

Source: Cheng et al., "Scaling Offline Model-Based RL via Jointly-Optimized World-Action Model Pretraining"
(JOWA), ICLR 2025, arXiv v1, **Table 2** ("Returns on the 15 Atari games for best performing sizes of
multi-game models trained with the 10% subsampled dataset"). Per-game raw returns of MTBC-120M, MGDT-200M,
EDT-200M, Scaled-QL-80M and JOWA-40M/70M/150M (JOWA with beam-search planning), and the table's aggregate rows
(#Superhuman, Median HNS, IQM HNS) exactly as printed. The Random/Human columns of the same table are in the
game registry (:mod:`jowa_core.games`, source ``jowa-t2``; note Carnival random = 0 there).

These are published numbers, not results of this code; reports label them "(published)". Which printed
aggregates are consistent with the printed per-game numbers is worked out in ``docs/report.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["INCONSISTENT", "PUBLISHED", "SOURCE", "TABLE2_GAMES", "PublishedMethod", "get_published"]

SOURCE = "JOWA paper (Cheng et al., ICLR 2025), arXiv v1, Table 2"

TABLE2_GAMES: tuple[str, ...] = (
    "Assault", "Atlantis", "BeamRider", "Berzerk", "Carnival", "Centipede", "ChopperCommand", "DemonAttack",
    "NameThisGame", "Phoenix", "Seaquest", "SpaceInvaders", "StarGunner", "TimePilot", "Zaxxon",
)  # fmt: skip


@dataclass(frozen=True)
class PublishedMethod:
    """One column of Table 2: per-game returns and the printed aggregates."""

    name: str
    family: str
    params: str
    scores: dict[str, float]
    superhuman: int
    median_hns: float
    iqm_hns: float
    preset: str | None = None  # our world-action preset for JOWA columns
    plan: bool | None = None
    source: str = SOURCE


def _col(values: tuple[float, ...]) -> dict[str, float]:
    assert len(values) == len(TABLE2_GAMES)
    return dict(zip(TABLE2_GAMES, (float(v) for v in values), strict=True))


# Columns in TABLE2_GAMES order, transcribed from the paper.
_T2: dict[str, tuple[float, ...]] = {
    "MTBC-120M": (1203.5, 37812.5, 786, 655, 5560, 4046.6, 256.3, 2611.3, 6045, 1446.9, 120, 605, 1493.8,
                  762.5, 0),
    "MGDT-200M": (1741.5, 2565750, 6011.3, 444.5, 2610, 4604, 3300.8, 6549.4, 6610.5, 5120.5, 2720, 742.5,
                  8625.5, 3866.7, 462.5),
    "EDT-200M": (1915.5, 2108166.7, 4149.8, 350, 3678.8, 3389.9, 3443.8, 3455.7, 7060, 5320, 3160.4, 513.8, 9550,
                 2812.5, 325.5),
    "SQL-80M": (2292, 49100, 7023.5, 312.5, 1940, 3650.3, 853.8, 7936.5, 6461.7, 4961.7, 650, 714.4, 4728.6,
                4072.7, 0),
    "JOWA-40M": (1578.3, 41662.5, 880.3, 395, 4685, 5669.3, 3118.8, 1233.8, 7335.6, 1608.8, 1033.1, 694.7,
                 5737.5, 3268.8, 0),
    "JOWA-70M": (1733.9, 570862.5, 2547.4, 441.9, 4070, 4475.6, 2568.8, 4584.4, 12706.9, 5065, 1490, 969.1,
                 21231.3, 3831.3, 225),
    "JOWA-150M": (2302, 2690387.5, 3498, 739, 5316, 4677, 3812.5, 3547.8, 11421, 5348, 2725, 744.7, 18150, 3669,
                  2163),
}  # fmt: skip
# (#Superhuman, Median HNS, IQM HNS) rows as printed.
_T2_AGG: dict[str, tuple[int, float, float]] = {
    "MTBC-120M": (4, 0.197, 0.329),
    "MGDT-200M": (3, 0.391, 0.498),
    "EDT-200M": (4, 0.400, 0.502),
    "SQL-80M": (3, 0.387, 0.420),
    "JOWA-40M": (3, 0.360, 0.371),
    "JOWA-70M": (4, 0.390, 0.476),
    "JOWA-150M": (6, 0.456, 0.789),
}
_META: dict[str, tuple[str, str, str | None, bool | None]] = {
    "MTBC-120M": ("MTBC", "120M", None, None),
    "MGDT-200M": ("MGDT", "200M", None, None),
    "EDT-200M": ("EDT", "200M", None, None),
    "SQL-80M": ("Scaled-QL", "80M", None, None),
    "JOWA-40M": ("JOWA", "40M", "40m", True),
    "JOWA-70M": ("JOWA", "70M", "70m", True),
    "JOWA-150M": ("JOWA", "150M", "150m", True),
}

PUBLISHED: dict[str, PublishedMethod] = {
    name: PublishedMethod(
        name=name,
        family=_META[name][0],
        params=_META[name][1],
        scores=_col(values),
        superhuman=_T2_AGG[name][0],
        median_hns=_T2_AGG[name][1],
        iqm_hns=_T2_AGG[name][2],
        preset=_META[name][2],
        plan=_META[name][3],
    )
    for name, values in _T2.items()
}


def get_published(name: str) -> PublishedMethod:
    """A published column by name (case-insensitive), e.g. 'JOWA-150M', 'MGDT-200M'."""
    for key, method in PUBLISHED.items():
        if key.lower() == name.lower():
            return method
    raise ValueError(f"unknown published method {name!r}; choose from {', '.join(PUBLISHED)}")


# Printed aggregates that the printed per-game numbers do not reproduce (HNS with the table's own Random/Human
# columns, IQM = trim_mean 0.25 over the 15 games), as (printed, recomputed). Worked out in docs/report.md and
# checked by tests/test_report.py; every other printed aggregate matches to the printed 3 decimals.
INCONSISTENT: dict[str, dict[str, tuple[float, float]]] = {
    "MTBC-120M": {"iqm": (0.329, 0.3258)},
    "EDT-200M": {"superhuman": (4, 3)},
    "SQL-80M": {"median": (0.387, 0.4021), "iqm": (0.420, 0.4020)},
    "JOWA-70M": {"superhuman": (4, 6), "median": (0.390, 0.5399), "iqm": (0.476, 0.7808)},
}
