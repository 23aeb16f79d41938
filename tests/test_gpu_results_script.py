"""benchmarks/gpu_results.sh, the recorded GPU recipe of docs/results.md §2, runs end to end (tiny scale, CPU):
collect with --scores-csv, prepare-data, train-tokenizer, tokenize, pretrain, evaluate with and without planning,
report. Its commands and wall times land in commands.log."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "GAMES": "Pong,Breakout", "STEPS": "300", "CAPACITY": "300", "MAX_EPISODE_STEPS": "100", "COLLECT_WORKERS": "1",
    "TOK_STEPS": "2",
    "TOK_OVERRIDES": "batch_size=4 model.ch=8 model.vocab_size=64 num_workers=0 heldout_frames=4 grid_frames=2",
    "CONFIG": "configs/jowa-tiny.yaml", "STAGE1": "2", "STAGE2": "2",
    "PRETRAIN_OVERRIDES": "model.obs_vocab=64 train.batch_size=4 train.tensorboard=false",
    "EPISODES": "1", "MAX_FRAMES": "100", "DEVICE": "cpu",
}


@pytest.mark.slow
def test_gpu_results_script_runs_every_stage(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, **TINY, "OUT": str(out), "JOWA": str(Path(sys.executable).parent / "jowa")}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_results.sh")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = (out / "commands.log").read_text()
    for command in ("collect", "prepare-data", "train-tokenizer", "tokenize", "pretrain", "evaluate", "report"):
        assert f"jowa {command} " in log, log
    assert log.count(" -> ") == log.count("+ ") == 8  # every command finished, with its wall time
    with (out / "report" / "aggregates.csv").open() as f:
        methods = {row["method"] for row in csv.DictReader(f)}
    assert methods == {"JOWA-plan", "JOWA-no-plan", "data (random)"}
    with (out / "scores" / "data.csv").open() as f:
        games = {row["game"] for row in csv.DictReader(f)}
    assert games == {"Pong", "Breakout"}  # the data's own returns, one row per collected episode
