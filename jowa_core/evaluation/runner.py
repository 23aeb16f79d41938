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
from jowa_core.evaluation.agent import Agent, AgentSettings
from jowa_core.evaluation.envs import EvalSettings, VecAtari, rom_md5
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


def _play(model, tokenizer, items: list[dict], settings: EvalSettings, agent_kw: dict, backend: str,
          reporter: Reporter, num_episodes_total: int, video_dir: Path | None = None,
          video_episodes: Sequence[int] = ()) -> tuple[list[dict], dict[str, Any], list[str]]:
    """Play ``items`` (dicts with game, episode, seed) to the end; their records, counters and agent notes."""
    if not items:
        return [], {"env_steps": 0, "act_calls": 0, "decisions": 0, "random_actions": 0, "planner_calls": 0,
                    "elapsed_s": 0.0}, []
    env = VecAtari([(it["game"], it["seed"]) for it in items], settings, backend=backend)
    with warnings.catch_warnings():  # the agent's warnings go to the reporter and the JSON instead
        warnings.simplefilter("ignore")
        agent = Agent(model, tokenizer, env.games, seeds=env.seeds, epsilon=settings.epsilon, **agent_kw)
    for note in agent.notes:
        reporter.log(f"warning: {note}")
    records: list[dict] = []
    ep_task = reporter.task("evaluate", total=num_episodes_total, unit="episodes")
    step_task = reporter.task("env steps", total=None, unit="steps")
    t0 = last_log = time.perf_counter()
    env_steps = last_steps = last_calls = 0
    obs = env.reset()
    active = ~env.done
    filmed = {i: [] for i, it in enumerate(items) if video_dir is not None and it["episode"] in video_episodes}
    while active.any():
        for i, fr in filmed.items():
            if active[i]:
                fr.append(obs[i].copy())
        actions = agent.act(obs, active)
        obs, _, done, info = env.step(np.where(active, actions, 0))
        agent.observe_action(actions, active)
        n_active = int(active.sum())
        env_steps += n_active
        reporter.advance(step_task, n_active)
        now = time.perf_counter()
        for i in np.flatnonzero(info["ended"]):
            it = items[i]
            records.append({"game": it["game"], "episode": it["episode"], "seed": it["seed"],
                            "return": float(env.returns[i]), "clipped_return": float(env.clipped_returns[i]),
                            "length": int(env.steps[i]), "frames": int(env.frames[i]),
                            "game_over": bool(env.game_over[i]), "truncated": bool(env.truncated[i]),
                            "wall_time_s": round(now - t0, 3)})
            if i in filmed and filmed[i]:
                video = video_dir / f"{it['game']}_episode{it['episode']}.mp4"
                write_video(video, filmed.pop(i))
                records[-1]["video"] = str(video)
            done_g = [r["return"] for r in records if r["game"] == it["game"]]
            reporter.log(f"{it['game']} episode {it['episode']} (seed {it['seed']}): return {records[-1]['return']:g} "
                         f"in {records[-1]['length']} steps; {it['game']} mean {np.mean(done_g):g} over "
                         f"{len(done_g)} episode(s)")
            reporter.advance(ep_task)
        agent.reset(info["ended"])
        active = ~done
        if now - last_log >= 30.0:
            dt = now - last_log
            reporter.log(f"evaluate: {len(records)}/{len(items)} episodes, {int(active.sum())} running, "
                         f"{(env_steps - last_steps) / dt:,.1f} env steps/s, "
                         f"{(agent.stats.act_calls - last_calls) / dt:,.2f} decisions/s")
            last_log, last_steps, last_calls = now, env_steps, agent.stats.act_calls
    env.close()
    elapsed = time.perf_counter() - t0
    s = agent.stats
    counters = {"env_steps": env_steps, "act_calls": s.act_calls, "decisions": s.decisions,
                "random_actions": s.random_actions, "planner_calls": s.planner_calls, "elapsed_s": elapsed,
                "history": agent.history, "horizon": agent.horizon, "plan": agent.plan}
    return records, counters, agent.notes


def evaluate(model_path: str | Path, tokenizer_path: str | Path, games: str | Sequence[str] = "atari15",
             episodes: int = 16, *, agent: AgentSettings | None = None, settings: EvalSettings | None = None,
             seed: int = 0, device: str = "auto", backend: str = "auto", out_json: str | Path | None = None,
             video_dir: str | Path | None = None, video_episodes: Sequence[int] = (0,),
             reporter: Reporter | None = None) -> dict[str, Any]:
    """Evaluate a world-action checkpoint (a checkpoint or run directory) with a tokenizer on ``games`` (names or
    groups, see ``games.resolve``), ``episodes`` per game; returns (and writes to ``out_json``) the result dict.

    ``agent``: how actions are chosen (planning or greedy, beam, horizon, history, discount, precision; see
    ``AgentSettings``); ``settings``: the environment protocol (paper Table 15; ``EvalSettings``); ``backend``:
    ale-py's vector environment or one process of plain environments (``VecAtari``).
    ``video_dir``: write an MP4 of the agent's observations for episodes ``video_episodes`` of every game.
    """
    settings = settings or EvalSettings()
    reporter = reporter or NullReporter()
    names = _games.resolve(games)
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
        model_dir = ckpt.resolve(model_path, "world_action")
        model, meta = load_world_action(str(model_dir), ctx.device)
        model = model.to(_DTYPES[agent.precision][1])
        official_q_dropout(model, agent.q_dropout == "official")
        tokenizer = load_tokenizer(tokenizer_path, ctx.device)
        tokenizer_sha256 = fingerprint(tokenizer_path)
        ckpt.check_tokens_tokenizer(meta, tokenizer_sha256, model_dir, tokenizer_path)
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
                                         Path(video_dir) if video_dir is not None else None, tuple(video_episodes))
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
            "checkpoint": {"path": str(model_path), "resolved": str(model_dir),
                           "sha256": sha256_file(model_dir / ckpt.WEIGHTS), "step": meta.get("step"),
                           "config": meta.get("config")},
            "tokenizer": {"path": str(tokenizer_path), "resolved": str(weights_file(tokenizer_path)),
                          "sha256": tokenizer_sha256},
            "settings": settings.to_dict(),
            "agent": {"plan": ref.get("plan", agent.plan), "beam": agent.beam,
                      "horizon": ref.get("horizon", agent.horizon), "history": ref.get("history", agent.history),
                      "history_requested": agent.history, "gamma": gamma, "reward_mode": agent.reward_mode,
                      "epsilon": settings.epsilon, "dtype": _DTYPES[agent.precision][0], "max_batch": agent.max_batch,
                      "seed": int(seed), "planner": agent.planner if agent.plan else "greedy",
                      **({"q_dropout": "official"} if agent.q_dropout == "official" else {}),
                      **({"fast_path": fast_path} if fast_path != "off" else {}),
                      "env_backend": backend},
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

