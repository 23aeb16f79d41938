"""The online learning check on Catch: does pretraining help online fine-tuning with the same environment steps?

From random-policy Catch data (as ``jowa learning-check``): a small tokenizer, then two pretrained world-action
models, JOWA's (world + TD + CQL, both stages) and WPT's reward-free one (world losses on observations and
termination only; the Q head stays at its initialisation). Each seed then fine-tunes online, with the same
environment steps and updates, (a) a randomly initialised model of the same architecture ("scratch"),
(b) the reward-free model and (c) the JOWA model, and evaluates greedy on Q̂ (the paper's protocol). Results: per
arm, the mean final return over seeds with a 95% interval (t over seeds) and the per-seed values; written to
``<out>/summary.json`` and recorded in docs/results.md.

    python -m jowa_core.recipes.online_check runs/online-check [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from jowa_core.config import from_dict
from jowa_core.constants import SUMMARY_FILE
from jowa_core.data.collect import collect
from jowa_core.data.convert import PrepareOptions, prepare_data
from jowa_core.data.tokenize import tokenize_stores
from jowa_core.envs.atari import AtariSettings
from jowa_core.progress import make_reporter
from jowa_core.recipes.learning import CATCH_PRETRAIN, CATCH_TOKENIZER, GAME
from jowa_core.recipes.online import run_online
from jowa_core.train.online import OnlineConfig
from jowa_core.train.pretrain import PretrainConfig, pretrain
from jowa_core.train.tokenizer import TokenizerTrainConfig, train_tokenizer

TRANSITIONS, TOKENIZER_STEPS, STAGE1_STEPS, STAGE2_STEPS = 10_000, 100, 300, 700
# Online fine-tuning at CPU scale: Catch's settings of the learning check (discount, target updates) and a short
# epsilon schedule; every arm gets the same environment steps and updates.
ONLINE: dict[str, Any] = {
    "env_steps": 1000, "num_envs": 4, "learning_starts": 200, "utd": 0.25, "batch_size": 32, "lr": 5e-4,
    "world_weight": 1.0, "gamma": 0.9, "target_update_every": 25, "eps_start": 1.0, "eps_end": 0.05,
    "eps_decay_steps": 600, "sticky_actions": 0.0, "eval_every": 500, "eval_episodes": 16, "eval_backend": "loop",
    "save_every": 0, "log_every": 50, "device": "cpu",
}
ARMS = ("scratch", "reward-free", "jowa")


def pretrain_models(out: Path, arms: tuple[str, ...], seed: int = 0, reporter=None) -> dict[str, Path]:
    """Random Catch data -> tokenizer -> tokens -> the JOWA and the reward-free pretrained models."""
    if not (out / "data" / f"{GAME}.zarr").exists():
        collect([GAME], [1], out / "raw", num_steps=TRANSITIONS, capacity=TRANSITIONS, seed=seed, workers=1,
                settings=AtariSettings(sticky_actions=0.0), reporter=reporter)
        prepare_data(PrepareOptions(source=str(out / "raw"), out=str(out / "data"), games=[GAME], seed=seed,
                                    workers=1), reporter)
    tok_cfg = from_dict(TokenizerTrainConfig, {**CATCH_TOKENIZER, "steps": TOKENIZER_STEPS, "seed": seed})
    train_tokenizer(tok_cfg, out / "data", out / "tokenizer", resume=(out / "tokenizer").exists(), reporter=reporter)
    tokenize_stores(out / "data", out / "tokenizer", batch_size=512, device="cpu", reporter=reporter)
    runs = {"jowa": (STAGE1_STEPS, STAGE2_STEPS, False), "reward-free": (STAGE1_STEPS + STAGE2_STEPS, 0, True)}
    for name, (s1, s2, reward_free) in runs.items():
        if name not in arms and not (name == "jowa" and "scratch" in arms):  # scratch copies jowa's architecture
            continue
        cfg = from_dict(PretrainConfig, {
            **CATCH_PRETRAIN, "data": {**CATCH_PRETRAIN["data"], "path": str(out / "data")},
            "train": {**CATCH_PRETRAIN["train"], "stage1_steps": s1, "stage2_steps": s2, "seed": seed,
                      "reward_free": reward_free}})
        if not (out / f"pretrain-{name}" / "final").exists():
            pretrain(cfg, out / f"pretrain-{name}", resume=(out / f"pretrain-{name}").exists(), reporter=reporter)
    return {"jowa": out / "pretrain-jowa", "reward-free": out / "pretrain-reward-free", "tokenizer": out / "tokenizer"}


def run_online_check(out: str | Path, seeds: tuple[int, ...] = (0, 1, 2), arms: tuple[str, ...] = ARMS,
                     reporter=None) -> dict[str, Any]:
    reporter = reporter or make_reporter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    models = pretrain_models(out, arms, reporter=reporter)
    finals: dict[str, list[float]] = {a: [] for a in arms}
    curves: dict[str, list[list[float]]] = {a: [] for a in arms}
    for seed in seeds:
        for arm in arms:
            run = out / f"online-{arm}-seed{seed}"
            cfg = from_dict(OnlineConfig, {**ONLINE, "seed": seed, "from_scratch": arm == "scratch"})
            src = models["jowa"] if arm == "scratch" else models[arm]  # scratch: the same architecture
            done = run / SUMMARY_FILE  # a finished run is read back, not resumed (its config may predate new keys)
            s = json.loads(done.read_text()) if done.exists() else run_online(
                cfg, src, models["tokenizer"], GAME, run, resume=run.exists(), reporter=reporter)
            finals[arm].append(s["evals"][-1]["mean"])
            curves[arm].append([e["mean"] for e in s["evals"]])
            reporter.log(f"seed {seed} {arm}: final greedy return {finals[arm][-1]:.2f}")
    summary = {"game": GAME, "seeds": list(seeds), "online": ONLINE,
               "pretrain": {"transitions": TRANSITIONS, "stage1": STAGE1_STEPS, "stage2": STAGE2_STEPS},
               "arms": {a: {**_ci(finals[a]), "per_seed": finals[a], "curves": curves[a]} for a in arms},
               "total_s": round(time.perf_counter() - t0, 1)}
    for a in (a for a in ("reward-free", "jowa") if a in arms and "scratch" in arms):
        summary["arms"][a]["minus_scratch"] = _ci(list(np.subtract(finals[a], finals["scratch"])))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# Student's t 0.975 quantiles by degrees of freedom (scipy is only a dev dependency); 1.96 beyond 10
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _ci(x: list[float]) -> dict[str, Any]:
    """Mean and a 95% t interval over seeds."""
    a = np.asarray(x, np.float64)
    if len(a) < 2:
        return {"mean": float(a.mean()), "ci95": None}
    half = T975.get(len(a) - 1, 1.96) * float(a.std(ddof=1)) / float(np.sqrt(len(a)))
    return {"mean": float(a.mean()), "ci95": [float(a.mean()) - half, float(a.mean()) + half]}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--arms", default=",".join(ARMS), help="scratch (random init), reward-free (WPT world-model "
                   "pretraining), jowa (world + TD + CQL pretraining)")
    args = p.parse_args()
    summary = run_online_check(args.out, tuple(int(s) for s in args.seeds.split(",")), tuple(args.arms.split(",")))
    print(json.dumps(summary, indent=2))
