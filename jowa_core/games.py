"""Registry of per-game facts for the 60 Atari games of the DQN-Replay dataset, and the built-in test games.

The single source of truth for game names, task ids, ALE minimal action sets, reference scores
(random / human / DQN, each with its source), default planning beam widths, difficulty labels and the
named game groups. Sources and paper/code disagreements are documented in ``docs/games.md``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from jowa_core.constants import NUM_FULL_ACTIONS

__all__ = [
    "FULL_ACTIONS",
    "BUILTIN_GAMES",
    "MINATAR_GAMES",
    "GAMES",
    "GROUPS",
    "REGISTRY",
    "NUM_FULL_ACTIONS",
    "PLANNING_HORIZON",
    "SOURCES",
    "GameInfo",
    "ReferenceScore",
    "UnknownGameError",
    "get",
    "resolve",
    "task_ids",
]

FULL_ACTIONS: tuple[str, ...] = (
    "NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
    "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE",
    "DOWNLEFTFIRE",
)  # fmt: skip
PLANNING_HORIZON = 2  # paper Table 16: horizon 2 for every game

SOURCES: dict[str, str] = {
    "jowa-t2": "JOWA paper (Cheng et al., ICLR 2025), Table 2",
    "jowa-t17": "JOWA paper (Cheng et al., ICLR 2025), Table 17",
    "jowa-code": "official JOWA code, results/base_scores.py",
    "atari57": "standard Atari-57 random/human table (Badia et al. 2020; DQN Zoo atari_data.py)",
    "minatar-measured": "measured here: MinAtar (Young & Tian 2019) with sticky actions 0.1: random policy and "
                        "emulator-lookahead policy (benchmarks/minatar_references.py)",
    "builtin": "exact, from the built-in game's rules (random: expected return of the uniform policy; "
               "human: perfect play)",
}


@dataclass(frozen=True)
class ReferenceScore:
    """A reference score and the key (in ``SOURCES``) of where it comes from."""

    value: float
    source: str


@dataclass(frozen=True)
class GameInfo:
    """Static facts about one game."""

    name: str
    task_id: int
    rom: str
    minimal_actions: tuple[int, ...]
    random: ReferenceScore | None = None
    human: ReferenceScore | None = None
    dqn: ReferenceScore | None = None
    beam_width: int | None = None
    difficulty: str | None = None
    builtin: bool = False  # played by jowa_core.envs, not an ALE ROM; rom "builtin:<name>" or "minatar:<module>"
    _to_full: np.ndarray = field(init=False, repr=False, compare=False)
    _to_minimal: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        acts = self.minimal_actions
        if not acts or len(set(acts)) != len(acts) or not all(0 <= a < NUM_FULL_ACTIONS for a in acts):
            raise ValueError(f"{self.name}: invalid minimal action set {acts}")
        to_full = np.asarray(acts, dtype=np.int16)
        to_minimal = np.full(NUM_FULL_ACTIONS, -1, dtype=np.int16)
        to_minimal[to_full] = np.arange(len(acts), dtype=np.int16)
        to_full.flags.writeable = False
        to_minimal.flags.writeable = False
        object.__setattr__(self, "_to_full", to_full)
        object.__setattr__(self, "_to_minimal", to_minimal)

    @property
    def num_actions(self) -> int:
        """Size of the minimal action set (the dataset's action space)."""
        return len(self.minimal_actions)

    @property
    def action_names(self) -> tuple[str, ...]:
        """Names of the minimal actions, in minimal-set order."""
        return tuple(FULL_ACTIONS[a] for a in self.minimal_actions)

    def to_full(self, minimal: np.ndarray) -> np.ndarray:
        """Map minimal-set action indices (any shape) to full-set indices (int16)."""
        idx = _as_int_array(minimal)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_actions):
            raise ValueError(
                f"{self.name}: minimal action out of range [0, {self.num_actions}): "
                f"min={idx.min()}, max={idx.max()}"
            )
        return self._to_full[idx]

    def to_minimal(self, full: np.ndarray) -> np.ndarray:
        """Map full-set action indices (any shape) to minimal-set indices (int16)."""
        idx = _as_int_array(full)
        if idx.size and (idx.min() < 0 or idx.max() >= NUM_FULL_ACTIONS):
            raise ValueError(f"{self.name}: full action out of range [0, {NUM_FULL_ACTIONS})")
        out = self._to_minimal[idx]
        if idx.size and out.min() < 0:
            bad = sorted({int(a) for a in np.unique(idx[out < 0])})
            raise ValueError(f"{self.name}: full actions {bad} are not in the minimal action set")
        return out

    def action_mask(self) -> np.ndarray:
        """(18,) bool mask, True for the full actions that are valid in this game."""
        return self._to_minimal >= 0


def _as_int_array(x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        if arr.size == 0:
            return arr.astype(np.int64)
        raise ValueError(f"action indices must be integers, got dtype {arr.dtype}")
    return arr


# --------------------------------------------------------------------------------------------------
# Minimal action sets: full-action index of each minimal action, in ALE minimal-set order.
# Generated once from ale-py 0.12.1 (ALEInterface.getMinimalActionSet()); the DQN-Replay action
# indices are indices into these tuples, so this table is frozen here and only checked against ale-py
# by the tests. Rows are in task-id (alphabetical) order.
# --------------------------------------------------------------------------------------------------
_ALL18 = tuple(range(NUM_FULL_ACTIONS))
_TABLE: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("AirRaid", "air_raid", (0, 1, 3, 4, 11, 12)),
    ("Alien", "alien", _ALL18),
    ("Amidar", "amidar", (0, 1, 2, 3, 4, 5, 10, 11, 12, 13)),
    ("Assault", "assault", (0, 1, 2, 3, 4, 11, 12)),
    ("Asterix", "asterix", (0, 2, 3, 4, 5, 6, 7, 8, 9)),
    ("Asteroids", "asteroids", (0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15)),
    ("Atlantis", "atlantis", (0, 1, 11, 12)),
    ("BankHeist", "bank_heist", _ALL18),
    ("BattleZone", "battle_zone", _ALL18),
    ("BeamRider", "beam_rider", (0, 1, 2, 3, 4, 6, 7, 11, 12)),
    ("Berzerk", "berzerk", _ALL18),
    ("Bowling", "bowling", (0, 1, 2, 5, 10, 13)),
    ("Boxing", "boxing", _ALL18),
    ("Breakout", "breakout", (0, 1, 3, 4)),
    ("Carnival", "carnival", (0, 1, 3, 4, 11, 12)),
    ("Centipede", "centipede", _ALL18),
    ("ChopperCommand", "chopper_command", _ALL18),
    ("CrazyClimber", "crazy_climber", (0, 2, 3, 4, 5, 6, 7, 8, 9)),
    ("DemonAttack", "demon_attack", (0, 1, 3, 4, 11, 12)),
    ("DoubleDunk", "double_dunk", _ALL18),
    ("ElevatorAction", "elevator_action", _ALL18),
    ("Enduro", "enduro", (0, 1, 3, 4, 5, 8, 9, 11, 12)),
    ("FishingDerby", "fishing_derby", _ALL18),
    ("Freeway", "freeway", (0, 2, 5)),
    ("Frostbite", "frostbite", _ALL18),
    ("Gopher", "gopher", (0, 1, 2, 3, 4, 10, 11, 12)),
    ("Gravitar", "gravitar", _ALL18),
    ("Hero", "hero", _ALL18),
    ("IceHockey", "ice_hockey", _ALL18),
    ("Jamesbond", "jamesbond", _ALL18),
    ("JourneyEscape", "journey_escape", (0, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17)),
    ("Kangaroo", "kangaroo", _ALL18),
    ("Krull", "krull", _ALL18),
    ("KungFuMaster", "kung_fu_master", (0, 2, 3, 4, 5, 8, 9, 11, 12, 13, 14, 15, 16, 17)),
    ("MontezumaRevenge", "montezuma_revenge", _ALL18),
    ("MsPacman", "ms_pacman", (0, 2, 3, 4, 5, 6, 7, 8, 9)),
    ("NameThisGame", "name_this_game", (0, 1, 3, 4, 11, 12)),
    ("Phoenix", "phoenix", (0, 1, 3, 4, 5, 11, 12, 13)),
    ("Pitfall", "pitfall", _ALL18),
    ("Pong", "pong", (0, 1, 3, 4, 11, 12)),
    ("Pooyan", "pooyan", (0, 1, 2, 5, 10, 13)),
    ("PrivateEye", "private_eye", _ALL18),
    ("Qbert", "qbert", (0, 1, 2, 3, 4, 5)),
    ("Riverraid", "riverraid", _ALL18),
    ("RoadRunner", "road_runner", _ALL18),
    ("Robotank", "robotank", _ALL18),
    ("Seaquest", "seaquest", _ALL18),
    ("Skiing", "skiing", (0, 3, 4)),
    ("Solaris", "solaris", _ALL18),
    ("SpaceInvaders", "space_invaders", (0, 1, 3, 4, 11, 12)),
    ("StarGunner", "star_gunner", _ALL18),
    ("Tennis", "tennis", _ALL18),
    ("TimePilot", "time_pilot", (0, 1, 2, 3, 4, 5, 10, 11, 12, 13)),
    ("Tutankham", "tutankham", (0, 2, 3, 4, 5, 10, 11, 12)),
    ("UpNDown", "up_n_down", (0, 1, 2, 5, 10, 13)),
    ("Venture", "venture", _ALL18),
    ("VideoPinball", "video_pinball", (0, 1, 2, 3, 4, 5, 10, 11, 12)),
    ("WizardOfWor", "wizard_of_wor", (0, 1, 2, 3, 4, 5, 10, 11, 12, 13)),
    ("YarsRevenge", "yars_revenge", _ALL18),
    ("Zaxxon", "zaxxon", _ALL18),
)

# --------------------------------------------------------------------------------------------------
# Reference scores. Precedence: paper tables > standard Atari-57 table > official code.
# --------------------------------------------------------------------------------------------------
# (random, human) from paper Table 2, the 15 pretraining games.
_T2_RANDOM_HUMAN: dict[str, tuple[float, float]] = {
    "Assault": (222.4, 742.0),
    "Atlantis": (12850.0, 29028.1),
    "BeamRider": (363.9, 16926.5),
    "Berzerk": (123.7, 2630.4),
    "Carnival": (0.0, 3800.0),
    "Centipede": (2090.9, 12017.0),
    "ChopperCommand": (811.0, 7387.8),
    "DemonAttack": (152.1, 1971.0),
    "NameThisGame": (2292.3, 8049.0),
    "Phoenix": (761.4, 7242.6),
    "Seaquest": (68.4, 42054.7),
    "SpaceInvaders": (148.0, 1668.7),
    "StarGunner": (664.0, 10250.0),
    "TimePilot": (3568.0, 5229.2),
    "Zaxxon": (32.5, 9173.3),
}
# (random, DQN) from paper Table 17, the 5 held-out games.
_T17_RANDOM_DQN: dict[str, tuple[float, float]] = {
    "Gravitar": (173.0, 473.0),
    "MsPacman": (307.3, 3085.6),
    "Pong": (-20.7, 19.5),
    "Robotank": (2.2, 63.9),
    "YarsRevenge": (3092.9, 18089.9),
}
# (random, human) standard Atari-57 table, restricted to the games of the DQN-Replay 60
# (Defender and Surround are not in DQN-Replay).
_ATARI57_RANDOM_HUMAN: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "Asteroids": (719.1, 47388.7),
    "Atlantis": (12850.0, 29028.1),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "BeamRider": (363.9, 16926.5),
    "Berzerk": (123.7, 2630.4),
    "Bowling": (23.1, 160.7),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "Centipede": (2090.9, 12017.0),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "DemonAttack": (152.1, 1971.0),
    "DoubleDunk": (-18.6, -16.4),
    "Enduro": (0.0, 860.5),
    "FishingDerby": (-91.7, -38.7),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Gravitar": (173.0, 3351.4),
    "Hero": (1027.0, 30826.4),
    "IceHockey": (-11.2, 0.9),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MontezumaRevenge": (0.0, 4753.3),
    "MsPacman": (307.3, 6951.6),
    "NameThisGame": (2292.3, 8049.0),
    "Phoenix": (761.4, 7242.6),
    "Pitfall": (-229.4, 6463.7),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "Riverraid": (1338.5, 17118.0),
    "RoadRunner": (11.5, 7845.0),
    "Robotank": (2.2, 11.9),
    "Seaquest": (68.4, 42054.7),
    "Skiing": (-17098.1, -4336.9),
    "Solaris": (1236.3, 12326.7),
    "SpaceInvaders": (148.0, 1668.7),
    "StarGunner": (664.0, 10250.0),
    "Tennis": (-23.8, -8.3),
    "TimePilot": (3568.0, 5229.2),
    "Tutankham": (11.4, 167.6),
    "UpNDown": (533.4, 11693.2),
    "Venture": (0.0, 1187.5),
    "VideoPinball": (16256.9, 17667.9),
    "WizardOfWor": (563.5, 4756.5),
    "YarsRevenge": (3092.9, 54576.9),
    "Zaxxon": (32.5, 9173.3),
}
# Random score from the official code for a game in neither table above (its human entry is a 0
# placeholder, so no human score is recorded).
_CODE_RANDOM: dict[str, float] = {"Pooyan": 371.2}
# DQN scores from the official code (results/base_scores.py); used where Table 17 has no value.
_CODE_DQN: dict[str, float] = {
    "Alien": 2484.5,
    "Amidar": 1207.7,
    "Assault": 1525.2,
    "Asterix": 2711.4,
    "Atlantis": 853640.0,
    "BankHeist": 601.8,
    "BattleZone": 17784.8,
    "BeamRider": 5852.4,
    "Berzerk": 487.5,
    "Boxing": 78.0,
    "Breakout": 96.2,
    "Carnival": 4784.8,
    "Centipede": 2583.0,
    "ChopperCommand": 2690.6,
    "CrazyClimber": 104568.8,
    "DemonAttack": 6361.6,
    "DoubleDunk": -6.5,
    "Enduro": 628.9,
    "FishingDerby": 0.6,
    "Freeway": 26.3,
    "Frostbite": 367.1,
    "Gopher": 5479.9,
    "Gravitar": 330.1,  # superseded by Table 17 (473.0)
    "Hero": 17325.4,
    "IceHockey": -5.8,
    "Jamesbond": 573.3,
    "Kangaroo": 11486.0,
    "Krull": 6097.6,
    "KungFuMaster": 23435.4,
    "MsPacman": 3402.4,  # superseded by Table 17 (3085.6)
    "NameThisGame": 7278.6,
    "Phoenix": 4996.6,
    "Pong": 16.6,  # superseded by Table 17 (19.5)
    "Pooyan": 3212.0,
    "Qbert": 10117.5,
    "Riverraid": 11638.9,
    "Robotank": 59.8,  # superseded by Table 17 (63.9)
    "Seaquest": 1600.7,
    "SpaceInvaders": 1794.2,
    "StarGunner": 42165.2,
    "TimePilot": 3654.4,
    "UpNDown": 8488.3,
    "VideoPinball": 63406.1,
    "WizardOfWor": 2065.8,
    "YarsRevenge": 23909.4,  # superseded by Table 17 (18089.9)
    "Zaxxon": 4538.6,
}

# --------------------------------------------------------------------------------------------------
# Planning beam widths (paper Table 16, horizon 2) and difficulty (paper Table 6).
# --------------------------------------------------------------------------------------------------
_BEAM_WIDTH: dict[str, int] = {
    "Assault": 2, "Atlantis": 3, "BeamRider": 2, "Berzerk": 4, "Carnival": 2, "Centipede": 4,
    "ChopperCommand": 4, "DemonAttack": 2, "NameThisGame": 2, "Phoenix": 2, "Seaquest": 3,
    "SpaceInvaders": 2, "StarGunner": 3, "TimePilot": 3, "Zaxxon": 3,
}  # fmt: skip
_DIFFICULTY: dict[str, str] = {
    "Assault": "Medium", "Atlantis": "Hard", "BeamRider": "Medium", "Berzerk": "Hard",
    "Carnival": "Medium", "Centipede": "Medium", "ChopperCommand": "Easy", "DemonAttack": "Easy",
    "Gravitar": "Easy", "MsPacman": "Medium", "NameThisGame": "Easy", "Phoenix": "Easy",
    "Pong": "Medium", "Robotank": "Medium", "Seaquest": "Easy", "SpaceInvaders": "Easy",
    "StarGunner": "Medium", "TimePilot": "Easy", "YarsRevenge": "Medium", "Zaxxon": "Easy",
}  # fmt: skip


def _default_beam_width(num_actions: int) -> int:
    """Paper's rule for games without a tuned width: K=2 if fewer than 10 valid actions, else 3."""
    return 2 if num_actions < 10 else 3


def _random_score(name: str) -> ReferenceScore | None:
    if name in _T2_RANDOM_HUMAN:
        return ReferenceScore(_T2_RANDOM_HUMAN[name][0], "jowa-t2")
    if name in _T17_RANDOM_DQN:
        return ReferenceScore(_T17_RANDOM_DQN[name][0], "jowa-t17")
    if name in _ATARI57_RANDOM_HUMAN:
        return ReferenceScore(_ATARI57_RANDOM_HUMAN[name][0], "atari57")
    if name in _CODE_RANDOM:
        return ReferenceScore(_CODE_RANDOM[name], "jowa-code")
    return None


def _human_score(name: str) -> ReferenceScore | None:
    if name in _T2_RANDOM_HUMAN:
        return ReferenceScore(_T2_RANDOM_HUMAN[name][1], "jowa-t2")
    if name in _ATARI57_RANDOM_HUMAN:
        return ReferenceScore(_ATARI57_RANDOM_HUMAN[name][1], "atari57")
    return None


def _dqn_score(name: str) -> ReferenceScore | None:
    if name in _T17_RANDOM_DQN:
        return ReferenceScore(_T17_RANDOM_DQN[name][1], "jowa-t17")
    if name in _CODE_DQN:
        return ReferenceScore(_CODE_DQN[name], "jowa-code")
    return None


def _build_games() -> dict[str, GameInfo]:
    games: dict[str, GameInfo] = {}
    for task_id, (name, rom, actions) in enumerate(_TABLE):
        games[name] = GameInfo(
            name=name,
            task_id=task_id,
            rom=rom,
            minimal_actions=actions,
            random=_random_score(name),
            human=_human_score(name),
            dqn=_dqn_score(name),
            beam_width=_BEAM_WIDTH.get(name, _default_beam_width(len(actions))),
            difficulty=_DIFFICULTY.get(name),
        )
    return games


GAMES: dict[str, GameInfo] = _build_games()  # the 60 DQN-Replay Atari games, task ids 0-59


# The built-in Catch game's facts the table needs (its rules live in ``jowa_core.envs.catch``, which reads these;
# tests/test_catch.py checks the random return against the rules' exact dynamic programme).
CATCH_ACTIONS: tuple[int, ...] = (0, 3, 4)  # NOOP, RIGHT, LEFT as full ALE action indices
CATCH_BALLS = 10  # balls per episode: perfect play returns this
CATCH_RANDOM_RETURN = 1.6667  # expected return of the uniform policy, rounded to 4 digits


def _build_builtin() -> dict[str, GameInfo]:
    return {"Catch": GameInfo(
        name="Catch", task_id=len(GAMES), rom="builtin:catch", minimal_actions=CATCH_ACTIONS,
        random=ReferenceScore(CATCH_RANDOM_RETURN, "builtin"),
        human=ReferenceScore(float(CATCH_BALLS), "builtin"), beam_width=2, builtin=True,
    )}


# Built-in test games (task ids from 60: a model that trains on them needs max_tasks > their task id).
BUILTIN_GAMES: dict[str, GameInfo] = _build_builtin()


# MinAtar (Young & Tian 2019, PyPI ``minatar``; played by ``jowa_core.envs.minatar``): name -> (MinAtar module,
# minimal action set as full ALE indices in MinAtar's ``minimal_action_set`` order; MinAtar's n, l, u, r, d, f are
# NOOP, LEFT, UP, RIGHT, DOWN, FIRE), and the references measured here (docs/games.md; MinAtar's sticky actions 0.1,
# whole episodes, ``benchmarks/minatar_references.py --seed 0``): the uniform policy's mean return (500 episodes,
# Freeway 100) and the emulator-lookahead policy's (``MinAtarEnv.lookahead_action``, no epsilon, 10 episodes) in the
# ``dqn`` slot, so DNS-style scores are (s - random) / (lookahead - random).
MINATAR_GAMES_TABLE: dict[str, tuple[str, tuple[int, ...], float, float]] = {
    "MinAtarAsterix": ("asterix", (0, 4, 2, 3, 5), 0.52, 9.80),
    "MinAtarBreakout": ("breakout", (0, 4, 3), 0.39, 2.90),
    "MinAtarFreeway": ("freeway", (0, 2, 5), 0.39, 1.40),
    "MinAtarSeaquest": ("seaquest", (0, 4, 2, 3, 5, 1), 0.11, 6.50),
    "MinAtarSpaceInvaders": ("space_invaders", (0, 4, 3, 1), 3.93, 42.10),
}


def _build_minatar() -> dict[str, GameInfo]:
    first = len(GAMES) + len(BUILTIN_GAMES)
    return {name: GameInfo(
        name=name, task_id=first + i, rom=f"minatar:{module}", minimal_actions=actions,
        random=ReferenceScore(rand, "minatar-measured"), dqn=ReferenceScore(ref, "minatar-measured"),
        beam_width=_default_beam_width(len(actions)), builtin=True,
    ) for i, (name, (module, actions, rand, ref)) in enumerate(MINATAR_GAMES_TABLE.items())}


# MinAtar games (task ids 61-65: a model that trains on them needs max_tasks >= 66).
MINATAR_GAMES: dict[str, GameInfo] = _build_minatar()
REGISTRY: dict[str, GameInfo] = {**GAMES, **BUILTIN_GAMES, **MINATAR_GAMES}  # every game ``get`` knows, by task id


def _group(*names: str) -> tuple[str, ...]:
    """A group's members in task-id order."""
    return tuple(sorted(names, key=lambda n: GAMES[n].task_id))


_ATARI15 = _group(*_BEAM_WIDTH)
_ATARI5 = _group("Pong", "Robotank", "YarsRevenge", "Gravitar", "MsPacman")
GROUPS: dict[str, tuple[str, ...]] = {
    "atari15": _ATARI15,  # paper's pretraining games
    "atari5": _ATARI5,  # paper's held-out fine-tuning games
    "atari20": _group(*_ATARI15, *_ATARI5),
    "atari6": _group("Assault", "Carnival", "Centipede", "NameThisGame", "Phoenix", "SpaceInvaders"),
    "all": tuple(GAMES),  # the DQN-Replay games (built-in games are never implied)
    "builtin": tuple(BUILTIN_GAMES),
    "minatar": tuple(MINATAR_GAMES),
}


# --------------------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------------------
def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


_BY_KEY: dict[str, str] = {_norm(n): n for n in REGISTRY}


class UnknownGameError(ValueError):
    """Raised for a game (or group) name that is not in the registry."""

    def __init__(self, name: str) -> None:
        candidates = [*_BY_KEY, *GROUPS]
        close = difflib.get_close_matches(_norm(name), candidates, n=3, cutoff=0.6)
        suggestions = [_BY_KEY.get(c, c) for c in close]
        hint = f" (did you mean {', '.join(suggestions)}?)" if suggestions else ""
        super().__init__(f"unknown game {name!r}{hint}. Groups: {', '.join(GROUPS)}")
        self.name = name
        self.suggestions = suggestions


def get(name: str) -> GameInfo:
    """Look a game up by name, ignoring case, '_', '-' and spaces ("MsPacman", "ms_pacman", ...)."""
    key = _BY_KEY.get(_norm(name))
    if key is None:
        raise UnknownGameError(name)
    return REGISTRY[key]


def resolve(spec: str | Iterable[str]) -> list[str]:
    """Expand a selection into canonical game names.

    ``spec`` is a comma-separated string or an iterable of such strings; each item is a game name
    (any spelling accepted by :func:`get`) or a group name from ``GROUPS``. Duplicates are dropped,
    keeping first occurrence order. Raises ``UnknownGameError`` for unknown items and ``ValueError``
    if nothing is selected.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    out: dict[str, None] = {}
    for item in items:
        for token in str(item).split(","):
            token = token.strip()
            if not token:
                continue
            group = GROUPS.get(token.lower())
            for name in group if group is not None else (get(token).name,):
                out.setdefault(name, None)
    if not out:
        raise ValueError("no games selected")
    return list(out)


def beam_width(game: str, beam: int | str | None = "auto") -> int:
    """The beam width K to plan ``game`` with: ``None``/``"auto"`` -> the game's width (paper Table 16, else K=2
    below 10 valid actions, 3 from 10); otherwise ``beam`` as a positive integer."""
    if beam is None or str(beam).lower() == "auto":
        return int(get(game).beam_width or 1)
    try:
        k = int(beam)
    except (TypeError, ValueError):
        raise ValueError(f"beam {beam!r}: expected a positive integer or 'auto'") from None
    if k < 1:
        raise ValueError(f"beam {k}: expected >= 1")
    return k


def task_ids(names: str | Iterable[str]) -> np.ndarray:
    """Task ids (int64) of the given game names, element-wise (no group expansion, no dedup)."""
    if isinstance(names, str):
        names = [names]
    return np.array([get(n).task_id for n in names], dtype=np.int64)
