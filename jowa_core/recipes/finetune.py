"""Fine-tuning with periodic evaluation: ``train.finetune`` wired to the evaluation protocol (``jowa finetune``).

Training sits below evaluation in the layers, so the trainer takes the evaluation as a function; this recipe
builds it from the fine-tuning config's ``eval_*`` settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jowa_core import games
from jowa_core.devices import pick_device
from jowa_core.evaluation.agent import AgentSettings
from jowa_core.evaluation.envs import EvalSettings
from jowa_core.evaluation.runner import evaluate
from jowa_core.train.finetune import Evaluator, FinetuneConfig, finetune


def periodic_evaluator(cfg: FinetuneConfig, game: str) -> Evaluator:
    """The in-training evaluation: ``eval_episodes`` episodes of ``game`` under the paper's protocol with
    ``eval_max_frames`` frames, greedy on Q̂ unless ``eval_plan`` (beam ``eval_beam``, horizon ``eval_horizon``)."""
    name = games.get(game).name
    agent = AgentSettings(plan=cfg.eval_plan, beam=cfg.eval_beam, horizon=cfg.eval_horizon)
    settings = EvalSettings(max_frames=cfg.eval_max_frames)
    device = str(pick_device(cfg.device))

    def run(model: Path, tokenizer: Path, step: int, out_json: Path) -> dict[str, Any]:
        res = evaluate(model, tokenizer, name, episodes=cfg.eval_episodes, agent=agent, settings=settings,
                       seed=cfg.seed, device=device, backend=cfg.eval_backend, out_json=out_json)
        return res["games"][name]

    return run


def run_finetune(cfg: FinetuneConfig, ckpt_path: str | os.PathLike, tokenizer: str | os.PathLike, game: str,
                 data: str | os.PathLike, out: str | os.PathLike, resume: bool = False,
                 reporter=None) -> dict[str, Any]:
    """``train.finetune.finetune`` with the periodic evaluation of ``periodic_evaluator`` (none when
    ``eval_episodes`` is 0)."""
    evaluator = periodic_evaluator(cfg, game) if cfg.eval_episodes else None
    return finetune(cfg, ckpt_path, tokenizer, game, data, out, resume=resume, reporter=reporter, evaluator=evaluator)
