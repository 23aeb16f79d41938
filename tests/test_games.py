"""Tests for the game registry (jowa_core.games)."""

from __future__ import annotations

import numpy as np
import pytest

from jowa_core import games
from jowa_core.games import BUILTIN_GAMES, GAMES, GROUPS, MINATAR_GAMES, UnknownGameError, get, resolve, task_ids

ALL18 = list(range(18))

# Minimal -> full action indices for the 20 paper games, written by hand from the official JOWA code
# (src/action_tokenizer.py, _LIMITED_ACTION_SET). Do not regenerate these from ale-py.
GOLDEN_MINIMAL_TO_FULL: dict[str, list[int]] = {
    # pretraining games
    "Assault": [0, 1, 2, 3, 4, 11, 12],  # NOOP FIRE UP RIGHT LEFT RIGHTFIRE LEFTFIRE
    "Atlantis": [0, 1, 11, 12],  # NOOP FIRE RIGHTFIRE LEFTFIRE (paper Table 6 says 18)
    "BeamRider": [0, 1, 2, 3, 4, 6, 7, 11, 12],  # ... UPRIGHT UPLEFT RIGHTFIRE LEFTFIRE
    "Berzerk": ALL18,
    "Carnival": [0, 1, 3, 4, 11, 12],
    "Centipede": ALL18,
    "ChopperCommand": ALL18,
    "DemonAttack": [0, 1, 3, 4, 11, 12],
    "NameThisGame": [0, 1, 3, 4, 11, 12],
    "Phoenix": [0, 1, 3, 4, 5, 11, 12, 13],  # ... DOWN RIGHTFIRE LEFTFIRE DOWNFIRE
    "Seaquest": ALL18,
    "SpaceInvaders": [0, 1, 3, 4, 11, 12],
    "StarGunner": ALL18,
    "TimePilot": [0, 1, 2, 3, 4, 5, 10, 11, 12, 13],  # 4 directions, UPFIRE..DOWNFIRE
    "Zaxxon": ALL18,
    # held-out games
    "Gravitar": ALL18,
    "MsPacman": [0, 2, 3, 4, 5, 6, 7, 8, 9],  # no FIRE
    "Pong": [0, 1, 3, 4, 11, 12],
    "Robotank": ALL18,
    "YarsRevenge": ALL18,
}

PAPER_VALID_ACTIONS = {
    "Assault": 7, "Atlantis": 4, "BeamRider": 9, "Carnival": 6, "DemonAttack": 6, "NameThisGame": 6,
    "Phoenix": 8, "SpaceInvaders": 6, "TimePilot": 10, "Berzerk": 18, "Centipede": 18,
    "ChopperCommand": 18, "Seaquest": 18, "StarGunner": 18, "Zaxxon": 18, "Pong": 6, "MsPacman": 9,
    "Gravitar": 18, "Robotank": 18, "YarsRevenge": 18,
}  # fmt: skip


# ---------------------------------------------------------------------------------------- actions
def test_full_actions() -> None:
    assert games.NUM_FULL_ACTIONS == len(games.FULL_ACTIONS) == 18
    assert games.FULL_ACTIONS[:6] == ("NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN")
    assert games.FULL_ACTIONS[11] == "RIGHTFIRE"
    assert games.FULL_ACTIONS[-1] == "DOWNLEFTFIRE"


@pytest.mark.parametrize("name", sorted(GOLDEN_MINIMAL_TO_FULL))
def test_golden_minimal_sets(name: str) -> None:
    info = GAMES[name]
    assert list(info.minimal_actions) == GOLDEN_MINIMAL_TO_FULL[name]
    assert info.num_actions == PAPER_VALID_ACTIONS[name]


def test_golden_covers_paper_games() -> None:
    assert set(GOLDEN_MINIMAL_TO_FULL) == set(GROUPS["atari20"]) == set(PAPER_VALID_ACTIONS)


@pytest.mark.slow
def test_literal_table_matches_ale_py() -> None:
    """The frozen table must equal ale-py's minimal sets; a mismatch means ale-py changed."""
    ale_py = pytest.importorskip("ale_py")
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    mismatches = {}
    for info in GAMES.values():
        ale = ale_py.ALEInterface()
        ale.loadROM(ale_py.roms.get_rom_path(info.rom))
        got = tuple(a.value for a in ale.getMinimalActionSet())
        if got != info.minimal_actions:
            mismatches[info.name] = (info.minimal_actions, got)
    assert not mismatches


def test_to_full_to_minimal_round_trip() -> None:
    for info in GAMES.values():
        minimal = np.arange(info.num_actions)
        full = info.to_full(minimal)
        assert full.dtype == np.int16
        assert full.tolist() == list(info.minimal_actions)
        np.testing.assert_array_equal(info.to_minimal(full), minimal)


def test_to_full_keeps_shape() -> None:
    info = get("Pong")
    x = np.array([[0, 5], [2, 3]], dtype=np.uint8)
    np.testing.assert_array_equal(info.to_full(x), [[0, 12], [3, 4]])
    assert info.to_full(np.array([], dtype=np.int64)).shape == (0,)
    assert info.to_full([1, 2]).tolist() == [1, 3]


def test_to_full_errors() -> None:
    info = get("Pong")
    with pytest.raises(ValueError, match="out of range"):
        info.to_full(np.array([0, 6]))
    with pytest.raises(ValueError, match="out of range"):
        info.to_full(np.array([-1]))
    with pytest.raises(ValueError, match="integers"):
        info.to_full(np.array([0.0, 1.0]))


def test_to_minimal_errors() -> None:
    info = get("Pong")
    with pytest.raises(ValueError, match=r"\[2\]"):  # UP is not a Pong action
        info.to_minimal(np.array([0, 2, 3]))
    with pytest.raises(ValueError, match="out of range"):
        info.to_minimal(np.array([18]))
    with pytest.raises(ValueError, match="out of range"):
        info.to_minimal(np.array([-1]))


def test_action_mask() -> None:
    mask = get("Atlantis").action_mask()
    assert mask.shape == (18,) and mask.dtype == bool
    assert np.flatnonzero(mask).tolist() == [0, 1, 11, 12]
    assert get("Seaquest").action_mask().all()
    for info in GAMES.values():
        assert info.action_mask().sum() == info.num_actions


def test_tables_are_read_only() -> None:
    out = get("Pong").to_full(np.array([1]))
    out[0] = 0  # the returned array is a copy
    assert get("Pong").to_full(np.array([1]))[0] == 1


def test_action_names() -> None:
    assert get("Breakout").action_names == ("NOOP", "FIRE", "RIGHT", "LEFT")


# ------------------------------------------------------------------------------------- registry
def test_sixty_games_in_task_id_order() -> None:
    assert len(GAMES) == 60
    assert [info.task_id for info in GAMES.values()] == list(range(60))
    assert list(GAMES) == sorted(GAMES)
    assert all(name == info.name for name, info in GAMES.items())
    assert len({info.rom for info in GAMES.values()}) == 60


@pytest.mark.parametrize(
    ("name", "task_id"),
    [
        ("AirRaid", 0), ("Assault", 3), ("Atlantis", 6), ("BeamRider", 9), ("Berzerk", 10),
        ("Carnival", 14), ("Centipede", 15), ("ChopperCommand", 16), ("DemonAttack", 18),
        ("NameThisGame", 36), ("Phoenix", 37), ("Pong", 39), ("Seaquest", 46),
        ("SpaceInvaders", 49), ("StarGunner", 50), ("Zaxxon", 59),
    ],
)  # fmt: skip
def test_task_ids(name: str, task_id: int) -> None:
    assert GAMES[name].task_id == task_id


def test_groups() -> None:
    assert len(GROUPS["atari15"]) == 15
    assert set(GROUPS["atari5"]) == {"Pong", "Robotank", "YarsRevenge", "Gravitar", "MsPacman"}
    assert set(GROUPS["atari20"]) == set(GROUPS["atari15"]) | set(GROUPS["atari5"])
    assert not set(GROUPS["atari15"]) & set(GROUPS["atari5"])
    assert set(GROUPS["atari6"]) == {
        "Assault", "Carnival", "Centipede", "NameThisGame", "Phoenix", "SpaceInvaders",
    }  # fmt: skip
    assert set(GROUPS["atari6"]) <= set(GROUPS["atari15"])
    assert GROUPS["all"] == tuple(GAMES)
    for name, members in GROUPS.items():
        own = {"builtin": BUILTIN_GAMES, "minatar": MINATAR_GAMES}.get(name, GAMES)
        assert all(m in own for m in members)
        assert len(set(members)) == len(members)
        assert [get(m).task_id for m in members] == sorted(get(m).task_id for m in members)


def test_paper_games_have_scores_and_difficulty() -> None:
    for name in GROUPS["atari20"]:
        info = GAMES[name]
        assert info.random is not None and info.human is not None and info.dqn is not None, name
        assert info.difficulty in {"Easy", "Medium", "Hard"}, name
    assert all(GAMES[n].difficulty is None for n in GAMES if n not in GROUPS["atari20"])


def test_score_values_and_sources() -> None:
    carnival = get("Carnival")
    assert carnival.random == games.ReferenceScore(0.0, "jowa-t2")  # not the code's 700.8
    assert carnival.human == games.ReferenceScore(3800.0, "jowa-t2")
    assert get("Seaquest").dqn == games.ReferenceScore(1600.7, "jowa-code")
    pong = get("Pong")
    assert pong.random == games.ReferenceScore(-20.7, "jowa-t17")
    assert pong.human == games.ReferenceScore(14.6, "atari57")
    assert pong.dqn == games.ReferenceScore(19.5, "jowa-t17")  # not the code's 16.6
    assert get("YarsRevenge").dqn.value == 18089.9
    assert get("Breakout").human == games.ReferenceScore(30.5, "atari57")
    assert get("AirRaid").human is None


def test_sources_are_known_and_human_above_random() -> None:
    for info in GAMES.values():
        for score in (info.random, info.human, info.dqn):
            if score is not None:
                assert score.source in games.SOURCES
        if info.random is not None and info.human is not None:
            assert info.human.value > info.random.value, info.name


def test_paper_table2_agrees_with_atari57() -> None:
    for name in GROUPS["atari15"]:
        if name in games._ATARI57_RANDOM_HUMAN:
            assert games._T2_RANDOM_HUMAN[name] == games._ATARI57_RANDOM_HUMAN[name], name


def test_beam_widths() -> None:
    assert games.PLANNING_HORIZON == 2
    expected = {
        "Assault": 2, "Atlantis": 3, "BeamRider": 2, "Berzerk": 4, "Carnival": 2, "Centipede": 4,
        "ChopperCommand": 4, "DemonAttack": 2, "NameThisGame": 2, "Phoenix": 2, "Seaquest": 3,
        "SpaceInvaders": 2, "StarGunner": 3, "TimePilot": 3, "Zaxxon": 3,
    }  # fmt: skip
    assert {n: GAMES[n].beam_width for n in GROUPS["atari15"]} == expected
    assert get("Pong").beam_width == 2  # 6 actions
    assert get("Gravitar").beam_width == 3  # 18 actions
    assert get("Amidar").beam_width == 3  # exactly 10 actions
    assert get("MsPacman").beam_width == 2  # 9 actions


# --------------------------------------------------------------------------------------- lookup
@pytest.mark.parametrize(
    "alias", ["MsPacman", "mspacman", "ms_pacman", "ms-pacman", "MS_PACMAN", " Ms Pacman "]
)
def test_get_aliases(alias: str) -> None:
    assert get(alias) is GAMES["MsPacman"]


def test_get_by_rom_id() -> None:
    for info in GAMES.values():
        assert get(info.rom) is info


def test_unknown_game_suggests() -> None:
    with pytest.raises(UnknownGameError) as exc:
        get("MsPacmn")
    msg = str(exc.value)
    assert "MsPacmn" in msg and "MsPacman" in msg and "atari15" in msg
    assert isinstance(exc.value, ValueError)
    with pytest.raises(UnknownGameError, match="atari5"):
        resolve("atari51")


def test_resolve() -> None:
    assert resolve("atari15") == list(GROUPS["atari15"])
    assert resolve("Pong,Breakout") == ["Pong", "Breakout"]
    assert resolve("atari5,Breakout") == [*GROUPS["atari5"], "Breakout"]
    assert resolve(["space_invaders", "Pong", "pong", "atari6"]) == [
        "SpaceInvaders", "Pong", "Assault", "Carnival", "Centipede", "NameThisGame", "Phoenix",
    ]  # fmt: skip
    assert resolve(" Pong , ,ATARI6") == ["Pong", *GROUPS["atari6"]]
    assert resolve("all") == list(GAMES)
    assert resolve(("Pong",)) == ["Pong"]


def test_resolve_errors() -> None:
    for empty in ("", " , ", [], ["", " "]):
        with pytest.raises(ValueError, match="no games selected"):
            resolve(empty)
    with pytest.raises(UnknownGameError, match="Pongg"):
        resolve("atari5,Pongg")


def test_task_ids_function() -> None:
    ids = task_ids(["Pong", "Assault", "pong"])
    assert ids.dtype == np.int64
    assert ids.tolist() == [39, 3, 39]
    assert task_ids("Zaxxon").tolist() == [59]
    np.testing.assert_array_equal(task_ids(GROUPS["atari15"]), [GAMES[n].task_id for n in GROUPS["atari15"]])
    with pytest.raises(UnknownGameError):
        task_ids(["Pong", "Nope"])
