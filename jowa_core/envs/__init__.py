"""Game environments: Atari through ale-py (``atari``) and the built-in test games (``catch``)."""

from __future__ import annotations

from typing import Any


def make_env(game: str, settings: Any = None, seed: int = 0) -> Any:
    """The environment for ``game``: a built-in game's env or an ``AtariEnv``, with the same interface."""
    from jowa_core import games

    info = games.get(game)
    if info.builtin:
        from jowa_core.envs.catch import CatchEnv

        return CatchEnv(info.name, settings, seed=seed)
    from jowa_core.envs.atari import AtariEnv

    return AtariEnv(info.name, settings, seed=seed)
