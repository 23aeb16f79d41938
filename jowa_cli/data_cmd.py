"""`jowa prepare-data`."""

from __future__ import annotations

from typing import Annotated

import typer

from jowa_cli.common import emit_json, handle_errors
from jowa_core.progress import make_reporter


@handle_errors
def prepare_data(
    source: Annotated[
        str,
        typer.Option(
            help="Local dir or fsspec URL: DQN-Replay (<Game>/<run>/replay_logs/) or RL Unplugged "
            "(<Game>/run_<N>-XXXXX-of-XXXXX, e.g. gs://rl_unplugged/atari_episodes_ordered)."
        ),
    ],
    games: Annotated[
        str, typer.Option(help="Games: group names (atari15, atari5, atari20, atari6, all) or a comma list.")
    ],
    out: Annotated[str, typer.Option(help="Output folder; one <Game>.zarr store per game is written here.")],
    runs: Annotated[str, typer.Option(help="Runs to read, e.g. '1,2' or '1-3' (default: every run found).")] = "",
    checkpoints: Annotated[str, typer.Option(help="Checkpoint range, e.g. '1-50' (default: all).")] = "",
    split: Annotated[str, typer.Option(help="all | first20 | last20: first/last 20% of the checkpoints.")] = "all",
    subsample: Annotated[
        float, typer.Option(help="Keep this fraction of transitions, as whole episodes (paper: 0.1).")
    ] = 1.0,
    with_replacement: Annotated[
        bool, typer.Option("--with-replacement", help="Draw episodes with replacement (official code).")
    ] = False,
    max_transitions: Annotated[
        int, typer.Option(help="Cap on transitions per game (e.g. 5000 for fine-tuning sets); 0 = none.")
    ] = 0,
    fmt: Annotated[
        str, typer.Option("--format", help="Source layout: auto (detected per game) | dqn | rlu.")
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the episode draw.")] = 0,
    workers: Annotated[int, typer.Option(help="Parallel processes streaming observation files.")] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rebuild stores that already exist.")] = False,
    json_out: Annotated[str, typer.Option("--json", help="Write a JSON summary here ('-' for stdout).")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Convert DQN-Replay (Dopamine) logs or RL Unplugged Atari episodes into one Zarr store per game.

    DQN-Replay: rebuilds each run's chronological stream across checkpoint files (padding rows, stale rows and lost
    laps handled as the logger wrote them), keeps complete episodes, optionally subsamples them, and writes
    <out>/<Game>.zarr (obs, action in the full 18-action space, reward, terminal, episode_start,
    episode_length). RL Unplugged: one episode per record, the terminal observation dropped.
    Interrupted runs resume; finished stores are skipped unless --overwrite.

    Example: jowa prepare-data --source /data/dqn --games atari15 --runs 1,2 --subsample 0.1 --out data/atari15
    """
    from jowa_core.data.convert import PrepareOptions, parse_int_list, parse_range
    from jowa_core.data.convert import prepare_data as run
    from jowa_core.outputs import check_writable

    if not 0 < subsample <= 1:  # NaN fails too
        raise ValueError(f"--subsample must be a fraction in (0, 1], got {subsample}")
    if workers < 1 or max_transitions < 0:
        raise ValueError(f"--workers must be >= 1 and --max-transitions >= 0, got {workers} and {max_transitions}")
    check_writable(json_out, "--json")
    opts = PrepareOptions(
        source=source,
        out=out,
        games=[g for g in games.split(",") if g.strip()] or [games],
        runs=parse_int_list(runs),
        checkpoints=parse_range(checkpoints),
        split=split,
        subsample=None if subsample >= 1.0 else subsample,
        replacement=with_replacement,
        max_transitions=max_transitions or None,
        seed=seed,
        workers=workers,
        overwrite=overwrite,
        format=fmt,
    )
    reporter = make_reporter(quiet)
    try:
        summaries = run(opts, reporter)
    finally:
        reporter.close()
    emit_json({"stores": summaries}, json_out or None)
