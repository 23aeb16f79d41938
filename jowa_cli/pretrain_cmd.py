"""`jowa pretrain`."""

from __future__ import annotations

from typing import Annotated

import typer

from jowa_cli.common import emit_json, handle_errors
from jowa_core.progress import make_reporter


@handle_errors
def pretrain(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Config overrides key=value, e.g. train.batch_size=64 model.num_q=1.")
    ] = None,
    config: Annotated[str, typer.Option(help="YAML config (configs/jowa-*.yaml, mtbc-*.yaml, scaled-ql-*.yaml).")] = "",
    algo: Annotated[str, typer.Option(help="jowa, or a paper baseline: mtbc or scaled-ql (docs/baselines.md).")] = (
        "jowa"),
    data: Annotated[str, typer.Option(help="Folder of <Game>.zarr stores (sets data.path).")] = "",
    out: Annotated[str, typer.Option(help="Run directory: config, metrics.csv, tb/, checkpoints/, final/.")] = "",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint.")
    ] = False,
    reward_free: Annotated[
        bool, typer.Option("--reward-free", help="World losses without rewards, stage 1 only (train.reward_free).")
    ] = False,
    json_out: Annotated[str, typer.Option("--json", help="Write a JSON summary here ('-' for stdout).")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Pretrain the world-action model in two stages (world loss, then world + C51 TD + CQL).

    One process per device: plain `jowa pretrain ...` on one GPU or the CPU; several GPUs or nodes with
    `torchrun --nproc_per_node=N -m jowa_cli.main pretrain ...` (DDP; train.batch_size is the global batch).
    bf16 autocast on GPU; train.compile=true for torch.compile. Checkpoints are written atomically to
    <out>/checkpoints/; --resume continues exactly where the run stopped. The finished model is <out>/final.

    Baselines (--algo mtbc|scaled-ql, paper Appendix E.1): the same stores, loader, checkpoints and --resume;
    mtbc reads obs_tokens, scaled-ql reads frames (4-frame stacks).

    Example: jowa pretrain --config configs/jowa-150m.yaml --data data/atari15 --out runs/jowa150m
    """
    from jowa_core.config import load_config
    from jowa_core.train.algos import check_algo, load_baseline_config, pretrain_baseline
    from jowa_core.train.pretrain import PretrainConfig
    from jowa_core.train.pretrain import pretrain as run

    if not out:
        raise ValueError("--out is required (the run directory)")
    if reward_free and algo != "jowa":
        raise ValueError("--reward-free is JOWA's (train.reward_free); the baselines have no such option")
    extra = {"data.path": data} if data else None
    jowa_overrides = list(overrides or []) + (["train.reward_free=true"] if reward_free else [])
    if check_algo(algo) == "jowa":
        cfg = load_config(PretrainConfig, config or None, jowa_overrides, extra)
    else:
        cfg = load_baseline_config(algo, config or None, list(overrides or []), extra)
    import os

    reporter = make_reporter(quiet=quiet or os.environ.get("RANK", "0") != "0")  # torchrun: rank 0 reports
    try:
        summary = run(cfg, out, resume=resume, reporter=reporter) if algo == "jowa" else pretrain_baseline(
            algo, cfg, out, resume=resume, reporter=reporter)
    finally:
        reporter.close()
    emit_json(summary, json_out or None)
