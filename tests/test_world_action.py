"""The world-action model: released parameter counts, head positions, KV-cache decoding, target head."""

from __future__ import annotations

import pytest
import torch

from jowa_core.config import ConfigError, from_dict, load_config, to_dict
from jowa_core.models.transformer import KVCache
from jowa_core.models.world_action import (
    WorldActionConfig,
    WorldActionModel,
    load_world_action,
    official_q_dropout,
    save_world_action,
    segment_tokens,
)

# Reference §2.10: trainable parameters of the released models (without the target head), with it.
RELEASED = {"40m": (17_416_091, 19_109_681), "70m": (50_567_579, 53_349_681), "150m": (109_045_447, 127_778_185)}


def tiny(**kw) -> WorldActionModel:
    torch.manual_seed(0)
    return WorldActionModel(from_dict(WorldActionConfig, {"preset": "tiny", **kw}))


@pytest.mark.parametrize("preset", sorted(RELEASED))
def test_preset_parameter_counts_match_released_models(preset):
    with torch.device("meta"):
        model = WorldActionModel(from_dict(WorldActionConfig, {"preset": preset}))
    trainable, total = RELEASED[preset]
    assert model.num_trainable_parameters() == trainable
    assert sum(p.numel() for p in model.parameters()) == total


def test_presets_and_overrides_resolve(tmp_path):
    cfg = from_dict(WorldActionConfig, {"preset": "150m", "num_q": 1})
    assert (cfg.num_layers, cfg.embed_dim, cfg.num_heads, cfg.q_mlp_dim, cfg.num_q) == (12, 768, 12, 1792, 1)
    assert from_dict(WorldActionConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown preset"):
        from_dict(WorldActionConfig, {"preset": "9000m"})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(WorldActionConfig, {"preset": "tiny", "layers": 3})
    p = tmp_path / "c.yaml"
    p.write_text("preset: 40m\nq_dropout: 1e-2\n")
    cfg = load_config(WorldActionConfig, p, ["num_heads=4", "attn_pdrop=0"])
    assert (cfg.num_layers, cfg.num_heads, cfg.q_dropout, cfg.attn_pdrop) == (4, 4, 0.01, 0.0)
    with pytest.raises(ConfigError, match="num_layers"):
        load_config(WorldActionConfig, p, ["num_layers=two"])


def test_output_shapes_and_head_positions():
    model = tiny().eval()
    B, L = 3, 8
    obs, act = torch.randint(0, 2048, (B, L, 36)), torch.randint(0, 18, (B, L))
    tokens = segment_tokens(obs, act)
    assert tokens.shape == (B, 296)
    assert torch.equal(tokens[:, 36::37], act) and torch.equal(tokens[:, 37:73], obs[:, 1])
    out = model(tokens, torch.tensor([3, 6, 9]), with_target=True)
    assert out.obs_logits.shape == (B, 288, 2048)
    assert out.reward_logits.shape == (B, 8, 3) and out.end_logits.shape == (B, 8, 2)
    assert out.q_logits.shape == (1, B, 8, 18, 51) and out.q_target_logits.shape == (1, B, 8, 18, 51)
    pos = model.positions(0, 296, tokens.device)
    assert torch.equal(pos["q"], torch.arange(8) * 37 + 35)
    assert torch.equal(pos["act"], torch.arange(8) * 37 + 36)
    assert 35 not in pos["obs"].tolist() and 36 in pos["obs"].tolist() and len(pos["obs"]) == 288
    # the Q head reads the output at the last observation token: changing the action token after it and
    # anything later does not change Q of that step
    t2 = tokens.clone()
    t2[:, 36] = (t2[:, 36] + 1) % 18
    out2 = model(t2, torch.tensor([3, 6, 9]))
    assert torch.allclose(out2.q_logits[:, :, 0], out.q_logits[:, :, 0])
    assert not torch.allclose(out2.q_logits[:, :, 1], out.q_logits[:, :, 1])
    # the task embedding matters
    out3 = model(tokens, torch.tensor([4, 6, 9]))
    assert not torch.allclose(out3.obs_logits[0], out.obs_logits[0]) and torch.allclose(out3.obs_logits[1:],
                                                                                         out.obs_logits[1:])


def test_causality_padding_after_valid_tokens_is_invisible():
    model = tiny().eval()
    tokens = torch.randint(0, 18, (2, 296))
    task = torch.tensor([1, 2])
    a = model(tokens, task)
    t2 = tokens.clone()
    t2[:, 150:] = 0
    b = model(t2, task)
    n = (a.positions["obs"] < 150).sum()
    assert torch.allclose(a.obs_logits[:, :n], b.obs_logits[:, :n], atol=1e-6)
    assert not torch.allclose(a.obs_logits[:, n:], b.obs_logits[:, n:])


@pytest.mark.parametrize("num_q", [1, 3])
def test_kv_cache_decoding_equals_full_forward(num_q):
    model = tiny(num_q=num_q).eval()
    B = 4
    tokens = torch.randint(0, 18, (B, 296))
    task = torch.tensor([0, 5, 17, 59])
    full = model(tokens, task, with_target=True)
    cache = model.new_cache(B)
    chunks = [0, 100, 101, 111, 147, 148, 221, 222, 296]  # prefix, single tokens, whole steps, odd spans
    spans = zip(chunks[:-1], chunks[1:], strict=True)
    outs = [model(tokens[:, a:b], task, cache=cache, with_target=True) for a, b in spans]
    assert cache.length == 296
    for name, dim in [("obs_logits", 1), ("reward_logits", 1), ("end_logits", 1), ("q_logits", 2),
                      ("q_target_logits", 2)]:
        inc = torch.cat([getattr(o, name) for o in outs], dim)
        assert torch.allclose(inc, getattr(full, name), atol=1e-5), name
    with pytest.raises(ValueError, match="exceed"):
        model(tokens[:, :1], task, cache=cache)


@pytest.mark.parametrize("backend", ["sdpa", "manual"])
def test_attention_backends_agree_with_and_without_cache(backend):
    ref = tiny(attention="sdpa").eval()
    model = tiny(attention=backend).eval()
    tokens, task = torch.randint(0, 18, (2, 120)), torch.tensor([1, 2])
    full = ref(tokens, task)
    cache = model.new_cache(2)
    a, b = model(tokens[:, :50], task, cache=cache), model(tokens[:, 50:], task, cache=cache)
    assert torch.allclose(torch.cat([a.obs_logits, b.obs_logits], 1), full.obs_logits, atol=1e-5)


def test_kv_cache_fork_gathers_rows():
    model = tiny().eval()
    tokens = torch.randint(0, 18, (3, 74))
    task = torch.tensor([1, 2, 3])
    cache = model.new_cache(3)
    model(tokens[:, :60], task, cache=cache)
    index = torch.tensor([2, 2, 0, 1])
    forked = cache.fork(index)
    assert forked.batch_size == 4 and forked.length == 60
    a = model(tokens[index, 60:], task[index], cache=forked)
    ref = model(tokens[index], task[index])
    assert torch.allclose(a.obs_logits, ref.obs_logits[:, -a.obs_logits.shape[1]:], atol=1e-5)
    # the original cache is untouched by decoding into the fork
    b = model(tokens[:, 60:], task, cache=cache)
    assert torch.allclose(b.obs_logits, a.obs_logits[[2, 3, 0]], atol=1e-5)


def test_kv_cache_overflow_is_an_error():
    cache = KVCache.empty(1, 1, 1, 4, 2)
    with pytest.raises(ValueError, match="overflow"):
        cache.write(0, torch.zeros(1, 1, 5, 2), torch.zeros(1, 1, 5, 2))


def test_target_head_is_a_frozen_copy_in_eval_mode():
    model = tiny(num_q=2, q_dropout=0.5, embed_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)
    model.train()
    assert model.head_q.training and not model.head_q_target.training
    assert all(not p.requires_grad for p in model.head_q_target.parameters())
    tokens, task = torch.randint(0, 18, (2, 74)), torch.tensor([1, 2])
    # target head: deterministic in train mode (no dropout), online head: dropout
    o1, o2 = model(tokens, task, with_target=True), model(tokens, task, with_target=True)
    assert torch.equal(o1.q_target_logits, o2.q_target_logits)
    assert not torch.equal(o1.q_logits, o2.q_logits)
    with torch.no_grad():
        model.head_q.w3.add_(1.0)
    model.eval()
    o = model(tokens, task, with_target=True)
    assert not torch.allclose(o.q_logits, o.q_target_logits)
    model.update_target()
    o = model(tokens, task, with_target=True)
    assert torch.equal(o.q_logits, o.q_target_logits)
    # no gradient path through the target head
    model.train()
    assert model(tokens, task, heads=(), with_target=True).q_target_logits.grad_fn is None


def test_official_q_dropout_keeps_the_q_heads_noisy_in_eval_mode():
    """Ours: eval-mode Q is deterministic. The official code's Q-head dropout never switches off (reference §2.5);
    ``official_q_dropout`` reproduces that for the online and the target head, and switches back."""
    model = tiny(num_q=2, q_dropout=0.5, embed_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0).eval()
    tokens, task = torch.randint(0, 18, (2, 74)), torch.tensor([1, 2])
    o1, o2 = model(tokens, task, with_target=True), model(tokens, task, with_target=True)
    assert torch.equal(o1.q_logits, o2.q_logits) and torch.equal(o1.q_target_logits, o2.q_target_logits)
    official_q_dropout(model)
    o1, o2 = model(tokens, task, with_target=True), model(tokens, task, with_target=True)
    assert not torch.equal(o1.q_logits, o2.q_logits) and not torch.equal(o1.q_target_logits, o2.q_target_logits)
    assert torch.equal(o1.obs_logits, o2.obs_logits)  # only the Q heads: the backbone stays deterministic
    assert "always_dropout" not in str(list(model.state_dict()))  # not saved with the weights
    official_q_dropout(model, False)
    o1, o2 = model(tokens, task), model(tokens, task)
    assert torch.equal(o1.q_logits, o2.q_logits)


def test_q_ensemble_members_match_a_manual_mlp():
    model = tiny(num_q=3).eval()
    h = model.head_q
    x = torch.randn(5, 64)
    out = h(x)
    for q in range(3):
        z = x @ h.w1[q].T + h.b1[q]
        z = torch.nn.functional.mish(torch.nn.functional.layer_norm(z, (64,), h.ln1_w[q], h.ln1_b[q]))
        z = z @ h.w2[q].T + h.b2[q]
        z = torch.nn.functional.mish(torch.nn.functional.layer_norm(z, (64,), h.ln2_w[q], h.ln2_b[q]))
        z = z @ h.w3[q].T + h.b3[q]
        assert torch.allclose(out[q], z, atol=1e-5)


def test_detach_q_input_stops_q_gradients_at_the_backbone():
    model = tiny()
    tokens, task = torch.randint(0, 18, (2, 74)), torch.tensor([1, 2])
    for detach, expect in [(False, True), (True, False)]:
        model.zero_grad()
        model(tokens, task, heads=("q",), detach_q_input=detach).q_logits.sum().backward()
        grad = model.transformer.blocks[0].attn.query.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == expect
        assert model.head_q.w1.grad.abs().sum() > 0


def test_save_and_load_round_trip(tmp_path):
    model = tiny(num_q=2)
    save_world_action(model, tmp_path / "m", step=7)
    loaded, meta = load_world_action(tmp_path / "m")
    assert meta["step"] == 7 and meta["kind"] == "world_action"
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert not loaded.training
