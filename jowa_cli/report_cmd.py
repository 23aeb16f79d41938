"""`jowa report`."""

from __future__ import annotations

from typing import Annotated

import typer

from jowa_cli.common import UserError, emit_json, handle_errors


@handle_errors
def report(
    inputs: Annotated[list[str], typer.Argument(help="`jowa evaluate` JSON files and/or CSVs (method,game,score).")],
    out: Annotated[str, typer.Option(help="Output folder (report.md, per_game.csv, aggregates.csv, PNGs).")] = (
        "report"
    ),
    no_published: Annotated[
        bool, typer.Option("--no-published", help="Leave out the paper's Table 2 baselines.")
    ] = False,
    reps: Annotated[int, typer.Option(help="Bootstrap replicates for the 95% confidence intervals.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")] = False,
    json_out: Annotated[str, typer.Option("--json", help="Also write the report JSON here ('-' for stdout).")] = "",
) -> None:
    """Tabulate and plot evaluation results: HNS/DNS per game, mean/median/IQM with bootstrap CIs, vs the paper.

    jowa report scores-150m.json scores-70m.json [external.csv] [--out report] [--no-published] [--reps 2000]
    [--seed 0] [--no-plots] [--json -]

    Inputs: `jowa evaluate` JSONs (method = file stem, or JOWA-<preset> for 'scores.json') and CSVs with columns
    method,game,score (one row per game or per episode). Writes per_game.csv, aggregates.csv
    (method,normalization,metric,value,ci_low,ci_high), report.md, report.json and PNG plots (aggregates,
    performance profile, scaling when several model sizes are given, planning vs no planning when both are).
    The paper's Table 2 baselines are added side by side, labelled "(published)".
    """
    from rich.console import Console
    from rich.table import Table

    from jowa_core.evaluation.report import build_report, load_results

    if reps < 1:
        raise UserError(f"--reps must be >= 1, got {reps}")
    methods = load_results(inputs)
    result = build_report(methods, out, published=not no_published, reps=reps, seed=seed, plots=not no_plots)

    def cell(name: str, kind: str, metric: str, digits: int = 3) -> str:
        a = next((a for a in result["aggregates"] if a["method"] == name and a["normalization"] == kind
                  and a["metric"] == metric), None)  # fmt: skip
        if a is None:
            return "n/a"
        return f"{a['value']:.{digits}f} [{a['ci_low']:.{digits}f}, {a['ci_high']:.{digits}f}]"

    console = Console(stderr=json_out == "-")
    table = Table(title="Aggregates (95% stratified-bootstrap CIs)")
    table.add_column("method", no_wrap=True)
    for col in ("IQM HNS", "median HNS", "mean HNS", "#superhuman", "IQM DNS"):
        table.add_column(col)
    for m in result["methods"]:
        name = m["name"]
        style = "dim" if m["published"] else None
        table.add_row(
            name,
            cell(name, "human", "iqm"),
            cell(name, "human", "median"),
            cell(name, "human", "mean"),
            cell(name, "human", "superhuman", 0),
            cell(name, "dqn", "iqm"),
            style=style,
        )
    console.print(table)
    for m in result["methods"]:
        for note in m["notes"]:
            console.print(f"[yellow]note[/yellow] {m['name']}: {note}")
    console.print(f"wrote {', '.join(sorted(result['files']))} to {out}")
    emit_json(result, json_out or None)
