"""`jowa collect`: play Atari games and write DQN-Replay-format logs."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from jowa_cli.common import UserError, emit_json, handle_errors


def parse_runs(spec: str) -> list[int]:
    """'1', '1,3', '1-3', '1-3,7' -> sorted unique run numbers."""
    out: set[int] = set()
    for token in spec.split(","):
        token = token.strip()
        if not token:
            continue
        try:
            if "-" in token:
                lo, hi = (int(x) for x in token.split("-", 1))
                if lo > hi:
                    raise UserError(f"bad run range {token!r}: start is after end")
                out.update(range(lo, hi + 1))
            else:
                out.add(int(token))
        except ValueError:
            raise UserError(f"bad --runs item {token!r}: expected a number or a range like 1-3") from None
    if not out:
        raise UserError("--runs selects no run")
    if min(out) < 0:
        raise UserError("run numbers must be >= 0")
    return sorted(out)


@handle_errors
def collect(
    games: str = typer.Option(..., "--games", help="Game names or groups, comma separated: 'atari15', "
                              "'Pong,Breakout'."),
    out: Path = typer.Option(..., "--out", help="Output root; runs go to OUT/<Game>/<run>/replay_logs/."),
    runs: str = typer.Option("1", "--runs", help="Run numbers: '1', '1,2', '1-5'."),
    steps: int = typer.Option(..., "--steps", min=1, help="Transitions stored per run (padding excluded)."),
    capacity: int = typer.Option(1_000_000, "--capacity", min=5,
                                 help="Replay buffer size C; a checkpoint is written every C adds."),
    policy: str = typer.Option("random", "--policy", help="Behaviour policy: random; lookahead:EPS "
                               "(MinAtar games: emulator rollouts, a uniform action with probability EPS); "
                               "eps-greedy needs a model checkpoint and is not available yet."),
    seed: int = typer.Option(0, "--seed", min=0, help="Base seed; each run derives its own from "
                             "(seed, game task id, run)."),
    sticky_actions: float = typer.Option(0.25, "--sticky-actions", min=0.0, max=1.0,
                                 help="Sticky-action probability (ALE repeat_action_probability)."),
    max_episode_steps: int = typer.Option(27_000, "--max-episode-steps", min=0,
                                          help="Cut episodes after this many agent steps (0: never)."),
    compress_level: int = typer.Option(1, "--compress-level", min=0, max=9, help="gzip level of the logs."),
    workers: int = typer.Option(1, "--workers", min=1, help="Runs collected in parallel processes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo runs that are already complete."),
    scores_csv: str | None = typer.Option(None, "--scores-csv", help="Also write every completed episode's raw "
                                          "return as method,game,score rows ('data (<policy>)'), which `jowa report` "
                                          "puts beside the agents."),
    json_out: str | None = typer.Option(None, "--json", help="Write a JSON summary to this path ('-': stdout)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display or summary lines."),
) -> None:
    """Play Atari games in the emulator and write DQN-Replay-format logs.

    Each (game, run) pair plays whole games with the behaviour policy under the DQN-Replay settings
    (Dopamine preprocessing: sticky actions 0.25, frame skip 4 with max-pooling, 84x84 grayscale, rewards
    clipped to [-1, 1] when stored, episodes cut at 27,000 steps) until --steps transitions are stored.
    They are logged exactly as batch_rl's logger did, into OUT/<Game>/<run>/replay_logs/ with a
    collect.json beside it, so `jowa prepare-data` reads them like the downloaded dataset.

    Runs are atomic and resumable: finished runs are skipped (unless --overwrite), an interrupted run
    restarts from scratch. Example:

        jowa collect --games Pong,Breakout --runs 1 --steps 20000 --capacity 5000 --out data/raw \
            --scores-csv scores/data.csv
    """
    from jowa_core import games as game_registry
    from jowa_core.data.collect import collect as collect_runs
    from jowa_core.data.collect import write_scores_csv
    from jowa_core.envs.atari import AtariSettings
    from jowa_core.outputs import check_writable
    from jowa_core.progress import make_reporter

    names = game_registry.resolve(games)
    run_list = parse_runs(runs)
    check_writable(json_out, "--json")  # before the runs are collected, not after
    check_writable(scores_csv, "--scores-csv")
    settings = AtariSettings(sticky_actions=sticky_actions, max_episode_steps=max_episode_steps)
    reporter = make_reporter(quiet)
    try:
        summaries = collect_runs(
            names, run_list, out, num_steps=steps, capacity=capacity, policy=policy, seed=seed,
            settings=settings, compresslevel=compress_level, overwrite=overwrite, workers=workers,
            reporter=reporter,
        )
    finally:
        reporter.close()

    stream = sys.stderr if json_out == "-" else sys.stdout  # keep stdout for the JSON
    if not quiet:
        for s in summaries:
            if s["skipped"]:
                print(f"{s['game']} run {s['run']}: already complete, skipped ({s['path']})", file=stream)
                continue
            rets = s["episode_returns"]
            mean = f", mean return {sum(rets) / len(rets):.1f}" if rets else ""
            print(
                f"{s['game']} run {s['run']}: {s['num_steps']} steps, {s['episodes_completed']} episodes"
                f"{mean}, {s['num_checkpoints']} checkpoints, {s['wall_time_s']:.1f}s "
                f"({s['steps_per_s']} steps/s) -> {s['path']}",
                file=stream,
            )
    if scores_csv:
        n = write_scores_csv(summaries, scores_csv)
        if not quiet:
            print(f"{n} episode returns -> {scores_csv}", file=stream)
    emit_json({"out": str(out), "runs": summaries}, json_out)
