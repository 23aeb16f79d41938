"""`jowa demo`."""

from __future__ import annotations

from typing import Annotated

import typer

from jowa_cli.common import emit_json, handle_errors
from jowa_core.progress import make_reporter


@handle_errors
def demo(
    out: Annotated[str, typer.Option(help="Folder for everything the demo makes.")] = "demo",
    steps: Annotated[int, typer.Option(help="Emulator steps collected per game.")] = 12_000,
    json_out: Annotated[str, typer.Option("--json", help="Write the summary as JSON here ('-' for stdout).")] = "",
) -> None:
    """Run every stage that exists end to end on built-in defaults (no downloads).

    Collects random-policy Atari data in DQN-Replay format, converts it to Zarr stores and draws
    game-balanced training segments. Writes <out>/summary.json.
    """
    from rich.console import Console
    from rich.table import Table

    from jowa_core.demo import run_demo

    reporter = make_reporter()
    try:
        summary = run_demo(out, steps=steps, reporter=reporter)
    finally:
        reporter.close()
    table = Table(title="jowa demo")
    for col in ("game", "steps", "episodes", "mean clipped return", "segments in 20 batches"):
        table.add_column(col)
    for g in summary["games"]:
        table.add_row(g["game"], str(g["steps"]), str(g["episodes"]), f"{g['mean_clipped_return']:.2f}",
                      str(g["segments_in_20_batches"]))
    Console().print(table)
    Console().print({k: round(v, 1) for k, v in summary["timings"].items()})
    emit_json(summary, json_out or None)
