"""JOWA losses (`jowa_core.models.losses`) against brute-force loops and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from jowa_core.models.losses import (
    c51_project,
    c51_support,
    cql_loss,
    expected_q,
    mixture_probs,
    td_loss,
    td_loss_and_stats,
    world_losses,
)

DT = torch.float64


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-12, rtol: float = 1e-10) -> None:
    """Like torch.testing.assert_close (whose first call imports for seconds), float64-tight by default."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    diff = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, atol=atol, rtol=rtol), f"max abs diff {diff}"


# ----------------------------------------------------------------------------------------------------------
# Reference implementations (python loops, written independently of the vectorised code)
# ----------------------------------------------------------------------------------------------------------


def project_loop(tz: list[float], probs: list[float], support: list[float]) -> list[float]:
    """Textbook C51 projection: b = (Tz - v_min) / Δz, split onto floor/ceil; everything on l when l == u."""
    z = len(support)
    v_min, v_max = support[0], support[-1]
    dz = (v_max - v_min) / (z - 1)
    m = [0.0] * z
    for t, p in zip(tz, probs, strict=True):
        t = min(max(t, v_min), v_max)
        b = (t - v_min) / dz
        lo, up = min(max(math.floor(b), 0), z - 1), min(max(math.ceil(b), 0), z - 1)
        if lo == up:
            m[lo] += p
        else:
            m[lo] += p * (up - b)
            m[up] += p * (b - lo)
    return m


def softmax_list(xs: list[float]) -> list[float]:
    mx = max(xs)
    es = [math.exp(x - mx) for x in xs]
    s = sum(es)
    return [e / s for e in es]


def head_mixture(logits: torch.Tensor) -> list[float]:
    """logits (H, Z) -> mean over heads of the per-head softmax, as a list."""
    per_head = [softmax_list(logits[h].tolist()) for h in range(logits.shape[0])]
    return [sum(ph[i] for ph in per_head) / len(per_head) for i in range(logits.shape[1])]


def td_loss_loop(q, qt, action, reward, terminal, valid, action_mask, support, gamma) -> float:
    """Per-(b, t) transcription of the spec of the 1-step C51 TD loss."""
    _, n_b, n_l, n_a, _ = q.shape
    sup = support.tolist()
    total, terms = 0.0, 0
    for b in range(n_b):
        for t in range(n_l):
            if not valid[b, t]:
                continue
            r = float(reward[b, t])
            if terminal[b, t]:
                m = project_loop([r] * len(sup), [1.0 / len(sup)] * len(sup), sup)
            elif t + 1 < n_l and valid[b, t + 1]:
                dists = [head_mixture(qt[:, b, t + 1, a]) for a in range(n_a)]
                best, best_q = None, -math.inf
                for a in range(n_a):
                    qa = sum(p * zz for p, zz in zip(dists[a], sup, strict=True))
                    if action_mask[b, a] and qa > best_q:
                        best, best_q = a, qa
                m = project_loop([r + gamma * zz for zz in sup], dists[best], sup)
            else:
                continue
            p = head_mixture(q[:, b, t, int(action[b, t])])
            total += -sum(mi * math.log(pi + 1e-8) for mi, pi in zip(m, p, strict=True))
            terms += 1
    return total / terms if terms else 0.0


# ----------------------------------------------------------------------------------------------------------
# c51_support / c51_project
# ----------------------------------------------------------------------------------------------------------


def test_c51_support():
    s = c51_support()
    assert s.shape == (51,)
    assert s[0].item() == -10.0 and s[-1].item() == 30.0
    assert torch.allclose(s[1:] - s[:-1], torch.full((50,), 0.8), atol=1e-5)


@pytest.mark.parametrize(("v_min", "v_max", "z"), [(-10.0, 30.0, 51), (-1.0, 1.0, 5), (0.0, 3.0, 4), (-2.5, 7.5, 21)])
def test_c51_project_matches_textbook_loop(v_min, v_max, z):
    g = torch.Generator().manual_seed(z)
    support = torch.linspace(v_min, v_max, z, dtype=DT)
    span = v_max - v_min
    n = 24
    tz = torch.rand(n, z, generator=g, dtype=DT) * 2 * span + v_min - span / 2  # half of it outside the range
    tz[:4] = support[torch.randint(0, z, (4, z), generator=g)]  # exactly on atoms
    tz[4] = support  # identity
    tz[5, : z // 2] = v_max + 100.0  # far outside
    tz[5, z // 2 :] = v_min - 100.0
    probs = torch.rand(n, z, generator=g, dtype=DT) ** 3
    probs /= probs.sum(-1, keepdim=True)
    out = c51_project(tz, probs, support)
    ref = torch.tensor([project_loop(tz[i].tolist(), probs[i].tolist(), support.tolist()) for i in range(n)], dtype=DT)
    assert out.shape == (n, z)
    assert_close(out, ref, atol=1e-10, rtol=1e-10)
    assert_close(out.sum(-1), torch.ones(n, dtype=DT))
    assert_close(out[4], probs[4])
    assert out[5, -1] == pytest.approx(probs[5, : z // 2].sum().item())
    assert out[5, 0] == pytest.approx(probs[5, z // 2 :].sum().item())


def test_c51_project_float32_default_support():
    g = torch.Generator().manual_seed(0)
    support = c51_support()
    tz = torch.rand(64, 51, generator=g) * 60 - 20
    probs = torch.softmax(torch.randn(64, 51, generator=g), -1)
    out = c51_project(tz, probs, support)
    ref = torch.tensor([project_loop(tz[i].tolist(), probs[i].tolist(), support.tolist()) for i in range(64)])
    assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert_close(out.sum(-1), torch.ones(64), atol=1e-5, rtol=0)


def test_c51_project_point_mass_neighbours():
    support = torch.linspace(-1.0, 1.0, 5, dtype=DT)  # atoms -1, -0.5, 0, 0.5, 1
    uniform = torch.full((3, 5), 0.2, dtype=DT)
    tz = torch.tensor([0.3, 0.5, -1.7], dtype=DT).unsqueeze(-1).expand(3, 5)
    out = c51_project(tz, uniform, support)
    expected = torch.tensor(
        [[0, 0, 0.4, 0.6, 0], [0, 0, 0, 1.0, 0], [1.0, 0, 0, 0, 0]],
        dtype=DT,
    )
    assert_close(out, expected)


# ----------------------------------------------------------------------------------------------------------
# world_losses
# ----------------------------------------------------------------------------------------------------------


def make_world_batch(seed: int, b: int = 3, n_l: int = 4, k: int = 36, v: int = 13):
    g = torch.Generator().manual_seed(seed)
    obs_logits = torch.randn(b, n_l * k, v, generator=g, dtype=DT) * 2
    reward_logits = torch.randn(b, n_l, 3, generator=g, dtype=DT)
    end_logits = torch.randn(b, n_l, 2, generator=g, dtype=DT)
    obs_tokens = torch.randint(0, v, (b, n_l, k), generator=g)
    reward = torch.randn(b, n_l, generator=g, dtype=DT)
    reward[reward.abs() < 0.4] = 0.0
    lengths = torch.tensor([n_l, 2, 1][:b])
    valid = torch.arange(n_l)[None] < lengths[:, None]
    terminal = torch.zeros(b, n_l, dtype=torch.bool)
    terminal[1, 1] = True
    terminal[0, 2] = True
    return obs_logits, reward_logits, end_logits, obs_tokens, reward, terminal, valid


def world_losses_loop(obs_logits, reward_logits, end_logits, obs_tokens, reward, terminal, valid):
    b, n_l, k = obs_tokens.shape
    nll = {"obs": [], "reward": [], "end": []}
    for i in range(b):
        for p in range(n_l * k - 1):
            step, pos = divmod(p + 1, k)
            if valid[i, step]:
                logp = torch.log_softmax(obs_logits[i, p], -1)
                nll["obs"].append(-logp[obs_tokens[i, step, pos]].item())
        for t in range(n_l):
            if valid[i, t]:
                r = reward[i, t].item()
                cls = 0 if r < 0 else (1 if r == 0 else 2)
                nll["reward"].append(-torch.log_softmax(reward_logits[i, t], -1)[cls].item())
                nll["end"].append(-torch.log_softmax(end_logits[i, t], -1)[int(terminal[i, t])].item())
    return {key: sum(vals) / len(vals) for key, vals in nll.items()}


@pytest.mark.parametrize(("seed", "k"), [(0, 36), (1, 5)])
def test_world_losses_match_loop(seed, k):
    batch = make_world_batch(seed, k=k)
    out = world_losses(*batch)
    ref = world_losses_loop(*batch)
    assert set(out) == {"obs", "reward", "end"}
    for key in ref:
        assert out[key].shape == ()
        assert out[key].item() == pytest.approx(ref[key], rel=1e-10), key


def test_world_losses_padding_is_ignored():
    k = 36
    obs_logits, reward_logits, end_logits, obs_tokens, reward, terminal, valid = make_world_batch(2, k=k)
    base = world_losses(obs_logits, reward_logits, end_logits, obs_tokens, reward, terminal, valid)
    g = torch.Generator().manual_seed(5)
    pad = ~valid

    # Logits at predictions whose labels are padded; row 1 has 2 valid steps, row 2 has 1.
    ol = obs_logits.clone()
    ol[1, 2 * k - 1 :] = torch.randn(ol[1, 2 * k - 1 :].shape, generator=g, dtype=DT) * 10  # from action token of t=1
    ol[2, k - 1 :] = torch.randn(ol[2, k - 1 :].shape, generator=g, dtype=DT) * 10
    ol[0, -1] = 100.0  # last action token of a full row: no label at all
    rl, el = reward_logits.clone(), end_logits.clone()
    rl[pad] = torch.randn(rl[pad].shape, generator=g, dtype=DT) * 10
    el[pad] = torch.randn(el[pad].shape, generator=g, dtype=DT) * 10
    # Tokens/rewards/terminals of padded steps, including garbage values.
    tok, rew, term = obs_tokens.clone(), reward.clone(), terminal.clone()
    tok[pad] = -1
    tok[2, 3] = 10_000
    rew[pad] = float("nan")
    out = world_losses(ol, rl, el, tok, rew, term, valid)
    for key in base:
        assert out[key].item() == pytest.approx(base[key].item(), rel=1e-12), key

    # The prediction just before the padded boundary (obs position 34 of the last valid step) does count.
    ol = obs_logits.clone()
    ol[1, 2 * k - 2] += torch.randn(ol.shape[-1], generator=g, dtype=DT) * 5
    assert world_losses(ol, reward_logits, end_logits, obs_tokens, reward, terminal, valid)["obs"] != base["obs"]
    # ... and so does the action token of a valid step followed by a valid step.
    ol = obs_logits.clone()
    ol[1, k - 1] += torch.randn(ol.shape[-1], generator=g, dtype=DT) * 5
    assert world_losses(ol, reward_logits, end_logits, obs_tokens, reward, terminal, valid)["obs"] != base["obs"]


def test_world_losses_all_padded_is_zero_with_grad():
    obs_logits, reward_logits, end_logits, obs_tokens, reward, terminal, _ = make_world_batch(3)
    obs_logits.requires_grad_(True)
    valid = torch.zeros(terminal.shape, dtype=torch.bool)
    out = world_losses(obs_logits, reward_logits, end_logits, obs_tokens, reward, terminal & valid, valid)
    for key in out:
        assert out[key].item() == 0.0
    out["obs"].backward()
    assert obs_logits.grad is not None and obs_logits.grad.abs().sum() == 0


def test_world_losses_reward_sign_classes():
    # One step per row, single valid step: reward class = sign(r) + 1, read off via one-hot logits.
    rewards = torch.tensor([[-3.0], [0.0], [0.25]], dtype=DT)
    reward_logits = torch.zeros(3, 1, 3, dtype=DT)
    reward_logits[0, 0, 0] = reward_logits[1, 0, 1] = reward_logits[2, 0, 2] = 50.0
    obs_logits = torch.zeros(3, 2, 4, dtype=DT)
    valid = torch.ones(3, 1, dtype=torch.bool)
    term = torch.tensor([[True], [False], [True]])
    end_logits = torch.zeros(3, 1, 2, dtype=DT)
    tokens = torch.zeros(3, 1, 2, dtype=torch.long)
    out = world_losses(obs_logits, reward_logits, end_logits, tokens, rewards, term, valid)
    assert out["reward"].item() < 1e-20
    assert out["end"].item() == pytest.approx(math.log(2))
    assert out["obs"].item() == pytest.approx(math.log(4))
    reward_logits[1, 0] = torch.tensor([50.0, 0.0, 0.0])  # wrong class for r == 0
    bad = world_losses(obs_logits, reward_logits, end_logits, tokens, rewards, term, valid)
    assert bad["reward"].item() == pytest.approx(50.0 / 3, rel=1e-6)


# ----------------------------------------------------------------------------------------------------------
# mixture_probs / expected_q
# ----------------------------------------------------------------------------------------------------------


def test_mixture_and_expected_q():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 4, 5, generator=g, dtype=DT)
    support = torch.linspace(-2, 2, 5, dtype=DT)
    mix = mixture_probs(logits)
    assert mix.shape == (2, 4, 5)
    for i in range(2):
        for a in range(4):
            assert_close(mix[i, a], torch.tensor(head_mixture(logits[:, i, a]), dtype=DT))
    assert_close(expected_q(logits, support), (mix * support).sum(-1))


# ----------------------------------------------------------------------------------------------------------
# td_loss
# ----------------------------------------------------------------------------------------------------------

TD_VALID_LEN = [8, 5, 3, 8, 1, 1, 6, 0]  # per row
TD_TERMINAL_AT = [None, 4, None, 7, 0, None, 2, None]  # row 6: a terminal before the end of the valid part


def make_td_batch(seed: int, h: int, n_l: int = 8, n_a: int = 5, z: int = 11):
    g = torch.Generator().manual_seed(seed)
    n_b = len(TD_VALID_LEN)
    q = torch.randn(h, n_b, n_l, n_a, z, generator=g, dtype=DT) * 1.5
    qt = torch.randn(h, n_b, n_l, n_a, z, generator=g, dtype=DT) * 1.5
    action = torch.randint(0, n_a, (n_b, n_l), generator=g)
    reward = torch.rand(n_b, n_l, generator=g, dtype=DT) * 6 - 3  # targets reach outside [-2, 2]
    reward[0, 1] = 0.4  # exactly on an atom
    valid = torch.arange(n_l)[None] < torch.tensor(TD_VALID_LEN)[:, None]
    terminal = torch.zeros(n_b, n_l, dtype=torch.bool)
    for i, t in enumerate(TD_TERMINAL_AT):
        if t is not None:
            terminal[i, t] = True
    action_mask = torch.rand(n_b, n_a, generator=g) < 0.6
    action_mask[:, 1] = True
    support = torch.linspace(-2.0, 2.0, z, dtype=DT)
    return q, qt, action, reward, terminal, valid, action_mask, support


@pytest.mark.parametrize(("h", "seed"), [(1, 0), (3, 1), (3, 2)])
def test_td_loss_matches_loop(h, seed):
    q, qt, action, reward, terminal, valid, action_mask, support = make_td_batch(seed, h)
    gamma = 0.9
    loss, stats = td_loss_and_stats(q, qt, action, reward, terminal, valid, action_mask, support, gamma=gamma)
    ref = td_loss_loop(q, qt, action, reward, terminal, valid, action_mask, support, gamma)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(ref, rel=1e-9)
    assert td_loss(q, qt, action, reward, terminal, valid, action_mask, support, gamma=gamma).item() == loss.item()
    # pairs: 7 + 4 + 2 + 7 + 0 + 0 + (2 + 3: steps 0, 1 and 3, 4) + 0; terminals: rows 1, 3, 4, 6
    assert stats["num_pairs"].item() == 7 + 4 + 2 + 7 + 2 + 2
    assert stats["num_terminals"].item() == 4


def test_td_loss_general_valid_pattern():
    # Non-contiguous validity: a hole in the middle of a row breaks the pair across it.
    q, qt, action, reward, terminal, valid, action_mask, support = make_td_batch(3, 2)
    valid[0, 3] = False
    valid[3, 0] = False
    loss = td_loss(q, qt, action, reward, terminal, valid, action_mask, support, gamma=0.97)
    ref = td_loss_loop(q, qt, action, reward, terminal, valid, action_mask, support, 0.97)
    assert loss.item() == pytest.approx(ref, rel=1e-9)


def test_td_loss_padding_invariance():
    q, qt, action, reward, terminal, valid, action_mask, support = make_td_batch(4, 3)
    base = td_loss(q, qt, action, reward, terminal, valid, action_mask, support)
    g = torch.Generator().manual_seed(9)
    pad = ~valid
    q2, qt2 = q.clone(), qt.clone()
    q2[:, pad] = torch.randn(q2[:, pad].shape, generator=g, dtype=DT) * 10
    qt2[:, pad] = torch.randn(qt2[:, pad].shape, generator=g, dtype=DT) * 10
    action2, reward2 = action.clone(), reward.clone()
    action2[pad] = -1
    reward2[pad] = float("nan")
    out = td_loss(q2, qt2, action2, reward2, terminal, valid, action_mask, support)
    assert out.item() == pytest.approx(base.item(), rel=1e-12)
    # Online logits at the last valid step of a non-terminal row have no term either ...
    q3 = q.clone()
    q3[:, 2, 2] += 5.0 * torch.randn(q3[:, 2, 2].shape, generator=g, dtype=DT)
    assert td_loss(q3, qt, action, reward, terminal, valid, action_mask, support).item() == pytest.approx(base.item())
    # ... but they do count one step earlier, and target logits of that step do count.
    q3 = q.clone()
    q3[:, 2, 1] += 5.0 * torch.randn(q3[:, 2, 1].shape, generator=g, dtype=DT)
    assert td_loss(q3, qt, action, reward, terminal, valid, action_mask, support).item() != pytest.approx(base.item())
    qt3 = qt.clone()
    qt3[:, 2, 2] += 5.0 * torch.randn(qt3[:, 2, 2].shape, generator=g, dtype=DT)
    assert td_loss(q, qt3, action, reward, terminal, valid, action_mask, support).item() != pytest.approx(base.item())


def test_td_loss_gradient_only_to_online():
    q, qt, action, reward, terminal, valid, action_mask, support = make_td_batch(5, 2)
    q.requires_grad_(True)
    qt.requires_grad_(True)
    loss = td_loss(q, qt, action, reward, terminal, valid, action_mask, support)
    loss.backward()
    assert qt.grad is None
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert q.grad[:, ~valid].abs().sum() == 0  # padded steps get no gradient


def test_td_loss_no_terms_is_zero():
    q, qt, action, reward, terminal, valid, action_mask, support = make_td_batch(6, 1)
    valid = torch.zeros_like(valid)
    valid[:, 0] = True  # single non-terminal valid step per row: no pair, no terminal
    q.requires_grad_(True)
    loss = td_loss(q, qt, action, reward, torch.zeros_like(terminal), valid, action_mask, support)
    assert loss.item() == 0.0
    loss.backward()


@pytest.mark.parametrize(("r", "weights"), [(0.3, {2: 0.4, 3: 0.6}), (0.5, {3: 1.0}), (-0.95, {0: 0.9, 1: 0.1})])
def test_td_loss_terminal_target_is_point_mass(r, weights):
    support = torch.linspace(-1.0, 1.0, 5, dtype=DT)  # atoms -1, -0.5, 0, 0.5, 1
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 1, 3, 4, 5, generator=g, dtype=DT)
    qt = torch.randn(2, 1, 3, 4, 5, generator=g, dtype=DT)
    action = torch.tensor([[2, 1, 0]])
    reward = torch.tensor([[7.0, r, 3.0]], dtype=DT)
    valid = torch.tensor([[False, True, False]])
    terminal = torch.tensor([[False, True, False]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss = td_loss(q, qt, action, reward, terminal, valid, mask, support, gamma=0.99)
    p = mixture_probs(q)[0, 1, 1]
    expected = -sum(w * math.log(p[i].item() + 1e-8) for i, w in weights.items())
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_td_loss_argmax_ignores_invalid_actions():
    support = torch.linspace(-2.0, 2.0, 9, dtype=DT)
    g = torch.Generator().manual_seed(11)
    h, n_a = 2, 4
    q = torch.randn(h, 1, 2, n_a, 9, generator=g, dtype=DT)
    qt = torch.randn(h, 1, 2, n_a, 9, generator=g, dtype=DT)
    qt[:, 0, 1, 3] = torch.linspace(-5, 5, 9, dtype=DT)  # invalid action 3 has by far the largest target Q
    action = torch.tensor([[1, 0]])
    reward = torch.tensor([[0.3, 0.0]], dtype=DT)
    valid = torch.ones(1, 2, dtype=torch.bool)
    terminal = torch.zeros(1, 2, dtype=torch.bool)
    mask = torch.tensor([[True, True, True, False]])
    all_valid = torch.ones_like(mask)
    assert expected_q(qt, support)[0, 1].argmax().item() == 3

    masked = td_loss(q, qt, action, reward, terminal, valid, mask, support)
    qt_low = qt.clone()
    qt_low[:, 0, 1, 3] = torch.linspace(5, -5, 9, dtype=DT)  # now action 3 has the lowest target Q
    lowered = td_loss(q, qt_low, action, reward, terminal, valid, all_valid, support)
    unmasked = td_loss(q, qt, action, reward, terminal, valid, all_valid, support)
    assert masked.item() == pytest.approx(lowered.item(), rel=1e-12)
    assert unmasked.item() != pytest.approx(masked.item(), rel=1e-3)


def test_td_loss_argmax_ties_take_first_action():
    support = torch.linspace(-1.0, 1.0, 5, dtype=DT)
    q = torch.zeros(1, 1, 2, 3, 5, dtype=DT)
    q[0, 0, 0, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=DT)
    qt = torch.zeros(1, 1, 2, 3, 5, dtype=DT)
    # Actions 1 and 2 tie on expected Q (0.0) with different distributions; action 0 is below.
    qt[0, 0, 1, 0] = torch.tensor([3.0, 0, 0, 0, 0], dtype=DT)
    qt[0, 0, 1, 1] = torch.tensor([0, 0, 4.0, 0, 0], dtype=DT)
    qt[0, 0, 1, 2] = torch.tensor([2.0, 0, 0, 0, 2.0], dtype=DT)
    args = (torch.tensor([[0, 0]]), torch.zeros(1, 2, dtype=DT), torch.zeros(1, 2, dtype=torch.bool))
    valid, mask = torch.tensor([[True, True]]), torch.ones(1, 3, dtype=torch.bool)
    loss = td_loss(q, qt, *args[:2], args[2], valid, mask, support, gamma=1.0)
    # With gamma = 1 and r = 0 the target is exactly the chosen action's distribution.
    target = torch.softmax(qt[0, 0, 1, 1], -1)
    expected = -(target * torch.log(torch.softmax(q[0, 0, 0, 0], -1) + 1e-8)).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)


# ----------------------------------------------------------------------------------------------------------
# cql_loss
# ----------------------------------------------------------------------------------------------------------


def test_cql_loss_hand_computed():
    # Z = 3 atoms (-1, 0, 1). Per action logits -> probs -> Q:
    #   a0: (ln3, 0, 0) -> (3/5, 1/5, 1/5) -> -0.4
    #   a1: (0, 0, ln3) -> (1/5, 1/5, 3/5) -> +0.4
    #   a2: (0, 0, ln9) -> (1/11, 1/11, 9/11) -> 8/11
    support = torch.tensor([-1.0, 0.0, 1.0], dtype=DT)
    ln3, ln9 = math.log(3), math.log(9)
    per_action = torch.tensor([[ln3, 0, 0], [0, 0, ln3], [0, 0, ln9]], dtype=DT)
    q_logits = per_action.expand(1, 1, 3, 3, 3).clone()  # (H=1, B=1, L=3, A=3, Z=3)
    q_logits[0, 0, 2] = torch.tensor([[50.0, 0, 0], [0, 0, 50.0], [0, 50.0, 0]], dtype=DT)  # padded step
    action = torch.tensor([[1, 0, 2]])
    valid = torch.tensor([[True, True, False]])
    assert_close(expected_q(q_logits, support)[0, 0], torch.tensor([-0.4, 0.4, 8 / 11], dtype=DT))

    lse_all = math.log(math.exp(-0.4) + math.exp(0.4) + math.exp(8 / 11))  # = 1.4426...
    expected_all = ((lse_all - 0.4) + (lse_all + 0.4)) / 2  # = lse_all
    assert cql_loss(q_logits, action, valid, support).item() == pytest.approx(expected_all, rel=1e-12)
    assert expected_all == pytest.approx(1.44257, abs=1e-5)

    mask = torch.tensor([[True, True, False]])
    lse_masked = math.log(math.exp(-0.4) + math.exp(0.4))  # = 0.4 + log(1 + e^-0.8) = 0.7711...
    expected_masked = ((lse_masked - 0.4) + (lse_masked + 0.4)) / 2
    out = cql_loss(q_logits, action, valid, support, action_mask=mask)
    assert out.item() == pytest.approx(expected_masked, rel=1e-12)
    assert expected_masked == pytest.approx(0.77111, abs=1e-5)

    # Padded step ignored: counting it would add a large gap (taken action 2 has Q = 0 vs max Q = 1).
    assert cql_loss(q_logits, action, torch.ones(1, 3, dtype=torch.bool), support).item() != pytest.approx(expected_all)
    none_valid = cql_loss(q_logits, action, torch.zeros(1, 3, dtype=torch.bool), support)
    assert none_valid.item() == 0.0


def test_cql_loss_mixture_of_heads():
    # Two heads for action a1: uniform (Q=0) and (1/5, 1/5, 3/5) (Q=0.4): the mixture of probs has Q=0.2,
    # unlike the softmax of averaged logits ((sqrt3 - 1) / (2 + sqrt3) = 0.196...). a0 is (3/5, 1/5, 1/5) in both.
    support = torch.tensor([-1.0, 0.0, 1.0], dtype=DT)
    ln3 = math.log(3)
    q_logits = torch.zeros(2, 1, 1, 2, 3, dtype=DT)
    q_logits[:, 0, 0, 0] = torch.tensor([ln3, 0, 0], dtype=DT)
    q_logits[1, 0, 0, 1] = torch.tensor([0, 0, ln3], dtype=DT)
    action = torch.tensor([[0]])
    valid = torch.tensor([[True]])
    expected = math.log(math.exp(-0.4) + math.exp(0.2)) + 0.4
    assert cql_loss(q_logits, action, valid, support).item() == pytest.approx(expected, rel=1e-12)


def test_cql_loss_matches_loop_with_padding():
    g = torch.Generator().manual_seed(3)
    h, n_b, n_l, n_a, z = 3, 4, 5, 6, 7
    support = torch.linspace(-3, 3, z, dtype=DT)
    q_logits = torch.randn(h, n_b, n_l, n_a, z, generator=g, dtype=DT) * 2
    action = torch.randint(0, n_a, (n_b, n_l), generator=g)
    valid = torch.arange(n_l)[None] < torch.tensor([5, 3, 1, 0])[:, None]
    mask = torch.rand(n_b, n_a, generator=g) < 0.5
    mask[:, 0] = True
    for use_mask in (False, True):
        total, count = 0.0, 0
        for b in range(n_b):
            for t in range(n_l):
                if not valid[b, t]:
                    continue
                mixes = [head_mixture(q_logits[:, b, t, a]) for a in range(n_a)]
                qs = [sum(p * s for p, s in zip(mix, support.tolist(), strict=True)) for mix in mixes]
                allowed = [a for a in range(n_a) if mask[b, a] or not use_mask]
                total += math.log(sum(math.exp(qs[a]) for a in allowed)) - qs[int(action[b, t])]
                count += 1
        out = cql_loss(q_logits, action, valid, support, action_mask=mask if use_mask else None)
        assert out.item() == pytest.approx(total / count, rel=1e-10)
    q2 = q_logits.clone()
    q2[:, ~valid] = 100.0 * torch.randn(q2[:, ~valid].shape, generator=g, dtype=DT)
    action2 = action.clone()
    action2[~valid] = -1
    assert cql_loss(q2, action2, valid, support, mask).item() == pytest.approx(out.item(), rel=1e-12)


def test_half_precision_logits_are_computed_in_float32():
    q, qt, action, reward, terminal, valid, action_mask, _ = make_td_batch(8, 2, z=51)
    support = c51_support()
    q, qt = (q * 3).bfloat16(), (qt * 3).bfloat16()
    args = (action, reward.float(), terminal, valid, action_mask, support)
    out = td_loss(q, qt, *args)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(td_loss(q.float(), qt.float(), *args).item(), rel=1e-6)
    cql = cql_loss(q, action, valid, support, action_mask)
    assert cql.item() == pytest.approx(cql_loss(q.float(), action, valid, support, action_mask).item(), rel=1e-6)
