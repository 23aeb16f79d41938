"""Facts every layer shares, each defined once: the frame and token layout, array and run-directory names, and
the installed version. Nothing here imports torch or any other jowa module."""

from __future__ import annotations

import re
from pathlib import Path

# Observations and the token layout (paper §4.1; reference §2): an 84x84 grayscale frame is 6x6 = 36 VQ-VAE
# tokens; a step is its 36 observation tokens followed by one action token in the full 18-action ALE space.
FRAME_SHAPE: tuple[int, int] = (84, 84)
FRAME_BYTES = FRAME_SHAPE[0] * FRAME_SHAPE[1]
TOKENS_PER_OBS = 36
TOKENS_PER_STEP = TOKENS_PER_OBS + 1
NUM_FULL_ACTIONS = 18

# Array names inside a <Game>.zarr store (docs/data-format.md).
OBS = "obs"
OBS_TOKENS = "obs_tokens"

# Run directories (pretrain, finetune, train-tokenizer; docs/pretraining.md, docs/finetune.md, docs/tokenizer.md).
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
BEST_DIR = "best"
TENSORBOARD_DIR = "tb"


def jowa_version() -> str:
    """The installed jowa package's version; from a source tree that was never installed, pyproject's version
    with ``+src`` ("unknown" when neither is readable). Recorded in every output's provenance."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jowa")
    except PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            m = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M)
        except OSError:
            m = None
        return f"{m.group(1)}+src" if m else "unknown"
