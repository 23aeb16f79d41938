"""`make demo` / `jowa demo`: every stage that exists, end to end, on an embedded default, no downloads.

Stages so far: emulator data in DQN-Replay format (collect) → Zarr stores (prepare-data) → game-balanced
training segments (segment loader) → VQ-VAE tokenizer (train-tokenizer) → obs_tokens (tokenize) → two-stage
pretraining of a tiny world-action model (pretrain) → evaluation with beam-search planning in the emulator
(evaluate) → fine-tuning on a held-out game (finetune) → online fine-tuning on it in the emulator (finetune
--online) → the paper's baselines, MTBC and Scaled-QL, on the same stores (pretrain --algo, evaluate) → every store
and checkpoint checked in full (verify) → the report (HNS/IQM tables and plots next to the paper's published
numbers). Sized to finish in a few minutes on 2 CPU cores: the models are far smaller than
the paper's and the learning rates larger (10x), so that losses visibly fall in a few hundred steps.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from jowa_core.config import from_dict
from jowa_core.data.collect import collect
from jowa_core.data.convert import PrepareOptions, prepare_data
from jowa_core.data.segments import make_loader
from jowa_core.data.store import open_store
from jowa_core.data.tokenize import tokenize_stores
from jowa_core.evaluation.agent import AgentSettings
from jowa_core.evaluation.envs import EvalSettings
from jowa_core.evaluation.report import build_report, load_results
from jowa_core.evaluation.runner import evaluate
from jowa_core.progress import Reporter, make_reporter
from jowa_core.recipes.finetune import run_finetune
from jowa_core.recipes.online import run_online
from jowa_core.recipes.verify import verify
from jowa_core.train.algos import load_baseline_config, pretrain_baseline
from jowa_core.train.finetune import FinetuneConfig
from jowa_core.train.online import OnlineConfig
from jowa_core.train.pretrain import PretrainConfig, pretrain
from jowa_core.train.tokenizer import TokenizerTrainConfig, train_tokenizer

DEMO_GAMES = ("Pong", "SpaceInvaders")


# Demo-sized models: a 46k-parameter tokenizer (512 codes, restarted when unused: short runs collapse otherwise)
# and the tiny world-action preset.
DEMO_TOKENIZER = {
    "model": {"ch": 8, "num_res_blocks": 1, "embed_dim": 32, "z_channels": 32, "vocab_size": 512},
    "batch_size": 32, "lr": 1e-3, "restart_dead_codes": 25, "log_every": 25, "save_every": 125, "grid_every": 125,
    "heldout_frames": 32,
    "grid_frames": 8, "num_workers": 0,
}
FT_GAME = "Breakout"  # held out: not in the demo's pretraining games
DEMO_FINETUNE = {
    "stage1_steps": 60, "stage2_steps": 60, "batch_size": 16, "lr": 5e-4, "target_update_every": 30,
    "eval_episodes": 2, "eval_max_frames": 2000, "log_every": 20, "save_every": 0, "device": "cpu",
    "tokenizer_batch_size": 16,  # all parts are fine-tuned (paper), with a demo-sized tokenizer batch
}
DEMO_PRETRAIN = {
    "model": {"preset": "tiny", "obs_vocab": 512},
    "data": {"num_workers": 0},
    "train": {"batch_size": 16, "lr_world_stage1": 1e-3, "lr_world_stage2": 5e-4, "lr_q": 5e-4,
              "target_update_every": 50, "log_every": 25, "save_every": 125, "tensorboard": True},
}


def run_demo(out: str | Path, steps: int = 12_000, capacity: int = 4_000, reporter: Reporter | None = None,
             seed: int = 0, tokenizer_steps: int = 250, pretrain_steps: tuple[int, int] = (250, 250),
             eval_episodes: int = 2, eval_max_frames: int = 2000, ft_transitions: int = 2000) -> dict[str, Any]:
    reporter = reporter or make_reporter()
    out = Path(out)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    reporter.log(f"[1/12] collect: random policy, {steps} steps per game, DQN-Replay logs (capacity {capacity})")
    collected = collect(list(DEMO_GAMES), [1], out / "raw", num_steps=steps, capacity=capacity, seed=seed,
                        workers=2, reporter=reporter)
    timings["collect_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    reporter.log("[2/12] prepare-data: logs → Zarr stores")
    stores = prepare_data(PrepareOptions(source=str(out / "raw"), out=str(out / "data"), games=list(DEMO_GAMES),
                                         seed=seed, workers=2), reporter)
    timings["prepare_data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    reporter.log("[3/12] segment loader: game-balanced batches of 8-step segments")
    loader = make_loader(out / "data", batch_size=64, seed=seed)
    counts: dict[int, int] = {}
    for n_batches, batch in enumerate(loader, start=1):
        ids, c = np.unique(batch["game_id"].numpy(), return_counts=True)
        for i, k in zip(ids.tolist(), c.tolist(), strict=True):
            counts[i] = counts.get(i, 0) + k
        if n_batches == 20:
            break
    timings["loader_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    reporter.log(f"[4/12] train-tokenizer: {tokenizer_steps} steps of a demo-sized VQ-VAE")
    tok_cfg = from_dict(TokenizerTrainConfig, {**DEMO_TOKENIZER, "steps": tokenizer_steps, "seed": seed})
    tok_summary = train_tokenizer(tok_cfg, out / "data", out / "tokenizer", resume=True, reporter=reporter)
    timings["train_tokenizer_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    reporter.log("[5/12] tokenize: every frame -> 36 tokens, stored as obs_tokens")
    tokenize_stores(out / "data", out / "tokenizer", batch_size=512, device="cpu", reporter=reporter)
    timings["tokenize_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    s1, s2 = pretrain_steps
    reporter.log(f"[6/12] pretrain: tiny world-action model, stage 1 {s1} steps, stage 2 {s2} steps")
    pre_cfg = from_dict(PretrainConfig, {**DEMO_PRETRAIN, "data": {**DEMO_PRETRAIN["data"], "path": str(out / "data")},
                                         "train": {**DEMO_PRETRAIN["train"], "stage1_steps": s1, "stage2_steps": s2,
                                                   "seed": seed}})
    pre_summary = pretrain(pre_cfg, out / "pretrain", resume=True, reporter=reporter)
    timings["pretrain_s"] = time.perf_counter() - t0
    with open(out / "pretrain" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    first1 = next(r for r in rows if r["stage"] == "1")
    last1 = [r for r in rows if r["stage"] == "1"][-1]
    s2_rows = [r for r in rows if r["stage"] == "2"]
    pretrain_info = {
        "final": str(out / "pretrain" / "final"), "steps": pre_summary["step"],
        "world_obs_loss": [float(first1["world_obs"]), float(last1["world_obs"])],
        "td_loss": [float(s2_rows[0]["td"]), float(s2_rows[-1]["td"])] if s2_rows else None,
        "q_taken": float(s2_rows[-1]["q_taken"]) if s2_rows else None,
    }

    t0 = time.perf_counter()
    reporter.log(f"[7/12] evaluate: beam search (K=2, H=2) in the emulator, {eval_episodes} episodes per game, "
                 f"{eval_max_frames} frames each, all episodes batched")
    scores = evaluate(out / "pretrain", out / "tokenizer", list(DEMO_GAMES), episodes=eval_episodes,
                      settings=EvalSettings(max_frames=eval_max_frames), agent=AgentSettings(beam=2, horizon=2),
                      seed=seed, device="cpu", out_json=out / "scores.json", reporter=reporter)
    timings["evaluate_s"] = time.perf_counter() - t0
    eval_info = {"scores": str(out / "scores.json"), "env_steps_per_s": scores["throughput"]["env_steps_per_s"],
                 "mean_return": {g: v["mean"] for g, v in scores["games"].items()}}

    t0 = time.perf_counter()
    reporter.log(f"[8/12] finetune: held-out {FT_GAME} from {ft_transitions} transitions, stage 1 and stage 2 "
                 "(beam-search synthetic data, COMBO), evaluated at the end")
    collect([FT_GAME], [1], out / "raw_ft", num_steps=3 * ft_transitions, capacity=ft_transitions, seed=seed,
            workers=1, reporter=reporter)
    prepare_data(PrepareOptions(source=str(out / "raw_ft"), out=str(out / "ft_data"), games=[FT_GAME], seed=seed,
                                max_transitions=ft_transitions), reporter)
    tokenize_stores(out / "ft_data", out / "tokenizer", batch_size=512, device="cpu", reporter=reporter)
    ft_dir = out / "finetune"
    if (ft_dir / "summary.json").is_file():  # finished by an earlier run of the demo
        ft_summary = json.loads((ft_dir / "summary.json").read_text())
    else:  # an interrupted fine-tuning continues from its last checkpoint, if it wrote one
        resume = (ft_dir / "checkpoints").is_dir()
        if ft_dir.exists() and not resume:
            shutil.rmtree(ft_dir)
        ft_cfg = from_dict(FinetuneConfig, {**DEMO_FINETUNE, "seed": seed})
        ft_summary = run_finetune(ft_cfg, out / "pretrain", out / "tokenizer", FT_GAME,
                                  out / "ft_data" / f"{FT_GAME}.zarr", ft_dir, resume=resume, reporter=reporter)
    timings["finetune_s"] = time.perf_counter() - t0
    ft_evals = sorted((ft_dir / "evals").glob("step_*.json"))

    online_info = _online_stage(out, seed, reporter, timings)
    baseline_results = _baselines_stage(out, seed, eval_episodes, eval_max_frames, reporter, timings)
    verify_info = _verify_stage(out, reporter, timings)

    t0 = time.perf_counter()
    reporter.log("[12/12] report: HNS/DNS, mean/median/IQM with bootstrap CIs, next to the paper's published rows")
    results = [out / "scores.json"]
    if ft_evals:  # the report names a method after its file
        results.append(out / "JOWA-TINY-finetuned.json")
        shutil.copyfile(ft_evals[-1], results[-1])
    results += baseline_results
    rep = build_report(load_results(results), out / "report", published=True, reps=1000, seed=seed)
    timings["report_s"] = time.perf_counter() - t0

    per_game = []
    for name in DEMO_GAMES:
        s = open_store(out / "data" / f"{name}.zarr")
        returns = s.episode_returns()
        per_game.append({"game": name, "steps": s.num_steps, "episodes": s.num_episodes,
                         "mean_clipped_return": float(returns.mean()) if returns.size else None,
                         "segments_in_20_batches": counts.get(int(s.attrs["task_id"]), 0)})
    summary = {"games": per_game, "timings": timings, "collect": collected, "stores": stores,
               "tokenizer": {"final": tok_summary["final"], "metrics": tok_summary["metrics"]},
               "pretrain": pretrain_info, "evaluate": eval_info,
               "finetune": {"game": FT_GAME, "final": ft_summary.get("final"), "best": ft_summary.get("best")},
               "online": online_info, "baselines": [str(p) for p in baseline_results], "verify": verify_info,
               "report": {"out": str(out / "report"), "files": rep.get("files")}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


# The paper's baselines at demo size: MTBC on the demo's tokens, Scaled-QL on its frames (4-frame stacks).
DEMO_BASELINES: dict[str, dict[str, Any]] = {
    "mtbc": {"model": {"preset": "tiny", "obs_vocab": DEMO_TOKENIZER["model"]["vocab_size"]},
             "data": {"observations": "tokens", "num_workers": 0},
             "train": {"batch_size": 16, "steps": 150, "lr": 1e-3}},
    "scaled-ql": {"model": {"preset": "tiny"}, "data": {"num_workers": 0},
                  "train": {"batch_size": 16, "steps": 150, "lr": 1e-3, "target_update_every": 50}},
}
DEMO_ONLINE = {"env_steps": 240, "num_envs": 2, "learning_starts": 80, "utd": 0.5, "batch_size": 8,
               "eps_decay_steps": 200, "eval_every": 0, "eval_episodes": 1, "eval_max_frames": 1000, "save_every": 0,
               "log_every": 20, "device": "cpu"}


def _online_stage(out: Path, seed: int, reporter: Reporter, timings: dict[str, float]) -> dict[str, Any]:
    """[9/12] online fine-tuning of the pretrained model on the held-out game, in the emulator."""
    t0 = time.perf_counter()
    reporter.log(f"[9/12] finetune --online: {FT_GAME} in the emulator from the pretrained model, "
                 f"{DEMO_ONLINE['env_steps']} environment steps, replay store, greedy with decaying epsilon")
    run = out / "online"
    if (run / "summary.json").is_file():  # finished by an earlier run of the demo
        summary = json.loads((run / "summary.json").read_text())
    else:
        if run.exists():  # an interrupted online run starts again (it is short)
            shutil.rmtree(run)
        cfg = from_dict(OnlineConfig, {**DEMO_ONLINE, "seed": seed})
        summary = run_online(cfg, out / "pretrain", out / "tokenizer", FT_GAME, run, reporter=reporter)
    timings["online_s"] = time.perf_counter() - t0
    evals = summary.get("evals") or []
    return {"out": str(run), "env_steps": summary.get("env_steps"), "updates": summary.get("step"),
            "final": summary.get("final"), "eval_mean": evals[-1].get("mean") if evals else None}


def _baselines_stage(out: Path, seed: int, eval_episodes: int, eval_max_frames: int, reporter: Reporter,
                     timings: dict[str, float]) -> list[Path]:
    """[10/12] MTBC and Scaled-QL on the same stores, evaluated greedily with the same protocol; their JSONs."""
    t0 = time.perf_counter()
    reporter.log("[10/12] baselines: multi-task BC (tokens) and Scaled-QL (frames) on the same stores, greedy "
                 "evaluation with the same protocol")
    results = []
    for algo, preset in DEMO_BASELINES.items():
        run = out / f"baseline-{algo}"
        cfg = load_baseline_config(algo, None)
        cfg = from_dict(type(cfg), {"model": preset["model"], "data": {**preset["data"], "path": str(out / "data")},
                                    "train": {**preset["train"], "seed": seed, "log_every": 25, "save_every": 75,
                                              "tensorboard": False, "device": "cpu"}})
        pretrain_baseline(algo, cfg, str(run), resume=(run / "checkpoints").is_dir(), reporter=reporter)
        name = {"mtbc": "MTBC-TINY", "scaled-ql": "SQL-TINY"}[algo]
        evaluate(run, out / "tokenizer" if algo == "mtbc" else None, list(DEMO_GAMES), episodes=eval_episodes,
                 settings=EvalSettings(max_frames=eval_max_frames), agent=AgentSettings(plan=False), seed=seed,
                 device="cpu", out_json=out / f"{name}.json", reporter=reporter)
        results.append(out / f"{name}.json")
    timings["baselines_s"] = time.perf_counter() - t0
    return results


def _verify_stage(out: Path, reporter: Reporter, timings: dict[str, float]) -> dict[str, Any]:
    """[11/12] jowa verify: the stores (every chunk against its checksum) and the pretraining run, in full."""
    t0 = time.perf_counter()
    reporter.log("[11/12] verify: every store chunk against its checksum, every checkpoint against its sha256")
    reports = [verify(p, reporter=reporter) for p in (out / "data", out / "pretrain", out / "tokenizer")]
    for r in reports:
        if not r["ok"]:
            raise RuntimeError(f"jowa verify {r['path']}: {'; '.join(r['problems'])}")
    timings["verify_s"] = time.perf_counter() - t0
    return {r["path"]: {"ok": r["ok"], "checked": len(r["checked"]), "notes": r["notes"]} for r in reports}
