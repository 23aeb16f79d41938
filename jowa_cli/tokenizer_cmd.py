"""`jowa train-tokenizer` and `jowa tokenize`."""

from __future__ import annotations

from typing import Annotated

import typer

from jowa_cli.common import UserError, emit_json, handle_errors
from jowa_core.progress import make_reporter


@handle_errors
def train_tokenizer(
    data: Annotated[str, typer.Option(help="Folder of <Game>.zarr stores (from prepare-data), or one store.")],
    out: Annotated[str, typer.Option(help="Run directory: checkpoints, final/, metrics.csv, samples/*.png.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Config overrides key=value, e.g. steps=1000 batch_size=256 model.ch=32.",
                       show_default=False),
    ] = None,
    config: Annotated[
        str, typer.Option(help="YAML config (TokenizerTrainConfig), e.g. configs/tokenizer.yaml; default: built-in.")
    ] = "",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint.")
    ] = False,
    json_out: Annotated[str, typer.Option("--json", help="Write a JSON summary here ('-' for stdout).")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Train the VQ-VAE tokenizer (84x84 frame -> 36 tokens) on the frames of game stores.

    Adam (lr 1e-4, no weight decay), gradient clip 1.0, 2048 frames per step drawn equally from every game,
    loss = L1 + commitment + perceptual (LPIPS; only with perceptual_weights=<file>, e.g. the official
    tokenizer.pt). The last episode of each game is held out for held-out L1 and reconstruction grids.
    Writes <out>/metrics.csv, <out>/samples/step_*.png, <out>/checkpoints/step_*/ and <out>/final/.
    An existing non-empty --out needs --resume; a resumed run continues bit-for-bit.

    Example: jowa train-tokenizer --data data/atari15 --config configs/tokenizer.yaml --out runs/tok steps=50000
    """
    from jowa_core.config import load_config
    from jowa_core.train.tokenizer import TokenizerTrainConfig
    from jowa_core.train.tokenizer import train_tokenizer as run

    overrides = list(overrides or [])
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise UserError(f"expected key=value overrides, got {bad}")
    cfg = load_config(TokenizerTrainConfig, config or None, overrides)
    reporter = make_reporter(quiet)
    try:
        summary = run(cfg, data, out, resume=resume, reporter=reporter)
    finally:
        reporter.close()
    emit_json(summary, json_out or None)


@handle_errors
def tokenize(
    data: Annotated[str, typer.Option(help="Folder of <Game>.zarr stores, or one store.")],
    tokenizer: Annotated[
        str, typer.Option(help="A train-tokenizer run or checkpoint directory, or the official tokenizer.pt.")
    ],
    batch_size: Annotated[int, typer.Option(help="Frames encoded at once.")] = 1024,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (bf16 autocast on CUDA, as the official token dataset; fp32 on CPU), bf16, fp32.")
    ] = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace obs_tokens made by another tokenizer (or re-encode).")
    ] = False,
    json_out: Annotated[str, typer.Option("--json", help="Write a JSON summary here ('-' for stdout).")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Encode every frame of every store once into <Game>.zarr/obs_tokens ((N, 36) int16).

    The array records the tokenizer (path, sha256 of its weights, config, precision). Stores already
    tokenized by the same tokenizer are skipped; by another one it is an error unless --overwrite. The
    array appears only when complete; an interrupted run continues where it stopped.

    Example: jowa tokenize --data data/atari15 --tokenizer runs/tok
    """
    from jowa_core.data.tokenize import tokenize_stores

    reporter = make_reporter(quiet)
    try:
        summary = tokenize_stores(data, tokenizer, batch_size=batch_size, device=device, overwrite=overwrite,
                                  reporter=reporter, precision=precision)
    finally:
        reporter.close()
    emit_json(summary, json_out or None)
