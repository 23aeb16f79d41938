"""`jowa finetune --online`: fine-tune a pretrained JOWA while it plays the game (docs/online.md).

Loop: N environments act together (greedy on Q̂ with a decaying epsilon, or beam search; early on, with the
execution-guidance probability, the guide's greedy action), every step's transitions go into the replay
(``data/replay.py``), and after ``learning_starts`` environment steps the learner takes ``utd`` updates per
environment step on batches mixing the online replay with the optional offline store and the retrieved
pretraining segments (``train/online.py``). Every ``eval_every`` environment steps the model is evaluated with
the paper's protocol (``best/`` keeps the highest mean); every ``save_every`` the replay store and a training
checkpoint are written, so ``--resume`` continues after a ``kill -9`` with the replay intact.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jowa_core import checkpoint as ckpt
from jowa_core import games as _games
from jowa_core.config import read_yaml, save_yaml, to_dict
from jowa_core.constants import BEST_DIR, CONFIG_FILE, FINAL_DIR, SUMMARY_FILE
from jowa_core.data.replay import ReplayBuffer, SegmentTable, mix_counts
from jowa_core.data.segments import open_stores, tokens_tokenizer
from jowa_core.devices import pick_device
from jowa_core.envs import make_env
from jowa_core.envs.atari import AtariSettings
from jowa_core.evaluation.agent import Agent, AgentSettings
from jowa_core.evaluation.envs import EvalSettings
from jowa_core.evaluation.runner import evaluate
from jowa_core.models.tokenizer import fingerprint, load_tokenizer
from jowa_core.models.world_action import WorldActionModel, load_world_action
from jowa_core.progress import NullReporter
from jowa_core.train.online import (
    OnlineConfig,
    OnlineLearner,
    OnlineRunConfig,
    check_config,
    check_resume,
    epsilon,
    guide_probability,
    guide_window,
    input_paths,
    mixed_batch,
    retrieve,
    rng_from_json,
    rng_to_json,
)
from jowa_core.train.pretrain import param_fingerprint
from jowa_core.train.run import MetricsLog, prepare_run, rng_state, set_rng_state

REPLAY_DIR = "replay"
EVAL_SEED = 1_000_000  # evaluation episodes never share the training environments' seeds
METRICS = ["step", "updates", "episodes", "train_return", "epsilon", "guide_prob", "loss", "world_obs",
           "world_reward", "world_end", "td", "action_loss", "q_taken", "q_max", "grad_norm", "eval_mean",
           "eval_iqm", "best_mean", "elapsed_s"]


class OnlineEnvs:
    """``num_envs`` training environments (``make_env``: Catch or ALE) that restart their episode when it ends.
    Each environment's seed comes from (seed, index, the environment step it was created at), so a resumed run
    plays new episodes."""

    def __init__(self, game: str, cfg: OnlineConfig, env_step: int):
        self.info = _games.get(game)
        settings = AtariSettings(sticky_actions=cfg.sticky_actions, clip_rewards=False,
                                 max_episode_steps=cfg.max_episode_steps)
        seeds = np.random.SeedSequence([cfg.seed, env_step]).generate_state(cfg.num_envs) % (2**31 - 1)
        self.envs = [make_env(self.info.name, settings, seed=int(s)) for s in seeds]
        self.obs = np.stack([e.reset() for e in self.envs])  # (N, 84, 84)
        self.returns = np.zeros(len(self.envs))  # raw return of each running episode

    def step(self, full_actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
        """Play one step everywhere: ``(raw rewards, game_over, ended, returns of the episodes that ended)``;
        ``self.obs`` becomes the next observations (a new episode's first one where one ended)."""
        minimal = self.info.to_minimal(full_actions)
        n = len(self.envs)
        reward, game_over, ended = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
        finished = []
        for i, env in enumerate(self.envs):
            self.obs[i], reward[i], game_over[i], truncated = env.step(int(minimal[i]))
            ended[i] = game_over[i] or truncated
            self.returns[i] += reward[i]
            if ended[i]:
                finished.append(float(self.returns[i]))
                self.returns[i] = 0.0
                self.obs[i] = env.reset()
        return reward, game_over, ended, finished

    def close(self) -> None:
        for e in self.envs:
            e.close()


def _evaluator(cfg: OnlineConfig, game: str, device: str):
    agent = AgentSettings(plan=cfg.eval_plan, beam=cfg.eval_beam, horizon=cfg.eval_horizon)
    settings = EvalSettings(max_frames=cfg.eval_max_frames)

    def run(model: Path, tokenizer: Path, out_json: Path) -> dict[str, Any]:
        res = evaluate(model, tokenizer, game, episodes=cfg.eval_episodes, agent=agent, settings=settings,
                       seed=EVAL_SEED + cfg.seed, device=device, backend=cfg.eval_backend, out_json=out_json)
        return res["games"][game]

    return run


def _snapshot(path: Path, model: WorldActionModel, step: int, env_steps: int, extra: dict[str, Any]) -> Path:
    """A model-only world_action checkpoint (what ``jowa evaluate`` and ``--ckpt`` read)."""
    with ckpt.atomic_dir(path) as tmp:
        ckpt.write_model_files(tmp, "world_action", to_dict(model.cfg), model.state_dict(), step=step, stage=2,
                               env_steps=env_steps, **extra)
    return path


def _agent(model: WorldActionModel, tok, game: str, cfg: OnlineConfig, plan: bool, seed: int) -> Agent:
    return Agent(model, tok, [game] * cfg.num_envs, plan=plan, beam=cfg.beam, horizon=cfg.horizon, epsilon=0.0,
                 gamma=cfg.gamma, seeds=np.arange(cfg.num_envs) + seed)


def _current_tokens(agent: Agent) -> np.ndarray:
    """(N, 36) tokens of every environment's current observation (the agent encoded them in ``act``)."""
    rows = torch.arange(agent.num_envs, device=agent.device)
    last = torch.as_tensor(agent.lengths - 1, device=agent.device)
    return agent.obs_tokens[rows, last].cpu().numpy().astype(np.int16)


@dataclass
class _Inputs:
    """What a run reads, loaded and checked before anything is written."""

    info: _games.GameInfo
    device: torch.device
    tok: Any  # the frozen tokenizer
    tok_sha: str
    model: WorldActionModel
    offline: SegmentTable | None  # --data
    pool: SegmentTable | None  # --rehearsal-data
    guide: WorldActionModel | None
    inputs: dict[str, str]  # resolved paths, recorded in config.yaml and checked on resume
    resume_from: Path | None


def _open_inputs(cfg: OnlineConfig, ckpt_path: str | os.PathLike, tokenizer: str | os.PathLike, game: str,
                 out: Path, data: str | os.PathLike | None, rehearsal_data: str | os.PathLike | None,
                 resume: bool) -> _Inputs:
    info = _games.get(game)
    check_config(cfg, bool(data), bool(rehearsal_data))
    device = pick_device(cfg.device, 0)
    resume_from = prepare_run(out, resume)
    tok = load_tokenizer(tokenizer, device).requires_grad_(False)
    tok_sha = fingerprint(tokenizer)
    model, meta = load_world_action(str(ckpt_path), device)
    ckpt.check_tokens_tokenizer(meta, tok_sha, ckpt_path, tokenizer)
    if info.task_id >= model.cfg.max_tasks:
        raise ValueError(f"{info.name} has task id {info.task_id} >= the model's max_tasks {model.cfg.max_tasks}")
    offline = _token_table(data, tok_sha, info.name) if data else None
    pool = _token_table(rehearsal_data, tok_sha, None) if rehearsal_data else None
    guide = None
    if cfg.guide_prob_start > 0:
        guide = load_world_action(cfg.guide_ckpt or str(ckpt_path), device)[0].requires_grad_(False).eval()
    inputs = input_paths(source_checkpoint=ckpt_path, tokenizer=tokenizer, data=data, rehearsal_data=rehearsal_data)
    inputs["game"] = info.name
    if resume_from is not None:
        saved = read_yaml(resume_from / CONFIG_FILE)
        check_resume({**(saved.get("online") or {}), **(saved.get("inputs") or {})}, cfg, inputs, resume_from)
    if cfg.from_scratch:
        torch.manual_seed(cfg.seed)
        model = WorldActionModel(model.cfg).to(device)
    return _Inputs(info, device, tok, tok_sha, model, offline, pool, guide, inputs, resume_from)


def run_online(cfg: OnlineConfig, ckpt_path: str | os.PathLike, tokenizer: str | os.PathLike, game: str,
               out: str | os.PathLike, data: str | os.PathLike | None = None,
               rehearsal_data: str | os.PathLike | None = None, resume: bool = False,
               reporter=None) -> dict[str, Any]:
    """Online fine-tuning of ``ckpt_path`` on ``game`` into ``out`` (module docstring); returns the summary.
    ``data``: the game's tokenized offline store (``offline_fraction``); ``rehearsal_data``: tokenized pretraining
    stores to retrieve from (``rehearsal_fraction``); ``resume``: continue the run in ``out``."""
    reporter = reporter or NullReporter()
    out = Path(out)
    run = _open_inputs(cfg, ckpt_path, tokenizer, game, out, data, rehearsal_data, resume)
    info, device, tok, tok_sha, model = run.info, run.device, run.tok, run.tok_sha, run.model
    offline, pool, guide, resume_from = run.offline, run.pool, run.guide, run.resume_from

    learner = OnlineLearner(model, cfg, device)
    state: dict[str, Any] = {"evals": [], "best": None, "retrieved": None, "elapsed_s": 0.0,
                             "train_returns": [], "rng": None, "guided_steps": 0}
    replay = None
    if resume_from is not None:
        state.update(learner.load(resume_from))
        replay = ReplayBuffer.load(out / REPLAY_DIR, info.name, cfg.num_envs, tok_sha)
        reporter.log(f"resuming from {resume_from} at update {learner.step}, "
                     f"{len(replay) if replay else 0} environment steps in the replay")
    else:
        torch.manual_seed(cfg.seed)
    replay = replay or ReplayBuffer(info.name, cfg.num_envs, capacity=cfg.env_steps + cfg.num_envs)  # no regrowth
    rng = rng_from_json(state["rng"]) if state["rng"] else np.random.default_rng(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    run_cfg = OnlineRunConfig(model.cfg, cfg, run.inputs)
    save_yaml(run_cfg, out / CONFIG_FILE)
    log = MetricsLog(out, METRICS, int(state.get("env_steps", 0)))  # rows by environment step
    evaluator = _evaluator(cfg, info.name, str(device)) if cfg.eval_episodes else None
    extra = {"games": [info.name], "gamma": cfg.gamma, "game": info.name, "task_id": info.task_id,
             "source": str(ckpt_path), "tokens_tokenizer_sha256": tok_sha}

    env_step = len(replay)
    envs = OnlineEnvs(info.name, cfg, env_step)
    agent = _agent(model, tok, info.name, cfg, cfg.plan, cfg.seed * 7919 + env_step)
    guide_agent = _agent(guide, tok, info.name, cfg, False, cfg.seed * 7919 + env_step + 1) if guide else None
    retrieved = np.asarray(state["retrieved"], np.int64) if state["retrieved"] is not None else None
    counts = mix_counts(cfg.batch_size, [cfg.offline_fraction, cfg.rehearsal_fraction])
    sums: dict[str, float] = {}
    n_sum = 0
    t0 = time.perf_counter() - state["elapsed_s"]
    stop_at = min(cfg.env_steps, cfg.stop_after) if cfg.stop_after else cfg.env_steps
    task = reporter.task("online", total=cfg.env_steps, unit="env steps", completed=env_step)

    def checkpoint() -> None:
        replay.save(out / REPLAY_DIR, tok_sha, {"seed": cfg.seed, "source": str(ckpt_path)}, to_dict(tok.cfg))
        state.update(rng=rng_to_json(rng), elapsed_s=time.perf_counter() - t0, env_steps=len(replay),
                     retrieved=retrieved.tolist() if retrieved is not None else None, games=[info.name])
        learner.save(out, state, run_cfg, tok_sha)

    windows = _Guidance(cfg, rng) if guide_agent else None
    while env_step < stop_at:
        eps, p_guide = epsilon(cfg, env_step), guide_probability(cfg, env_step) if guide_agent else 0.0
        if windows is not None:
            windows.start_episodes(p_guide)
        guided = windows.guided() if windows else None
        actions = _act(agent, guide_agent, envs.obs, eps, guided)
        state["guided_steps"] += int(guided.sum()) if guided is not None else 0
        frames, tokens = envs.obs.copy(), _current_tokens(agent)
        reward, game_over, ended, finished = envs.step(actions)
        replay.add(frames, tokens, actions, np.clip(reward, -1, 1).astype(np.float32), game_over, ended)
        state["train_returns"].extend(finished)
        if windows is not None:
            windows.advance(ended)
        for a in (agent, guide_agent):
            if a is not None and ended.any():
                a.reset(np.flatnonzero(ended))
        before, env_step = env_step, len(replay)
        reporter.advance(task, env_step - before)
        if cfg.rehearsal_fraction and retrieved is None and len(replay.finished) >= cfg.rehearsal_episodes:
            retrieved = _retrieve(model, replay, pool, cfg, info.task_id, rng)
            reporter.log(f"rehearsal: {len(retrieved)} pretraining segments retrieved")
        owed = math.floor(max(env_step - cfg.learning_starts, 0) * cfg.utd) - learner.step
        for _ in range(max(owed, 0)):
            batch = mixed_batch([replay, offline, pool], _counts(counts, retrieved), cfg.seq_len, rng,
                                [None, None, retrieved])
            for k, v in learner.update(batch).items():
                sums[k] = sums.get(k, 0.0) + v
            n_sum += 1
            if learner.step % cfg.log_every == 0:
                _log_row(log, sums, n_sum, learner.step, env_step, state, eps, p_guide, t0)
                sums, n_sum = {}, 0
        due_eval = cfg.eval_episodes > 0 and (env_step >= cfg.env_steps or _crossed(before, env_step, cfg.eval_every))
        if due_eval:
            row = _evaluate(out, model, learner.step, env_step, extra, evaluator, tokenizer, state, device, reporter)
            _log_row(log, sums, n_sum, learner.step, env_step, state, eps, p_guide, t0, row)
            sums, n_sum = {}, 0
        if _crossed(before, env_step, cfg.save_every) or due_eval or env_step >= stop_at:
            checkpoint()
    envs.close()
    if env_step < cfg.env_steps:
        log.close()
        reporter.log(f"stopped at {env_step} of {cfg.env_steps} environment steps: continue with --resume")
        return {"out": str(out), "env_steps": env_step, "step": learner.step, "finished": False}
    _snapshot(out / FINAL_DIR, model, learner.step, env_step, extra)
    summary = {"out": str(out), "game": info.name, "env_steps": env_step, "step": learner.step, "finished": True,
               "from_scratch": cfg.from_scratch, "source_checkpoint": str(ckpt_path), "tokenizer": str(tokenizer),
               "final": {"path": str(out / FINAL_DIR), "step": learner.step}, "best": state["best"],
               "evals": state["evals"], "train_returns": state["train_returns"],
               "replay": str(out / REPLAY_DIR / f"{info.name}.zarr"), "batch_mix": dict(zip(
                   ("online", "offline", "rehearsal"), counts, strict=True)),
               "retrieved_segments": len(retrieved) if retrieved is not None else 0,
               "guided_steps": state["guided_steps"],
               "param_fingerprint": param_fingerprint(model), "config": to_dict(cfg)}
    ckpt.write_json_atomic(out / SUMMARY_FILE, summary)
    log.close()
    return summary


def _crossed(before: int, now: int, every: int) -> bool:
    """A multiple of ``every`` (0: never) lies in (before, now]."""
    return bool(every) and now // every > before // every


class _Guidance:
    """Each environment's execution-guidance window in its current episode (``guide_window``)."""

    def __init__(self, cfg: OnlineConfig, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        n = cfg.num_envs
        self.t = np.zeros(n, np.int64)  # step within the episode
        self.start, self.length = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.fresh = np.ones(n, bool)  # a new episode starts: draw its window

    def start_episodes(self, p: float) -> None:
        for i in np.flatnonzero(self.fresh):
            self.start[i], self.length[i] = guide_window(self.rng, p, self.cfg.guide_max_start,
                                                         self.cfg.guide_max_length)
        self.fresh[:] = False

    def guided(self) -> np.ndarray | None:
        """(N,) bool: the guide acts now; None when no window is open or to come (the guide need not run)."""
        if not (self.start + self.length > self.t).any():
            return None
        return (self.t >= self.start) & (self.t < self.start + self.length)

    def advance(self, ended: np.ndarray) -> None:
        self.t = np.where(ended, 0, self.t + 1)
        self.fresh |= ended


def _act(agent: Agent, guide: Agent | None, obs: np.ndarray, eps: float, guided: np.ndarray | None) -> np.ndarray:
    """Full actions (N,): the agent's (epsilon-greedy or planned), the guide's greedy action where ``guided``;
    both agents remember the action actually taken. The guide sees every observation while a window is open
    or to come, so its context is complete when it acts."""
    agent.model.eval()
    agent.epsilon = eps
    actions = agent.act(obs)
    if guide is not None and guided is not None:
        actions = np.where(guided, guide.act(obs), actions)
        guide.observe_action(actions)
    agent.observe_action(actions)
    return actions


def _counts(counts: list[int], retrieved: np.ndarray | None) -> list[int]:
    """Rehearsal rows go to the online replay until the retrieval has happened."""
    if retrieved is None or len(retrieved) == 0:
        return [counts[0] + counts[2], counts[1], 0]
    return counts


def _retrieve(model: WorldActionModel, replay: ReplayBuffer, pool: SegmentTable, cfg: OnlineConfig, task_id: int,
              rng: np.random.Generator) -> np.ndarray:
    """Rehearsal rows: the pretraining segments nearest to the segments of the first finished online episodes."""
    ep = replay.episode[:len(replay)]
    first = replay.finished[:cfg.rehearsal_episodes]
    queries = np.concatenate([np.flatnonzero(ep == e)[::cfg.seq_len] for e in first])  # rows in time order
    pool_starts = np.sort(rng.choice(len(pool), size=min(cfg.rehearsal_pool, len(pool)), replace=False))
    return retrieve(model, replay, queries, pool, pool_starts, cfg.rehearsal_k, cfg.seq_len, task_id)


def _token_table(path: str | os.PathLike, tok_sha: str, game: str | None) -> SegmentTable:
    stores = open_stores(path)
    if game is not None and {s.game for s in stores} != {game}:
        raise ValueError(f"{path} holds {', '.join(sorted({s.game for s in stores}))}, not {game}")
    table = SegmentTable.from_stores(stores)
    sha = tokens_tokenizer(stores)
    if sha and sha != tok_sha:
        raise ValueError(f"{path} holds tokens of another tokenizer ({sha[:12]}...); tokenize it with --tokenizer")
    return table


def _evaluate(out: Path, model: WorldActionModel, step: int, env_step: int, extra: dict[str, Any], evaluator,
              tokenizer, state: dict[str, Any], device: torch.device, reporter) -> dict[str, Any]:
    """Snapshot, evaluate (the training's random state untouched), keep ``best/``; the metrics row's eval columns."""
    path = _snapshot(out / "evals" / f"model_env{env_step:09d}", model, step, env_step, extra)
    rng = rng_state(device)
    g = evaluator(path, Path(tokenizer), out / "evals" / f"env_{env_step:09d}.json")
    set_rng_state(rng, device)
    e = {"env_steps": env_step, "step": step, "mean": g["mean"], "iqm": g["iqm"], "std": g["std"],
         "raw_scores": g["raw_scores"]}
    state["evals"].append(e)
    best = state["best"]
    if best is None or e["mean"] > best["mean"]:
        with ckpt.atomic_dir(out / BEST_DIR) as tmp:
            shutil.rmtree(tmp)
            shutil.copytree(path, tmp)
        best = state["best"] = {"path": str(out / BEST_DIR), "env_steps": env_step, "step": step,
                                "mean": e["mean"], "iqm": e["iqm"]}
    shutil.rmtree(path)
    reporter.log(f"{env_step} env steps: eval mean return {e['mean']:.2f} (best {best['mean']:.2f} at "
                 f"{best['env_steps']})")
    return {"eval_mean": e["mean"], "eval_iqm": e["iqm"], "best_mean": best["mean"]}


def _log_row(log: MetricsLog, sums: dict[str, float], n: int, step: int, env_step: int, state: dict[str, Any],
             eps: float, p_guide: float, t0: float, extra: dict[str, Any] | None = None) -> None:
    recent = state["train_returns"][-20:]
    row = {k: v / n for k, v in sums.items()} if n else {}
    row.update(extra or {}, step=env_step, updates=step, episodes=len(state["train_returns"]),
               train_return=float(np.mean(recent)) if recent else None, epsilon=eps, guide_prob=p_guide,
               elapsed_s=time.perf_counter() - t0)
    log.write(row)
