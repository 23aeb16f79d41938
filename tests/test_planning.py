"""Beam search: exhaustive enumeration as the oracle, batched = one environment at a time, greedy cases."""

from __future__ import annotations

import itertools

import pytest
import torch

from jowa_core.config import from_dict
from jowa_core.models.world_action import WorldActionConfig, WorldActionModel
from jowa_core.planning import DEFAULT_REWARD_MODE
from jowa_core.planning.beam import imagine_step, plan

GAMMA = 0.99


pytestmark = pytest.mark.usefixtures("one_thread")


def model(seed: int = 0, **kw) -> WorldActionModel:
    torch.manual_seed(seed)
    cfg = from_dict(WorldActionConfig, {"preset": "tiny", "obs_vocab": 16, "num_layers": 2, "embed_dim": 32,
                                        "num_heads": 2, "q_mlp_dim": 32, "num_q": 2, **kw})
    m = WorldActionModel(cfg).eval()
    with torch.no_grad():  # spread the heads' outputs so that rewards and Q differ between actions
        for head in (m.head_reward, m.head_obs):
            head[2].weight.mul_(30)
        m.head_q.w3.mul_(20)
    return m


def contexts(n: int, steps: int, vocab: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, vocab, (n, steps, 36), generator=g)
    act = torch.randint(0, 18, (n, steps), generator=g)
    tok = torch.cat([obs, act[..., None]], -1).flatten(1)
    return tok[:, :-1]  # the current observation has no action yet


def naive_step(m: WorldActionModel, tokens: torch.Tensor, task: torch.Tensor, action: int,
               reward_mode=DEFAULT_REWARD_MODE):
    """One imagined step by full forwards (no cache): reward, obs tokens, Q̂ (A,) of one context."""
    seq = torch.cat([tokens, torch.tensor([action])])
    out = m(seq[None], task[None])
    p = out.reward_logits[0, -1].detach().softmax(-1)
    reward = int(out.reward_logits[0, -1].argmax()) - 1 if reward_mode == "mode" else float(p[2] - p[0])
    obs = []
    for _ in range(36):
        nxt = int(m(seq[None], task[None]).obs_logits[0, -1].argmax())
        obs.append(nxt)
        seq = torch.cat([seq, torch.tensor([nxt])])
    q = m.q_values(m(seq[None], task[None]).q_logits[:, :, -1])[0]
    return reward, seq, q


def exhaustive(m, tokens, task, mask, horizon, reward_mode=DEFAULT_REWARD_MODE):
    """argmax over all valid action sequences of sum gamma^(i-1) r_i + gamma^H max_a Q̂(s_H, a)."""
    valid = mask.nonzero()[:, 0].tolist()
    best = (-float("inf"), None)
    for seq_actions in itertools.product(valid, repeat=horizon):
        seq, total = tokens, 0.0
        for i, a in enumerate(seq_actions):
            r, seq, q = naive_step(m, seq, task, a, reward_mode)
            total += GAMMA**i * r
        score = total + GAMMA**horizon * q.masked_fill(~mask, -float("inf")).max().item()
        if score > best[0] + 1e-6:
            best = (score, seq_actions[0])
    return best


@pytest.mark.parametrize("seed,reward_mode", [(0, "expected"), (1, "mode")])
def test_imagine_step_with_cache_equals_full_forwards(seed, reward_mode):
    m = model(seed)
    tokens = contexts(3, 2, seed=seed)
    task = torch.tensor([3, 6, 9])
    mask = torch.ones(3, 18, dtype=torch.bool)
    cache = m.new_cache(3)
    m(tokens, task, cache=cache, heads=())
    actions = torch.tensor([0, 5, 17])
    reward, obs, q = imagine_step(m, cache, actions, task, mask, reward_mode)
    for i in range(3):
        r, seq, qn = naive_step(m, tokens[i], task[i], int(actions[i]), reward_mode)
        assert float(reward[i]) == pytest.approx(r, abs=1e-5)
        assert obs[i].tolist() == seq[-36:].tolist()
        assert torch.allclose(q[i], qn, atol=1e-5)


@pytest.mark.parametrize("horizon,valid_actions,beam", [(1, [0, 2, 5], 3), (2, [0, 1, 3], 3), (2, [1, 4], 2),
                                                        (3, [0, 7], 4)])
def test_beam_search_with_full_width_equals_exhaustive_enumeration(horizon, valid_actions, beam):
    m = model(2)
    n = 4
    tokens = contexts(n, 8 - horizon, seed=horizon)
    task = torch.tensor([1, 9, 15, 46])
    mask = torch.zeros(n, 18, dtype=torch.bool)
    mask[:, valid_actions] = True
    res = plan(m, tokens, task, mask, beam=beam, horizon=horizon, gamma=GAMMA)
    for i in range(n):
        score, first = exhaustive(m, tokens[i], task[i], mask[i], horizon)
        assert int(res.action[i]) == first
        assert res.score[i].item() == pytest.approx(score, abs=1e-4)


def test_beam_width_one_or_horizon_zero_is_greedy():
    m = model(3)
    tokens, task = contexts(5, 3), torch.arange(5)
    mask = torch.rand(5, 18, generator=torch.Generator().manual_seed(0)) < 0.5
    mask[:, 0] = True
    q = m.q_values(m(tokens, task).q_logits[:, :, -1]).masked_fill(~mask, -float("inf"))
    for beam, horizon in [(1, 2), (3, 0)]:
        res = plan(m, tokens, task, mask, beam=beam, horizon=horizon)
        assert torch.equal(res.action, q.argmax(-1))
        assert torch.allclose(res.q_root, q)
    # beam search picks valid actions and usually differs from greedy somewhere (the test can fail)
    res = plan(m, tokens, task, mask, beam=3, horizon=2)
    assert mask[torch.arange(5), res.action].all()


def test_batched_planning_equals_one_environment_at_a_time():
    m = model(4)
    n = 6
    tokens = contexts(n, 5, seed=7)
    task = torch.tensor([3, 6, 9, 10, 14, 15])
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(n, 18, generator=g) < 0.4
    mask[torch.arange(n), torch.randint(0, 18, (n,), generator=g)] = True
    mask[0] = False
    mask[0, 4] = True  # a single valid action: fewer than K
    batched = plan(m, tokens, task, mask, beam=3, horizon=2, record=True)
    for i in range(n):
        one = plan(m, tokens[i:i + 1], task[i:i + 1], mask[i:i + 1], beam=3, horizon=2)
        assert int(one.action[0]) == int(batched.action[i])
        assert one.score[0].item() == pytest.approx(batched.score[i].item(), abs=1e-5)
    assert int(batched.action[0]) == 4
    assert len(batched.tree) == 2 and batched.tree[1]["score"].shape == (n, 9)


def test_context_too_long_for_the_horizon_is_an_error():
    m = model(5)
    tokens, task = contexts(1, 7), torch.tensor([0])
    mask = torch.ones(1, 18, dtype=torch.bool)
    with pytest.raises(ValueError, match="at most 6 steps"):
        plan(m, tokens, task, mask, beam=2, horizon=2)
    with pytest.raises(ValueError, match="full observation"):
        plan(m, tokens[:, :-1], task, mask)


def test_official_mode_rewards_equal_exhaustive_enumeration():
    """The default reads imagined rewards as p(+1) - p(-1) (the paper's expectation); reward_mode='mode' reads
    the official planner's argmax - 1: the same oracle with that reward, and a different search."""
    assert DEFAULT_REWARD_MODE == "expected"
    m = model(4)
    tokens = contexts(3, 6, seed=5)
    task = torch.tensor([2, 8, 59])
    mask = torch.zeros(3, 18, dtype=torch.bool)
    mask[:, [0, 3, 4]] = True
    res = plan(m, tokens, task, mask, beam=3, horizon=2, gamma=GAMMA, reward_mode="mode")
    for i in range(3):
        score, first = exhaustive(m, tokens[i], task[i], mask[i], 2, reward_mode="mode")
        assert int(res.action[i]) == first
        assert res.score[i].item() == pytest.approx(score, abs=1e-4)
    assert not torch.equal(res.score, plan(m, tokens, task, mask, beam=3, horizon=2, gamma=GAMMA).score)
    with pytest.raises(ValueError, match="reward_mode"):
        plan(m, tokens, task, mask, beam=3, horizon=2, reward_mode="mean")


@pytest.mark.parametrize("beam,horizon", [(2, 2), (2, 3), (3, 2)])
def test_batched_beam_search_equals_the_node_by_node_planner(beam, horizon):
    from jowa_core.planning.reference import plan_node_by_node

    m = model(6)
    n = 5
    tokens = contexts(n, 8 - horizon, seed=11)
    task = torch.tensor([3, 6, 9, 10, 14])
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(n, 18, generator=g) < 0.5
    mask[:, 1] = True
    res = plan(m, tokens, task, mask, beam=beam, horizon=horizon)
    for i in range(n):
        action, score = plan_node_by_node(m, tokens[i], task[i], mask[i], beam, horizon)
        assert int(res.action[i]) == action
        assert res.score[i].item() == pytest.approx(score, abs=1e-5)


def test_mcts_returns_valid_actions_with_the_objective_value():
    from jowa_core.planning.mcts import plan_mcts

    m = model(8)
    n = 4
    tokens = contexts(n, 6, seed=3)
    task = torch.tensor([1, 2, 3, 4])
    mask = torch.zeros(n, 18, dtype=torch.bool)
    mask[:, [2, 9]] = True
    # all Q-values negative: the official MCTS could pick an unvisited/invalid child (value 0) here
    with torch.no_grad():
        m.head_q.b3.view(2, 18, 51)[:, :, :25] += 50.0
    res = plan_mcts(m, tokens, task, mask, horizon=1, num_simulations=6)
    assert mask[torch.arange(n), res.action].all()
    # the chosen child's value is the depth-1 objective r + gamma * max_a Q̂(s', a) of that action
    for i in range(n):
        r, _, q = naive_step(m, tokens[i], task[i], int(res.action[i]))
        expected = r + GAMMA * q.masked_fill(~mask[i], -float("inf")).max().item()
        assert res.score[i].item() == pytest.approx(expected, abs=1e-4)
    res0 = plan_mcts(m, tokens, task, mask, horizon=0)
    q = m.q_values(m(tokens, task).q_logits[:, :, -1]).masked_fill(~mask, -float("inf"))
    assert torch.equal(res0.action, q.argmax(-1))
