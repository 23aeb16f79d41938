"""`jowa bench ...`: throughput benchmarks, written to docs/benchmarks.md."""

from __future__ import annotations

from typing import Annotated

import typer

from jowa_cli.common import emit_json, handle_errors

app = typer.Typer(no_args_is_help=True)


@app.command("data")
@handle_errors
def data(
    frames: Annotated[int, typer.Option(help="Frames per synthetic observation file (C).")] = 100_000,
    files: Annotated[int, typer.Option(help="Observation files converted by the benchmark.")] = 2,
    workers: Annotated[int, typer.Option(help="Converter worker processes.")] = 1,
    seconds: Annotated[float, typer.Option(help="Seconds to run the loader benchmark.")] = 5.0,
    batch_size: Annotated[int, typer.Option(help="Loader batch size.")] = 256,
    workdir: Annotated[str, typer.Option(help="Scratch folder (default: a temporary folder).")] = "",
    out: Annotated[str, typer.Option(help="Append the results as a dated section to this Markdown file.")] = "",
    json_out: Annotated[str, typer.Option("--json", help="Write results as JSON here ('-' for stdout).")] = "",
) -> None:
    """Converter MB/s per worker and peak RSS; loader segments/s per process.

    Makes DQN-Replay-format logs from real Atari frames (ale-py), converts them with prepare-data, then
    reads random 8-step segments with the segment loader.
    """
    from jowa_core.data.bench import bench_data

    result = bench_data(
        frames=frames,
        files=files,
        workers=workers,
        seconds=seconds,
        batch_size=batch_size,
        workdir=workdir or None,
        markdown=out or None,
    )
    for line in result["summary"]:
        typer.echo(line)
    emit_json(result, json_out or None)
