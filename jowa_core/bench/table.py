"""Markdown tables for `jowa bench` results: a dated section per run, ours next to the baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def fmt_rate(x: float) -> str:
    """A rate for benchmark tables: thousands separators from 100 up, 3 significant digits below."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def append_comparison(path: Path, r: dict[str, Any], title: str, ours: str, baseline: str, summary: str,
                      rows: list[tuple[str, str, str, str]]) -> None:
    """Append a dated section (title, device, torch, command, ``summary`` line, then a table of measure / ``ours``
    / ``baseline`` / ours ÷ baseline ``rows``) for a ``jowa bench`` result ``r``."""
    cuda = f", CUDA {r['cuda']}" if r["cuda"] else ""
    append_section(path, [
        f"\n## {title} — {r['date']} — {r['device']}, torch {r['torch']}{cuda}\n",
        f"`{r['command']}`\n",
        summary + ".\n",
        f"| measure | {ours} | {baseline} | ours ÷ baseline |",
        "|---|---|---|---|",
        *(f"| {' | '.join(cells)} |" for cells in rows),
        "",
    ])


def append_section(path: Path, lines: list[str]) -> None:
    """Append markdown ``lines`` to the benchmarks file, creating it with its header if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("# Benchmarks\n\nResults appended by `jowa bench ...`; each row compares against a "
                        "baseline measured in the same run.\n")
    with path.open("a") as f:
        f.write("\n".join(lines))
