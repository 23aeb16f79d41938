"""`jowa bench evaluate`: environment steps/s of `evaluate` with emulator stepping overlapped with planning.

Runs ``evaluation.runner.evaluate`` on real ALE games (ale-py's vector environment) with a randomly initialised
world-action model of the preset and a randomly initialised tokenizer (the paper's configuration unless
``tokenizer_vocab`` shrinks it), twice on the same episodes: one batch stepped after every decision (baseline,
``overlap=False``), then two lanes, one lane's emulators stepping in ale-py's threads while the agent plans for
the other (``overlap=True``). Every episode is cut at ``steps`` agent steps, so both runs take the same
``envs x steps`` environment steps; a short untimed run first pays for allocation and autotuning. The two runs'
episode results must be identical (``same_episodes``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from jowa_core import devices
from jowa_core import games as _games
from jowa_core.bench.table import append_comparison, fmt_rate
from jowa_core.config import from_dict
from jowa_core.devices import pick_device
from jowa_core.evaluation.agent import AgentSettings
from jowa_core.evaluation.envs import EvalSettings
from jowa_core.evaluation.runner import evaluate
from jowa_core.models.tokenizer import Tokenizer, TokenizerConfig, save_tokenizer
from jowa_core.models.world_action import WorldActionConfig, WorldActionModel, save_world_action
from jowa_core.progress import NullReporter


def command_line(preset: str, games: list[str], envs: int, steps: int, plan: bool, beam: int, horizon: int,
                 device: str, precision: str, fast_path: str, tokenizer_vocab: int | None) -> str:
    """The `jowa bench evaluate` command that reproduces a run (defaults left out)."""
    parts = ["jowa bench evaluate", f"--preset {preset}", f"--games {','.join(games)}", f"--envs {envs}",
             f"--steps {steps}"]
    for flag, value, default in (("--beam", beam, 3), ("--horizon", horizon, 2), ("--device", device, "auto"),
                                 ("--precision", precision, "auto"), ("--fast-path", fast_path, "off"),
                                 ("--tokenizer-vocab", tokenizer_vocab, None)):
        if value != default:
            parts.append(f"{flag} {value}")
    parts += ["--no-plan"] * (not plan)
    return " ".join(parts)


def _random_checkpoints(root: Path, preset: str, tokenizer_vocab: int | None, seed: int) -> tuple[Path, Path]:
    """A random world-action model of ``preset`` and a random tokenizer, saved under ``root``."""
    torch.manual_seed(seed)
    tok_cfg = TokenizerConfig() if tokenizer_vocab is None else TokenizerConfig(vocab_size=tokenizer_vocab)
    save_tokenizer(Tokenizer(tok_cfg), root / "tokenizer")
    model_cfg = from_dict(WorldActionConfig, {"preset": preset, "obs_vocab": tok_cfg.vocab_size})
    save_world_action(WorldActionModel(model_cfg), root / "model")
    return root / "model", root / "tokenizer"


def bench_evaluate(preset: str = "tiny", games: str | list[str] = "Pong", envs: int = 16, steps: int = 50,
                   plan: bool = True, beam: int = 3, horizon: int = 2, device: str = "auto", precision: str = "auto",
                   fast_path: str = "off", tokenizer_vocab: int | None = None, warmup_steps: int = 3, seed: int = 0,
                   reporter=None, markdown: str | Path | None = None) -> dict[str, Any]:
    """Time ``evaluate`` on ``envs`` episodes (dealt round robin over ``games``) of ``steps`` agent steps each,
    without and with overlap; returns a JSON-serialisable dict (``markdown``: append a dated section)."""
    reporter = reporter or NullReporter()
    names = _games.resolve(games)
    if envs < 2 or envs % len(names):
        raise ValueError(f"--envs {envs}: expected >= 2 and a multiple of the number of games ({len(names)})")
    if steps < 1 or warmup_steps < 1:
        raise ValueError(f"--steps {steps}: expected >= 1")
    dev = pick_device(device)
    bf16 = devices.use_bf16(dev, precision)
    agent = AgentSettings(plan=plan, beam=beam, horizon=horizon, precision="bf16" if bf16 else "fp32",
                          max_batch=envs, fast_path=fast_path)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="jowa-bench-evaluate-") as tmp:
        model, tok = _random_checkpoints(Path(tmp), preset, tokenizer_vocab, seed)
        kw = {"episodes": envs // len(names), "agent": agent, "device": str(dev), "backend": "vector",
              "seed": seed}
        reporter.log(f"bench evaluate: warm-up ({warmup_steps} steps)")
        evaluate(model, tok, names, settings=EvalSettings(max_frames=4 * warmup_steps), **kw)
        settings = EvalSettings(max_frames=4 * steps)
        for name, overlap in (("baseline", False), ("overlap", True)):
            reporter.log(f"bench evaluate: {name} ({envs} envs x {steps} steps)")
            t0 = time.perf_counter()
            r = evaluate(model, tok, names, settings=settings, overlap=overlap, **kw)
            wall = time.perf_counter() - t0
            t = r["throughput"]
            runs[name] = {"env_steps": t["env_steps"], "elapsed_s": t["elapsed_s"], "wall_s": round(wall, 3),
                          "env_steps_per_s": t["env_steps_per_s"], "lanes": t["per_rank"][0]["lanes"],
                          "episodes": {g: [(e["return"], e["length"]) for e in v["episodes"]]
                                       for g, v in r["games"].items()}}
        device_name = r["device"]
    base, ours = runs["baseline"], runs["overlap"]
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "device": device_name, "device_type": dev.type,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "command": command_line(preset, names, envs, steps, plan, beam, horizon, device, precision, fast_path,
                                tokenizer_vocab),
        "preset": preset, "games": names, "envs": envs, "steps": steps, "plan": plan, "beam": beam,
        "horizon": horizon, "precision": agent.precision, "fast_path": fast_path,
        "tokenizer_vocab": tokenizer_vocab or TokenizerConfig().vocab_size,
        "ours": ours, "baseline": base, "speedup_vs_baseline": ours["env_steps_per_s"] / base["env_steps_per_s"],
        "same_episodes": ours["episodes"] == base["episodes"],
    }
    result["summary"] = [f"{result['device']}, torch {result['torch']}: {describe(result)}",
                         f"overlap: {ours['env_steps_per_s']:.3g} env steps/s; one batch: "
                         f"{base['env_steps_per_s']:.3g}; {result['speedup_vs_baseline']:.2f}x; same episodes: "
                         f"{result['same_episodes']}"]
    if markdown:
        append_comparison(Path(markdown), result, "Evaluation throughput (emulators overlapped with planning)",
                          "ours (two lanes, overlapped)", "baseline: one batch (same run)", describe(result),
                          table_rows(result))
    return result


def describe(r: dict[str, Any]) -> str:
    how = f"beam K={r['beam']} H={r['horizon']}" if r["plan"] else "greedy"
    return (f"`evaluate` with ale-py's vector env, {r['envs']} episodes of {', '.join(r['games'])} cut at "
            f"{r['steps']} agent steps, preset {r['preset']} (random init), {r['precision']}, {how}, "
            f"tokenizer vocabulary {r['tokenizer_vocab']}")


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, ours, baseline, ours ÷ baseline) rows shared by the CLI table and the Markdown record."""
    o, b = r["ours"], r["baseline"]
    return [("env steps/s", fmt_rate(o["env_steps_per_s"]), fmt_rate(b["env_steps_per_s"]),
             f"{r['speedup_vs_baseline']:.2f}"),
            ("lanes", str(o["lanes"]), str(b["lanes"]), ""),
            ("same episode results", "yes" if r["same_episodes"] else "NO", "", "")]
