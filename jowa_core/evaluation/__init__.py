"""Evaluation: the Atari protocol of the paper (``envs``), a batched planning agent (``agent``) and the
batched, optionally distributed, evaluation loop (``runner``)."""

from jowa_core.evaluation.envs import EvalSettings, VecAtari

__all__ = ["EvalSettings", "VecAtari"]
