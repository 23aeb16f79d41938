"""`jowa learning-check --suite minatar`: JOWA's three claims at CPU scale on MinAtar (Young & Tian 2019).

1. **Multi-game pretraining** (paper Table 2): one tiny world-action model pretrained on four MinAtar games plays
   each of them, compared with random play and the data's own return.
2. **Planning** (Tables 4/16): each of the four games greedy on Q̂ and with beam search (K = the game's width, H=2).
3. **Transfer** (Table 3): the fifth game is held out. The pretrained model is fine-tuned on ``heldout_transitions``
   transitions of it, against the same fine-tuning from a random initialisation (``from_scratch``), over several
   seeds, reported as DNS-style scores by ``jowa report``.

Data (``jowa collect`` format, MinAtar's sticky actions 0.1 as evaluated): a DQN-Replay-like mixture of policies of
mixed quality for every game, like the runs of a DQN agent that improves: equal shares of the steps from each of
``DATA_POLICIES`` (run k plays the k-th), the uniform random policy and the emulator-lookahead policy with a falling
epsilon (``lookahead:EPS``; ``MinAtarEnv.lookahead_action``). The tokenizer is trained on the four pretraining games
only. Before fine-tuning it is adapted to the held-out game on the fine-tuning transitions' frames
(``TOKENIZER_ADAPT``; the paper trains the tokenizer throughout fine-tuning, which is ~12x slower here) and then
frozen; both fine-tuning arms use the adapted tokenizer, so they differ only in the world-action model's
initialisation. Every setting is a constant below;
``docs/results.md`` has the numbers.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jowa_core import games as _games
from jowa_core.config import from_dict
from jowa_core.data.collect import collect, write_scores_csv
from jowa_core.data.convert import PrepareOptions, prepare_data
from jowa_core.data.store import open_store
from jowa_core.data.tokenize import tokenize_stores
from jowa_core.envs.atari import AtariSettings
from jowa_core.envs.minatar import STICKY_ACTIONS, cell_values
from jowa_core.evaluation.agent import AgentSettings
from jowa_core.evaluation.envs import EvalSettings
from jowa_core.evaluation.metrics import normalized
from jowa_core.evaluation.report import build_report, load_results
from jowa_core.evaluation.runner import evaluate
from jowa_core.models.tokenizer import load_tokenizer
from jowa_core.progress import Reporter, make_reporter
from jowa_core.recipes.learning import episode_stats, versus_greedy
from jowa_core.train.finetune import FinetuneConfig, finetune
from jowa_core.train.pretrain import PretrainConfig, pretrain
from jowa_core.train.tokenizer import TokenizerTrainConfig, train_tokenizer

PRETRAIN_GAMES: tuple[str, ...] = ("MinAtarAsterix", "MinAtarFreeway", "MinAtarSeaquest", "MinAtarSpaceInvaders")
# Breakout is held out: its actions (NOOP, LEFT, RIGHT) all occur in the pretraining games, as the paper's held-out
# games' do in its 15, and it is the cheapest game to evaluate.
HELD_OUT = "MinAtarBreakout"
# Run k of each game plays DATA_POLICIES[k - 1] for an equal share of the steps. Run 2's "random + lookahead:0.5"
# mixture (docs/results.md) was too close to uniform for anything to learn from its actions: the lookahead policy
# has a unique best action in only 1-37% of states (ties are broken at random), so a behaviour-cloning model could
# not predict the data's actions (loss at log(#actions)) and Q-hat did not rank them.
DATA_POLICIES: tuple[str, ...] = ("random", "lookahead:0.5", "lookahead:0.2", "lookahead:0.05")
# A tokenizer like Catch's (no attention or ResNet blocks in the encoder, codebook restarts) with a larger codebook:
# a 14-pixel token patch spans parts of up to four MinAtar cells of up to 10 gray levels.
TOKENIZER: dict[str, Any] = {
    "model": {"ch": 16, "num_res_blocks": 0, "embed_dim": 32, "z_channels": 32, "vocab_size": 256,
              "attn_resolutions": [], "encoder_mid": False},
    "batch_size": 32, "lr": 1e-3, "restart_dead_codes": 5, "log_every": 50, "save_every": 100_000,
    "grid_every": 100_000, "heldout_frames": 32, "grid_frames": 8, "num_workers": 0, "device": "cpu",
}
MAX_TASKS = max(_games.get(g).task_id for g in _games.MINATAR_GAMES) + 1
# The learning check's Catch settings (no dropout, world lr twice Q's, gamma 0.9) with a C51 support for MinAtar's
# returns (rewards of 1 at most every step: Q <= 1 / (1 - 0.9) = 10).
PRETRAIN: dict[str, Any] = {
    "model": {"preset": "tiny", "obs_vocab": 256, "max_tasks": MAX_TASKS, "attn_pdrop": 0.0, "embed_pdrop": 0.0,
              "resid_pdrop": 0.0, "v_min": -1.0, "v_max": 10.0},
    "data": {"observations": "tokens", "seq_len": 8, "stride": 1, "num_workers": 0},
    "train": {"batch_size": 32, "lr_world_stage1": 2e-3, "lr_world_stage2": 1e-3, "lr_q": 5e-4, "gamma": 0.9,
              "world_weight_stage2": 1.0, "target_update_every": 25, "log_every": 100, "save_every": 100_000,
              "tensorboard": False, "device": "cpu"},
}
# Adapting the pretraining tokenizer to the held-out game (run 3, docs/results.md): frozen, it read back 0.007 of
# Breakout's objects (31 occupied cells per frame, mostly bricks, which no pretraining game has); 300 steps from its
# weights at the paper's tokenizer lr, without codebook restarts (so the pretrained model's codes keep their
# meaning), read back 0.89 (75 s).
TOKENIZER_ADAPT: dict[str, Any] = {"steps": 300, "lr": 1e-4, "restart_dead_codes": 0}
# Fine-tuning: real data only (stage 1; the synthetic stage 2 costs beam searches the CPU budget does not have), the
# frozen tokenizer's precomputed tokens, the same learning rate and gamma for both arms (a from-scratch model needs a
# rate this high to learn anything in a few hundred steps; 5e-5, the paper's, would decide the comparison).
FINETUNE: dict[str, Any] = {
    "stage2_steps": 0, "batch_size": 32, "lr": 5e-4, "gamma": 0.9, "target_update_every": 25, "seq_len": 8,
    "stride": 1, "eval_episodes": 0, "train_tokenizer": False, "device": "cpu", "log_every": 100,
    "save_every": 100_000, "amp": "off",
}
# Default scale (docs/results.md, run 2). The tokenizer needs about 1,000 steps to leave the empty-screen plateau
# of its L1 loss; with 300 (the reduced run) it drew no object at all and nothing downstream learned.
TRANSITIONS, HELDOUT_TRANSITIONS, TOKENIZER_STEPS = 10_000, 5_000, 1500
STAGE1_STEPS, STAGE2_STEPS, FINETUNE_STEPS, FINETUNE_SEEDS, EVAL_EPISODES = 1000, 4000, 1000, 3, 16
MAX_EVAL_STEPS = 2500  # agent steps per episode, data and evaluation (Freeway's own length; others rarely get there)
FIDELITY_FRAMES = 512  # frames per store (its last ones) on which the tokenizer's object fidelity is measured
EVAL_SEED = 2_000_000  # evaluation episodes use seeds EVAL_SEED + 1000 * seed + e, never the data's


def _collect_mixture(games: Sequence[str], out: Path, transitions: int, seed: int, max_steps: int,
                     reporter: Reporter) -> list:
    """An equal share of the steps from each of ``DATA_POLICIES`` (run k plays the k-th) for each game, episodes cut
    at ``max_steps`` as in the evaluation; the summaries."""
    settings = AtariSettings(sticky_actions=STICKY_ACTIONS, max_episode_steps=max_steps)
    share = max(transitions // len(DATA_POLICIES), 50)
    summaries = []
    for run, policy in enumerate(DATA_POLICIES, start=1):
        # a buffer that never wraps (each step adds at most 3 padding rows), so every step is kept: with capacity =
        # steps the buffer wraps once and prepare-data keeps only its last lap (docs/results.md)
        summaries += collect(list(games), [run], out, num_steps=share, capacity=4 * share + 4, policy=policy,
                             seed=seed, workers=1, settings=settings, reporter=reporter)
    return summaries


def _eval(ckpt: Path, tokenizer: Path, games: Sequence[str], agent: AgentSettings, episodes: int, seed: int,
          path: Path, reporter: Reporter, max_steps: int) -> dict[str, Any]:
    """``evaluate`` with MinAtar's sticky actions, one frame per step, at most ``max_steps`` steps per episode."""
    settings = EvalSettings(sticky_actions=STICKY_ACTIONS, frame_skip=1, max_frames=max_steps)
    return evaluate(ckpt, tokenizer, list(games), episodes=episodes, settings=settings, seed=seed, device="cpu",
                    out_json=path, reporter=reporter, agent=agent)


def object_fidelity(reconstruct: Any, frames: np.ndarray) -> dict[str, float]:
    """How much of the objects a tokenizer keeps: ``reconstruct`` maps (N, 84, 84) uint8 frames to (N, 1, 84, 84)
    float reconstructions in [0, 1]; each cell of the reconstruction is read as the nearest gray level of the
    frames. ``objects``: the fraction of occupied cells read back as their own level (a tokenizer that draws an
    empty screen scores 0); ``empty``: the fraction of empty cells read back empty; ``cells_per_frame``: occupied
    cells per frame."""
    truth = cell_values(frames).astype(np.float64)  # (N, 10, 10)
    rec = cell_values(np.asarray(reconstruct(frames))[:, 0] * 255.0)  # (N, 10, 10)
    levels = np.unique(np.concatenate([[0.0], truth.ravel()]))
    read = levels[np.abs(rec[..., None] - levels).argmin(-1)]
    occupied = truth > 0
    return {"objects": float((read == truth)[occupied].mean()) if occupied.any() else float("nan"),
            "empty": float((read == 0)[~occupied].mean()) if (~occupied).any() else float("nan"),
            "cells_per_frame": float(occupied.sum() / len(frames))}


def _fidelity(tok: Path, stores: Sequence[Path], frames: int) -> dict[str, dict[str, float]]:
    """``object_fidelity`` of the tokenizer at ``tok`` on the last ``frames`` frames of each store."""
    model = load_tokenizer(tok, device="cpu")
    out = {}
    for path in stores:
        st = open_store(path)
        n = min(frames, st.num_steps)
        with torch.no_grad():
            out[st.game] = object_fidelity(model.reconstruct,
                                           np.array(st.frames.read_range(st.num_steps - n, st.num_steps)))
    return out


def _seed_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean over seeds and a t-based 95% interval (normal beyond the table)."""
    x = np.asarray(values, dtype=np.float64)
    t95 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}.get(len(x), 1.96)
    half = float(t95 * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    mean = float(x.mean())
    return {"mean": mean, "ci95": [mean - half, mean + half], "seeds": len(x), "values": [float(v) for v in x]}


def run_minatar_suite(out: str | Path, seed: int = 0, transitions: int = TRANSITIONS,
                      heldout_transitions: int = HELDOUT_TRANSITIONS, tokenizer_steps: int = TOKENIZER_STEPS,
                      stage1_steps: int = STAGE1_STEPS, stage2_steps: int = STAGE2_STEPS,
                      finetune_steps: int = FINETUNE_STEPS, finetune_seeds: int = FINETUNE_SEEDS,
                      adapt_steps: int = TOKENIZER_ADAPT["steps"], eval_episodes: int = EVAL_EPISODES,
                      max_eval_steps: int = MAX_EVAL_STEPS,
                      reporter: Reporter | None = None) -> dict[str, Any]:
    """Run the suite under ``out``; returns (and writes to ``out/summary.json``) every score, with the report in
    ``out/report``. Re-running continues where it stopped (each stage resumes or skips)."""
    reporter = reporter or make_reporter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def stage(name: str, message: str) -> float:
        reporter.log(f"[{name}] {message}")
        return time.perf_counter()

    t0 = stage("collect", f"{len(PRETRAIN_GAMES)} games x {transitions} steps + {HELD_OUT} x {heldout_transitions}: "
                          f"equal shares of {', '.join(DATA_POLICIES)}, sticky actions {STICKY_ACTIONS}")
    data = _collect_mixture(PRETRAIN_GAMES, out / "raw", transitions, seed, max_eval_steps, reporter)
    held = _collect_mixture([HELD_OUT], out / "raw-heldout", heldout_transitions, seed, max_eval_steps, reporter)
    write_scores_csv(data + held, out / "data.csv", "data (mixture)")
    timings["collect_s"] = time.perf_counter() - t0

    t0 = stage("prepare-data", "logs -> Zarr stores")
    prepare_data(PrepareOptions(source=str(out / "raw"), out=str(out / "data"), games=list(PRETRAIN_GAMES),
                                seed=seed, workers=1), reporter)
    prepare_data(PrepareOptions(source=str(out / "raw-heldout"), out=str(out / "data-heldout"), games=[HELD_OUT],
                                seed=seed, workers=1), reporter)
    timings["prepare_data_s"] = time.perf_counter() - t0

    t0 = stage("train-tokenizer", f"{tokenizer_steps} steps on the {len(PRETRAIN_GAMES)} pretraining games")
    tok = out / "tokenizer"
    tok_cfg = from_dict(TokenizerTrainConfig, {**TOKENIZER, "steps": tokenizer_steps, "seed": seed})
    train_tokenizer(tok_cfg, out / "data", tok, resume=tok.exists(), reporter=reporter)
    tokenize_stores(out / "data", tok, batch_size=512, device="cpu", reporter=reporter)
    fidelity = _fidelity(tok, [out / "data" / f"{g}.zarr" for g in PRETRAIN_GAMES]
                         + [out / "data-heldout" / f"{HELD_OUT}.zarr"], FIDELITY_FRAMES)
    reporter.log("[train-tokenizer] occupied cells read back: " + ", ".join(
        f"{g} {f['objects']:.2f}" for g, f in fidelity.items()))
    timings["tokenizer_s"] = time.perf_counter() - t0

    t0 = stage("pretrain", f"tiny preset on {', '.join(PRETRAIN_GAMES)}: stage 1 {stage1_steps}, stage 2 "
                           f"{stage2_steps} steps")
    pre_cfg = from_dict(PretrainConfig, {
        **PRETRAIN, "data": {**PRETRAIN["data"], "path": str(out / "data")},
        "train": {**PRETRAIN["train"], "stage1_steps": stage1_steps, "stage2_steps": stage2_steps, "seed": seed}})
    pretrain(pre_cfg, out / "pretrain", resume=(out / "pretrain").exists(), reporter=reporter)
    timings["pretrain_s"] = time.perf_counter() - t0

    scores = out / "scores"
    pretrained: dict[str, Any] = {}
    for name, agent in (("greedy", AgentSettings(plan=False)), ("plan", AgentSettings(plan=True, horizon=2))):
        t0 = stage("evaluate", f"pretrained, {name}: {eval_episodes} episodes per game")
        res = _eval(out / "pretrain", tok, PRETRAIN_GAMES, agent, eval_episodes, EVAL_SEED + 1000 * seed,
                    scores / f"JOWA-tiny-multigame-{name}.json", reporter, max_eval_steps)
        pretrained[name] = {g: episode_stats(res["games"][g]["raw_scores"]) for g in PRETRAIN_GAMES}
        timings[f"evaluate_{name}_s"] = time.perf_counter() - t0

    transfer = _transfer(out, tok, seed, finetune_steps, finetune_seeds, adapt_steps, eval_episodes, max_eval_steps,
                         reporter, timings)

    report = build_report(load_results([out / "data.csv", scores / "JOWA-tiny-multigame-greedy.json",
                                        scores / "JOWA-tiny-multigame-plan.json", out / "finetune.csv"]),
                          out / "report", published="none", reps=1000, seed=seed)
    summary = _summary(out, seed, data, held, pretrained, transfer, report, fidelity, timings, t_all,
                       {"transitions": transitions, "heldout_transitions": heldout_transitions,
                        "tokenizer_steps": tokenizer_steps, "pretrain_steps": [stage1_steps, stage2_steps],
                        "finetune_steps": finetune_steps, "finetune_seeds": finetune_seeds, "adapt_steps": adapt_steps,
                        "eval_episodes": eval_episodes, "max_eval_steps": max_eval_steps})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _transfer(out: Path, tok: Path, seed: int, steps: int, seeds: int, adapt_steps: int, episodes: int,
              max_eval_steps: int, reporter: Reporter, timings: dict[str, float]) -> dict[str, Any]:
    """Adapt the tokenizer ``tok`` to the held-out game (``TOKENIZER_ADAPT``, ``adapt_steps`` steps) and tokenise
    its store; fine-tune the pretrained model and a from-scratch one on it, ``seeds`` seeds each; greedy evaluation
    of each final model.
    Writes ``out/finetune.csv`` (every episode, seeds pooled, per arm)."""
    t0 = time.perf_counter()
    reporter.log(f"[finetune] adapting the tokenizer to {HELD_OUT}: {adapt_steps} steps")
    held_tok = out / "tokenizer-heldout"
    adapt = from_dict(TokenizerTrainConfig, {**TOKENIZER, **TOKENIZER_ADAPT, "steps": adapt_steps, "init": str(tok),
                                             "seed": seed})
    train_tokenizer(adapt, out / "data-heldout", held_tok, resume=held_tok.exists(), reporter=reporter)
    # overwrite: tokens of a folder made before the adaptation (or by an interrupted one) are re-encoded (seconds)
    tokenize_stores(out / "data-heldout", held_tok, batch_size=512, device="cpu", overwrite=True, reporter=reporter)
    fidelity = _fidelity(held_tok, [out / "data-heldout" / f"{HELD_OUT}.zarr"], FIDELITY_FRAMES)[HELD_OUT]
    reporter.log(f"[finetune] occupied cells read back by the adapted tokenizer: {HELD_OUT} {fidelity['objects']:.2f}")
    timings["tokenizer_adapt_s"] = time.perf_counter() - t0
    rows: list[tuple[str, str, float]] = []
    arms: dict[str, Any] = {}
    for arm, scratch in (("pretrained", False), ("scratch", True)):
        per_seed = []
        t0 = time.perf_counter()
        for s in range(seed, seed + seeds):
            run = out / "finetune" / f"{arm}-{s}"
            reporter.log(f"[finetune] {HELD_OUT}, {arm}, seed {s}: {steps} steps")
            cfg = from_dict(FinetuneConfig, {**FINETUNE, "stage1_steps": steps, "from_scratch": scratch, "seed": s})
            if (run / "summary.json").is_file():
                _check_tokenizer(run, held_tok)
            else:
                finetune(cfg, out / "pretrain", held_tok, HELD_OUT, out / "data-heldout", run,
                         resume=run.exists(), reporter=reporter)
            res = _eval(run / "final", held_tok, [HELD_OUT], AgentSettings(plan=False), episodes,
                        EVAL_SEED + 1000 * s + 500, out / "scores" / f"finetune-{arm}-{s}.json", reporter,
                        max_eval_steps)
            returns = res["games"][HELD_OUT]["raw_scores"]
            rows += [(f"JOWA-tiny fine-tuned ({arm})", HELD_OUT, float(r)) for r in returns]
            per_seed.append(episode_stats(returns)["mean"])
        arms[arm] = {"per_seed": _seed_ci(per_seed),
                     "dns": _seed_ci([float(normalized(m, HELD_OUT, "dqn")) for m in per_seed])}
        timings[f"finetune_{arm}_s"] = time.perf_counter() - t0
    with open(out / "finetune.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "game", "score"])
        w.writerows(rows)
    diff = np.subtract(arms["pretrained"]["per_seed"]["values"], arms["scratch"]["per_seed"]["values"])
    return {"game": HELD_OUT, "tokenizer": str(held_tok), "tokenizer_fidelity": fidelity, **arms,
            "pretrained_minus_scratch": _seed_ci(diff.tolist())}


def _check_tokenizer(run: Path, tok: Path) -> None:
    """A ValueError unless the finished fine-tuning ``run`` used the tokenizer ``tok`` (a run of a folder made
    before the tokenizer adaptation used the pretraining one)."""
    used = json.loads((run / "summary.json").read_text()).get("tokenizer", {}).get("source")
    if used != str(tok):
        raise ValueError(f"{run} was fine-tuned on the tokens of {used}, not of the adapted tokenizer {tok} (a run "
                         "from before the tokenizer adaptation); use a new --out")


def _summary(out: Path, seed: int, data: list, held: list, pretrained: dict[str, Any], transfer: dict[str, Any],
             report: dict[str, Any], fidelity: dict[str, Any], timings: dict[str, float], t_all: float,
             scale: dict[str, Any]) -> dict[str, Any]:
    per_game = {}
    for g in PRETRAIN_GAMES:
        info = _games.get(g)
        returns = [r for s in data if s["game"] == g for r in s["episode_returns"]]
        greedy, plan = pretrained["greedy"][g], pretrained["plan"][g]
        per_game[g] = {"random": info.random.value, "lookahead": info.dqn.value, "data": episode_stats(returns),
                       "greedy": greedy, "plan": plan, "plan_vs_greedy": versus_greedy(plan, greedy),
                       "dns_greedy": float(normalized(greedy["mean"], g, "dqn")),
                       "dns_plan": float(normalized(plan["mean"], g, "dqn"))}
    held_returns = [r for s in held for r in s["episode_returns"]]
    return {"suite": "minatar", "seed": int(seed), **scale, "pretrain_games": list(PRETRAIN_GAMES),
            "held_out": HELD_OUT, "data_policies": list(DATA_POLICIES),
            "sticky_actions": STICKY_ACTIONS, "tokenizer_fidelity": fidelity, "pretrained": per_game,
            "transfer": {**transfer, "data": episode_stats(held_returns),
                         "random": _games.get(HELD_OUT).random.value, "lookahead": _games.get(HELD_OUT).dqn.value},
            "timings": {k: round(v, 1) for k, v in timings.items()},
            "total_s": round(time.perf_counter() - t_all, 1), "report": str(out / "report"),
            "report_files": report.get("files")}
