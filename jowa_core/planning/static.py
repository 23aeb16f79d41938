"""Beam search with fixed shapes: preallocated KV caches written in place, optionally one CUDA graph per decision.

``StaticPlanner`` is built for one (environments, context length, beam, horizon) and reuses, at every call, the
root cache (N rows) and one child cache per depth (``child_rows``), forked into in place. The search is
``beam.plan`` itself, so its actions, scores, Q̂ and imagined tokens are the batched planner's, bit for bit, in
eager mode (tests/test_planning_static.py).

``cuda_graph=True`` (CUDA only) captures one whole decision (the root forward, H x 37 one-token forwards, the
forks and top-K selections) as a CUDA graph after a warm-up on a side stream; a call copies the inputs into
static buffers, replays the graph (no per-token Python or allocation) and returns copies of the outputs.
Memory: the caches (N + sum of child rows) x layers x 2 x max_tokens x embed_dim, plus the graph's pool.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jowa_core.models.world_action import WorldActionModel
from jowa_core.planning import DEFAULT_REWARD_MODE
from jowa_core.planning.beam import PlanResult, check_plan_inputs, child_rows, plan

FAST_PATHS = ("off", "static", "graph", "auto")  # `jowa bench plan --fast-path`


def resolve_fast_path(fast_path: str, device: torch.device) -> str:
    """``auto`` -> ``graph`` on CUDA, else ``static``; ValueError for an unknown name or a graph without CUDA."""
    if fast_path not in FAST_PATHS:
        raise ValueError(f"--fast-path {fast_path!r}: expected one of {', '.join(FAST_PATHS)}")
    if fast_path == "auto":
        return "graph" if device.type == "cuda" else "static"
    if fast_path == "graph" and device.type != "cuda":
        raise ValueError("--fast-path graph needs a CUDA device")
    return fast_path


class StaticPlanner:
    """``plan`` for ``envs`` contexts of ``context_tokens`` tokens with preallocated caches (see the module doc).

    Call it as ``plan`` without the sizes: ``planner(tokens (N, T), tasks (N,), action_mask (N, A))``; ``record``
    keeps the search tree. Results are fresh tensors (eager: ``plan``'s own; graph: copies of the graph's outputs).
    """

    def __init__(self, model: WorldActionModel, envs: int, context_tokens: int, beam: int = 2, horizon: int = 2,
                 gamma: float = 0.99, reward_mode: str = DEFAULT_REWARD_MODE, cuda_graph: bool = False,
                 record: bool = False):
        if beam <= 1 or horizon <= 0:
            raise ValueError(f"beam {beam}, horizon {horizon}: the static planner needs beam >= 2 and horizon >= 1")
        device = model.pos_emb.weight.device
        if cuda_graph and device.type != "cuda":
            raise ValueError("cuda_graph=True needs the model on a CUDA device")
        self.model, self.envs, self.context_tokens = model, envs, context_tokens
        self.beam, self.horizon, self.gamma, self.reward_mode = beam, horizon, gamma, reward_mode
        self.cuda_graph, self.record = cuda_graph, record
        dtype = next(model.parameters()).dtype
        self.cache = model.new_cache(envs, dtype=dtype)
        self.child_caches = [model.new_cache(rows, dtype=dtype)
                             for rows in child_rows(envs, beam, horizon, model.cfg.num_actions)]
        A = model.cfg.num_actions
        self.tokens = torch.zeros(envs, context_tokens, dtype=torch.long, device=device)  # static inputs
        self.tasks = torch.zeros(envs, dtype=torch.long, device=device)
        self.mask = torch.ones(envs, A, dtype=torch.bool, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: PlanResult | None = None

    def cache_bytes(self) -> int:
        """Bytes held by the preallocated KV caches."""
        return sum(2 * c.k.numel() * c.k.element_size() for c in (self.cache, *self.child_caches))

    def _search(self) -> PlanResult:
        return plan(self.model, self.tokens, self.tasks, self.mask, self.beam, self.horizon, self.gamma,
                    record=self.record, reward_mode=self.reward_mode, cache=self.cache,
                    child_caches=self.child_caches, check=False)

    def _capture(self) -> None:
        side = torch.cuda.Stream(self.tokens.device)
        side.wait_stream(torch.cuda.current_stream(self.tokens.device))
        with torch.cuda.stream(side):  # warm-up: lazy init, positions cache, cuBLAS handles
            for _ in range(2):
                self._search()
        torch.cuda.current_stream(self.tokens.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._search()

    @torch.no_grad()
    def __call__(self, tokens: Tensor, tasks: Tensor, action_mask: Tensor) -> PlanResult:
        if tuple(tokens.shape) != (self.envs, self.context_tokens):
            raise ValueError(f"tokens of shape {tuple(tokens.shape)}: this planner was built for "
                             f"({self.envs}, {self.context_tokens})")
        check_plan_inputs(self.model, tokens, action_mask, self.beam, self.horizon)
        self.tokens.copy_(tokens)
        self.tasks.copy_(tasks)
        self.mask.copy_(action_mask)
        if not self.cuda_graph:
            return self._search()
        if self.graph is None:
            self._capture()
        assert self.graph is not None and self.out is not None
        self.graph.replay()
        out = self.out
        tree = [{k: v.clone() for k, v in depth.items()} for depth in out.tree]
        return PlanResult(out.action.clone(), out.q_root.clone(), out.score.clone(), tree)



def bucket_rows(n: int, min_rows: int = 1) -> int:
    """The padded batch of a call with ``n`` rows: the next power of two, at least ``min_rows``."""
    return max(int(min_rows), 1 << max(0, int(n) - 1).bit_length())


class StaticPlanners:
    """A ``plan``-compatible callable for ``Agent(planner=)``: each call's N rows are padded (the last row repeated)
    to ``bucket_rows(N)`` and planned by a ``StaticPlanner`` per (rows, T, beam, horizon, gamma, reward mode),
    built on first use and kept in an LRU of ``max_planners`` (each holds its caches and, with ``cuda_graph``,
    its graph). Greedy or recorded calls go to ``plan``. The padded rows' results are dropped: rows never
    interact, so the real rows get what ``plan`` gives them on the padded batch."""

    def __init__(self, cuda_graph: bool = False, max_planners: int = 8, min_rows: int = 1):
        if max_planners < 1:
            raise ValueError(f"max_planners {max_planners}: expected >= 1")
        self.cuda_graph, self.max_planners, self.min_rows = cuda_graph, max_planners, min_rows
        self.planners: dict[tuple, StaticPlanner] = {}  # insertion order = least recently used first
        self.built = 0

    @torch.no_grad()
    def __call__(self, model: WorldActionModel, tokens: Tensor, tasks: Tensor, action_mask: Tensor, beam: int = 2,
                 horizon: int = 2, gamma: float = 0.99, record: bool = False,
                 reward_mode: str = DEFAULT_REWARD_MODE) -> PlanResult:
        if beam <= 1 or horizon <= 0 or record:
            return plan(model, tokens, tasks, action_mask, beam, horizon, gamma, record, reward_mode)
        N, T = tokens.shape
        rows = bucket_rows(N, self.min_rows)
        key = (rows, T, beam, horizon, float(gamma), reward_mode)
        planner = self.planners.pop(key, None)
        if planner is None or planner.model is not model:
            planner = StaticPlanner(model, rows, T, beam, horizon, gamma, reward_mode, cuda_graph=self.cuda_graph)
            self.built += 1
        self.planners[key] = planner
        while len(self.planners) > self.max_planners:
            del self.planners[next(iter(self.planners))]
        if rows > N:
            pad = torch.full((rows - N,), N - 1, dtype=torch.long, device=tokens.device)
            index = torch.cat([torch.arange(N, device=tokens.device), pad])  # (rows,)
            tokens, tasks, action_mask = tokens[index], tasks[index], action_mask[index]
        res = planner(tokens, tasks, action_mask)
        return PlanResult(res.action[:N], res.q_root[:N], res.score[:N])
