"""The static-cache planner (``planning.static``) is ``plan`` with preallocated caches: on CPU in fp32 its actions,
scores, root Q̂ and whole recorded tree (imagined obs tokens, rewards, Q̂, kept nodes) equal ``plan``'s exactly,
across seeds and (beam, horizon), over repeated calls that reuse the caches. The CUDA-graph variant is in
tests/test_gpu.py."""

from __future__ import annotations

import pytest
import torch

from jowa_core.bench.plan import synthetic_contexts
from jowa_core.models.transformer import KVCache
from jowa_core.models.world_action import WorldActionConfig, WorldActionModel
from jowa_core.planning.beam import child_rows, plan
from jowa_core.planning.static import StaticPlanner, StaticPlanners, bucket_rows, resolve_fast_path

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int) -> WorldActionModel:
    torch.manual_seed(seed)
    return WorldActionModel(WorldActionConfig(preset="tiny", obs_vocab=32)).eval()


def _assert_same(a, b) -> None:
    assert torch.equal(a.action, b.action) and torch.equal(a.score, b.score) and torch.equal(a.q_root, b.q_root)
    assert len(a.tree) == len(b.tree)
    for da, db in zip(a.tree, b.tree, strict=True):
        assert da.keys() == db.keys()
        for key in da:
            assert torch.equal(da[key], db[key]), key


@pytest.mark.parametrize(("beam", "horizon"), [(2, 1), (3, 2), (2, 3), (4, 2)])
def test_static_planner_equals_plan_exactly(beam, horizon):
    model = _model(beam * 10 + horizon)
    steps = model.cfg.max_steps - horizon
    planner = None
    for seed in range(3):  # one planner, reused: no state leaks from one call into the next
        tokens, tasks, mask, _ = synthetic_contexts(model.cfg, 5, steps, seed=seed)
        if planner is None:
            planner = StaticPlanner(model, 5, tokens.shape[1], beam, horizon, gamma=0.97, record=True)
        ref = plan(model, tokens, tasks, mask, beam=beam, horizon=horizon, gamma=0.97, record=True)
        got = planner(tokens, tasks, mask)
        _assert_same(got, ref)
        assert len(got.tree) == horizon and got.tree[-1]["obs_tokens"].shape[-1] == 36


def test_static_planner_caches_are_the_ones_written():
    model = _model(0)
    tokens, tasks, mask, _ = synthetic_contexts(model.cfg, 3, 6, seed=1)
    planner = StaticPlanner(model, 3, tokens.shape[1], beam=3, horizon=2)
    pointers = [c.k.data_ptr() for c in (planner.cache, *planner.child_caches)]
    assert [c.batch_size for c in planner.child_caches] == child_rows(3, 3, 2, 18) == [9, 27]
    planner(tokens, tasks, mask)
    assert [c.k.data_ptr() for c in (planner.cache, *planner.child_caches)] == pointers
    assert planner.cache.length == tokens.shape[1]
    assert planner.child_caches[-1].length == tokens.shape[1] + 2 * 37  # the last depth imagined 37 tokens
    assert planner.cache_bytes() == 2 * (3 + 9 + 27) * 2 * 4 * 296 * 16 * 4


def test_static_planner_rejects_other_shapes_and_graph_on_cpu():
    model = _model(0)
    tokens, tasks, mask, _ = synthetic_contexts(model.cfg, 2, 6, seed=0)
    planner = StaticPlanner(model, 2, tokens.shape[1], beam=2, horizon=2)
    with pytest.raises(ValueError, match="built for"):
        planner(tokens[:1], tasks[:1], mask[:1])
    with pytest.raises(ValueError, match="valid action"):
        planner(tokens, tasks, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="CUDA"):
        StaticPlanner(model, 2, tokens.shape[1], cuda_graph=True)
    with pytest.raises(ValueError, match="beam >= 2"):
        StaticPlanner(model, 2, tokens.shape[1], beam=1)
    assert resolve_fast_path("auto", torch.device("cpu")) == "static"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_fast_path("graph", torch.device("cpu"))


def test_fork_into_a_preallocated_cache():
    k = torch.randn(2, 3, 4, 10, 5)
    cache = KVCache(k, -k, length=6)
    out = KVCache.empty(2, 4, 4, 10, 5)
    index = torch.tensor([2, 0, 2, 1])
    forked = cache.fork(index, out)
    assert forked is out and out.length == 6
    assert torch.equal(out.k[:, :, :, :6], k[:, index, :, :6]) and torch.equal(out.v[:, :, :, :6], -k[:, index, :, :6])
    with pytest.raises(ValueError, match="expected 3 rows"):
        cache.fork(index[:3], out)


def test_static_planners_pad_to_buckets_and_equal_plan_on_the_padded_batch():
    model = _model(3)
    planners = StaticPlanners(max_planners=2)
    assert [bucket_rows(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16] and bucket_rows(3, 8) == 8
    for n, steps, seed in ((3, 6, 0), (4, 6, 1), (3, 5, 2), (2, 6, 3), (3, 6, 4)):
        tokens, tasks, mask, _ = synthetic_contexts(model.cfg, n, steps, seed=seed)
        got = planners(model, tokens, tasks, mask, beam=3, horizon=2, gamma=0.95)
        index = torch.tensor(list(range(n)) + [n - 1] * (bucket_rows(n) - n))
        ref = plan(model, tokens[index], tasks[index], mask[index], beam=3, horizon=2, gamma=0.95)
        assert torch.equal(got.action, ref.action[:n]) and torch.equal(got.score, ref.score[:n])
        assert got.action.shape == (n,) and torch.equal(got.q_root, ref.q_root[:n])
    # shapes (4, 221), (4, 184), (2, 221), (4, 221): the LRU of 2 rebuilt (4, 221) after (4, 184) and (2, 221)
    assert planners.built == 4 and len(planners.planners) == 2
    greedy = planners(model, tokens, tasks, mask, beam=1, horizon=2)
    assert torch.equal(greedy.action, plan(model, tokens, tasks, mask, beam=1).action)
