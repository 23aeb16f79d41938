"""JOWA training losses as pure tensor functions.

World model: next-observation-token, reward-sign and episode-end cross-entropies. Action model: C51
distributional 1-step TD loss on an ensemble of Q heads (mixture of per-head softmaxes) and a CQL regulariser.

Shape letters: B batch, L steps per segment, K observation tokens per step (36), V observation vocabulary,
A actions, Z atoms, H ensembled Q heads, N flattened rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
LOG_EPS = 1e-8


def c51_support(
    v_min: float = -10.0, v_max: float = 30.0, num_atoms: int = 51, device: torch.device | str | None = None
) -> Tensor:
    """The fixed, uniformly spaced C51 atoms: ``linspace(v_min, v_max, num_atoms)``, shape (Z,)."""
    return torch.linspace(v_min, v_max, num_atoms, device=device)


def c51_project(target_support: Tensor, probs: Tensor, support: Tensor) -> Tensor:
    """Project the distribution ``probs`` living on ``target_support`` onto ``support`` (C51 projection).

    Target atoms are clipped to ``[support[0], support[-1]]``; the mass of source atom j goes to atom i with
    weight ``clamp(1 - |Tz_j - z_i| / Δz, 0, 1)`` (Δz = support[1] - support[0], uniform support assumed).

    target_support, probs: (N, Z_src); support: (Z,). Returns (N, Z).
    """
    delta_z = support[1] - support[0]
    tz = target_support.clamp(min=support[0], max=support[-1])  # (N, Z_src)
    dist = (tz.unsqueeze(1) - support.view(1, -1, 1)).abs()  # (N, Z, Z_src)
    weights = (1.0 - dist / delta_z).clamp(0.0, 1.0)  # (N, Z, Z_src)
    return torch.einsum("nij,nj->ni", weights, probs)  # (N, Z)


def _upcast(x: Tensor) -> Tensor:
    """Half-precision inputs are computed in float32 (the C51 projection and logs need the precision)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _masked_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over labels != IGNORE_INDEX; 0 (still attached to the graph) when there are none.

    logits: (N, C); labels: (N,) long.
    """
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    count = (labels != IGNORE_INDEX).sum().clamp(min=1)
    return total / count


def world_losses(
    obs_logits: Tensor,
    reward_logits: Tensor,
    end_logits: Tensor,
    obs_tokens: Tensor,
    reward: Tensor,
    terminal: Tensor,
    valid: Tensor,
) -> dict[str, Tensor]:
    """World-model cross-entropies ``{'obs', 'reward', 'end'}`` (scalars, each a mean over its own labels).

    Per step the model sees K observation tokens then 1 action token. ``obs_logits`` holds the outputs at every
    position except observation position K-1, so flat index p = t*K + k predicts flat observation token p+1
    (the action token of step t predicts token 0 of step t+1; the last one has no label and is dropped).
    Labels belonging to invalid steps are ignored, as are reward/end labels of invalid steps.

    obs_logits: (B, L*K, V); reward_logits: (B, L, 3); end_logits: (B, L, 2); obs_tokens: (B, L, K) int;
    reward: (B, L) float; terminal, valid: (B, L) bool.
    """
    b, n_steps, k = obs_tokens.shape
    flat_tokens = obs_tokens.reshape(b, n_steps * k).long()  # (B, L*K)
    flat_valid = valid.repeat_interleave(k, dim=1)  # (B, L*K)
    obs_labels = torch.where(flat_valid, flat_tokens, IGNORE_INDEX)[:, 1:]  # (B, L*K-1)
    obs_pred = obs_logits[:, :-1]  # (B, L*K-1, V)
    obs = _masked_ce(obs_pred.reshape(-1, obs_pred.shape[-1]), obs_labels.reshape(-1))

    reward_classes = torch.sign(torch.where(valid, reward, 0)).long() + 1  # (B, L) in {0, 1, 2}
    reward_labels = torch.where(valid, reward_classes, IGNORE_INDEX)
    rew = _masked_ce(reward_logits.reshape(-1, reward_logits.shape[-1]), reward_labels.reshape(-1))

    end_labels = torch.where(valid, terminal.long(), IGNORE_INDEX)  # (B, L)
    end = _masked_ce(end_logits.reshape(-1, end_logits.shape[-1]), end_labels.reshape(-1))
    return {"obs": obs, "reward": rew, "end": end}


def mixture_probs(q_logits: Tensor) -> Tensor:
    """Mixture over heads of per-head softmaxes over atoms: (H, ..., A, Z) -> (..., A, Z)."""
    return q_logits.softmax(dim=-1).mean(dim=0)


def expected_q(q_logits: Tensor, support: Tensor) -> Tensor:
    """Expected Q values of the head mixture: (H, ..., A, Z), (Z,) -> (..., A)."""
    return mixture_probs(q_logits) @ support.to(q_logits.dtype)


def td_loss_and_stats(
    q_logits: Tensor,
    q_target_logits: Tensor,
    action: Tensor,
    reward: Tensor,
    terminal: Tensor,
    valid: Tensor,
    action_mask: Tensor,
    support: Tensor,
    gamma: float = 0.99,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``td_loss`` plus detached diagnostics: 'num_pairs', 'num_terminals', 'target_q' (mean E[target]),
    'online_q' (mean E[p_t] over the same terms)."""
    _, b, n_steps, num_actions, num_atoms = q_logits.shape
    q_logits = _upcast(q_logits)
    support = support.to(q_logits.dtype)
    act = torch.where(valid, action.long(), 0)  # (B, L); padded steps may hold garbage actions
    idx = act.view(b, n_steps, 1, 1).expand(b, n_steps, 1, num_atoms)
    online = mixture_probs(q_logits).gather(2, idx).squeeze(2)  # (B, L, Z)

    is_terminal = valid & terminal  # (B, L)
    is_pair = torch.zeros_like(valid)
    is_pair[:, :-1] = valid[:, :-1] & valid[:, 1:] & ~terminal[:, :-1]  # (B, L)
    has_term = is_pair | is_terminal  # (B, L), pairs and terminals are disjoint

    with torch.no_grad():
        target_probs = mixture_probs(q_target_logits.detach().to(q_logits.dtype))  # (B, L, A, Z)
        q_next = (target_probs @ support).masked_fill(~action_mask.view(b, 1, num_actions), float("-inf"))
        a_star = q_next.argmax(dim=-1)  # (B, L)
        idx_star = a_star.view(b, n_steps, 1, 1).expand(b, n_steps, 1, num_atoms)
        greedy = target_probs.gather(2, idx_star).squeeze(2)  # (B, L, Z): Z^-(t, a*)
        next_probs = torch.full_like(online, 1.0 / num_atoms)  # (B, L, Z); uniform for terminal targets
        next_probs[:, :-1] = torch.where(is_terminal[:, :-1, None], next_probs[:, :-1], greedy[:, 1:])
        discount = (~is_terminal).to(support.dtype) * gamma  # (B, L)
        r = reward.to(support.dtype)
        tz = r[has_term].unsqueeze(-1) + discount[has_term].unsqueeze(-1) * support  # (N, Z)
        target = c51_project(tz, next_probs[has_term], support)  # (N, Z)

    p = online[has_term]  # (N, Z)
    ce = -(target * torch.log(p + LOG_EPS)).sum(dim=-1)  # (N,)
    count = has_term.sum()
    loss = ce.sum() / count.clamp(min=1)
    with torch.no_grad():
        n = count.clamp(min=1)
        stats = {
            "num_pairs": is_pair.sum(),
            "num_terminals": is_terminal.sum(),
            "target_q": (target @ support).sum() / n,
            "online_q": (p.detach() @ support).sum() / n,
        }
    return loss, stats


def td_loss(
    q_logits: Tensor,
    q_target_logits: Tensor,
    action: Tensor,
    reward: Tensor,
    terminal: Tensor,
    valid: Tensor,
    action_mask: Tensor,
    support: Tensor,
    gamma: float = 0.99,
) -> Tensor:
    """1-step C51 TD loss inside the segment (scalar); the target heads are treated as constants.

    Terms: pairs (valid[t] & valid[t+1] & ~terminal[t]) target the projection of reward[t] + gamma * z under the
    target mixture at t+1 and a* = argmax of its expected Q over valid actions; terminal steps target all
    mass at reward[t]. Other steps (padding, the last valid step of a non-terminal row) have no term.
    loss = mean over terms of -Σ_z m_z log(p_z + 1e-8), with p the online mixture at (t, action[t]); 0 if none.

    q_logits, q_target_logits: (H, B, L, A, Z); action: (B, L) int; reward: (B, L) float;
    terminal, valid: (B, L) bool; action_mask: (B, A) bool; support: (Z,).
    """
    loss, _ = td_loss_and_stats(q_logits, q_target_logits, action, reward, terminal, valid, action_mask, support, gamma)
    return loss


def cql_loss(
    q_logits: Tensor, action: Tensor, valid: Tensor, support: Tensor, action_mask: Tensor | None = None
) -> Tensor:
    """Unscaled CQL regulariser: mean over valid steps of logsumexp_a Q(s, a) - Q(s, action); 0 if none valid.

    With ``action_mask`` the logsumexp runs over the game's valid actions only; with None over all A actions.
    q_logits: (H, B, L, A, Z); action: (B, L) int; valid: (B, L) bool; support: (Z,); action_mask: (B, A) bool.
    """
    q = expected_q(_upcast(q_logits), support)  # (B, L, A)
    q_neg = q if action_mask is None else q.masked_fill(~action_mask.unsqueeze(1), float("-inf"))
    neg = torch.logsumexp(q_neg, dim=-1)  # (B, L)
    act = torch.where(valid, action.long(), 0)
    pos = q.gather(-1, act.unsqueeze(-1)).squeeze(-1)  # (B, L)
    gap = (neg - pos)[valid]  # (N,)
    return gap.sum() / valid.sum().clamp(min=1)
