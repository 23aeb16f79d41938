"""`jowa bench train`: the analytic FLOP count against torch's FlopCounterMode, result keys, CLI. No timing
assertions (timings are reported in docs/benchmarks.md, never asserted)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from jowa_cli.main import app
from jowa_core.bench.train import (
    bench_train,
    forward_flops_per_segment,
    peak_tflops_for,
    synthetic_batch,
    train_flops_per_step,
)
from jowa_core.config import from_dict
from jowa_core.models.world_action import WorldActionConfig, WorldActionModel
from jowa_core.train.pretrain import TrainConfig, jowa_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _counted_flops(cfg: WorldActionConfig, batch_size: int, stage: int) -> int:
    torch.manual_seed(0)
    model = WorldActionModel(cfg).train()
    model.head_q.requires_grad_(stage == 2)
    batch = synthetic_batch(cfg, batch_size, seed=1)
    with FlopCounterMode(display=False) as counter:
        loss, _ = jowa_loss(model, batch, stage, TrainConfig(batch_size=batch_size), model.support)
        loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("stage", [1, 2])
def test_analytic_flops_match_flop_counter(stage):
    # num_q=2 and an uneven MLP width exercise every term; attention=manual so that the counter sees the
    # attention matmuls (it has no formula for the CPU SDPA kernel) — they run over the full T x T matrix.
    cfg = from_dict(WorldActionConfig, {"preset": "tiny", "num_q": 2, "q_mlp_dim": 96, "attention": "manual"})
    counted = _counted_flops(cfg, 2, stage)
    full = train_flops_per_step(cfg, 2, stage, attention="full")
    # Exact in stage 1; in stage 2 the counter also sees the loss's small matmuls (C51 projection, expected Q),
    # under 0.01% of the total.
    assert full <= counted <= full * 1.001, (counted, full, counted / full)
    if stage == 1:
        assert counted == full
    causal = train_flops_per_step(cfg, 2, stage)
    f_full, f_causal = forward_flops_per_segment(cfg, "full"), forward_flops_per_segment(cfg, "causal")
    T = cfg.max_tokens
    assert full - causal == 2 * 3 * (f_full["attention"] - f_causal["attention"])
    assert f_causal["attention"] * T * T == f_full["attention"] * T * (T + 1) // 2


def test_flops_of_150m_preset_are_plausible():
    cfg = from_dict(WorldActionConfig, {"preset": "150m"})
    with torch.device("meta"):
        model = WorldActionModel(cfg)
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head_q_target"))
    flops = train_flops_per_step(cfg, 1, stage=2)
    # Most matmul parameters see all 296 tokens (6 FLOPs per parameter per token); the Q heads see 8 and the
    # embeddings none, so 6·N·T is an upper bound within a factor of 2.
    assert 0.5 * 6 * params * 296 < flops < 6 * params * 296
    assert train_flops_per_step(cfg, 1, stage=1) < flops
    assert train_flops_per_step(cfg, 1, stage=2, detach_q_input=True) < flops


def test_peak_table_names():
    assert peak_tflops_for("NVIDIA H100 80GB HBM3", "bf16")[0] == 989.4
    assert peak_tflops_for("NVIDIA H100 PCIe", "bf16")[0] == 756.0
    assert peak_tflops_for("NVIDIA H200", "bf16")[0] == 989.4
    assert peak_tflops_for("NVIDIA A100-SXM4-80GB", "bf16")[0] == 312.0
    assert peak_tflops_for("NVIDIA A10", "bf16")[0] == 125.0
    assert peak_tflops_for("NVIDIA L4", "fp32")[0] == 30.3
    assert peak_tflops_for("NVIDIA L40S", "bf16")[0] == 362.1
    assert peak_tflops_for("NVIDIA A100 80GB PCIe", "tf32")[0] == 156.0
    assert peak_tflops_for("Tesla T4", "bf16") is None


def test_synthetic_batch_is_like_the_loaders():
    cfg = from_dict(WorldActionConfig, {"preset": "tiny"})
    b = synthetic_batch(cfg, 64)
    assert b["obs_tokens"].shape == (64, 8, 36) and b["obs_tokens"].dtype == torch.int64
    assert b["action"].shape == (64, 8) and b["action_mask"].shape == (64, 18)
    assert b["action_mask"].gather(1, b["action"]).all()  # actions are valid in each row's game
    assert b["reward"].dtype == torch.float32 and (b["reward"] != 0).any()
    assert b["terminal"].any() and (~b["valid"]).any() and b["valid"][:, 0].all()


def test_bench_train_tiny_cpu():
    r = bench_train(preset="tiny", batch_size=4, steps=2, warmup=1, device="cpu")
    assert r["device_type"] == "cpu" and r["precision"] == "fp32" and r["tokens_per_step"] == 4 * 296
    o, b = r["ours"], r["baseline"]
    for run in (o, b):
        assert run["tokens_per_s"] > 0 and run["segments_per_s"] > 0 and run["model_tflops"] > 0
        assert len(run["step_times_s"]) == 2 and math.isfinite(run["final_loss"])
        assert run["mfu"] is None and run["peak_memory_gib"] is None
    assert o["attention"] == "sdpa (cpu kernel)" and b["attention"].startswith("manual")
    assert o["optimizer"] == b["optimizer"] == "AdamW (for-loop)"  # fused and foreach are CUDA-only choices
    assert r["speedup_vs_baseline"] == pytest.approx(b["step_time_median_s"] / o["step_time_median_s"])
    assert r["flops_per_step"] == train_flops_per_step(from_dict(WorldActionConfig, {"preset": "tiny"}), 4, 2)
    assert r["peak_tflops"] is None and "MFU n/a" in r["summary"][1]

    r = bench_train(preset="tiny", batch_size=2, steps=1, warmup=1, stage=1, device="cpu", baseline=False,
                    peak_tflops=1.0, overrides=["model.num_layers=1"])
    assert r["baseline"] is None and r["model_config"]["num_layers"] == 1 and r["peak_source"] == "--peak-tflops"
    assert r["ours"]["mfu"] == pytest.approx(r["ours"]["model_tflops"] / 1.0) and 0 < r["ours"]["mfu"] <= 1


def test_bench_train_rejects_bad_input():
    with pytest.raises(ValueError, match="precision"):
        bench_train(preset="tiny", precision="fp16", device="cpu")
    with pytest.raises(ValueError, match="warmup"):
        bench_train(preset="tiny", warmup=0, device="cpu")
    with pytest.raises(ValueError, match="overrides"):
        bench_train(preset="tiny", device="cpu", overrides=["foo.bar=1"])


def test_cli_json_and_record(tmp_path):
    out, md = tmp_path / "r.json", tmp_path / "bench.md"
    res = CliRunner().invoke(app, ["bench", "train", "--preset", "tiny", "--batch-size", "2", "--steps", "1",
                                   "--warmup", "1", "--device", "cpu", "--peak-tflops", "0.5", "--json", str(out),
                                   "--out", str(md), "--quiet"])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["preset"] == "tiny" and r["batch_size"] == 2 and r["stage"] == 2 and r["ours"]["mfu"] > 0
    assert r["command"] == "jowa bench train --preset tiny --batch-size 2 --steps 1 --warmup 1 --device cpu " \
                           "--peak-tflops 0.5"
    text = md.read_text()
    assert "## Training throughput — " in text and f"`{r['command']}`" in text and "| tokens/s |" in text

    res = CliRunner().invoke(app, ["bench", "train", "--preset", "tiny", "--precision", "fp8", "--quiet"])
    assert res.exit_code == 2


def test_out_of_memory_is_a_clear_error(monkeypatch):
    import jowa_core.bench.train as bench

    def oom_in(method, which):
        real = getattr(bench._Run, method)

        def patched(self, *args):
            if self.label == which:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return real(self, *args)
        monkeypatch.setattr(bench._Run, method, patched)

    oom_in("warm_up", "ours")
    res = CliRunner().invoke(app, ["bench", "train", "--preset", "tiny", "--batch-size", "64", "--device", "cpu",
                                   "--quiet"])
    assert res.exit_code == 2 and "--batch-size 32" in res.output
    monkeypatch.undo()

    for method in ("warm_up", "timed_step"):  # a baseline out of memory is reported, ours still measured
        oom_in(method, "baseline")
        r = bench.bench_train(preset="tiny", batch_size=2, steps=2, warmup=1, device="cpu")
        assert r["ours"]["tokens_per_s"] > 0 and "out of memory" in r["baseline"]["error"]
        assert r["speedup_vs_baseline"] is None and "out of memory" in r["summary"][-1]
        monkeypatch.undo()
