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
    fmt: Annotated[
        str, typer.Option("--format", help="dqn: DQN-Replay logs + loader; rlu: RL Unplugged shards (PNG decoding).")
    ] = "dqn",
) -> None:
    """Converter MB/s per worker and peak RSS; loader segments/s per process.

    Makes DQN-Replay-format logs from real Atari frames (ale-py), converts them with prepare-data, then
    reads random 8-step segments with the segment loader.
    """
    from jowa_core.bench.data import bench_data, bench_rlu

    if fmt not in ("dqn", "rlu"):
        raise ValueError(f"unknown --format {fmt!r}; choose dqn or rlu")
    if fmt == "rlu":
        result = bench_rlu(steps=frames, files=files, workers=workers, workdir=workdir or None, markdown=out or None)
        for line in result["summary"]:
            typer.echo(line)
        emit_json(result, json_out or None)
        return
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


@app.command("train")
@handle_errors
def train(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Config overrides model.key=value / train.key=value.")
    ] = None,
    preset: Annotated[str, typer.Option(help="Model preset: tiny, 40m, 70m or 150m.")] = "150m",
    batch_size: Annotated[int, typer.Option(help="Segments per step (8 steps, 296 tokens each).")] = 512,
    steps: Annotated[int, typer.Option(help="Timed training steps.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed steps first (compilation, allocator, autotuning).")] = 3,
    stage: Annotated[int, typer.Option(help="Pretraining stage: 1 (world loss) or 2 (world + TD + CQL).")] = 2,
    device: Annotated[str, typer.Option(help="auto (the GPU when there is one), cuda, cuda:N or cpu.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast on GPU, fp32 on CPU), bf16 or fp32.")] = "auto",
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model (not the baseline).")] = False,
    baseline: Annotated[
        bool, typer.Option("--baseline/--no-baseline", help="Also time the official-style baseline.")
    ] = True,
    peak_tflops: Annotated[
        float | None, typer.Option(help="Device peak TFLOP/s for MFU (default: table by GPU name; none on CPU).")
    ] = None,
    out: Annotated[str, typer.Option(help="Append the results as a dated section to this Markdown file.")] = "",
    json_out: Annotated[str, typer.Option("--json", help="Write results as JSON here ('-' for stdout).")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Training tokens/s and model FLOPs utilisation (MFU) of full pretraining steps.

    Times forward + loss (jowa_loss of the stage), backward, gradient clipping and AdamW on synthetic
    batches already on the device, next to an official-style baseline in the same run (attention=manual,
    eager, same precision). MFU uses analytic model FLOPs (matmuls, causal attention) over the device's dense
    peak. Out of memory: exit code 2.

    Example: jowa bench train --preset 150m --batch-size 512 --precision bf16 --compile --out docs/benchmarks.md
    """

    from jowa_core.bench.train import bench_train, table_rows
    from jowa_core.progress import make_reporter

    reporter = make_reporter(quiet=quiet)
    try:
        result = bench_train(preset=preset, batch_size=batch_size, steps=steps, warmup=warmup, stage=stage,
                             device=device, precision=precision, compile=compile_, baseline=baseline,
                             peak_tflops=peak_tflops,
                             overrides=overrides or (), reporter=reporter, markdown=out or None)
    finally:
        reporter.close()
    _print_comparison("train", result, table_rows(result), ("ours", "baseline (official-style)"))
    emit_json(result, json_out or None)


@app.command("plan")
@handle_errors
def plan(
    preset: Annotated[str, typer.Option(help="Model preset: tiny, 40m, 70m or 150m (random init).")] = "150m",
    envs: Annotated[int, typer.Option(help="Environments planned for at once (one batched call per decision).")] = 16,
    beam: Annotated[int, typer.Option(help="Beam width K.")] = 3,
    horizon: Annotated[int, typer.Option(help="Planning horizon H.")] = 2,
    decisions: Annotated[int, typer.Option(help="Timed decisions (batched calls over all environments).")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed decisions first.")] = 1,
    baseline_decisions: Annotated[
        int, typer.Option(help="Decisions per environment of the (slow) node-by-node baseline.")
    ] = 1,
    device: Annotated[str, typer.Option(help="auto (the GPU when there is one), cuda, cuda:N or cpu.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 weights on GPU, fp32 on CPU), bf16 or fp32.")] = "auto",
    baseline: Annotated[
        bool, typer.Option("--baseline/--no-baseline", help="Also time the node-by-node baseline.")
    ] = True,
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads (default: torch's); 1 avoids OpenMP spinning on small CPUs.")
    ] = None,
    baseline_envs: Annotated[
        int | None, typer.Option(help="Time the baseline on the first N environments only (default: all).")
    ] = None,
    fast_path: Annotated[
        str, typer.Option(help="Also time the static-KV-cache planner: off, static, graph (one CUDA graph per "
                               "decision) or auto (graph on GPU, static on CPU).")
    ] = "off",
    out: Annotated[str, typer.Option(help="Append the results as a dated section to this Markdown file.")] = "",
    json_out: Annotated[str, typer.Option("--json", help="Write results as JSON here ('-' for stdout).")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Planning decisions/s and environment steps/s, against a node-by-node planner in the same run.

    Times the batched beam search (all environments and nodes in one batch over a forked KV cache) on random
    full-length contexts of a randomly initialised model, greedy acting (no planning), and a straightforward
    one-environment, node-by-node planner (the official planner's structure) on the same model and contexts.

    Example: jowa bench plan --preset 150m --envs 16 --beam 3 --horizon 2 --out docs/benchmarks.md
    """

    from jowa_core.bench.plan import bench_plan, table_rows
    from jowa_core.progress import make_reporter

    reporter = make_reporter(quiet=quiet)
    try:
        result = bench_plan(preset=preset, envs=envs, beam=beam, horizon=horizon, decisions=decisions,
                            warmup=warmup, device=device, precision=precision, baseline=baseline,
                            baseline_decisions=baseline_decisions, threads=threads, reporter=reporter,
                            markdown=out or None, fast_path=fast_path, baseline_envs=baseline_envs)
    finally:
        reporter.close()
    _print_comparison("plan", result, table_rows(result), ("ours (batched)", "baseline (node by node)"))
    emit_json(result, json_out or None)


@app.command("evaluate")
@handle_errors
def evaluate(
    preset: Annotated[str, typer.Option(help="Model preset: tiny, 40m, 70m or 150m (random init).")] = "tiny",
    games: Annotated[str, typer.Option(help="ALE games (names or a group); episodes are dealt round robin.")] = "Pong",
    envs: Annotated[int, typer.Option(help="Episodes played at once (a multiple of the number of games).")] = 16,
    steps: Annotated[int, typer.Option(help="Agent steps per episode (episodes are cut there).")] = 50,
    plan: Annotated[bool, typer.Option("--plan/--no-plan", help="Beam search, or greedy on Q̂.")] = True,
    beam: Annotated[int, typer.Option(help="Beam width K.")] = 3,
    horizon: Annotated[int, typer.Option(help="Planning horizon H.")] = 2,
    device: Annotated[str, typer.Option(help="auto (the GPU when there is one), cuda, cuda:N or cpu.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 weights on GPU, fp32 on CPU), bf16 or fp32.")] = "auto",
    fast_path: Annotated[str, typer.Option(help="Planner: off, static, graph or auto (as jowa evaluate).")] = "off",
    tokenizer_vocab: Annotated[
        int | None, typer.Option(help="Tokenizer codebook size (default: the paper's 2048).")] = None,
    out: Annotated[str, typer.Option(help="Append the results as a dated section to this Markdown file.")] = "",
    json_out: Annotated[str, typer.Option("--json", help="Write results as JSON here ('-' for stdout).")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Environment steps/s of `jowa evaluate` with emulator stepping overlapped with planning, against one batch.

    Plays the same episodes (ale-py vector env, random-init model and tokenizer) twice: one batch stepped after
    every decision, then two lanes, one lane's emulators stepping while the agent plans for the other. Both must
    give the same episode results.

    Example: jowa bench evaluate --preset 150m --games Pong --envs 64 --steps 100 --out docs/benchmarks.md
    """
    from jowa_core.bench.evaluate import bench_evaluate, table_rows
    from jowa_core.progress import make_reporter

    reporter = make_reporter(quiet=quiet)
    try:
        result = bench_evaluate(preset=preset, games=games, envs=envs, steps=steps, plan=plan, beam=beam,
                                horizon=horizon, device=device, precision=precision, fast_path=fast_path,
                                tokenizer_vocab=tokenizer_vocab, reporter=reporter, markdown=out or None)
    finally:
        reporter.close()
    _print_comparison("evaluate", result, table_rows(result), ("ours (overlapped)", "baseline (one batch)"))
    emit_json(result, json_out or None)


def _print_comparison(name: str, result: dict, rows: list, columns: tuple[str, str]) -> None:
    """The rich table of a bench result (measure, ours, baseline, ratio) and its summary lines."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"jowa bench {name} — {result['device']}, torch {result['torch']}")
    for col in ("measure", *columns, "ours ÷ baseline"):
        table.add_column(col)
    for cells in rows:
        table.add_row(*cells)
    console.print(table)
    for line in result["summary"]:
        console.print(line, highlight=False, soft_wrap=True)
