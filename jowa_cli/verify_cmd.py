"""`jowa verify`."""

from __future__ import annotations

from typing import Annotated

import typer

from jowa_cli.common import Quiet, emit_json, handle_errors

EXIT_PROBLEMS = 1  # something checked is wrong (2 stays for bad input: a path that is none of the kinds)


@handle_errors
def verify(
    paths: Annotated[list[str], typer.Argument(help="Stores, folders of stores, checkpoints or run directories.")],
    json_out: Annotated[str, typer.Option("--json", help="Also write the reports as JSON here ('-' for stdout).")] = "",
    quiet: Quiet = False,
) -> None:
    """Check stores, checkpoints and run directories in full and report what is wrong (exit 1 if anything is).

    jowa verify data/atari15 runs/jowa150m runs/tok/final [--json -]

    A store: its contract and cross-checks, every frame chunk against its checksum, obs_tokens within the
    tokenizer's vocabulary. A checkpoint: weights against the sha256 in checkpoint.json, names and shapes
    against the config, finite weights, the training state when present. A run: every checkpoint in it,
    checkpoints/latest, metrics.csv, leftovers of killed writers, a live lock. Reads only; exit 0 when
    everything is good, 1 when a problem was found, 2 when a path is none of these.
    """
    from pathlib import Path

    from jowa_core.progress import make_reporter
    from jowa_core.recipes.verify import detect_kind, verify

    for p in paths:  # every path is recognised before anything is read
        detect_kind(Path(p))
    reporter = make_reporter(quiet=quiet)
    try:
        reports = [verify(p, reporter=reporter) for p in paths]
    finally:
        reporter.close()
    if not quiet:
        for r in reports:
            status = "ok" if r["ok"] else f"{len(r['problems'])} problem(s)"
            typer.echo(f"{r['path']} ({r['kind']}): {status}; checked {len(r['checked'])} item(s)")
            for line in r["problems"]:
                typer.echo(f"  problem: {line}")
            for line in r["notes"]:
                typer.echo(f"  note: {line}")
    emit_json({"ok": all(r["ok"] for r in reports), "reports": reports}, json_out or None)
    if not all(r["ok"] for r in reports):
        raise typer.Exit(EXIT_PROBLEMS)
