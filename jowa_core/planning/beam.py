"""Batched beam search over the learned world model (paper §4.2; reference §5.3-5.4).

From each context (the last observation has no action yet), every kept node expands its top-K valid actions
by Q̂, imagines the next step (reward = argmax of the reward head - 1; next observation tokens decoded
greedily, one token per forward; Q̂ at the new state), and is scored by

    score(node at depth d) = sum_{i=1..d} gamma^(i-1) * r_i + gamma^d * max_a Q̂(s_d, a)   (income-to-date + -to-go)

The best K nodes per environment are kept at each depth; the action returned is the first action of the best
node at depth H. K <= 1 or H == 0 is greedy on Q̂. Predicted termination is ignored (as the official code).

Batching: one batch holds every environment x every node; the contexts live in one KV cache that is forked by
index (a gather of the cached prefix), so a depth is 37 forwards over all children at once, with no Python
loop over nodes or environments. Environments with fewer valid actions than K carry masked children
(score -inf) so that all rows have the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from jowa_core.models.transformer import KVCache
from jowa_core.models.world_action import WorldActionModel
from jowa_core.planning import DEFAULT_REWARD_MODE, check_reward_mode

NEG_INF = float("-inf")


@dataclass
class PlanResult:
    """``action`` (N,) full-action index (always valid); ``q_root`` (N, A) masked expected Q at the current
    state; ``score`` (N,) the chosen leaf's score (= max Q̂ when greedy); ``tree`` the search, by depth, when
    recorded (see ``beam_search``)."""

    action: Tensor
    q_root: Tensor
    score: Tensor
    tree: list[dict[str, Tensor]] = field(default_factory=list)


def masked_q(model: WorldActionModel, q_logits: Tensor, action_mask: Tensor) -> Tensor:
    """Expected Q (R, A) of the last step in ``q_logits`` (num_q, R, n, A, Z), -inf on invalid actions."""
    q = model.q_values(q_logits[:, :, -1])  # (R, A)
    return q.masked_fill(~action_mask, NEG_INF)


@torch.no_grad()
def imagine_step(model: WorldActionModel, cache: KVCache, actions: Tensor, tasks: Tensor,
                 action_mask: Tensor, reward_mode: str = DEFAULT_REWARD_MODE) -> tuple[Tensor, Tensor, Tensor]:
    """One imagined environment step for every row of ``cache`` (which must end at an observation): feed the
    action, decode the 36 next observation tokens greedily, read Q̂ at the last one.

    Returns reward (R,), obs tokens (R, 36), masked Q̂ (R, A); appends 37 tokens to ``cache``. ``reward_mode``
    "expected" (default): p(+1) - p(-1), the paper's expectation, which still sees a likely-but-not-certain
    reward; "mode": the most likely class - 1, in {-1, 0, 1} (the official planner), which rounds it away.
    """
    K = model.cfg.tokens_per_obs
    out = model(actions[:, None], tasks, cache=cache, heads=("obs", "reward"))  # the action token
    reward = imagined_reward(out.reward_logits[:, 0], reward_mode)
    tok = out.obs_logits[:, 0].argmax(-1)
    tokens = [tok]
    for _ in range(K - 1):  # obs tokens 0..34 each predict the next one
        tok = model(tok[:, None], tasks, cache=cache, heads=("obs",)).obs_logits[:, 0].argmax(-1)
        tokens.append(tok)
    out = model(tok[:, None], tasks, cache=cache, heads=("q",))  # obs token 35: Q̂(s')
    return reward, torch.stack(tokens, 1), masked_q(model, out.q_logits, action_mask)


def imagined_reward(logits: Tensor, reward_mode: str = DEFAULT_REWARD_MODE) -> Tensor:
    """(R, 3) reward logits over {-1, 0, +1} -> (R,) imagined rewards (see ``imagine_step``)."""
    if check_reward_mode(reward_mode) == "mode":
        return logits.float().argmax(-1) - 1
    p = logits.float().softmax(-1)  # "expected"
    return p[:, 2] - p[:, 0]


def default_history(max_steps: int, horizon: int) -> int:
    """Default context steps for planning with ``horizon`` imagined steps (0: greedy): ``max_steps - horizon - 1``,
    the most that keeps every Q̂ read (root and leaves) off position ``max_steps``. Pretraining segments have no
    next state after their last step, so Q̂ there learns only from terminal steps (docs/evaluation.md)."""
    return max(1, int(max_steps) - int(horizon) - 1)


def check_plan_inputs(model: WorldActionModel, tokens: Tensor, action_mask: Tensor, beam: int, horizon: int) -> None:
    """ValueError unless ``plan`` can run on these (N, T) contexts and (N, A) masks (reads the mask: a host sync)."""
    T = tokens.shape[1]
    tpo, tps = model.cfg.tokens_per_obs, model.cfg.tokens_per_step
    if T % tps != tpo:
        raise ValueError(f"context of {T} tokens does not end with a full observation (expected 37*g + 36)")
    if not action_mask.any(-1).all():
        raise ValueError("every row needs at least one valid action")
    if beam > 1 and horizon > 0 and T + tps * horizon > model.cfg.max_tokens:
        raise ValueError(f"context of {T} tokens + horizon {horizon} exceeds the model's {model.cfg.max_tokens} "
                         f"tokens: use at most {model.cfg.max_steps - horizon} steps of history")


def child_rows(envs: int, beam: int, horizon: int, num_actions: int) -> list[int]:
    """Rows of the children imagined at each depth 1..H (all environments): N * M_d * min(K, A), M_1 = 1,
    M_{d+1} = min(K, M_d * min(K, A)); the sizes of the caches ``beam_search`` forks into."""
    kids, m, rows = min(beam, num_actions), 1, []
    for _ in range(horizon):
        rows.append(envs * m * kids)
        m = min(beam, m * kids)
    return rows


@torch.no_grad()
def plan(model: WorldActionModel, tokens: Tensor, tasks: Tensor, action_mask: Tensor, beam: int = 2,
         horizon: int = 2, gamma: float = 0.99, record: bool = False,
         reward_mode: str = DEFAULT_REWARD_MODE, cache: KVCache | None = None,
         child_caches: Sequence[KVCache] | None = None, check: bool = True) -> PlanResult:
    """Choose actions for N contexts at once.

    tokens (N, T) int64 with T = 37*g + 36 (g past steps, then the current observation), the same T for every
    row; tasks (N,) task ids; action_mask (N, A) valid full actions. ``record`` keeps the search tree.
    ``reward_mode``: how imagined rewards are read (``imagine_step``). ``cache`` (N rows) and ``child_caches``
    (one per depth, ``child_rows`` rows each): preallocated caches to reuse (reset and written in place) instead
    of new ones; ``check=False`` skips ``check_plan_inputs`` (no host sync: for CUDA-graph capture).
    """
    N = tokens.shape[0]
    if check:
        check_plan_inputs(model, tokens, action_mask, beam, horizon)
    greedy = beam <= 1 or horizon <= 0
    if greedy:
        cache = None
    elif cache is None:
        cache = model.new_cache(N, dtype=next(model.parameters()).dtype)
    else:
        cache.length = 0
    out = model(tokens, tasks, cache=cache, heads=("q",))
    q_root = masked_q(model, out.q_logits, action_mask)  # (N, A)
    if greedy:
        best = q_root.max(-1)
        return PlanResult(best.indices, q_root, best.values)
    return beam_search(model, cache, q_root, tasks, action_mask, beam, horizon, gamma, record, reward_mode,
                       child_caches)


def beam_search(model: WorldActionModel, cache: KVCache, q_root: Tensor, tasks: Tensor, action_mask: Tensor,
                beam: int, horizon: int, gamma: float, record: bool = False,
                reward_mode: str = DEFAULT_REWARD_MODE, child_caches: Sequence[KVCache] | None = None
                ) -> PlanResult:
    """Beam search from root caches (N rows, ending at the current observation) with root Q̂ (N, A).

    Node arrays are (N, M): M kept nodes per environment (1 at the root, then min(K, M*K)). ``tree[d]`` (when
    recorded) holds, for the children at depth d+1 (N, M*K): parent, action, reward, q (A), score, valid,
    obs tokens (36) and which children were kept (``keep`` indices (N, M')). ``child_caches[d]``: where depth
    d+1's children are forked to (in place; see ``plan``); new caches when None.
    """
    N, A = q_root.shape
    K = beam
    device = q_root.device
    rows = torch.arange(N, device=device)
    node_q = q_root[:, None]  # (N, 1, A) Q̂ of each kept node
    node_sum_r = torch.zeros(N, 1, device=device)  # income-to-date
    node_first = torch.zeros(N, 1, dtype=torch.long, device=device)  # first action on the path
    node_row = rows[:, None]  # (N, 1) row of each node in `cache`
    node_ok = torch.ones(N, 1, dtype=torch.bool, device=device)
    tree: list[dict[str, Tensor]] = []
    for depth in range(1, horizon + 1):
        M = node_q.shape[1]
        top = node_q.topk(min(K, A), dim=-1)  # (N, M, K): top-K actions of each node by its own Q̂
        child_action = top.indices.reshape(N, M * K)
        child_ok = (top.values > NEG_INF).reshape(N, M * K) & node_ok.repeat_interleave(K, 1)
        parent = torch.arange(M, device=device).repeat_interleave(K)[None].expand(N, -1)  # (N, M*K)
        child_cache = cache.fork(node_row.repeat_interleave(K, 1).reshape(-1),
                                 child_caches[depth - 1] if child_caches is not None else None)
        flat_tasks = tasks.repeat_interleave(M * K)
        flat_mask = action_mask.repeat_interleave(M * K, 0)
        reward, obs_tokens, q = imagine_step(model, child_cache, child_action.reshape(-1), flat_tasks, flat_mask,
                                             reward_mode)
        reward, q = reward.view(N, M * K).float(), q.view(N, M * K, A)
        sum_r = node_sum_r.gather(1, parent) + gamma ** (depth - 1) * reward
        score = sum_r + gamma**depth * q.max(-1).values
        score = score.masked_fill(~child_ok, NEG_INF)
        first = child_action if depth == 1 else node_first.gather(1, parent)
        keep = score.topk(min(K, M * K), dim=-1).indices  # (N, M')
        if record:
            tree.append({"parent": parent, "action": child_action, "reward": reward, "q": q, "score": score,
                         "valid": child_ok, "obs_tokens": obs_tokens.view(N, M * K, -1), "keep": keep})
        if depth == horizon:
            best = score.max(-1)
            action = first.gather(1, best.indices[:, None])[:, 0]
            return PlanResult(action, q_root, best.values, tree)
        cache = child_cache
        node_row = (rows[:, None] * (M * K) + keep)  # rows of the kept children in child_cache
        node_q = q.gather(1, keep[..., None].expand(-1, -1, A))
        node_sum_r = sum_r.gather(1, keep)
        node_first = first.gather(1, keep)
        node_ok = child_ok.gather(1, keep)
    raise AssertionError("unreachable")
