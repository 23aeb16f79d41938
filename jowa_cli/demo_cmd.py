"""`jowa demo`."""

from __future__ import annotations

from typing import Annotated

import typer

from jowa_cli.common import Quiet, emit_json, handle_errors
from jowa_core.progress import make_reporter


@handle_errors
def demo(
    out: Annotated[str, typer.Option(help="Folder for everything the demo makes.")] = "demo",
    steps: Annotated[int, typer.Option(help="Emulator steps collected per game.")] = 8_000,
    tokenizer_steps: Annotated[int, typer.Option(help="Tokenizer training steps.")] = 250,
    pretrain_steps: Annotated[int, typer.Option(help="Pretraining steps per stage.")] = 250,
    json_out: Annotated[str, typer.Option("--json", help="Write the summary as JSON here ('-' for stdout).")] = "",
    quiet: Quiet = False,
) -> None:
    """Run every stage that exists end to end on built-in defaults (no downloads).

    Collects random-policy Atari data in DQN-Replay format, converts it to Zarr stores, draws game-balanced
    training segments, trains a demo-sized tokenizer, tokenizes the stores, pretrains a tiny world-action
    model in both stages, evaluates it with beam-search planning in the emulator (<out>/scores.json),
    fine-tunes it on a held-out game offline (<out>/finetune) and online in the emulator (<out>/online), trains
    and evaluates the paper's baselines MTBC and Scaled-QL on the same stores (<out>/baseline-*) and verifies
    every store and checkpoint in full. Ends with the report (<out>/report: aggregates.csv, report.md, plots).
    Re-running continues where it stopped. Writes <out>/summary.json.
    """
    from rich.console import Console
    from rich.table import Table

    from jowa_core.recipes.demo import run_demo

    reporter = make_reporter(quiet)
    try:
        summary = run_demo(out, steps=steps, reporter=reporter, tokenizer_steps=tokenizer_steps,
                           pretrain_steps=(pretrain_steps, pretrain_steps))
    finally:
        reporter.close()
    table = Table(title="jowa demo")
    for col in ("game", "steps", "episodes", "mean clipped return", "segments in 20 batches"):
        table.add_column(col)
    for g in summary["games"]:
        table.add_row(g["game"], str(g["steps"]), str(g["episodes"]), f"{g['mean_clipped_return']:.2f}",
                      str(g["segments_in_20_batches"]))
    Console(quiet=quiet).print(table)
    tm, pm = summary["tokenizer"]["metrics"] or {}, summary["pretrain"]
    Console(quiet=quiet).print(f"tokenizer: {summary['tokenizer']['final']}  " + "  ".join(
        f"{k} {float(v):.4f}" for k, v in tm.items() if k in ("total", "reconstruction", "heldout_l1")))
    Console(quiet=quiet).print(f"pretrain: {pm['final']}  obs-token loss {pm['world_obs_loss'][0]:.3f} -> "
                    f"{pm['world_obs_loss'][1]:.3f}" + (f", TD loss {pm['td_loss'][0]:.3f} -> {pm['td_loss'][1]:.3f}"
                                                       if pm["td_loss"] else ""))
    ev = summary["evaluate"]
    Console(quiet=quiet).print("evaluate (beam 2, horizon 2): mean return " + ", ".join(
        f"{g} {v:.1f}" for g, v in ev["mean_return"].items()) + f"; {ev['env_steps_per_s']:.1f} env steps/s")
    ft = summary["finetune"]
    Console(quiet=quiet).print(f"finetune on held-out {ft['game']}: final {ft['final']['path']}"
                    + (f", best eval mean {ft['best']['mean']:.1f}" if ft.get("best") else ""))
    on = summary["online"]
    Console(quiet=quiet).print(f"finetune --online on {ft['game']}: {on['env_steps']} env steps, {on['updates']} "
                               f"updates, final {on['final']['path'] if on.get('final') else '-'}")
    Console(quiet=quiet).print("baselines: " + ", ".join(summary["baselines"]) + "; verify: " + ", ".join(
        f"{p} {'ok' if v['ok'] else 'PROBLEMS'}" for p, v in summary["verify"].items()))
    Console(quiet=quiet).print(f"report: {summary['report']['out']}/report.md, aggregates.csv, *.png")
    Console(quiet=quiet).print({k: round(v, 1) for k, v in summary["timings"].items()})
    emit_json(summary, json_out or None)
