"""Game environments: Atari through ale-py (``atari``), the built-in test games (``catch``) and MinAtar
(``minatar``)."""

from __future__ import annotations

from typing import Any

from jowa_core import games
from jowa_core.envs.atari import AtariEnv
from jowa_core.envs.catch import RULES_MD5 as CATCH_RULES_MD5
from jowa_core.envs.catch import CatchEnv
from jowa_core.envs.minatar import MinAtarEnv, rules_md5


def make_env(game: str, settings: Any = None, seed: int = 0) -> Any:
    """The environment for ``game``: a built-in game's env, a MinAtar game's or an ``AtariEnv``, with the same
    interface."""
    info = games.get(game)
    if info.rom.startswith("minatar:"):
        return MinAtarEnv(info.name, settings, seed=seed)
    if info.builtin:
        return CatchEnv(info.name, settings, seed=seed)
    return AtariEnv(info.name, settings, seed=seed)


def builtin_md5(game: str) -> str:
    """What stands in for the ROM md5 of a game jowa plays itself (``info.builtin``): its rules' md5."""
    info = games.get(game)
    return rules_md5(info.name) if info.rom.startswith("minatar:") else CATCH_RULES_MD5
