"""`jowa learning-check`."""

from __future__ import annotations

from typing import Annotated

import typer

from jowa_cli.common import emit_json, handle_errors
from jowa_core.progress import make_reporter
from jowa_core.recipes.learning import (
    DATA_STICKY_ACTIONS,
    EVAL_EPISODES,
    STAGE1_STEPS,
    STAGE2_STEPS,
    TOKENIZER_STEPS,
    TRANSITIONS,
)


@handle_errors
def learning_check(
    out: Annotated[str, typer.Option(help="Folder for the run (data, tokenizer, pretrain, scores, report).")] = "",
    seed: Annotated[int, typer.Option(help="Seed of data collection, training and the evaluation episodes.")] = 0,
    transitions: Annotated[int, typer.Option(help="Random-policy steps collected.")] = TRANSITIONS,
    tokenizer_steps: Annotated[int, typer.Option(help="Tokenizer training steps.")] = TOKENIZER_STEPS,
    stage1_steps: Annotated[int, typer.Option(help="Pretraining stage-1 (world model) steps.")] = STAGE1_STEPS,
    stage2_steps: Annotated[int, typer.Option(help="Pretraining stage-2 (world + Q) steps.")] = STAGE2_STEPS,
    episodes: Annotated[int, typer.Option(help="Evaluation episodes, greedy and planning each.")] = EVAL_EPISODES,
    sticky_actions: Annotated[float, typer.Option(
        min=0.0, max=1.0,
        help="Repeat-action probability while collecting the data (0.25 is DQN-Replay's; evaluation never has "
             "sticky actions).")] = DATA_STICKY_ACTIONS,
    json_out: Annotated[str, typer.Option("--json", help="Write the summary as JSON here ('-' for stdout).")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Show that it learns: Catch from random-policy data, evaluated greedy and with planning (CPU, minutes).

    Collects random-policy data of the built-in Catch game, trains a small tokenizer, pretrains the tiny preset
    (both stages), evaluates greedy on Q̂ and with beam search (K=2, H=2; imagined rewards read as their
    expectation, and as their mode like the official planner) on fresh episodes and reports them next to the
    random policy (exact) and the data's own return, with each planner's difference from greedy. Writes
    <out>/summary.json and <out>/report. Re-running continues where it stopped. docs/results.md has the numbers
    over several seeds.
    """
    from rich.console import Console
    from rich.table import Table

    from jowa_core.recipes.learning import run_learning_check

    if not out:
        raise ValueError("--out is required")
    reporter = make_reporter(quiet=quiet)
    try:
        s = run_learning_check(out, seed=seed, transitions=transitions, tokenizer_steps=tokenizer_steps,
                               stage1_steps=stage1_steps, stage2_steps=stage2_steps, eval_episodes=episodes,
                               sticky_actions=sticky_actions, reporter=reporter)
    finally:
        reporter.close()
    if not quiet:
        table = Table(title=f"jowa learning-check: {s['game']}, seed {s['seed']} (perfect play: {s['perfect']:.0f})")
        for col in ("policy", "mean return", "95% CI", "episodes", "vs greedy (± s.e.)"):
            table.add_column(col)
        table.add_row("random (exact)", f"{s['random']['mean']:.2f}", "", "", "")
        for name, label in (("data", "data (random policy)"), ("greedy", "JOWA-tiny greedy on Q̂"),
                            ("plan", "JOWA-tiny beam search K=2 H=2"),
                            ("plan-mode", "  ... imagined rewards read as their mode (official)")):
            r, v = s[name], s["versus_greedy"].get(name)
            table.add_row(label, f"{r['mean']:.2f}", f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]", str(r["episodes"]),
                          f"{v['difference']:+.2f} ± {v['se']:.2f}" if v else "")
        Console().print(table)
    emit_json(s, json_out or None)
