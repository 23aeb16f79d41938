"""Game environments: Atari through ale-py (``atari``) and the built-in test games (``catch``)."""

from __future__ import annotations

from typing import Any

from jowa_core import games
from jowa_core.envs.atari import AtariEnv
from jowa_core.envs.catch import CatchEnv


def make_env(game: str, settings: Any = None, seed: int = 0) -> Any:
    """The environment for ``game``: a built-in game's env or an ``AtariEnv``, with the same interface."""
    info = games.get(game)
    if info.builtin:
        return CatchEnv(info.name, settings, seed=seed)
    return AtariEnv(info.name, settings, seed=seed)
