"""A CPU learning check of the paper's baselines on the built-in Catch game: each trains from offline data through
the same stores, loader, trainer and evaluation as JOWA and must beat the random policy.

Data: a noisy expert (``DATA_EPSILON`` of its actions uniformly random, the rest move the paddle towards the ball's
column), written as DQN-Replay logs and converted with ``prepare-data``. Behaviour cloning cannot beat the policy
that made its data, so the JOWA check's uniformly random data would prove nothing for MTBC; the noisy expert's
mode is the expert, which BC must recover to score well above random. Scaled-QL trains on the same data.
``run_baseline_finetune`` is ``jowa finetune --algo mtbc|scaled-ql``: the paper's protocol with periodic greedy
evaluations and the best snapshot.
MTBC reads tokens from a small tokenizer trained on the data (the JOWA check's ``CATCH_TOKENIZER``); Scaled-QL
reads 4-frame stacks. Both are evaluated greedily (``jowa evaluate``'s protocol) on fresh episodes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from jowa_core import games as _games
from jowa_core.config import from_dict
from jowa_core.data.convert import PrepareOptions, prepare_data
from jowa_core.data.dopamine_writer import LoggedReplayWriter
from jowa_core.data.tokenize import tokenize_stores
from jowa_core.envs import catch
from jowa_core.evaluation.envs import EvalSettings
from jowa_core.evaluation.runner import evaluate
from jowa_core.progress import Reporter, make_reporter
from jowa_core.recipes.learning import CATCH_TOKENIZER, EVAL_SEED, GAME
from jowa_core.train.algos import finetune_baseline, finetune_config, load_baseline_config, pretrain_baseline
from jowa_core.train.tokenizer import TokenizerTrainConfig, train_tokenizer

DATA_EPSILON = 0.5  # the noisy expert's share of uniformly random actions
TRANSITIONS, TOKENIZER_STEPS, EVAL_EPISODES = 5_000, 100, 16
# Small models and Catch's scale; everything else is the algorithm's defaults (docs/baselines.md). Measured on seed 0
# (2 shared CPU cores): MTBC reaches 9.3 catches of 10 after 300 steps (2.6 after 150); Scaled-QL 8.7 after 2,000
# steps at lr 3e-3 (3.1 after 1,000; 1.6, always NOOP, after 600 at 1e-3 or 3e-3): C51 with unit-norm features
# learns the small action gaps of Catch's values slowly.
CATCH_CONFIGS: dict[str, dict[str, Any]] = {
    "mtbc": {
        "model": {"preset": "tiny", "obs_vocab": CATCH_TOKENIZER["model"]["vocab_size"],
                  "max_tasks": _games.get(GAME).task_id + 1, "attn_pdrop": 0.0, "embed_pdrop": 0.0,
                  "resid_pdrop": 0.0, "q_dropout": 0.0},
        "data": {"observations": "tokens", "seq_len": 8, "stride": 2, "num_workers": 0},
        "train": {"batch_size": 32, "steps": 300, "lr": 1e-3},
    },
    "scaled-ql": {
        "model": {"preset": "tiny", "v_min": -1.0, "v_max": 4.0},
        "data": {"num_workers": 0},
        "train": {"batch_size": 32, "steps": 2000, "lr": 3e-3, "gamma": 0.9, "target_update_every": 50},
    },
}
COMMON_TRAIN = {"log_every": 50, "save_every": 10_000, "tensorboard": False, "device": "cpu"}


def noisy_expert_logs(out_root: Path, transitions: int, epsilon: float = DATA_EPSILON, seed: int = 0) -> list[float]:
    """DQN-Replay logs of Catch played by the noisy expert under ``out_root/Catch/1/replay_logs``; returns the
    finished episodes' returns."""
    env = catch.CatchEnv(GAME, seed=seed)
    rng = np.random.default_rng([seed, 1])
    returns, ret = [], 0.0
    with LoggedReplayWriter(out_root / GAME / "1" / "replay_logs", transitions, fsync=False) as writer:
        obs = env.reset()
        for _ in range(transitions):
            if rng.random() < epsilon:
                action = int(rng.integers(env.num_actions))
            else:  # minimal actions: 0 NOOP, 1 RIGHT, 2 LEFT
                d = env.ball_col - env.paddle
                action = 0 if d == 0 else (1 if d > 0 else 2)
            next_obs, reward, game_over, truncated = env.step(action)
            writer.add(obs, action, reward, env.terminal)
            ret += reward
            if game_over or truncated:
                returns.append(ret)
                ret, obs = 0.0, env.reset()
            else:
                obs = next_obs
        writer.log_final_buffer()
    return returns


def mean_ci(returns: list[float]) -> dict[str, Any]:
    """Mean, standard error and a normal 95% interval of episode returns."""
    x = np.asarray(returns, dtype=np.float64)
    sem = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0
    mean = float(x.mean()) if len(x) else float("nan")
    return {"mean": mean, "sem": sem, "ci95": [mean - 1.96 * sem, mean + 1.96 * sem], "episodes": len(x)}


def run_baseline_check(out: str | Path, algos: tuple[str, ...] = ("mtbc", "scaled-ql"), seed: int = 0,
                       transitions: int = TRANSITIONS, steps: int | None = None, eval_episodes: int = EVAL_EPISODES,
                       reporter: Reporter | None = None) -> dict[str, Any]:
    """Data, (tokenizer,) training and greedy evaluation of each baseline on Catch under ``out``; returns (and
    writes to ``out/summary.json``) mean returns with 95% CIs next to the random policy's exact expectation."""
    reporter = reporter or make_reporter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data_returns = noisy_expert_logs(out / "raw", transitions, seed=seed)
    prepare_data(PrepareOptions(source=str(out / "raw"), out=str(out / "data"), games=[GAME], seed=seed, workers=1),
                 reporter)
    timings["data_s"] = time.perf_counter() - t0
    results: dict[str, Any] = {}
    for algo in algos:
        t0 = time.perf_counter()
        tokenizer = None
        if algo == "mtbc":
            tokenizer = out / "tokenizer"
            tok_cfg = from_dict(TokenizerTrainConfig, {**CATCH_TOKENIZER, "steps": TOKENIZER_STEPS, "seed": seed})
            train_tokenizer(tok_cfg, out / "data", tokenizer, reporter=reporter)
            tokenize_stores(out / "data", tokenizer, batch_size=512, device="cpu", reporter=reporter)
        preset = CATCH_CONFIGS[algo]
        train = {**preset["train"], **COMMON_TRAIN, "seed": seed, **({"steps": steps} if steps else {})}
        cfg = load_baseline_config(algo, None, [], None)
        cfg = from_dict(type(cfg), {"model": preset["model"], "data": {**preset["data"], "path": str(out / "data")},
                                    "train": train})
        run = out / algo
        summary = pretrain_baseline(algo, cfg, str(run), reporter=reporter)
        timings[f"{algo}_train_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = evaluate(run, tokenizer, [GAME], episodes=eval_episodes, settings=EvalSettings(),
                       seed=EVAL_SEED + 1000 * int(seed), device="cpu", out_json=out / f"{algo}.json",
                       reporter=reporter)
        timings[f"{algo}_evaluate_s"] = time.perf_counter() - t0
        results[algo] = {**mean_ci(res["games"][GAME]["raw_scores"]),
                         "parameters": summary["trainable_parameters"], "steps": summary["step"]}
    info = _games.get(GAME)
    summary = {"game": GAME, "seed": int(seed), "transitions": int(transitions), "data_epsilon": DATA_EPSILON,
               "random": {"mean": info.random.value if info.random else None, "source": "exact expectation"},
               "data": mean_ci(data_returns), **results, "timings": {k: round(v, 1) for k, v in timings.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    reporter.log(f"{GAME}: random {summary['random']['mean']:.2f}, data {summary['data']['mean']:.2f}, "
                 + ", ".join(f"{a} {results[a]['mean']:.2f}" for a in algos))
    return summary


def run_baseline_finetune(algo: str, pretrained: str | Path, tokenizer: str | Path | None, game: str,
                          data: str | Path, out: str | Path, overrides: list[str] | None = None,
                          resume: bool = False, reporter: Reporter | None = None) -> dict[str, Any]:
    """``jowa finetune --algo mtbc|scaled-ql``: the paper's fine-tuning protocol (``train.algos.FINETUNE_TRAIN``)
    with a greedy evaluation of ``game`` every ``eval.every`` steps (``EvalProtocol``); ``out/best`` is the best
    snapshot, ``out/evals/step_XXXXXXXX.json`` each evaluation's scores."""
    cfg, protocol = finetune_config(algo, pretrained, game, data, overrides or [])
    if algo == "mtbc" and not tokenizer:
        raise ValueError("--algo mtbc evaluates on observation tokens: pass --tokenizer")
    name = _games.get(game).name
    out = Path(out)

    def evaluator(checkpoint: Path, step: int) -> dict[str, Any]:
        res = evaluate(checkpoint, tokenizer or None, [name], episodes=protocol.episodes,
                       settings=EvalSettings(max_frames=protocol.max_frames), seed=protocol.seed,
                       device=cfg.train.device, out_json=out / "evals" / f"step_{step:08d}.json")
        return {"score": res["games"][name]["mean"]}

    return finetune_baseline(algo, cfg, pretrained, str(out), resume=resume, reporter=reporter,
                             evaluator=evaluator, eval_every=protocol.every)
