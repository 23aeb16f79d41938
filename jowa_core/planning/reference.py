"""A straightforward beam search, one environment and one node at a time (the official planner's structure,
reference §5.3): the oracle for the batched planner's tests and the baseline of ``jowa bench plan``."""

from __future__ import annotations

import torch
from torch import Tensor

from jowa_core.models.world_action import WorldActionModel
from jowa_core.planning import DEFAULT_REWARD_MODE
from jowa_core.planning.beam import imagine_step, masked_q


@torch.no_grad()
def plan_node_by_node(model: WorldActionModel, tokens: Tensor, task: Tensor, action_mask: Tensor, beam: int = 2,
                      horizon: int = 2, gamma: float = 0.99,
                      reward_mode: str = DEFAULT_REWARD_MODE) -> tuple[int, float]:
    """(action, score) for one context ``tokens`` (T,) of ``task`` () with ``action_mask`` (A,).

    Each node owns a one-row KV cache; every child copies its parent's cache and is imagined alone.
    """
    cache = model.new_cache(1, dtype=next(model.parameters()).dtype)
    out = model(tokens[None], task[None], cache=cache, heads=("q",))
    q0 = masked_q(model, out.q_logits, action_mask[None])[0]
    if beam <= 1 or horizon <= 0:
        return int(q0.argmax()), float(q0.max())
    nodes = [{"cache": cache, "q": q0, "sum_r": 0.0, "first": None}]
    num_valid = int(action_mask.sum())
    for depth in range(1, horizon + 1):
        children = []
        for node in nodes:
            for a in node["q"].topk(min(num_valid, beam)).indices.tolist():
                child_cache = node["cache"].fork(torch.zeros(1, dtype=torch.long, device=tokens.device))
                r, _, q = imagine_step(model, child_cache, torch.tensor([a], device=tokens.device), task[None],
                                       action_mask[None], reward_mode)
                sum_r = node["sum_r"] + gamma ** (depth - 1) * float(r[0])
                children.append({"cache": child_cache, "q": q[0], "sum_r": sum_r,
                                 "score": sum_r + gamma**depth * float(q[0].max()),
                                 "first": a if node["first"] is None else node["first"]})
        children.sort(key=lambda c: -c["score"])
        if depth == horizon:
            return children[0]["first"], children[0]["score"]
        nodes = children[:beam]
    raise AssertionError("unreachable")
