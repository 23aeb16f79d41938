"""benchmarks/gpu/check.sh, the prepared device check of docs/benchmarks.md ("GPU check"), at a tiny scale on CPU:
every step runs and records itself (steps.jsonl, summary.md), bench train falls back to the next batch size on
exit code 2, bench plan writes the fast path next to ours, bench evaluate its two lanes next to one batch, the
learning run reports and its planning evaluation reruns with --fast-path; with no budget left every step is
recorded as skipped and the script still exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_gpu_results_script import TINY as LEARN_TINY

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu" / "check.sh"
TINY = {
    "WHEELS": "none", "DEVICE": "cpu", "PRECISION": "fp32", "PYTEST_ARGS": "tests/test_gpu.py",
    "TRAIN_PRESET": "tiny", "TRAIN_BATCHES": "0 4", "TRAIN_STEPS": "1", "TRAIN_WARMUP": "1", "TRAIN_COMPILE": "0",
    "PLAN_PRESET": "tiny", "PLAN_ENVS": "2 3", "PLAN_DECISIONS": "1", "PLAN_FAST": "auto", "PLAN_ARGS": "--threads 1",
    "PLAN_BASELINE_ENVS": "2", "EVAL_PRESET": "tiny", "EVAL_ENVS": "2", "EVAL_STEPS": "2",
    "EVAL_ARGS": "--tokenizer-vocab 16",
    "LEARN_MIN_S": "0",
    "BUDGET_S": "3000", "MIN_STEP_S": "0", **{k: v for k, v in LEARN_TINY.items() if k != "DEVICE"},
}


def _run(out: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    full = {**os.environ, **TINY, **env, "OUT": str(out), "PY": sys.executable}
    r = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=full, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r, [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def test_check_script_without_budget_records_every_step_as_skipped(tmp_path):
    _, steps = _run(tmp_path / "out", BUDGET_S="0", MIN_STEP_S="20", TRAIN_BATCHES="8 4")
    assert [s["step"] for s in steps] == ["env", "pytest-gpu", "train-bs8", "plan-envs2", "plan-envs3",
                                          "evaluate-envs2", "learning", "evaluate-fast"]
    assert {s["status"] for s in steps} == {"skipped"}
    assert (tmp_path / "out" / "summary.md").read_text().count("| skipped |") == 8


@pytest.mark.slow
def test_check_script_runs_every_step_at_tiny_scale(tmp_path):
    out = tmp_path / "out"
    r, steps = _run(out)
    status = {s["step"]: (s["status"], s["rc"]) for s in steps}
    assert status == {"env": ("ok", 0), "pytest-gpu": ("ok", 0), "train-bs0": ("failed", 2), "train-bs4": ("ok", 0),
                      "plan-envs2": ("ok", 0), "plan-envs3": ("ok", 0), "evaluate-envs2": ("ok", 0),
                      "learning": ("ok", 0),
                      "evaluate-fast": ("ok", 0)}, r.stdout[-3000:]
    assert "missing required: none" in (out / "env.log").read_text()
    train = json.loads((out / "bench-train-bs4.json").read_text())
    assert train["batch_size"] == 4 and train["ours"]["tokens_per_s"] > 0
    for envs in (2, 3):
        plan = json.loads((out / f"bench-plan-envs{envs}.json").read_text())
        assert plan["envs"] == envs and plan["fast"]["mode"] == "static" and plan["baseline"]["envs"] == 2
    ev = json.loads((out / "bench-evaluate.json").read_text())
    assert ev["envs"] == 2 and ev["ours"]["lanes"] == 2 and ev["same_episodes"]
    md = (out / "benchmarks.md").read_text()
    assert md.count("## Training throughput") == 1 and md.count("## Planning throughput") == 2
    assert (out / "learning" / "report" / "aggregates.csv").exists()
    fast = json.loads((out / "learning" / "scores" / "JOWA-plan-fast.json").read_text())
    assert fast["agent"]["fast_path"] == "static" and fast["throughput"]["env_steps"] > 0
    assert "skipped" in (out / "pytest-gpu.log").read_text()  # CUDA-only tests skip cleanly on CPU
