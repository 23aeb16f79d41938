"""`jowa import-official`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from jowa_cli.common import Quiet, emit_json, handle_errors


@handle_errors
def import_official(
    tokenizer: Annotated[
        str, typer.Option(help="The official tokenizer.pt (VQ-VAE + LPIPS state dict).")
    ] = "",
    ckpt: Annotated[
        str, typer.Option("--ckpt", help="An official world-action model file: JOWA_40M.pt, JOWA_70M.pt or "
                                         "JOWA_150M.pt.")
    ] = "",
    out: Annotated[
        str, typer.Option(help="Output folder: tokenizer/, model/, lpips.safetensors and import.json go here.")
    ] = "",
    num_heads: Annotated[
        int, typer.Option(help="Attention heads (not stored in the weights); 0 = embed_dim // 64, as released.")
    ] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing, non-empty --out.")] = False,
    json: Annotated[str, typer.Option("--json", help="Write the import summary here ('-' for stdout).")] = "",
    quiet: Quiet = False,
) -> None:
    """Convert the released official JOWA checkpoints (tokenizer.pt, JOWA_*.pt) into jowa checkpoints.

    Reads the files with torch.load(weights_only=True) (no pickled code runs), accepts the module. /
    _orig_mod. key prefixes, renames the world-model keys, infers the architecture from the tensor shapes and
    checks every key and shape; writes <out>/tokenizer/, <out>/model/, <out>/lpips.safetensors (the
    perceptual-loss weights in tokenizer.pt) and <out>/import.json, atomically. Either file may be given alone.

    Example: jowa import-official --tokenizer tokenizer.pt --ckpt JOWA_150M.pt --out ckpt/jowa150m
    """
    from jowa_core.interop.official import import_official as run

    if not out:
        raise ValueError("--out is required")
    if not tokenizer and not ckpt:
        raise ValueError("give --tokenizer, --ckpt or both")
    if num_heads < 0:
        raise ValueError(f"--num-heads must be positive, got {num_heads}")
    summary = run(tokenizer or None, ckpt or None, out, num_heads=num_heads or None, overwrite=overwrite)
    parts = []
    if "tokenizer" in summary:
        t = summary["tokenizer"]
        parts.append(f"tokenizer ({t['parameters']:,} parameters"
                     + (f", LPIPS {t['lpips']['numel']:,}" if t["lpips"] else ", no LPIPS weights") + ")")
    if "model" in summary:
        m = summary["model"]
        parts.append(f"model (preset {m['preset']}, {m['config']['num_layers']} layers, "
                     f"{m['parameters']['trainable']:,} trainable parameters)")
    if not quiet:
        print(f"imported {' and '.join(parts)} into {out}", file=sys.stderr)
    emit_json(summary, json or None)
