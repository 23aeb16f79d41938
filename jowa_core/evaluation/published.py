"""Published results: the JOWA paper's Table 2 (pretraining) and Tables 3/17 (fine-tuning), transcribed as printed.

Source: Cheng et al., "Scaling Offline Model-Based RL via Jointly-Optimized World-Action Model Pretraining"
(JOWA), ICLR 2025, arXiv v1, **Table 2** ("Returns on the 15 Atari games for best performing sizes of
multi-game models trained with the 10% subsampled dataset"). Per-game raw returns of MTBC-120M, MGDT-200M,
EDT-200M, Scaled-QL-80M and JOWA-40M/70M/150M (JOWA with beam-search planning), and the table's aggregate rows
(#Superhuman, Median HNS, IQM HNS) exactly as printed. The Random/Human columns of the same table are in the
game registry (:mod:`jowa_core.games`, source ``jowa-t2``; note Carnival random = 0 there).

Fine-tuning (``FINETUNED``): arXiv v1 **Table 17** (raw returns on the 5 held-out games after offline
fine-tuning on 5k transitions per game: MTBC-120M, MGDT-200M, EDT-200M, Scaled-QL-80M, JOWA-150M and
JOWA-150M trained from scratch) and **Table 3** (their mean/median/IQM DQN-normalised scores; Table 17 repeats
the same rows). The v2 Table 3 adds FICC-85M, JOWA-40M and JOWA-70M with aggregates only (its raw-score Table 18
is v1's Table 17 unchanged). The Random/DQN columns of Table 17 are in the game registry (source ``jowa-t17``).

These are published numbers, not results of this code; reports label them "(published)". Which printed
aggregates are consistent with the printed per-game numbers is worked out in ``docs/report.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from jowa_core import games

__all__ = [
    "FINETUNED",
    "FINETUNE_GAMES",
    "FINETUNE_INCONSISTENT",
    "FINETUNE_REFERENCE",
    "FINETUNE_SOURCE",
    "FINETUNE_SOURCE_V2",
    "INCONSISTENT",
    "PUBLISHED",
    "SOURCE",
    "TABLE2_GAMES",
    "PublishedFinetune",
    "PublishedMethod",
    "get_published",
]

SOURCE = "JOWA paper (Cheng et al., ICLR 2025), arXiv v1, Table 2"

# The paper's columns are alphabetical: the pretraining games (games.GROUPS["atari15"]) and the held-out ones.
TABLE2_GAMES: tuple[str, ...] = tuple(sorted(games.GROUPS["atari15"]))


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
    table: ClassVar[str] = "pretrain"
    games: ClassVar[tuple[str, ...]] = TABLE2_GAMES

    @property
    def printed(self) -> dict[tuple[str, str], float]:
        """The printed aggregate rows as {(normalization, metric): value}."""
        return {("human", "median"): self.median_hns, ("human", "iqm"): self.iqm_hns,
                ("human", "superhuman"): self.superhuman}  # fmt: skip


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


def get_published(name: str) -> PublishedMethod | PublishedFinetune:
    """A published column by name (case-insensitive), e.g. 'JOWA-150M', 'MGDT-200M', 'JOWA-150M-FT'."""
    for key, method in (*PUBLISHED.items(), *FINETUNED.items()):
        if key.lower() == name.lower():
            return method
    raise ValueError(f"unknown published method {name!r}; choose from {', '.join([*PUBLISHED, *FINETUNED])}")


# Printed aggregates that the printed per-game numbers do not reproduce (HNS with the table's own Random/Human
# columns, IQM = trim_mean 0.25 over the 15 games), as (printed, recomputed). Worked out in docs/report.md and
# checked by tests/test_report.py; every other printed aggregate matches to the printed 3 decimals.
INCONSISTENT: dict[str, dict[str, tuple[float, float]]] = {
    "MTBC-120M": {"iqm": (0.329, 0.3258)},
    "EDT-200M": {"superhuman": (4, 3)},
    "SQL-80M": {"median": (0.387, 0.4021), "iqm": (0.420, 0.4020)},
    "JOWA-70M": {"superhuman": (4, 6), "median": (0.390, 0.5399), "iqm": (0.476, 0.7808)},
}


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning on the 5 held-out games (Tables 3 and 17)
# ---------------------------------------------------------------------------------------------------------------
FINETUNE_SOURCE = "JOWA paper (Cheng et al., ICLR 2025), arXiv v1, Tables 3 and 17"
FINETUNE_SOURCE_V2 = "JOWA paper (Cheng et al., ICLR 2025), arXiv v2, Table 3"

FINETUNE_GAMES: tuple[str, ...] = tuple(sorted(games.GROUPS["atari5"]))  # Table 17 order (alphabetical)

# Table 17's Random and DQN columns (the registry's ``jowa-t17`` reference scores), game -> (random, DQN).
FINETUNE_REFERENCE: dict[str, tuple[float, float]] = {
    "Gravitar": (173.0, 473.0), "MsPacman": (307.3, 3085.6), "Pong": (-20.7, 19.5), "Robotank": (2.2, 63.9),
    "YarsRevenge": (3092.9, 18089.9),
}  # fmt: skip


@dataclass(frozen=True)
class PublishedFinetune:
    """One fine-tuning column: raw returns on the held-out games (empty for v2's aggregate-only columns) and the
    printed mean/median/IQM DQN-normalised scores."""

    name: str
    header: str  # the column as the paper prints it
    family: str
    params: str
    scores: dict[str, float]
    mean_dns: float
    median_dns: float
    iqm_dns: float
    pretrained: bool = True  # False: JOWA-150M trained from scratch on the 5k transitions
    preset: str | None = None
    plan: bool | None = None
    source: str = FINETUNE_SOURCE
    table: ClassVar[str] = "finetune"
    games: ClassVar[tuple[str, ...]] = FINETUNE_GAMES

    @property
    def printed(self) -> dict[tuple[str, str], float]:
        """The printed aggregate rows as {(normalization, metric): value}."""
        return {("dqn", "mean"): self.mean_dns, ("dqn", "median"): self.median_dns, ("dqn", "iqm"): self.iqm_dns}


# Table 17 (v1; = v2 Table 18) raw returns, columns in FINETUNE_GAMES order.
_T17: dict[str, tuple[float, ...]] = {
    "MTBC-120M-FT": (35.7, 905.0, 5.8, 6.8, 7987.5),
    "MGDT-200M-FT": (250.0, 1290.3, 9.7, 16.0, 10886.3),
    "EDT-200M-FT": (253.3, 1210.7, 11.3, 15.5, 11276.9),
    "SQL-80M-FT": (137.5, 1040.2, 13.7, 19.7, 10838.5),
    "JOWA-150M-FT": (273.3, 2016.7, 17.7, 25.0, 17506.2),
    "JOWA-150M-scratch": (83.3, 786.7, 8.8, 11.0, 6507.0),
}
# (Mean, Median, IQM) DQN-normalised rows of Table 17 (v1) as printed.
_T17_AGG: dict[str, tuple[float, float, float]] = {
    "MTBC-120M-FT": (0.164, 0.215, 0.205),
    "MGDT-200M-FT": (0.422, 0.354, 0.377),
    "EDT-200M-FT": (0.430, 0.325, 0.380),
    "SQL-80M-FT": (0.360, 0.284, 0.355),
    "JOWA-150M-FT": (0.647, 0.615, 0.647),
    "JOWA-150M-scratch": (0.196, 0.173, 0.181),
}
# Table 3 (v1) as printed: the same six columns and rows.
_T3_AGG: dict[str, tuple[float, float, float]] = {
    "MTBC-120M-FT": (0.164, 0.215, 0.205),
    "MGDT-200M-FT": (0.422, 0.354, 0.377),
    "EDT-200M-FT": (0.430, 0.325, 0.380),
    "SQL-80M-FT": (0.360, 0.284, 0.355),
    "JOWA-150M-FT": (0.647, 0.615, 0.647),
    "JOWA-150M-scratch": (0.196, 0.173, 0.181),
}
# Table 3 (v2) as printed: v1's columns plus FICC-85M and JOWA-40M/70M (no per-game numbers anywhere).
_T3_V2_AGG: dict[str, tuple[float, float, float]] = {
    "MTBC-120M-FT": (0.164, 0.215, 0.205),
    "MGDT-200M-FT": (0.422, 0.354, 0.377),
    "EDT-200M-FT": (0.430, 0.325, 0.380),
    "SQL-80M-FT": (0.360, 0.284, 0.355),
    "FICC-85M-FT": (0.543, 0.565, 0.575),
    "JOWA-40M-FT": (0.504, 0.512, 0.498),
    "JOWA-70M-FT": (0.576, 0.715, 0.603),
    "JOWA-150M-FT": (0.647, 0.615, 0.647),
    "JOWA-150M-scratch": (0.196, 0.173, 0.181),
}
# name -> (printed header, family, params, pretrained, preset, plan)
_FT_META: dict[str, tuple[str, str, str, bool, str | None, bool | None]] = {
    "MTBC-120M-FT": ("MTBC 120M", "MTBC", "120M", True, None, None),
    "MGDT-200M-FT": ("MGDT 200M", "MGDT", "200M", True, None, None),
    "EDT-200M-FT": ("EDT 200M", "EDT", "200M", True, None, None),
    "SQL-80M-FT": ("SQL 80M", "Scaled-QL", "80M", True, None, None),
    "FICC-85M-FT": ("FICC 85M", "FICC", "85M", True, None, None),
    "JOWA-40M-FT": ("JOWA 40M", "JOWA", "40M", True, "40m", True),
    "JOWA-70M-FT": ("JOWA 70M", "JOWA", "70M", True, "70m", True),
    "JOWA-150M-FT": ("JOWA 150M", "JOWA", "150M", True, "150m", True),
    "JOWA-150M-scratch": ("JOWA-150M (scratch)", "JOWA", "150M", False, "150m", True),
}

FINETUNED: dict[str, PublishedFinetune] = {
    name: PublishedFinetune(
        name=name,
        header=_FT_META[name][0],
        family=_FT_META[name][1],
        params=_FT_META[name][2],
        scores=dict(zip(FINETUNE_GAMES, map(float, _T17[name]), strict=True)) if name in _T17 else {},
        mean_dns=agg[0],
        median_dns=agg[1],
        iqm_dns=agg[2],
        pretrained=_FT_META[name][3],
        preset=_FT_META[name][4],
        plan=_FT_META[name][5],
        source=FINETUNE_SOURCE if name in _T17 else FINETUNE_SOURCE_V2,
    )
    for name, agg in ((n, _T3_AGG.get(n, _T3_V2_AGG[n])) for n in _T3_V2_AGG)
}

# Printed fine-tuning aggregates that Table 17's raw returns do not reproduce (DNS with Table 17's Random/DQN
# columns, IQM = trim_mean 0.25 over the 5 games), as in INCONSISTENT. None: every printed mean/median/IQM of
# the six columns with raw returns matches to the printed 3 decimals (docs/report.md, tests/test_report.py).
FINETUNE_INCONSISTENT: dict[str, dict[str, tuple[float, float]]] = {}
