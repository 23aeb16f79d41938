"""A batched JOWA agent: per-environment token memory (reference §5.1) and epsilon-greedy planning (§5.2).

Each environment keeps the last ``history`` steps: 36 observation tokens and the full action taken, the current
observation without an action yet. When the memory is full the oldest step is dropped. A context of n steps is
``37*(n-1) + 36`` tokens. Environments whose contexts have the same length (they differ while episodes are
young) and the same beam width form one batched ``plan`` call.

Differences from the official agent, on purpose:
* the epsilon draw is per environment (the official code draws once per call for all environments), from a
  per-environment random stream, so an episode's random actions do not depend on which other episodes run
  beside it, on the batch layout or on the number of processes;
* environments that take a random action are not planned for (the official code does the same per call).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from jowa_core import games as _games
from jowa_core.constants import NUM_FULL_ACTIONS
from jowa_core.models.tokenizer import Tokenizer
from jowa_core.models.world_action import WorldActionModel, segment_tokens
from jowa_core.planning import DEFAULT_REWARD_MODE, check_reward_mode
from jowa_core.planning.beam import default_history, plan
from jowa_core.planning.static import FAST_PATHS

__all__ = ["Agent", "AgentSettings", "AgentStats"]

Planner = Callable[..., object]  # plan(model, tokens, tasks, action_mask, beam=, horizon=, gamma=) -> .action


@dataclass(frozen=True)
class AgentSettings:
    """How the agent decides: one object for ``evaluate`` (and ``jowa evaluate``'s options of the same names)."""

    plan: bool = True  # False: greedy on Q̂, no imagination
    planner: str = "beam"  # beam (batched beam search) | mcts (K^2 (H-1) + K simulations, for comparison)
    beam: int | str = "auto"  # K, or auto: the game's width (paper Table 16; games.beam_width)
    horizon: int = _games.PLANNING_HORIZON  # imagined steps H
    history: int | None = None  # context steps; None: the most that fits (see Agent)
    gamma: float | None = None  # planner discount; None: the checkpoint's (its metadata), else 0.99
    reward_mode: str = DEFAULT_REWARD_MODE  # imagined rewards: expected (paper eq. 12) | mode (official)
    precision: str = "fp32"  # world-action weights: fp32 | bf16
    max_batch: int = 64  # environments per planner call
    q_dropout: str = "off"  # off (ours, intended) | official: Q-head dropout stays on, as the official code
    fast_path: str = "off"  # off | static | graph | auto: beam search through planning.static.StaticPlanners

    def __post_init__(self) -> None:
        if self.planner not in ("beam", "mcts"):
            raise ValueError(f"planner must be beam or mcts, got {self.planner!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.fast_path not in FAST_PATHS:
            raise ValueError(f"fast_path must be one of {', '.join(FAST_PATHS)}, got {self.fast_path!r}")
        if self.q_dropout not in ("off", "official"):
            raise ValueError(f"q_dropout must be off or official, got {self.q_dropout!r}")
        if self.gamma is not None and not 0.0 <= float(self.gamma) <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.beam != "auto" and not (isinstance(self.beam, int) and 1 <= self.beam <= NUM_FULL_ACTIONS):
            raise ValueError(f"beam must be 'auto' or a width in [1, {NUM_FULL_ACTIONS}] (one branch per action at "
                             f"most), got {self.beam!r}")
        if self.horizon < 1 or self.max_batch < 1 or (self.history is not None and self.history < 1):
            raise ValueError(f"horizon, history and max_batch must be >= 1, got {self.horizon}, {self.history}, "
                             f"{self.max_batch}")
        check_reward_mode(self.reward_mode)


@dataclass
class AgentStats:
    act_calls: int = 0  # batched act() calls
    decisions: int = 0  # actions chosen by the model (planned or greedy)
    random_actions: int = 0  # epsilon-random actions
    planner_calls: int = 0  # batched plan() calls


def _default_planner() -> Planner:
    return plan


class Agent:
    """Chooses full actions for N environments at once.

    ``games`` names each environment's game (task id, valid actions and the paper's beam width come from the
    registry). ``beam`` is an int or "auto" (the game's beam width, paper Table 16); ``plan=False``, ``beam <= 1``
    or ``horizon == 0`` act greedily on Q̂. ``history`` (steps of context, 1..max_steps) defaults to
    ``max_steps - horizon - 1`` (``max_steps - 1`` greedy): the most that keeps every Q̂ the agent reads (at the
    root and at the leaves) at a position that pretraining trained with TD targets. The last step of a training
    segment has no next state in it, so Q̂ at position ``max_steps`` only ever learns from terminal steps
    (docs/evaluation.md). A request up to ``max_steps - horizon`` is honoured; a larger one is capped with a
    warning (recorded in ``notes``). ``seeds`` (N,) seed each environment's epsilon stream. ``max_batch`` caps
    the environments per planner call (planning memory grows with batch x beam^2). ``planner`` replaces
    ``jowa_core.planning.beam.plan`` (tests). ``reward_mode`` reads imagined rewards as their expectation
    (default) or the mode (official; ``jowa_core.planning.beam.imagine_step``).
    """

    def __init__(self, model: WorldActionModel, tokenizer: Tokenizer, games: Sequence[str], *,
                 plan: bool = True, beam: int | str = "auto", horizon: int = _games.PLANNING_HORIZON,
                 history: int | None = None, epsilon: float = 0.001, gamma: float = 0.99,
                 seeds: Sequence[int] | np.ndarray | None = None, max_batch: int = 64,
                 planner: Planner | None = None, reward_mode: str = DEFAULT_REWARD_MODE):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        infos = [_games.get(g) for g in games]
        self.num_envs = n = len(infos)
        if n == 0:
            raise ValueError("no environments")
        cfg = model.cfg
        if tokenizer.tokens_per_frame != cfg.tokens_per_obs:
            raise ValueError(f"the tokenizer makes {tokenizer.tokens_per_frame} tokens per frame, the model reads "
                             f"{cfg.tokens_per_obs}")
        if tokenizer.cfg.vocab_size > cfg.obs_vocab:
            raise ValueError(f"the tokenizer's vocabulary ({tokenizer.cfg.vocab_size}) is larger than the model's "
                             f"({cfg.obs_vocab})")
        if int(horizon) < 0:
            raise ValueError(f"horizon must be >= 0, got {horizon}")
        if not 0.0 <= float(epsilon) <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        beams = [_games.beam_width(i.name, beam) for i in infos]
        self.plan = bool(plan) and int(horizon) > 0 and max(beams) > 1
        self.horizon = int(horizon) if self.plan else 0
        self.beams = np.array(beams if self.plan else [1] * n, dtype=np.int64)
        self.epsilon, self.gamma = float(epsilon), float(gamma)
        self.reward_mode = check_reward_mode(reward_mode)  # fail before any environment starts
        self.max_batch = int(max_batch)
        self.notes: list[str] = []
        cap = cfg.max_steps - self.horizon
        if cap < 1:
            raise ValueError(f"horizon {horizon} leaves no room for context in {cfg.max_steps} steps")
        if history is None:
            history = default_history(cfg.max_steps, self.horizon)  # <= cap
        elif int(history) < 1:
            raise ValueError(f"history must be >= 1 step, got {history}")
        elif int(history) > cap:
            why = f"{cfg.max_steps} - horizon {self.horizon}" if self.plan else f"the model's {cfg.max_steps}"
            msg = f"history {history} capped at {cap} steps ({why}: context + imagined steps must fit the model)"
            warnings.warn(msg, stacklevel=2)
            self.notes.append(msg)
            history = cap
        self.history = int(history)

        self.games = [i.name for i in infos]
        self.tasks = torch.tensor([i.task_id for i in infos], dtype=torch.long, device=self.device)
        masks = np.stack([i.action_mask() for i in infos])
        self.action_masks = torch.from_numpy(masks).to(self.device)
        self._valid = [np.flatnonzero(m) for m in masks]
        seeds = np.arange(n) if seeds is None else np.asarray(seeds, dtype=np.int64)
        if seeds.shape != (n,):
            raise ValueError(f"seeds of shape {seeds.shape}; expected ({n},)")
        self._rngs = [np.random.default_rng([int(s), i.task_id]) for s, i in zip(seeds, infos, strict=True)]
        self._planner = planner
        tpo = cfg.tokens_per_obs
        self.obs_tokens = torch.zeros(n, self.history, tpo, dtype=torch.long, device=self.device)
        self.actions = torch.zeros(n, self.history, dtype=torch.long, device=self.device)
        self.lengths = np.zeros(n, dtype=np.int64)  # steps in memory, the current one included
        self.stats = AgentStats()

    # ---- memory

    def reset(self, rows: np.ndarray | None = None) -> None:
        """Forget the memory of ``rows`` (bool mask or indices; all when None): a new episode starts there."""
        if rows is None:
            self.lengths[:] = 0
        else:
            self.lengths[np.asarray(rows)] = 0

    def contexts(self, rows: np.ndarray) -> Tensor:
        """(len(rows), 37*(n-1) + 36) model tokens of ``rows``, which must all hold n steps."""
        n = {int(self.lengths[i]) for i in rows}
        if len(n) != 1 or 0 in n:
            raise ValueError(f"rows hold different or no steps: {sorted(n)}")
        (n,) = n
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        return segment_tokens(self.obs_tokens[idx, :n], self.actions[idx, :n])[:, :-1]

    def _push_obs(self, rows: np.ndarray, tokens: Tensor) -> None:
        full = rows[self.lengths[rows] == self.history]
        if full.size:  # drop the oldest step
            f = torch.as_tensor(full, device=self.device)
            self.obs_tokens[f] = torch.roll(self.obs_tokens[f], -1, dims=1)
            self.actions[f] = torch.roll(self.actions[f], -1, dims=1)
            self.lengths[full] -= 1
        r = torch.as_tensor(rows, device=self.device)
        slot = torch.as_tensor(self.lengths[rows], device=self.device)
        self.obs_tokens[r, slot] = tokens
        self.lengths[rows] += 1

    def observe_action(self, actions: np.ndarray, active: np.ndarray | None = None) -> None:
        """Store the full actions taken at the current step of the ``active`` rows."""
        rows = np.arange(self.num_envs) if active is None else np.flatnonzero(active)
        if rows.size == 0:
            return
        if (self.lengths[rows] == 0).any():
            raise RuntimeError("observe_action() before act() on a row")
        a = torch.as_tensor(np.asarray(actions)[rows], dtype=torch.long, device=self.device)
        r = torch.as_tensor(rows, device=self.device)
        self.actions[r, torch.as_tensor(self.lengths[rows] - 1, device=self.device)] = a

    # ---- acting

    @torch.no_grad()
    def encode(self, frames: np.ndarray, chunk: int = 256) -> Tensor:
        """uint8 frames (B, 84, 84) -> tokens (B, 36) on the agent's device."""
        out = [self.tokenizer.encode(frames[i:i + chunk]) for i in range(0, len(frames), chunk)]
        return torch.cat(out).to(self.device)

    @torch.no_grad()
    def act(self, obs: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """Full actions (N,) int64 for the current observations (N, 84, 84) uint8 of the ``active`` rows (bool
        (N,), all when None); -1 for inactive rows. Appends the observations to the memory first."""
        n = self.num_envs
        active = np.ones(n, bool) if active is None else np.asarray(active, dtype=bool)
        if obs.shape[0] != n or active.shape != (n,):
            raise ValueError(f"expected {n} observations and an ({n},) active mask")
        rows = np.flatnonzero(active)
        actions = np.full(n, -1, dtype=np.int64)
        self.stats.act_calls += 1
        if rows.size == 0:
            return actions
        self._push_obs(rows, self.encode(np.ascontiguousarray(obs[rows])))
        explore = np.zeros(n, bool)
        for i in rows:  # one draw per environment from its own stream
            rng = self._rngs[i]
            if rng.random() < self.epsilon:
                explore[i] = True
                actions[i] = int(self._valid[i][rng.integers(len(self._valid[i]))])
        self.stats.random_actions += int(explore.sum())
        plan_rows = rows[~explore[rows]]
        if plan_rows.size:
            planner = self._planner or _default_planner()
            keys = self.lengths[plan_rows] * 1000 + self.beams[plan_rows]
            for key in np.unique(keys):
                group = plan_rows[keys == key]
                for start in range(0, group.size, self.max_batch):
                    part = group[start:start + self.max_batch]
                    idx = torch.as_tensor(part, device=self.device)
                    res = planner(self.model, self.contexts(part), self.tasks[idx], self.action_masks[idx],
                                  beam=int(self.beams[part[0]]), horizon=self.horizon, gamma=self.gamma,
                                  reward_mode=self.reward_mode)
                    actions[part] = res.action.cpu().numpy()
                    self.stats.planner_calls += 1
            self.stats.decisions += int(plan_rows.size)
        chosen = actions[rows]
        bad = ~self.action_masks[torch.as_tensor(rows, device=self.device),
                                 torch.as_tensor(chosen, device=self.device)].cpu().numpy()
        if bad.any():
            raise RuntimeError(f"the planner chose invalid actions {chosen[bad].tolist()} "
                               f"for {[self.games[i] for i in rows[bad]]}")
        return actions
