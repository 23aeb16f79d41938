"""Playing the paper's baselines under the same protocol and vector environments as JOWA (``runner.evaluate``
picks these by the checkpoint's kind). Both act greedily with JOWA's epsilon (0.001), one random stream per
environment seeded as ``Agent``'s.

* MTBC reads JOWA's token memory (``Agent`` with ``bc_policy`` in place of the planner): the action is the argmax
  of its policy over the game's valid actions at the current observation, with up to ``max_steps`` steps of
  context (all positions are trained in BC, so the full context is used).
* Scaled-QL reads the last ``frame_stack`` frames (``FrameStackAgent``; zeros before the episode's first frame, as
  Dopamine's replay stacks): the argmax of the expected Q of its game's head over valid actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jowa_core import games as _games
from jowa_core.constants import FRAME_SHAPE
from jowa_core.evaluation.agent import Agent, AgentStats
from jowa_core.models import mtbc, scaled_ql
from jowa_core.models.mtbc import MTBCModel, policy_log_probs
from jowa_core.models.scaled_ql import ScaledQLModel
from jowa_core.planning.beam import PlanResult

KINDS = (mtbc.KIND, scaled_ql.KIND)
FRAMES_KIND = scaled_ql.KIND  # the one that reads frames, not tokens: no tokenizer
NAMES = {mtbc.KIND: "MTBC", scaled_ql.KIND: "SQL"}  # report names (paper Table 2: MTBC-120M, SQL-80M)


def bc_policy(model: MTBCModel, tokens: Tensor, tasks: Tensor, action_mask: Tensor, **_: Any) -> PlanResult:
    """The greedy BC action of N contexts (N, 37*g + 36): argmax of the policy at the last observation."""
    logp = policy_log_probs(model(tokens, tasks)[:, :, -1:], action_mask)[:, -1]  # (N, A)
    best = logp.max(-1)
    return PlanResult(best.indices, logp, best.values)


def mtbc_agent(model: MTBCModel, tokenizer: Any, games: Sequence[str], *, seeds: np.ndarray, epsilon: float,
               history: int | None = None, max_batch: int = 64, **_: Any) -> Agent:
    """JOWA's token-memory agent with the BC policy as its (greedy) planner."""
    return Agent(model, tokenizer, games, plan=False, history=history or model.cfg.max_steps, epsilon=epsilon,
                 seeds=seeds, max_batch=max_batch, planner=bc_policy)


class FrameStackAgent:
    """Chooses full actions for N environments from their last ``frame_stack`` frames (Scaled-QL); the same
    interface as ``Agent`` (act, observe_action, reset, stats, notes)."""

    def __init__(self, model: ScaledQLModel, games: Sequence[str], *, seeds: np.ndarray, epsilon: float = 0.001,
                 max_batch: int = 64):
        self.model = model
        self.device = next(model.parameters()).device
        infos = [_games.get(g) for g in games]
        self.num_envs = n = len(infos)
        if not 0.0 <= float(epsilon) <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon, self.max_batch = float(epsilon), int(max_batch)
        self.games = [i.name for i in infos]
        self.tasks = torch.tensor([i.task_id for i in infos], dtype=torch.long, device=self.device)
        model.heads(self.tasks)  # every game has a head, or a clear error before any episode starts
        masks = np.stack([i.action_mask() for i in infos])
        self.action_masks = torch.from_numpy(masks).to(self.device)
        self._valid = [np.flatnonzero(m) for m in masks]
        seeds = np.asarray(seeds, dtype=np.int64)
        self._rngs = [np.random.default_rng([int(s), i.task_id]) for s, i in zip(seeds, infos, strict=True)]
        self.stack = np.zeros((n, model.cfg.frame_stack, *FRAME_SHAPE), np.uint8)
        self.stats, self.notes = AgentStats(), []
        self.history, self.horizon, self.plan = model.cfg.frame_stack, 0, False

    def reset(self, rows: np.ndarray | None = None) -> None:
        """New episodes in ``rows`` (bool mask or indices; all when None): their stacks start from zeros."""
        self.stack[slice(None) if rows is None else np.asarray(rows)] = 0

    def observe_action(self, actions: np.ndarray, active: np.ndarray | None = None) -> None:
        """Nothing to remember: the stack holds frames only."""

    @torch.no_grad()
    def act(self, obs: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """Full actions (N,) for observations (N, 84, 84) uint8 of the ``active`` rows; -1 for inactive rows."""
        n = self.num_envs
        active = np.ones(n, bool) if active is None else np.asarray(active, dtype=bool)
        rows = np.flatnonzero(active)
        actions = np.full(n, -1, dtype=np.int64)
        self.stats.act_calls += 1
        if rows.size == 0:
            return actions
        self.stack[rows] = np.concatenate([self.stack[rows, 1:], obs[rows, None]], axis=1)
        greedy = []
        for i in rows:  # one epsilon draw per environment from its own stream (as Agent)
            rng = self._rngs[i]
            if rng.random() < self.epsilon:
                actions[i] = int(self._valid[i][rng.integers(len(self._valid[i]))])
                self.stats.random_actions += 1
            else:
                greedy.append(i)
        for start in range(0, len(greedy), self.max_batch):
            part = np.asarray(greedy[start:start + self.max_batch])
            idx = torch.as_tensor(part, device=self.device)
            frames = torch.as_tensor(self.stack[part], device=self.device)
            q = self.model.q_values(self.model(frames, self.tasks[idx]))  # (R, A)
            actions[part] = q.masked_fill(~self.action_masks[idx], float("-inf")).argmax(-1).cpu().numpy()
        self.stats.decisions += len(greedy)
        return actions


def scaled_ql_agent(model: ScaledQLModel, tokenizer: Any, games: Sequence[str], *, seeds: np.ndarray,
                    epsilon: float, max_batch: int = 64, **_: Any) -> FrameStackAgent:
    return FrameStackAgent(model, games, seeds=seeds, epsilon=epsilon, max_batch=max_batch)


def load_baseline(model_dir: Path, kind: str, device: torch.device) -> tuple[Any, dict[str, Any], Any]:
    """(model, metadata, agent factory) of a baseline checkpoint."""
    if kind == mtbc.KIND:
        model, meta = mtbc.load_mtbc(str(model_dir), device)
        return model, meta, mtbc_agent
    if kind == scaled_ql.KIND:
        model, meta = scaled_ql.load_scaled_ql(str(model_dir), device)
        return model, meta, scaled_ql_agent
    raise ValueError(f"{model_dir}: a {kind!r} checkpoint is not a baseline ({', '.join(KINDS)})")
