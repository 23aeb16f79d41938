"""`jowa finetune`."""

from __future__ import annotations

from typing import Annotated

import typer

from jowa_cli.common import emit_json, handle_errors
from jowa_core.progress import make_reporter


@handle_errors
def finetune(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Config overrides key=value, e.g. stage2_steps=2000 eval_every=500.")
    ] = None,
    ckpt: Annotated[str, typer.Option(help="Pretrained world-action checkpoint or run directory.")] = "",
    tokenizer: Annotated[
        str, typer.Option(help="Tokenizer checkpoint: fine-tuned too unless train_tokenizer=false; evaluations use it.")
    ] = "",
    game: Annotated[str, typer.Option(help="The game to fine-tune on (its own task id is used).")] = "",
    data: Annotated[
        str, typer.Option(help="The game's <Game>.zarr store (train_tokenizer=false: with obs_tokens).")
    ] = "",
    out: Annotated[str, typer.Option(help="Run directory: config, metrics.csv, evals/, best/, final/.")] = "",
    config: Annotated[str, typer.Option(help="YAML config (configs/finetune.yaml).")] = "",
    from_scratch: Annotated[
        bool, typer.Option("--from-scratch", help="Random init with the checkpoint's architecture (JOWA scratch).")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint (same config).")
    ] = False,
    algo: Annotated[str, typer.Option(
        help="jowa, or a pretrained paper baseline: mtbc or scaled-ql (batch 32, lr 5e-5, 10k steps, best snapshot; "
             "eval.every/eval.episodes/eval.max_frames overrides; docs/baselines.md).")] = "jowa",
    online: Annotated[
        bool, typer.Option("--online", help="Fine-tune while playing the game (docs/online.md); --data optional.")
    ] = False,
    env_steps: Annotated[int, typer.Option(help="--online: environment steps in all (sets env_steps).")] = 0,
    rehearsal_data: Annotated[
        str, typer.Option(help="--online: tokenized pretraining stores for retrieval-based rehearsal.")
    ] = "",
    json_out: Annotated[str, typer.Option("--json", help="Write the JSON summary here ('-' for stdout).")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Fine-tune a pretrained JOWA on one game (stage 1 real data + CQL, stage 2 + planned synthetic data + COMBO).

    Every part trains, the tokenizer included (train_tokenizer=false: frozen, faster). Periodic evaluations
    (eval_every, eval_episodes) keep <out>/best (highest mean return) next to <out>/final, each with the tokenizer
    to use (<dir>/tokenizer when it trains); all in <out>/summary.json and metrics.csv. Training checkpoints
    (save_every, stop_after=N) let --resume continue a stopped or killed run exactly.

    Example: jowa finetune --ckpt runs/jowa150m --tokenizer runs/tok --game Pong --data data/ft/Pong.zarr
    --out runs/ft-pong

    --online: the agent plays the game in the emulator and learns from its own replay (<out>/replay/<Game>.zarr),
    optionally mixed with --data (offline_fraction) and retrieved --rehearsal-data segments (rehearsal_fraction);
    overrides are OnlineConfig keys (utd, eps_*, guide_*, ...). Example: jowa finetune --online --game Pong
    --env-steps 100000 --ckpt runs/jowa150m --tokenizer runs/tok --out runs/online-pong
    """
    if online:
        if algo != "jowa":
            raise ValueError("--online fine-tunes JOWA only; leave --algo at jowa")
        return _online(overrides, ckpt, tokenizer, game, data, out, config, from_scratch, resume, env_steps,
                       rehearsal_data, json_out, quiet)
    if env_steps or rehearsal_data:
        raise ValueError("--env-steps and --rehearsal-data need --online")
    from jowa_core.config import load_config
    from jowa_core.recipes.baselines import run_baseline_finetune
    from jowa_core.recipes.finetune import run_finetune as run
    from jowa_core.train.algos import check_algo
    from jowa_core.train.finetune import FinetuneConfig

    for name, value in (("--ckpt", ckpt), ("--tokenizer", tokenizer if check_algo(algo) == "jowa" else "-"),
                        ("--game", game), ("--data", data), ("--out", out)):
        if not value:
            raise ValueError(f"{name} is required")
    if algo != "jowa":
        if from_scratch or config:
            raise ValueError(f"--from-scratch and --config are JOWA's; --algo {algo} takes key=value overrides")
        reporter = make_reporter(quiet=quiet)
        try:
            summary = run_baseline_finetune(algo, ckpt, tokenizer or None, game, data, out, list(overrides or []),
                                            resume=resume, reporter=reporter)
        finally:
            reporter.close()
        emit_json(summary, json_out or None)
        return
    extra = list(overrides or [])
    if from_scratch:
        extra.append("from_scratch=true")
    cfg = load_config(FinetuneConfig, config or None, extra)
    reporter = make_reporter(quiet=quiet)
    try:
        summary = run(cfg, ckpt, tokenizer, game, data, out, resume=resume, reporter=reporter)
    finally:
        reporter.close()
    emit_json(summary, json_out or None)


def _online(overrides: list[str] | None, ckpt: str, tokenizer: str, game: str, data: str, out: str, config: str,
            from_scratch: bool, resume: bool, env_steps: int, rehearsal_data: str, json_out: str, quiet: bool) -> None:
    for name, value in (("--ckpt", ckpt), ("--tokenizer", tokenizer), ("--game", game), ("--out", out)):
        if not value:
            raise ValueError(f"{name} is required")
    from jowa_core.config import load_config
    from jowa_core.recipes.online import run_online
    from jowa_core.train.online import OnlineConfig

    extra = list(overrides or [])
    if from_scratch:
        extra.append("from_scratch=true")
    if env_steps:
        extra.append(f"env_steps={env_steps}")
    cfg = load_config(OnlineConfig, config or None, extra)
    reporter = make_reporter(quiet=quiet)
    try:
        summary = run_online(cfg, ckpt, tokenizer, game, out, data=data or None,
                             rehearsal_data=rehearsal_data or None, resume=resume, reporter=reporter)
    finally:
        reporter.close()
    emit_json(summary, json_out or None)
