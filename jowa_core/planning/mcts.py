"""MuZero-style MCTS over the learned world model, for comparison with beam search (paper v2 Table 5;
reference §5.5). One environment at a time; each node owns a one-row KV cache forked from its parent.

Root priors are softmax(Q̂ / temperature) over the game's valid actions (invalid actions: prior 0, never
selected). Selection uses pUCT (c_base 19652, c_init 1.25) with min-max normalised r + gamma * V(child);
a simulation descends at most ``horizon`` steps, expands one new child by an imagined step, takes
max_a Q̂ of the new state as its value, and backs up value <- r + gamma * value. The action returned is the
valid root child with the highest mean value (or visit count); unlike the official code it can never be
an invalid action.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from jowa_core.models.transformer import KVCache
from jowa_core.models.world_action import WorldActionModel
from jowa_core.planning import DEFAULT_REWARD_MODE
from jowa_core.planning.beam import PlanResult, imagine_step, masked_q


@dataclass
class _Node:
    cache: KVCache
    q: Tensor  # (A,) masked Q̂ of this state
    prior: Tensor  # (A,)
    reward: float = 0.0
    visits: int = 0
    value_sum: float = 0.0
    children: dict[int, _Node] = field(default_factory=dict)

    def value(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0


class _MinMax:
    def __init__(self) -> None:
        self.lo, self.hi = math.inf, -math.inf

    def update(self, v: float) -> None:
        self.lo, self.hi = min(self.lo, v), max(self.hi, v)

    def norm(self, v: float) -> float:
        return (v - self.lo) / (self.hi - self.lo) if self.hi > self.lo else v


def _priors(q: Tensor, temperature: float) -> Tensor:
    return torch.softmax(q.float() / temperature, -1)  # -inf (invalid) -> 0


@torch.no_grad()
def plan_mcts(model: WorldActionModel, tokens: Tensor, tasks: Tensor, action_mask: Tensor, horizon: int = 2,
              num_simulations: int | None = None, beam: int = 2, gamma: float = 0.99, temperature: float = 1.0,
              select: str = "value", reward_mode: str = DEFAULT_REWARD_MODE) -> PlanResult:
    """Actions for N contexts (N, T), each searched with ``num_simulations`` simulations (default
    K^2 (H-1) + K for beam width K, the beam search's number of imagined steps)."""
    if num_simulations is None:
        num_simulations = beam * beam * max(horizon - 1, 0) + beam
    actions, scores, roots = [], [], []
    for i in range(tokens.shape[0]):
        a, s, q0 = _search(model, tokens[i], tasks[i], action_mask[i], horizon, num_simulations, gamma,
                           temperature, select, reward_mode)
        actions.append(a)
        scores.append(s)
        roots.append(q0)
    device = tokens.device
    return PlanResult(torch.tensor(actions, device=device), torch.stack(roots),
                      torch.tensor(scores, device=device))


def _search(model: WorldActionModel, tokens: Tensor, task: Tensor, mask: Tensor, horizon: int, sims: int,
            gamma: float, temperature: float, select: str,
            reward_mode: str = DEFAULT_REWARD_MODE) -> tuple[int, float, Tensor]:
    device = tokens.device
    cache = model.new_cache(1, dtype=next(model.parameters()).dtype)
    out = model(tokens[None], task[None], cache=cache, heads=("q",))
    q0 = masked_q(model, out.q_logits, mask[None])[0]
    root = _Node(cache, q0, _priors(q0, temperature))
    valid = mask.nonzero()[:, 0].tolist()
    if horizon <= 0 or sims <= 0:
        return int(q0.argmax()), float(q0.max()), q0
    stats = _MinMax()
    zero = torch.zeros(1, dtype=torch.long, device=device)
    for _ in range(sims):
        node, path = root, [root]
        while True:
            a = _select(node, valid, stats, gamma)
            child = node.children.get(a)
            if child is None:
                c = node.cache.fork(zero)
                r, _, q = imagine_step(model, c, torch.tensor([a], device=device), task[None], mask[None], reward_mode)
                child = _Node(c, q[0], _priors(q[0], temperature), reward=float(r[0]))
                node.children[a] = child
                path.append(child)
                value = float(q[0].max())
                break
            path.append(child)
            node = child
            if len(path) - 1 >= horizon:  # at the depth limit: evaluate, do not expand
                value = float(child.q.max())
                break
        for n in reversed(path):
            n.value_sum += value
            n.visits += 1
            stats.update(n.reward + gamma * n.value())
            value = n.reward + gamma * value
    visited = [a for a in valid if a in root.children]
    if not visited:
        return int(q0.argmax()), float(q0.max()), q0

    def key(a: int) -> float:
        c = root.children[a]
        return float(c.visits) if select == "count" else c.reward + gamma * c.value()

    best = max(visited, key=key)
    return best, key(best), q0


def _select(node: _Node, valid: list[int], stats: _MinMax, gamma: float, c_base: float = 19652,
            c_init: float = 1.25) -> int:
    """pUCT over the valid actions only."""
    best, best_score = valid[0], -math.inf
    total = node.visits
    for a in valid:
        child = node.children.get(a)
        visits = child.visits if child is not None else 0
        c = math.log((total + c_base + 1) / c_base) + c_init
        u = c * float(node.prior[a]) * math.sqrt(total) / (1 + visits)
        v = stats.norm(child.reward + gamma * child.value()) if child is not None and visits else 0.0
        if v + u > best_score:
            best, best_score = a, v + u
    return best
