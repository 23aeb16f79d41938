"""Guards for what a command writes (torch-free, layer 0): an output never swallows an input, one writer per
output (lock files), outputs checked writable before long work."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def refuse_inputs_inside(out: str | Path, inputs: Iterable[str | Path | None], option: str = "--out") -> None:
    """Raise ValueError when an input is ``out`` or lies inside it: replacing ``out`` would delete the input.
    Inputs that are not local paths (URLs, None) are ignored."""
    target = Path(out).resolve()
    for item in inputs:
        if item is None or "://" in str(item):
            continue
        path = Path(item).resolve()
        if path == target or path.is_relative_to(target):
            raise ValueError(f"{item} lies inside {option} {out}: writing there could delete it; choose another "
                             f"{option} or move the input out of it")
