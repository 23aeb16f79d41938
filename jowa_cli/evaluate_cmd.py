"""`jowa evaluate`."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from jowa_cli.common import UserError, emit_json, handle_errors
from jowa_core.planning import DEFAULT_REWARD_MODE
from jowa_core.progress import make_reporter


def _int_option(name: str, value: str) -> int:
    try:
        k = int(value)
    except ValueError:
        raise UserError(f"{name} must be an integer or 'auto', got {value!r}") from None
    if k < 1:
        raise UserError(f"{name} must be >= 1, got {k}")
    return k


@handle_errors
def evaluate(
    ckpt: Annotated[str, typer.Option("--ckpt", help="World-action checkpoint or run directory.")],
    tokenizer: Annotated[str, typer.Option(
        help="Tokenizer checkpoint, run directory or official tokenizer.pt (not for Scaled-QL, which reads frames).")
    ] = "",
    games: Annotated[str, typer.Option(help="Games or groups, comma-separated (atari15, atari5, Pong, ...).")] = (
        "atari15"
    ),
    episodes: Annotated[int, typer.Option(help="Episodes per game (paper: 16).")] = 16,
    beam: Annotated[str, typer.Option(help="Beam width K, or 'auto' for each game's paper width (Table 16).")] = (
        "auto"
    ),
    horizon: Annotated[int, typer.Option(help="Planning horizon H (imagined steps; paper: 2).")] = 2,
    no_plan: Annotated[bool, typer.Option("--no-plan", help="Greedy on Q̂, no imagination.")] = False,
    gamma: Annotated[
        float | None, typer.Option(help="Planner discount; default: the checkpoint's training gamma, else 0.99.")
    ] = None,
    imagined_reward: Annotated[
        str, typer.Option(help="Imagined rewards: expected (p(+1) - p(-1), the paper's expectation) or mode "
                                "(argmax, the official planner).")
    ] = DEFAULT_REWARD_MODE,
    history: Annotated[
        int, typer.Option(help="Context steps 1..8 (capped at 8 - horizon when planning); 0 = the most that fits.")
    ] = 0,
    max_frames: Annotated[
        int, typer.Option(help="Emulator frames per episode (agent steps x 4); 432000 = the official 108k steps.")
    ] = 108_000,
    epsilon: Annotated[float, typer.Option(help="Probability of a random valid action per step.")] = 0.001,
    seed: Annotated[int, typer.Option(help="Episode e of each game uses seed + e.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="World-action weights: fp32 or bf16.")] = "fp32",
    q_dropout: Annotated[str, typer.Option(
        help="off: Q heads deterministic in evaluation (intended); official: their Dropout(0.01) stays on as in "
             "the official code, for parity with its released raw scores (docs/evaluation.md).")] = "off",
    video_dir: Annotated[str, typer.Option(help="Write MP4s of the agent's observations into this folder.")] = "",
    video_episodes: Annotated[str, typer.Option(help="Episodes (of every game) to film, e.g. '0,3'.")] = "0",
    mcts: Annotated[bool, typer.Option("--mcts", help="Plan with MCTS (K^2 (H-1) + K simulations) instead.")] = False,
    batch: Annotated[int, typer.Option(help="Most environments per planner call (memory ~ batch x beam^2).")] = 64,
    backend: Annotated[str, typer.Option(help="Emulators: auto, vector (ale-py AtariVectorEnv) or loop.")] = "auto",
    overlap: Annotated[bool, typer.Option(
        help="With the vector backend, step half of the episodes' emulators while planning for the other half "
             "(identical results; --no-overlap: one batch, for comparison).")] = True,
    fast_path: Annotated[str, typer.Option(
        help="Beam search with preallocated KV caches per padded batch shape: off, static, graph (CUDA graphs) or "
             "auto (graph on GPU, static on CPU).")] = "off",
    out: Annotated[str, typer.Option(help="Scores JSON (per episode and per game, settings, hashes).")] = (
        "scores.json"
    ),
    json_out: Annotated[str, typer.Option("--json", help="Also write the result JSON here ('-' for stdout).")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Evaluate a world-action model on Atari with beam-search planning (paper protocol), all episodes batched.

    jowa evaluate --ckpt runs/jowa150m --tokenizer runs/tok --games atari15 --episodes 16 --beam 3|auto
    --horizon 2 [--no-plan] [--history 1..8] [--max-frames 108000] [--epsilon 0.001] [--seed 0] [--device auto]
    [--out scores.json] [--json -]

    Protocol (paper Table 15): no sticky actions, frame skip 4 with max-pool, 84x84 grayscale, one frame per
    step, no no-op starts, episodes end at game over or after --max-frames frames, raw scores, epsilon 0.001.
    Several GPUs: `torchrun --nproc_per_node=N -m jowa_cli.main evaluate ...` shares the episodes out; rank 0
    writes the JSON. Baselines (jowa pretrain --algo mtbc|scaled-ql checkpoints) play greedily under the same
    protocol; the planning options do not apply to them.
    """
    from rich.console import Console
    from rich.table import Table

    from jowa_core.evaluation.agent import AgentSettings
    from jowa_core.evaluation.envs import EvalSettings
    from jowa_core.evaluation.runner import evaluate as run
    from jowa_core.outputs import check_writable

    if history < 0:
        raise UserError(f"--history must be >= 0, got {history}")
    check_writable(out, "--out")  # before the episodes are played, not after
    check_writable(json_out, "--json")
    settings = EvalSettings(max_frames=max_frames, epsilon=epsilon)
    agent = AgentSettings(plan=not no_plan, planner="mcts" if mcts else "beam",
                          beam=beam if beam == "auto" else _int_option("--beam", beam), horizon=horizon,
                          history=history or None, gamma=gamma, reward_mode=imagined_reward, precision=precision,
                          max_batch=batch, q_dropout=q_dropout, fast_path=fast_path)
    is_main = os.environ.get("RANK", "0") == "0"
    reporter = make_reporter(quiet=quiet or not is_main)
    try:
        result = run(ckpt, tokenizer, games, episodes=episodes, agent=agent, settings=settings, seed=seed,
                     device=device, backend=backend, out_json=out or None, video_dir=video_dir or None,
                     video_episodes=[int(e) for e in video_episodes.split(",") if e.strip()], overlap=overlap,
                     reporter=reporter)
    finally:
        reporter.close()
    if not is_main:
        return
    a, t = result["agent"], result["throughput"]
    mode = f"beam {a['beam']}, horizon {a['horizon']}" if a["plan"] else "greedy (no planning)"
    table = Table(title=f"jowa evaluate: {mode}, history {a['history']}, {result['episodes_per_game']} episodes")
    for col in ("game", "episodes", "mean", "min", "max"):
        table.add_column(col, justify="left" if col == "game" else "right")
    for g, r in result["games"].items():
        table.add_row(g, str(len(r["episodes"])), f"{r['mean']:,.1f}", f"{r['min']:,.1f}", f"{r['max']:,.1f}")
    console = Console(stderr=json_out == "-")
    console.print(table)
    rate = t["env_steps_per_s"] or 0.0
    console.print(f"{t['env_steps']:,} env steps in {t['elapsed_s']:,.1f} s ({rate:,.1f} steps/s) on "
                  f"{result['device']}" + (f"; scores: {out}" if out else ""))
    for w in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
    emit_json(result, json_out or None)
