"""``evaluate``: every episode of every game in one batched loop (finished episodes drop out), one JSON.

Under ``torchrun`` (WORLD_SIZE > 1) each rank plays a disjoint share of the (game, episode) list (round robin)
and rank 0 merges the records (``all_gather_object``) and writes the JSON. An episode's result does not depend
on how episodes are batched or shared out: its emulator seed is ``seed + episode`` and its epsilon stream is
seeded by (that seed, the game's task id).
"""

from __future__ import annotations

import datetime as _dt
import platform
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist

from jowa_core import checkpoint as ckpt
from jowa_core import dist as _dist
from jowa_core import games as _games
from jowa_core.checkpoint import sha256_file
from jowa_core.constants import jowa_version
from jowa_core.evaluation import baselines
from jowa_core.evaluation.agent import Agent, AgentSettings
from jowa_core.evaluation.envs import EvalSettings, VecAtari, resolve_backend, rom_md5
from jowa_core.evaluation.metrics import iqm
from jowa_core.models.tokenizer import fingerprint, load_tokenizer, weights_file
from jowa_core.models.world_action import load_world_action, official_q_dropout
from jowa_core.planning.mcts import plan_mcts
from jowa_core.planning.static import StaticPlanners, resolve_fast_path
from jowa_core.progress import NullReporter, Reporter

__all__ = ["FORMAT", "evaluate", "sha256_file", "summarize"]

FORMAT = "jowa-eval"
VERSION = 1
_DTYPES = {"fp32": ("float32", torch.float32), "bf16": ("bfloat16", torch.bfloat16)}  # precision -> JSON name


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def summarize(returns: Sequence[float]) -> dict[str, float | None]:
    """mean, std (population), min, max, median and IQM (mean of the middle 50%, scipy trim_mean(0.25))."""
    x = np.sort(np.asarray(returns, dtype=np.float64))
    if x.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "median": None, "iqm": None}
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x[0]), "max": float(x[-1]),
            "median": float(np.median(x)), "iqm": float(iqm(x))}


def write_video(path: Path, frames: list[np.ndarray], fps: int = 15, scale: int = 4) -> None:
    """An MP4 (mp4v) of (84, 84) uint8 observations, upscaled ``scale`` times; written atomically."""
    import cv2

    h, w = frames[0].shape
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w * scale, h * scale), isColor=True)
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path}: OpenCV has no mp4v encoder here")
    for f in frames:
        big = cv2.resize(f, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
        writer.write(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    writer.release()
    tmp.replace(path)


class _Lane:
    """One share of the episodes: its envs, its agent, its observations; stepped with ``step_async``/``step_wait``
    so that its emulators run while another lane plans."""

    def __init__(self, items: list[dict], settings: EvalSettings, agent_kw: dict, backend: str, model, tokenizer,
                 video_dir: Path | None, video_episodes: Sequence[int], make_agent=Agent):
        self.items = items
        self.env = VecAtari([(it["game"], it["seed"]) for it in items], settings, backend=backend)
        with warnings.catch_warnings():  # the agent's warnings go to the reporter and the JSON instead
            warnings.simplefilter("ignore")
            self.agent = make_agent(model, tokenizer, self.env.games, seeds=self.env.seeds,
                                    epsilon=settings.epsilon, **agent_kw)
        self.video_dir = video_dir
        self.filmed = {i: [] for i, it in enumerate(items) if video_dir is not None and it["episode"] in video_episodes}
        self.obs = self.env.reset()
        self.active = ~self.env.done
        self.actions = np.zeros(len(items), np.int64)

    def act_and_send(self) -> None:
        """Choose the running slots' actions and start their emulator step."""
        for i, fr in self.filmed.items():
            if self.active[i]:
                fr.append(self.obs[i].copy())
        self.actions = self.agent.act(self.obs, self.active)
        self.env.step_async(np.where(self.active, self.actions, 0))

    def receive(self, t0: float) -> tuple[int, list[dict]]:
        """Finish the step: (env steps taken, records of the episodes that ended)."""
        self.obs, _, done, info = self.env.step_wait()
        self.agent.observe_action(self.actions, self.active)
        n_active = int(self.active.sum())
        now = time.perf_counter()
        ended = [self._record(i, now - t0) for i in np.flatnonzero(info["ended"])]
        self.agent.reset(info["ended"])
        self.active = ~done
        return n_active, ended

    def _record(self, i: int, wall: float) -> dict:
        it, env = self.items[i], self.env
        rec = {"game": it["game"], "episode": it["episode"], "seed": it["seed"], "return": float(env.returns[i]),
               "clipped_return": float(env.clipped_returns[i]), "length": int(env.steps[i]),
               "frames": int(env.frames[i]), "game_over": bool(env.game_over[i]),
               "truncated": bool(env.truncated[i]), "wall_time_s": round(wall, 3)}
        if i in self.filmed and self.filmed[i]:
            video = self.video_dir / f"{it['game']}_episode{it['episode']}.mp4"
            write_video(video, self.filmed.pop(i))
            rec["video"] = str(video)
        return rec


def _play(model, tokenizer, items: list[dict], settings: EvalSettings, agent_kw: dict, backend: str,
          reporter: Reporter, num_episodes_total: int, video_dir: Path | None = None,
          video_episodes: Sequence[int] = (), overlap: bool = True,
          make_agent=Agent) -> tuple[list[dict], dict[str, Any], list[str]]:
    """Play ``items`` (dicts with game, episode, seed) to the end; their records, counters and agent notes.

    With ``overlap`` (vector backend, two or more episodes) the episodes are dealt into two lanes: while one
    lane's emulators step in ale-py's threads, the agent plans for the other. An episode's result does not
    depend on its lane (seeds and epsilon streams are per episode). ``make_agent``: ``Agent`` or a baseline's
    (``evaluation/baselines.py``).
    """
    if not items:
        return [], {"env_steps": 0, "act_calls": 0, "decisions": 0, "random_actions": 0, "planner_calls": 0,
                    "elapsed_s": 0.0, "lanes": 0}, []
    n_lanes = 2 if overlap and len(items) >= 2 and backend == "vector" else 1
    lanes = [_Lane(items[k::n_lanes], settings, agent_kw, backend, model, tokenizer, video_dir, video_episodes,
                   make_agent)
             for k in range(n_lanes)]
    notes = list(dict.fromkeys(n for lane in lanes for n in lane.agent.notes))
    for note in notes:
        reporter.log(f"warning: {note}")
    records: list[dict] = []
    ep_task = reporter.task("evaluate", total=num_episodes_total, unit="episodes")
    step_task = reporter.task("env steps", total=None, unit="steps")
    t0 = last_log = time.perf_counter()
    env_steps = last_steps = last_calls = 0
    for lane in lanes:
        if lane.active.any():
            lane.act_and_send()
    while any(lane.active.any() for lane in lanes):
        for lane in lanes:
            if not lane.active.any():
                continue
            n_active, ended = lane.receive(t0)
            if lane.active.any():
                lane.act_and_send()  # this lane's emulators run while the next lane is received and planned
            env_steps += n_active
            reporter.advance(step_task, n_active)
            for rec in ended:
                records.append(rec)
                done_g = [r["return"] for r in records if r["game"] == rec["game"]]
                reporter.log(f"{rec['game']} episode {rec['episode']} (seed {rec['seed']}): return {rec['return']:g} "
                             f"in {rec['length']} steps; {rec['game']} mean {np.mean(done_g):g} over "
                             f"{len(done_g)} episode(s)")
                reporter.advance(ep_task)
        now = time.perf_counter()
        if now - last_log >= 30.0:
            dt, calls = now - last_log, sum(lane.agent.stats.act_calls for lane in lanes)
            running = sum(int(lane.active.sum()) for lane in lanes)
            reporter.log(f"evaluate: {len(records)}/{len(items)} episodes, {running} running, "
                         f"{(env_steps - last_steps) / dt:,.1f} env steps/s, {(calls - last_calls) / dt:,.2f} "
                         "decisions/s")
            last_log, last_steps, last_calls = now, env_steps, calls
    for lane in lanes:
        lane.env.close()
    elapsed = time.perf_counter() - t0
    stats = [lane.agent.stats for lane in lanes]
    a = lanes[0].agent
    counters = {"env_steps": env_steps, "act_calls": sum(s.act_calls for s in stats),
                "decisions": sum(s.decisions for s in stats), "random_actions": sum(s.random_actions for s in stats),
                "planner_calls": sum(s.planner_calls for s in stats), "elapsed_s": elapsed, "lanes": n_lanes,
                "history": a.history, "horizon": a.horizon, "plan": a.plan}
    return records, counters, notes


def evaluate(model_path: str | Path, tokenizer_path: str | Path, games: str | Sequence[str] = "atari15",
             episodes: int = 16, *, agent: AgentSettings | None = None, settings: EvalSettings | None = None,
             seed: int = 0, device: str = "auto", backend: str = "auto", out_json: str | Path | None = None,
             video_dir: str | Path | None = None, video_episodes: Sequence[int] = (0,), overlap: bool = True,
             reporter: Reporter | None = None) -> dict[str, Any]:
    """Evaluate a world-action checkpoint (a checkpoint or run directory) with a tokenizer on ``games`` (names or
    groups, see ``games.resolve``), ``episodes`` per game; returns (and writes to ``out_json``) the result dict.

    ``agent``: how actions are chosen (planning or greedy, beam, horizon, history, discount, precision; see
    ``AgentSettings``); ``settings``: the environment protocol (paper Table 15; ``EvalSettings``); ``backend``:
    ale-py's vector environment or one process of plain environments (``VecAtari``); ``overlap``: with the vector
    backend, step half of the episodes' emulators while planning for the other half (same results).
    ``video_dir``: write an MP4 of the agent's observations for episodes ``video_episodes`` of every game.
    """
    settings = settings or EvalSettings()
    reporter = reporter or NullReporter()
    names = _games.resolve(games)
    backend = resolve_backend(backend, names)
    if int(episodes) < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    agent = agent or AgentSettings()
    if agent.beam != "auto":
        for g in names:
            _games.beam_width(g, agent.beam)  # a bad beam fails before anything loads
    if int(seed) < 0 or int(seed) + int(episodes) > 2**31:
        raise ValueError(f"seed must be in [0, 2**31 - episodes), got {seed}")
    owns_group = not (tdist.is_available() and tdist.is_initialized())
    ctx = _dist.setup(device)
    try:
        model_dir = ckpt.resolve(model_path)
        kind = ckpt.read_meta(model_dir).get("kind")
        make_agent = Agent
        if kind in baselines.KINDS:  # the paper's baselines: greedy, same protocol (evaluation/baselines.py)
            model, meta, make_agent = baselines.load_baseline(model_dir, kind, ctx.device)
        else:
            model_dir = ckpt.resolve(model_path, "world_action")
            model, meta = load_world_action(str(model_dir), ctx.device)
            official_q_dropout(model, agent.q_dropout == "official")
        model = model.to(_DTYPES[agent.precision][1])
        tokenizer = tokenizer_sha256 = None
        if tokenizer_path:
            tokenizer = load_tokenizer(tokenizer_path, ctx.device)
            tokenizer_sha256 = fingerprint(tokenizer_path)
            ckpt.check_tokens_tokenizer(meta, tokenizer_sha256, model_dir, tokenizer_path)
        elif kind != baselines.FRAMES_KIND:
            raise ValueError(f"{model_dir} reads observation tokens: pass --tokenizer")
        items = [{"game": g, "episode": e, "seed": int(seed) + e} for g in names for e in range(int(episodes))]
        mine = items[ctx.rank::ctx.world_size]
        gamma = float(meta.get("gamma", 0.99)) if agent.gamma is None else float(agent.gamma)
        agent_kw = {"plan": agent.plan, "beam": agent.beam, "horizon": agent.horizon, "history": agent.history,
                    "max_batch": agent.max_batch, "gamma": gamma, "reward_mode": agent.reward_mode}
        fast_path = "off"
        if agent.planner == "mcts":
            agent_kw["planner"] = plan_mcts
        elif agent.plan and agent.fast_path != "off":  # padded batches through cached static planners
            fast_path = resolve_fast_path(agent.fast_path, ctx.device)
            agent_kw["planner"] = StaticPlanners(cuda_graph=fast_path == "graph")
        date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if video_dir is not None:
            Path(video_dir).mkdir(parents=True, exist_ok=True)
        records, counters, notes = _play(model, tokenizer, mine, settings, agent_kw, backend, reporter, len(mine),
                                         Path(video_dir) if video_dir is not None else None, tuple(video_episodes),
                                         overlap=overlap, make_agent=make_agent)
        counters["rank"], counters["device"] = ctx.rank, _device_name(ctx.device)
        if ctx.distributed:
            gathered: list[Any] = [None] * ctx.world_size
            tdist.all_gather_object(gathered, (records, counters, notes))
            records = [r for g in gathered for r in g[0]]
            per_rank = [g[1] for g in gathered]
            notes = list(dict.fromkeys(n for g in gathered for n in g[2]))
        else:
            per_rank = [counters]
        order = {g: i for i, g in enumerate(names)}
        records.sort(key=lambda r: (order[r["game"]], r["episode"]))
        env_steps = sum(c["env_steps"] for c in per_rank)
        elapsed = max(c["elapsed_s"] for c in per_rank)
        ref = next((c for c in per_rank if "history" in c), {})
        result: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "jowa_version": jowa_version(), "date": date,
            "device": counters["device"], "world_size": ctx.world_size, "torch": torch.__version__,
            "checkpoint": {"path": str(model_path), "resolved": str(model_dir), "kind": kind,
                           "sha256": sha256_file(model_dir / ckpt.WEIGHTS), "step": meta.get("step"),
                           "config": meta.get("config")},
            "tokenizer": {"path": str(tokenizer_path), "resolved": str(weights_file(tokenizer_path)),
                          "sha256": tokenizer_sha256} if tokenizer is not None else None,
            "settings": settings.to_dict(),
            "agent": {"plan": ref.get("plan", agent.plan), "beam": agent.beam,
                      "horizon": ref.get("horizon", agent.horizon), "history": ref.get("history", agent.history),
                      "history_requested": agent.history, "gamma": gamma, "reward_mode": agent.reward_mode,
                      "epsilon": settings.epsilon, "dtype": _DTYPES[agent.precision][0], "max_batch": agent.max_batch,
                      "seed": int(seed), "planner": agent.planner if ref.get("plan", agent.plan) else "greedy",
                      **({"q_dropout": "official"} if agent.q_dropout == "official" else {}),
                      **({"fast_path": fast_path} if fast_path != "off" else {}),
                      "env_backend": backend, "overlap": any(c.get("lanes", 1) > 1 for c in per_rank)},
            "roms": {g: rom_md5(g) for g in names},
            "episodes_per_game": int(episodes),
            "games": {},
            "throughput": {"elapsed_s": round(elapsed, 3), "env_steps": env_steps,
                           "env_steps_per_s": env_steps / elapsed if elapsed > 0 else None,
                           "decisions": sum(c["decisions"] for c in per_rank),
                           "random_actions": sum(c["random_actions"] for c in per_rank),
                           "act_calls_per_s": (sum(c["act_calls"] for c in per_rank) / elapsed / len(per_rank)
                                               if elapsed > 0 else None),
                           "per_rank": per_rank},
            "warnings": notes,
        }
        for g in names:
            recs = [r for r in records if r["game"] == g]
            info = _games.get(g)
            beam_g = _games.beam_width(g, agent.beam)
            result["games"][g] = {"task_id": info.task_id, "beam": beam_g if result["agent"]["plan"] else None,
                                  **summarize([r["return"] for r in recs]),
                                  "raw_scores": [r["return"] for r in recs],
                                  "episodes": [{k: v for k, v in r.items() if k != "game"} for r in recs]}
        if out_json is not None and ctx.is_main:
            Path(out_json).parent.mkdir(parents=True, exist_ok=True)
            ckpt.write_json_atomic(out_json, result)
        return result
    finally:
        if owns_group:  # a process group the caller set up stays up
            _dist.teardown(ctx)

