"""`jowa bench plan`: result keys, positive rates, the baseline's ratio and agreement, CLI and Markdown record.
No timing assertions (timings are reported in docs/benchmarks.md, never asserted)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from jowa_cli.main import app
from jowa_core.bench.plan import _children, bench_plan

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_plan_tiny_keys_rates_and_baseline(tmp_path):
    md = tmp_path / "bench.md"
    r = bench_plan(preset="tiny", envs=2, decisions=1, device="cpu", markdown=md)
    for key in ("device", "torch", "command", "preset", "params", "envs", "beam", "horizon", "history",
                "context_tokens", "ours", "greedy", "baseline", "speedup_vs_baseline", "agreement_with_baseline",
                "summary"):
        assert key in r
    assert r["history"] == 6 and r["context_tokens"] == 221 and r["precision"] == "fp32"
    for part in ("ours", "greedy", "baseline"):
        assert r[part]["env_steps_per_s"] > 0 and r[part]["decisions_per_s"] > 0
    assert r["speedup_vs_baseline"] > 0
    assert r["agreement_with_baseline"] == 1.0  # fp32: the same search, up to ties of random Q
    assert r["batched_forwards_per_decision"] == 1 + 37 * 2
    assert r["baseline_forwards_per_env_decision"] == [1 + 37 * 12] * 2  # 3 + 9 imagined children
    text = md.read_text()
    assert "## Planning throughput" in text and "jowa bench plan --preset tiny --envs 2" in text
    json.dumps(r)


def test_children_count_with_fewer_valid_actions_than_the_beam():
    assert _children(3, 2, 18) == 3 + 9
    assert _children(3, 2, 2) == 2 + 4
    assert _children(2, 3, 18) == 2 + 4 + 4


def test_bench_plan_cli_without_baseline(tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["bench", "plan", "--preset", "tiny", "--envs", "2", "--decisions", "1",
                                   "--warmup", "0", "--horizon", "1", "--beam", "2", "--device", "cpu",
                                   "--no-baseline", "--quiet", "--json", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["baseline"] is None and r["speedup_vs_baseline"] is None and r["history"] == 7
    assert r["ours"]["env_steps_per_s"] > 0
    bad = CliRunner().invoke(app, ["bench", "plan", "--preset", "huge", "--device", "cpu", "--quiet"])
    assert bad.exit_code == 2


def test_bench_plan_fast_path_next_to_ours_and_the_baseline(tmp_path):
    md = tmp_path / "bench.md"
    r = bench_plan(preset="tiny", envs=3, decisions=1, warmup=0, device="cpu", fast_path="auto", markdown=md,
                   baseline_envs=2)
    f = r["fast"]
    assert f["mode"] == "static" and f["env_steps_per_s"] > 0 and f["cache_mib"] > 0
    assert f["agreement_with_ours"] == 1.0  # fp32: the same search
    assert f["speedup_vs_ours"] > 0 and f["speedup_vs_baseline"] > 0
    assert "--fast-path auto" in r["command"] and "--baseline-envs 2" in r["command"]
    assert r["baseline"]["envs"] == 2 and len(r["baseline"]["env_decision_times_s"]) == 2
    text = md.read_text()
    assert "fast path (static KV cache, eager): env steps/s" in text and "fast path ÷ ours" in text
    assert bench_plan(preset="tiny", envs=1, decisions=1, device="cpu", baseline=False)["fast"] is None
    with pytest.raises(ValueError, match="CUDA"):
        bench_plan(preset="tiny", envs=1, decisions=1, device="cpu", fast_path="graph")
    with pytest.raises(ValueError, match="baseline-envs"):
        bench_plan(preset="tiny", envs=2, decisions=1, device="cpu", baseline_envs=3)
    with pytest.raises(ValueError, match="fast-path"):
        bench_plan(preset="tiny", envs=1, decisions=1, device="cpu", fast_path="turbo")


def test_bench_evaluate_overlaps_and_keeps_the_episodes(tmp_path):
    from jowa_core.bench.evaluate import bench_evaluate

    md = tmp_path / "bench.md"
    r = bench_evaluate(preset="tiny", games="Pong,Breakout", envs=4, steps=4, beam=2, horizon=1, device="cpu",
                       tokenizer_vocab=16, warmup_steps=1, markdown=md)
    assert r["same_episodes"] and r["ours"]["lanes"] == 2 and r["baseline"]["lanes"] == 1
    assert r["ours"]["env_steps"] == r["baseline"]["env_steps"] == 16
    assert r["speedup_vs_baseline"] > 0 and "--games Pong,Breakout --envs 4 --steps 4" in r["command"]
    assert "## Evaluation throughput" in md.read_text()
    with pytest.raises(ValueError, match="multiple of the number of games"):
        bench_evaluate(games="Pong,Breakout", envs=3, device="cpu")
