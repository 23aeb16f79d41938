"""CUDA-only checks (``pytest -m gpu``; skipped without CUDA; run by benchmarks/gpu/check.sh): the bf16/fp16
attention backends equal the manual one; SDPA's flash kernel runs with attention dropout; cached decoding equals
a full forward; torch.compile equals eager; the CUDA-graph planner equals the eager static planner and ``plan``;
a few bf16 training steps are finite and follow fp32 loosely; AdamW is fused on CUDA."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from jowa_core.bench.plan import synthetic_contexts
from jowa_core.bench.train import bench_train, synthetic_batch
from jowa_core.models import transformer
from jowa_core.models.transformer import SelfAttention
from jowa_core.models.world_action import WorldActionConfig, WorldActionModel, segment_tokens
from jowa_core.planning.beam import plan
from jowa_core.planning.static import StaticPlanner, StaticPlanners
from jowa_core.train.pretrain import TrainConfig, build_optimizer, jowa_loss
from jowa_core.train.step import optimizer_step

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def _attention(backend: str, seed: int = 0) -> SelfAttention:
    torch.manual_seed(seed)
    return SelfAttention(256, 4, attn_pdrop=0.0, resid_pdrop=0.0, backend=backend).to(CUDA).eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["sdpa", "auto"] + (["flash"] if transformer.flash_attn_func else []))
def test_low_precision_attention_backends_equal_manual(backend, dtype):
    ref = _attention("manual").to(dtype)
    att = _attention(backend).to(dtype)
    x = torch.randn(4, 296, 256, device=CUDA, dtype=dtype)
    with torch.no_grad():
        full_ref = ref(x)
        assert _rel(att(x), full_ref) < 2e-2
        outs = {}
        for name, mod in (("ref", ref), ("att", att)):  # cached: a 260-token prefix, then 36 tokens
            cache = transformer.KVCache.empty(1, 4, 4, 296, 64, CUDA, dtype)
            parts = []
            for a, b in ((0, 260), (260, 296)):
                parts.append(mod(x[:, a:b], cache, 0))
                cache.advance(b - a)
            outs[name] = torch.cat(parts, 1)
        assert _rel(outs["att"], outs["ref"]) < 2e-2 and _rel(outs["ref"], full_ref) < 2e-2

def test_sdpa_flash_kernel_runs_with_attention_dropout():
    torch.manual_seed(0)
    att = SelfAttention(768, 12, attn_pdrop=0.1, resid_pdrop=0.0, backend="sdpa").to(CUDA).train()
    x = torch.randn(8, 296, 768, device=CUDA, requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", dtype=torch.bfloat16):
        y = att(x)  # raises if the flash kernel cannot take these inputs
    y.float().square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def _model(preset: str = "tiny", seed: int = 0, **kw) -> WorldActionModel:
    torch.manual_seed(seed)
    return WorldActionModel(WorldActionConfig(preset=preset, obs_vocab=512, **kw)).to(CUDA).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_decoding_equals_full_forward(dtype):
    model = _model().to(dtype)
    g = torch.Generator().manual_seed(1)
    obs = torch.randint(0, 512, (3, 8, 36), generator=g)
    tokens = segment_tokens(obs, torch.randint(0, 18, (3, 8), generator=g)).to(CUDA)  # (3, 296)
    tasks = torch.tensor([0, 3, 7], device=CUDA)
    with torch.no_grad():
        full = model(tokens, tasks, heads=("obs",)).hidden
        cache = model.new_cache(3, dtype=dtype)
        parts = [model(tokens[:, :221], tasks, cache=cache, heads=("obs",)).hidden]
        for t in range(221, 296):
            parts.append(model(tokens[:, t:t + 1], tasks, cache=cache, heads=("obs",)).hidden)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert _rel(torch.cat(parts, 1), full) < tol


def test_compiled_equals_eager():
    model = _model()
    batch = synthetic_batch(model.cfg, 4, CUDA, seed=2)
    tokens = segment_tokens(batch["obs_tokens"], batch["action"])
    compiled = torch.compile(model)
    with torch.no_grad():
        eager = model(tokens, batch["game_id"])
        comp = compiled(tokens, batch["game_id"])
    for name in ("obs_logits", "reward_logits", "end_logits", "q_logits"):
        assert _rel(getattr(comp, name), getattr(eager, name)) < 1e-4, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("beam", "horizon"), [(3, 2), (2, 3)])
def test_cuda_graph_planner_equals_eager(beam, horizon, dtype):
    model = _model("40m", seed=beam + horizon).to(dtype)
    steps = model.cfg.max_steps - horizon
    eager = graph = None
    for seed in range(3):  # the graph is captured once and replayed on new inputs
        tokens, tasks, mask, _ = synthetic_contexts(model.cfg, 6, steps, seed=seed)
        tokens, tasks, mask = tokens.to(CUDA), tasks.to(CUDA), mask.to(CUDA)
        if eager is None:
            eager = StaticPlanner(model, 6, tokens.shape[1], beam, horizon, record=True)
            graph = StaticPlanner(model, 6, tokens.shape[1], beam, horizon, record=True, cuda_graph=True)
        a, b = eager(tokens, tasks, mask), graph(tokens, tasks, mask)
        ref = plan(model, tokens, tasks, mask, beam=beam, horizon=horizon, record=True)
        assert torch.equal(a.action, ref.action) and torch.equal(a.score, ref.score)
        assert torch.equal(b.action, a.action) and torch.equal(b.tree[-1]["obs_tokens"], a.tree[-1]["obs_tokens"])
        torch.testing.assert_close(b.score, a.score, rtol=1e-5, atol=1e-5)


def test_bf16_training_steps_are_finite_and_follow_fp32():
    tcfg = TrainConfig(batch_size=8)
    losses = {}
    for amp in (False, True):
        model = _model("tiny", seed=3, embed_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0, q_dropout=0.0).train()
        model.update_target()
        opt = build_optimizer(model, tcfg)
        assert opt.defaults["fused"], "AdamW is not fused on CUDA"
        params = [p for p in model.parameters() if p.requires_grad]
        batch = synthetic_batch(model.cfg, 8, CUDA, seed=4)
        losses[amp] = []
        for _ in range(4):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss, _ = jowa_loss(model, batch, 2, tcfg, model.support)
            optimizer_step(opt, loss, params, tcfg.grad_clip)
            losses[amp].append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(v)).all() for v in losses.values())
    for lb, lf in zip(losses[True], losses[False], strict=True):
        assert abs(lb - lf) <= 0.05 * abs(lf), losses
    assert losses[True][-1] < losses[True][0]  # the same batch four times, no dropout: the loss goes down


def test_bench_train_reports_fused_adamw_and_the_flash_kernel():
    r = bench_train(preset="tiny", batch_size=4, steps=1, warmup=1, device="cuda", precision="bf16", baseline=False)
    assert r["ours"]["optimizer"] == "AdamW (fused)"
    assert r["ours"]["attention"] in ("sdpa (flash)", "flash-attn"), r["ours"]["attention"]


def test_static_planners_with_cuda_graphs_equal_plan_on_the_padded_batch():
    model = _model("tiny", seed=5)
    planners = StaticPlanners(cuda_graph=True, max_planners=2)
    for n, steps, seed in ((3, 6, 0), (4, 6, 1), (3, 5, 2), (3, 6, 3)):
        tokens, tasks, mask, _ = synthetic_contexts(model.cfg, n, steps, seed=seed)
        tokens, tasks, mask = tokens.to(CUDA), tasks.to(CUDA), mask.to(CUDA)
        got = planners(model, tokens, tasks, mask, beam=3, horizon=2)
        index = torch.tensor(list(range(n)) + [n - 1] * (4 - n), device=CUDA)
        ref = plan(model, tokens[index], tasks[index], mask[index], beam=3, horizon=2)
        assert torch.equal(got.action, ref.action[:n])
        torch.testing.assert_close(got.score, ref.score[:n], rtol=1e-5, atol=1e-5)
    assert planners.built == 2
