"""`jowa report`."""

from __future__ import annotations

from typing import Annotated

import typer

from jowa_cli.common import Quiet, UserError, emit_json, handle_errors


@handle_errors
def report(
    inputs: Annotated[list[str], typer.Argument(help="`jowa evaluate` JSON files and/or CSVs (method,game,score).")],
    out: Annotated[str, typer.Option(help="Output folder (report.md, per_game.csv, aggregates.csv, PNGs).")] = (
        "report"
    ),
    published: Annotated[
        str,
        typer.Option(
            help="Paper baselines to add: auto (Table 2 unless every game is held out; fine-tuning Tables 3/17 "
            "when any of the 5 held-out games is present), pretrain, finetune, all or none."
        ),
    ] = "auto",
    no_published: Annotated[
        bool, typer.Option("--no-published", help="Leave out the paper's baselines (= --published none).")
    ] = False,
    reps: Annotated[int, typer.Option(help="Bootstrap replicates for the 95% confidence intervals.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")] = False,
    json_out: Annotated[str, typer.Option("--json", help="Also write the report JSON here ('-' for stdout).")] = "",
    quiet: Quiet = False,
) -> None:
    """Tabulate and plot evaluation results: HNS/DNS per game, mean/median/IQM with bootstrap CIs, vs the paper.

    jowa report scores-150m.json scores-70m.json [external.csv] [--out report]
    [--published auto|pretrain|finetune|all|none] [--no-published] [--reps 2000] [--seed 0] [--no-plots] [--json -]

    Inputs: `jowa evaluate` JSONs (method = file stem, or JOWA-<preset> for 'scores.json') and CSVs with columns
    method,game,score (one row per game or per episode). Writes per_game.csv, aggregates.csv
    (method,normalization,metric,value,ci_low,ci_high), report.md, report.json and PNG plots (aggregates,
    performance profile, scaling when several model sizes are given, planning vs no planning when both are).
    The paper's baselines are added side by side, labelled "(published)": Table 2 (pretraining, 15 games) and,
    when the results include held-out games (Gravitar, MsPacman, Pong, Robotank, YarsRevenge), the fine-tuning
    Tables 3/17; --published picks them explicitly.
    """
    from rich.console import Console
    from rich.table import Table

    from jowa_core.evaluation.report import aggregate_cell, build_report, load_results

    if reps < 1:
        raise UserError(f"--reps must be >= 1, got {reps}")
    if no_published and published.lower() not in ("auto", "none"):
        raise UserError(f"--no-published contradicts --published {published}")
    methods = load_results(inputs)
    choice = "none" if no_published else published.lower()
    result = build_report(methods, out, published=choice, reps=reps, seed=seed, plots=not no_plots)

    columns = [("IQM HNS", "human", "iqm"), ("median HNS", "human", "median"), ("mean HNS", "human", "mean"),
               ("#superhuman", "human", "superhuman"), ("IQM DNS", "dqn", "iqm")]  # fmt: skip
    if "finetune" in result["settings"]["published"]:  # Table 3 reports mean/median/IQM DNS
        columns += [("median DNS", "dqn", "median"), ("mean DNS", "dqn", "mean")]
    console = Console(stderr=json_out == "-", quiet=quiet)
    table = Table(title="Aggregates (95% stratified-bootstrap CIs)")
    table.add_column("method", no_wrap=True)
    for col, _, _ in columns:
        table.add_column(col, min_width=len(col))
    for m in result["methods"]:
        cells = [aggregate_cell(result["aggregates"], m["name"], kind, metric, 0 if metric == "superhuman" else 3)
                 for _, kind, metric in columns]  # fmt: skip
        table.add_row(m["name"], *cells, style="dim" if m["published"] else None)
    console.print(table)
    for m in result["methods"]:
        for note in m["notes"]:
            console.print(f"[yellow]note[/yellow] {m['name']}: {note}")
    console.print(f"wrote {', '.join(sorted(result['files']))} to {out}")
    emit_json(result, json_out or None)
