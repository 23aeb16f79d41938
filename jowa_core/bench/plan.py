"""`jowa bench plan`: decisions per second of the batched beam-search planner against a node-by-node baseline.

One decision = one call of ``plan`` for every environment: ``envs`` contexts of the full length the horizon
leaves room for (8 - H steps, the current one without an action: 37 (8 - H) - 1 tokens), random observation
tokens and valid random actions of real games' action masks, on a randomly initialised model of the preset
(obs_vocab 2048). An agent takes one environment step per decision, so environment steps per second with
planning = envs x decisions / time. Next to it: greedy acting (one forward over the contexts, argmax Q̂), the
upper bound without planning.

Baseline, measured in the same run: ``plan_node_by_node`` (``jowa_core.planning.reference``), the official
planner's structure: one environment at a time, one node at a time, each child copying its parent's KV cache
and imagining its step alone (37 forwards of batch 1 per child), on the same model, contexts and precision.
It is slow, so it runs fewer decisions (``baseline_decisions`` rounds over all environments, or over the first
``baseline_envs``: its cost per environment does not depend on how many there are). Its actions are
compared with ours (``agreement``: they should match in fp32 up to ties; bf16 rounding can flip near-ties).

Fast path (``fast_path``, ``--fast-path``), measured in the same run when not ``off``: ``StaticPlanner``
(``jowa_core.planning.static``), the same search with preallocated KV caches forked into in place (``static``)
and, on CUDA, the whole decision replayed as one CUDA graph (``graph``; ``auto`` picks it on CUDA, ``static``
elsewhere). Its first call (the graph capture) is untimed; its actions are compared with ours.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jowa_core import devices
from jowa_core import games as _games
from jowa_core.bench.table import append_comparison, fmt_rate
from jowa_core.config import from_dict
from jowa_core.devices import pick_device
from jowa_core.models.world_action import WorldActionConfig, WorldActionModel, segment_tokens
from jowa_core.planning.beam import plan
from jowa_core.planning.reference import plan_node_by_node
from jowa_core.planning.static import StaticPlanner, resolve_fast_path
from jowa_core.progress import NullReporter

BENCH_GAMES = ("Breakout", "Pong", "SpaceInvaders", "Seaquest", "MsPacman")  # 4 to 18 valid actions


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads)")


def synthetic_contexts(cfg: WorldActionConfig, envs: int, steps: int, seed: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """``envs`` contexts of ``steps`` steps (tokens (envs, 37 steps - 1)), task ids, action masks and game names,
    cycling through ``BENCH_GAMES``; past actions are random valid actions of each game."""
    g = torch.Generator().manual_seed(seed)
    names = [BENCH_GAMES[i % len(BENCH_GAMES)] for i in range(envs)]
    infos = [_games.get(n) for n in names]
    mask = torch.as_tensor(np.stack([info.action_mask() for info in infos]))
    obs = torch.randint(0, cfg.obs_vocab, (envs, steps, cfg.tokens_per_obs), generator=g)
    pick = torch.randint(0, 1 << 30, (envs, steps), generator=g)
    valid = [torch.as_tensor(info.minimal_actions, dtype=torch.long) for info in infos]
    act = torch.stack([v[p % len(v)] for v, p in zip(valid, pick, strict=True)])
    tokens = segment_tokens(obs, act)[:, :-1]
    tasks = torch.as_tensor([info.task_id for info in infos], dtype=torch.long)
    return tokens, tasks, mask, names


def _children(beam: int, horizon: int, num_valid: int) -> int:
    """Nodes the node-by-node planner imagines for one decision (each costs 37 forwards of batch 1)."""
    total, nodes = 0, 1
    for _ in range(horizon):
        kids = nodes * min(beam, num_valid)
        total += kids
        nodes = min(beam, kids)
    return total


class _Timer:
    """Wall time of a call, synchronising the GPU before and after."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def __call__(self, fn, *args, **kwargs) -> tuple[Any, float]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return out, time.perf_counter() - t


def command_line(preset: str, envs: int, beam: int, horizon: int, decisions: int, device: str, precision: str,
                 baseline: bool, baseline_decisions: int, threads: int | None = None, fast_path: str = "off",
                 baseline_envs: int | None = None) -> str:
    """The `jowa bench plan` command that reproduces a run (defaults left out)."""
    parts = ["jowa bench plan", f"--preset {preset}", f"--envs {envs}", f"--beam {beam}", f"--horizon {horizon}"]
    for flag, value, default in (("--decisions", decisions, 5), ("--device", device, "auto"),
                                 ("--precision", precision, "auto"), ("--baseline-decisions", baseline_decisions, 1),
                                 ("--threads", threads, None), ("--fast-path", fast_path, "off"),
                                 ("--baseline-envs", baseline_envs, None)):
        if value != default:
            parts.append(f"{flag} {value}")
    parts += ["--no-baseline"] * (not baseline)
    return " ".join(parts)


def bench_plan(preset: str = "150m", envs: int = 16, beam: int = 3, horizon: int = 2, history: int | None = None,
               decisions: int = 5, warmup: int = 1, device: str = "auto", precision: str = "auto",
               baseline: bool = True, baseline_decisions: int = 1, gamma: float = 0.99, seed: int = 0,
               threads: int | None = None, reporter=None, markdown: str | os.PathLike | None = None,
               fast_path: str = "off", baseline_envs: int | None = None) -> dict[str, Any]:
    """Time the batched planner (``decisions`` timed calls over ``envs`` contexts after ``warmup`` untimed ones),
    greedy acting, and the node-by-node baseline (``baseline_decisions`` rounds over the environments).

    ``history``: steps of context, the current one included (default 8 - horizon, the most that fits).
    ``precision``: auto (bf16 weights and KV cache on GPU, fp32 on CPU) | bf16 | fp32. Returns a JSON-serialisable
    dict; ``threads``: torch CPU threads for the run (restored afterwards; on a small shared machine 1 thread
    avoids OpenMP spinning, which costs the tiny model's batch-1 forwards 10-40x). ``markdown``: append a dated
    section to that file. ``fast_path``: off | static | graph | auto, the static-cache planner timed next to ours.
    ``baseline_envs``: time the baseline on the first that many environments only (default: all).
    """
    if threads is not None and threads < 1:
        raise ValueError(f"--threads {threads}: expected >= 1")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench_plan(preset, envs, beam, horizon, history, decisions, warmup, device, precision, baseline,
                           baseline_decisions, gamma, seed, threads, reporter, markdown, fast_path,
                           baseline_envs)
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def _bench_plan(preset, envs, beam, horizon, history, decisions, warmup, device, precision, baseline,
                baseline_decisions, gamma, seed, threads, reporter, markdown, fast_path="off",
                baseline_envs=None) -> dict[str, Any]:
    reporter = reporter or NullReporter()
    if envs < 1 or decisions < 1 or warmup < 0 or baseline_decisions < 1:
        raise ValueError("--envs, --decisions and --baseline-decisions must be >= 1 (--warmup >= 0)")
    if baseline_envs is not None and not 1 <= baseline_envs <= envs:
        raise ValueError(f"--baseline-envs {baseline_envs}: expected 1..{envs}")
    if beam < 1 or horizon < 0:
        raise ValueError(f"--beam {beam} --horizon {horizon}: expected beam >= 1 and horizon >= 0")
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"--precision {precision!r}: expected auto, bf16 or fp32")
    if preset not in WorldActionConfig.PRESETS:
        raise ValueError(f"--preset {preset!r}: expected one of {', '.join(WorldActionConfig.PRESETS)}")
    dev = pick_device(device)
    fast_mode = resolve_fast_path(fast_path, dev)
    use_bf16 = devices.use_bf16(dev, precision)
    torch_dtype = torch.bfloat16 if use_bf16 else torch.float32
    cfg = from_dict(WorldActionConfig, {"preset": preset, "obs_vocab": 2048})
    greedy_only = beam <= 1 or horizon <= 0
    cap = cfg.max_steps - (0 if greedy_only else horizon)
    steps = cap if history is None else int(history)
    if not 1 <= steps <= cap:
        raise ValueError(f"--history {steps}: expected 1..{cap} with horizon {horizon}")

    torch.manual_seed(seed)
    model = WorldActionModel(cfg).eval().to(dev, torch_dtype)
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head_q_target."))
    tokens, tasks, mask, names = synthetic_contexts(cfg, envs, steps, seed)
    tokens, tasks, mask = tokens.to(dev), tasks.to(dev), mask.to(dev)
    timer = _Timer(dev)

    def run(label: str, k: int, h: int, planner=None, warm_calls: int = warmup) -> tuple[dict[str, Any], torch.Tensor]:
        call = planner or (lambda *a: plan(model, *a, beam=k, horizon=h, gamma=gamma))
        task = reporter.task(f"bench plan: {label}", total=warm_calls + decisions, unit="decisions")
        t0 = time.perf_counter()
        for _ in range(warm_calls):
            call(tokens, tasks, mask)
            reporter.advance(task)
        warm = time.perf_counter() - t0
        times, action = [], None
        for _ in range(decisions):
            res, t = timer(call, tokens, tasks, mask)
            times.append(t)
            action = res.action
            reporter.advance(task)
        total = sum(times)
        return {"call_time_median_s": statistics.median(times), "call_times_s": times, "warmup_s": warm,
                "decisions_per_s": envs * decisions / total, "env_steps_per_s": envs * decisions / total}, action

    ours, our_action = run("ours (batched)", beam, horizon)
    greedy, _ = run("greedy (no planning)", 1, 0)
    fast: dict[str, Any] | None = None
    if fast_mode != "off" and not greedy_only:
        planner = StaticPlanner(model, envs, tokens.shape[1], beam, horizon, gamma, cuda_graph=fast_mode == "graph")
        fast, fast_action = run(f"fast path ({fast_mode})", beam, horizon, planner, max(1, warmup))
        fast.update(mode=fast_mode, cache_mib=planner.cache_bytes() / 2**20,
                    speedup_vs_ours=fast["env_steps_per_s"] / ours["env_steps_per_s"],
                    agreement_with_ours=float((fast_action == our_action).float().mean()))
        del planner

    base: dict[str, Any] | None = None
    ratio = agreement = None
    if baseline and not greedy_only:
        base_envs = baseline_envs or envs
        task = reporter.task("bench plan: baseline (node by node)", total=1 + base_envs * baseline_decisions,
                             unit="env decisions")
        t0 = time.perf_counter()
        plan_node_by_node(model, tokens[0], tasks[0], mask[0], beam, horizon, gamma)  # untimed warm-up
        reporter.advance(task)
        warm = time.perf_counter() - t0
        times, agree = [], 0
        for _ in range(baseline_decisions):
            for i in range(base_envs):
                (a, _), t = timer(plan_node_by_node, model, tokens[i], tasks[i], mask[i], beam, horizon, gamma)
                times.append(t)
                agree += int(a == int(our_action[i]))
                reporter.advance(task)
        total = sum(times)
        base = {"env_decision_time_median_s": statistics.median(times), "env_decision_times_s": times,
                "warmup_s": warm, "decisions": baseline_decisions, "envs": base_envs,
                "decisions_per_s": len(times) / total, "env_steps_per_s": len(times) / total,
                "description": "node by node: one environment, one node at a time, each child imagined alone "
                               "with a copy of its parent's KV cache (the official planner's structure)"}
        ratio = ours["env_steps_per_s"] / base["env_steps_per_s"]
        agreement = agree / len(times)
        if fast:
            fast["speedup_vs_baseline"] = fast["env_steps_per_s"] / base["env_steps_per_s"]

    K = beam
    children = [_children(K, horizon, a) if not greedy_only else 0 for a in mask.sum(-1).tolist()]
    tpo = cfg.tokens_per_step
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "device": _device_name(dev),
        "device_type": dev.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "command": command_line(preset, envs, beam, horizon, decisions, device, precision, baseline,
                                baseline_decisions, threads, fast_path, baseline_envs),
        "preset": preset,
        "params": params,
        "precision": "bf16 weights and KV cache" if use_bf16 else "fp32",
        "envs": envs,
        "beam": beam,
        "horizon": horizon,
        "gamma": gamma,
        "history": steps,
        "context_tokens": int(tokens.shape[1]),
        "games": names,
        "decisions": decisions,
        "warmup": warmup,
        "batched_forwards_per_decision": 1 if greedy_only else 1 + tpo * horizon,
        "batch_rows_per_depth": [envs * min(K ** d, K) * K for d in range(horizon)] if not greedy_only else [],
        "baseline_forwards_per_env_decision": [1 + tpo * c for c in children],
        "ours": ours,
        "greedy": greedy,
        "fast": fast,
        "baseline": base,
        "speedup_vs_baseline": ratio,
        "agreement_with_baseline": agreement,
    }
    result["summary"] = summary_lines(result)
    if markdown:
        append_markdown(Path(markdown), result)
    return result


# --------------------------------------------------------------------------------------------------------
# Output


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, ours, baseline, ours ÷ baseline) rows shared by the CLI table and the Markdown record."""
    o, g, b = r["ours"], r["greedy"], r["baseline"]
    ratio = f"{r['speedup_vs_baseline']:.1f}" if r["speedup_vs_baseline"] else ""
    rows = [
        ("env steps/s with planning (= decisions/s)", fmt_rate(o["env_steps_per_s"]),
         fmt_rate(b["env_steps_per_s"]) if b else "", ratio),
        ("time per decision, all envs (s)", f"{o['call_time_median_s']:.4g}",
         f"{b['env_decision_time_median_s'] * r['envs']:.4g}" if b else "", ""),
        ("time per decision per env (ms)", f"{1e3 * o['call_time_median_s'] / r['envs']:.4g}",
         f"{1e3 * b['env_decision_time_median_s']:.4g}" if b else "", ""),
        ("greedy env steps/s (no planning)", fmt_rate(g["env_steps_per_s"]), "", ""),
    ]
    if r["agreement_with_baseline"] is not None:
        rows.append(("same action as ours", "", f"{100 * r['agreement_with_baseline']:.0f}%", ""))
    f = r.get("fast")
    if f:
        fb = f"{f['speedup_vs_baseline']:.1f}" if f.get("speedup_vs_baseline") else ""
        rows += [(f"fast path ({FAST_LABELS[f['mode']]}): env steps/s", fmt_rate(f["env_steps_per_s"]), "", fb),
                 ("fast path ÷ ours (env steps/s)", f"{f['speedup_vs_ours']:.2f}", "", ""),
                 ("fast path: time per decision, all envs (s)", f"{f['call_time_median_s']:.4g}", "", ""),
                 ("fast path: same action as ours", f"{100 * f['agreement_with_ours']:.0f}%", "", "")]
    return rows


FAST_LABELS = {"static": "static KV cache, eager", "graph": "static KV cache, one CUDA graph per decision"}


def describe(r: dict[str, Any]) -> str:
    return (f"preset {r['preset']} ({r['params'] / 1e6:.1f}M parameters, random init), {r['precision']}, "
            f"{r['envs']} environments ({', '.join(sorted(set(r['games'])))}), beam K={r['beam']}, horizon "
            f"H={r['horizon']}, {r['history']} steps of context ({r['context_tokens']} tokens); {r['decisions']} "
            f"timed decisions after {r['warmup']} warm-up"
            + (f"; baseline: {r['baseline']['decisions']} decision(s) per environment on "
               f"{r['baseline'].get('envs', r['envs'])} of them" if r["baseline"] else ""))


def summary_lines(r: dict[str, Any]) -> list[str]:
    o, g, b = r["ours"], r["greedy"], r["baseline"]
    lines = [f"{r['device']}, torch {r['torch']}: {describe(r)}",
             f"ours (batched): {o['env_steps_per_s']:.3g} env steps/s with planning "
             f"({o['call_time_median_s'] * 1e3:.4g} ms per decision for {r['envs']} envs); greedy: "
             f"{g['env_steps_per_s']:.3g} env steps/s"]
    f = r.get("fast")
    if f:
        lines.append(f"fast path ({FAST_LABELS[f['mode']]}): {f['env_steps_per_s']:.3g} env steps/s, "
                     f"{f['speedup_vs_ours']:.2f}x ours; same action as ours in {100 * f['agreement_with_ours']:.0f}% "
                     "of environments")
    if b:
        lines.append(f"baseline (node by node): {b['env_steps_per_s']:.3g} env steps/s; ours is "
                     f"{r['speedup_vs_baseline']:.1f}x; same action in {100 * r['agreement_with_baseline']:.0f}% "
                     "of decisions")
    return lines


def append_markdown(path: Path, r: dict[str, Any]) -> None:
    """Append a dated section (device, torch, command, table) to the Markdown file ``path``."""

    append_comparison(path, r, "Planning throughput", "ours (batched beam search)",
                      "baseline: node by node (same run)", describe(r), table_rows(r))
