"""`jowa learning-check`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from jowa_cli.common import emit_json, handle_errors
from jowa_core.progress import make_reporter
from jowa_core.recipes.learning import DATA_STICKY_ACTIONS

SUITES = ("catch", "minatar")


@handle_errors
def learning_check(
    out: Annotated[str, typer.Option(help="Folder for the run (data, tokenizer, pretrain, scores, report).")] = "",
    suite: Annotated[str, typer.Option(
        help="catch: the built-in Catch game from random data (minutes); minatar: pretraining on 4 MinAtar games, "
             "planning, and transfer to a held-out fifth (about 1 hour on 2 idle CPU cores; docs/results.md).",
    )] = "catch",
    seed: Annotated[int, typer.Option(help="Seed of data collection, training and the evaluation episodes.")] = 0,
    transitions: Annotated[int | None, typer.Option(
        help="Steps collected per game (default: catch 20000, minatar 10000).")] = None,
    tokenizer_steps: Annotated[int | None, typer.Option(help="Tokenizer training steps.")] = None,
    stage1_steps: Annotated[int | None, typer.Option(help="Pretraining stage-1 (world model) steps.")] = None,
    stage2_steps: Annotated[int | None, typer.Option(help="Pretraining stage-2 (world + Q) steps.")] = None,
    episodes: Annotated[int | None, typer.Option(help="Evaluation episodes per game and policy.")] = None,
    sticky_actions: Annotated[float, typer.Option(
        min=0.0, max=1.0,
        help="catch only: repeat-action probability while collecting the data (0.25 is DQN-Replay's; evaluation "
             "never has sticky actions). MinAtar always plays with its own 0.1.")] = DATA_STICKY_ACTIONS,
    heldout_transitions: Annotated[int | None, typer.Option(
        help="minatar only: steps of the held-out game to fine-tune on (default 5000).")] = None,
    finetune_steps: Annotated[int | None, typer.Option(help="minatar only: fine-tuning steps per run.")] = None,
    finetune_seeds: Annotated[int | None, typer.Option(
        help="minatar only: seeds of each fine-tuning arm (pretrained, scratch).")] = None,
    adapt_steps: Annotated[int | None, typer.Option(
        help="minatar only: steps adapting the pretraining tokenizer to the held-out game before fine-tuning "
             "(default 300).")] = None,
    max_eval_steps: Annotated[int | None, typer.Option(
        help="minatar only: agent steps per evaluation episode at most (default 2500, Freeway's length).")] = None,
    json_out: Annotated[str, typer.Option("--json", help="Write the summary as JSON here ('-' for stdout).")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Show that it learns: Catch from random data, or JOWA's three claims on MinAtar (CPU).

    catch: collects random-policy data of the built-in Catch game, trains a small tokenizer, pretrains the tiny preset
    (both stages), evaluates greedy on Q̂ and with beam search (K=2, H=2; imagined rewards read as their
    expectation, and as their mode like the official planner) on fresh episodes and reports them next to the
    random policy (exact) and the data's own return, with each planner's difference from greedy.

    minatar: mixed-quality data of 5 MinAtar games; one model pretrained on 4 of them, evaluated greedy and with
    planning on each; the fifth held out and fine-tuned from the pretrained model and from scratch over several seeds.

    Writes <out>/summary.json and <out>/report. Re-running continues where it stopped. docs/results.md has the
    numbers.
    """
    if not out:
        raise ValueError("--out is required")
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of: {', '.join(SUITES)}")
    given = {k: v for k, v in {"transitions": transitions, "tokenizer_steps": tokenizer_steps,
                               "stage1_steps": stage1_steps, "stage2_steps": stage2_steps,
                               "eval_episodes": episodes}.items() if v is not None}
    minatar_only = {k: v for k, v in {"heldout_transitions": heldout_transitions, "finetune_steps": finetune_steps,
                                      "finetune_seeds": finetune_seeds, "adapt_steps": adapt_steps,
                                      "max_eval_steps": max_eval_steps}.items() if v is not None}
    if suite == "catch" and minatar_only:
        raise ValueError(f"--{next(iter(minatar_only)).replace('_', '-')} is a minatar option (--suite minatar)")
    reporter = make_reporter(quiet=quiet)
    try:
        if suite == "minatar":
            from jowa_core.recipes.minatar import run_minatar_suite

            s = run_minatar_suite(out, seed=seed, reporter=reporter, **given, **minatar_only)
        else:
            from jowa_core.recipes.learning import run_learning_check

            s = run_learning_check(out, seed=seed, sticky_actions=sticky_actions, reporter=reporter, **given)
    finally:
        reporter.close()
    if not quiet:
        (_print_minatar if suite == "minatar" else _print_catch)(s)
    emit_json(s, json_out or None)


def _print_catch(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

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


def _print_minatar(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    fid = s.get("tokenizer_fidelity") or {}
    if fid:
        Console().print("tokenizer: occupied cells read back from its reconstructions: "
                        + ", ".join(f"{g} {f['objects']:.2f}" for g, f in fid.items()))
    table = Table(title=f"jowa learning-check --suite minatar, seed {s['seed']}: one model, {len(s['pretrain_games'])} "
                        "games (mean return; DNS = (s - random) / (lookahead - random))")
    for col in ("game", "random", "lookahead", "data", "greedy", "plan", "plan - greedy (z)", "DNS greedy / plan"):
        table.add_column(col)
    for g, r in s["pretrained"].items():
        v = r["plan_vs_greedy"]
        table.add_row(g, f"{r['random']:.2f}", f"{r['lookahead']:.2f}", f"{r['data']['mean']:.2f}",
                      f"{r['greedy']['mean']:.2f}", f"{r['plan']['mean']:.2f}",
                      f"{v['difference']:+.2f} ({v['z']:+.1f})", f"{r['dns_greedy']:.2f} / {r['dns_plan']:.2f}")
    Console().print(table)
    t = s["transfer"]
    if t.get("tokenizer_fidelity"):
        Console().print(f"tokenizer adapted to {t['game']} ({s['adapt_steps']} steps): occupied cells read back "
                        f"{t['tokenizer_fidelity']['objects']:.2f}")
    table = Table(title=f"held out: {t['game']}, fine-tuned {s['finetune_steps']} steps on "
                        f"{s['heldout_transitions']} transitions, {s['finetune_seeds']} seeds (95% CI over seeds)")
    for col in ("initialisation", "mean return", "95% CI", "DNS", "per seed"):
        table.add_column(col)
    for arm in ("pretrained", "scratch"):
        r, d = t[arm]["per_seed"], t[arm]["dns"]
        table.add_row(arm, f"{r['mean']:.2f}", f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]", f"{d['mean']:.2f}",
                      ", ".join(f"{v:.2f}" for v in r["values"]))
    d = t["pretrained_minus_scratch"]
    table.add_row("pretrained - scratch", f"{d['mean']:+.2f}", f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]", "", "")
    Console().print(table)
