"""`jowa bench train`: training throughput (tokens/s) and model FLOPs utilisation (MFU) of full training steps.

A step is what ``jowa pretrain`` does per batch: forward with the stage's loss (``jowa_loss``), backward,
gradient clipping at 1.0 and an AdamW step (``build_optimizer``), under bf16 autocast on GPU. Batches are
synthetic (random tokens, actions and rewards, some terminals and padded steps, real games' action masks)
and already on the device: the loader is benchmarked separately (``jowa bench data``).

Baseline, measured in the same run: the same model, batch, precision and optimiser with ``attention=manual``
(an explicit softmax(QK^T) over the full T x T matrix, the official code's non-flash path) and no
``torch.compile``. The ratio "ours / baseline" is what the attention backend and compilation buy. Both are
built and warmed up one after the other (each one's peak GPU memory is measured then), and their timed
steps alternate, so that both see the same machine (clocks, other jobs on a shared CPU).

FLOP convention (``train_flops_per_step``): model FLOPs of the matmuls only, 2 FLOPs per multiply-add,
backward = 2 x forward (3 x forward per trained matmul), causal attention counted as the T(T+1)/2
query-key pairs actually attended (half the T x T rectangle, as FlashAttention does; nanoGPT and PaLM
count the full rectangle: ``attention="full"``). No recomputation is counted (these are model FLOPs, not
hardware FLOPs). MFU = achieved model FLOP/s / the device's dense peak for the matmul precision in use.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from jowa_core import devices, games
from jowa_core.bench.table import append_comparison, fmt_rate
from jowa_core.config import apply_overrides, from_dict, to_dict
from jowa_core.dist import pick_device
from jowa_core.models import transformer
from jowa_core.models.world_action import WorldActionConfig, WorldActionModel
from jowa_core.progress import NullReporter
from jowa_core.train.pretrain import TrainConfig, build_optimizer, jowa_loss, set_stage_lr
from jowa_core.train.step import optimizer_step

BENCH_GAMES = ("Breakout", "Pong", "SpaceInvaders", "Seaquest", "MsPacman")  # action masks of 4 to 18 actions

# Dense (no sparsity) peak TFLOP/s from NVIDIA's datasheets, first match of the regex on
# torch.cuda.get_device_name() wins: (pattern, label, bf16/fp16 tensor core, TF32 tensor core, FP32 non-tensor).
# fp32 runs (--precision fp32) use the TF32 column when torch lets matmuls use TF32 (torch.set_float32_matmul_precision
# "high"/"medium"), else the plain FP32 column (torch's default "highest"). The A10G (AWS) is left out on
# purpose: NVIDIA publishes no datasheet for it and the figures quoted for it differ; pass --peak-tflops.
PEAK_TFLOPS: tuple[tuple[str, str, float, float, float], ...] = (
    (r"H100.*PCIe", "H100 PCIe", 756.0, 378.0, 51.0),
    (r"H100 NVL", "H100 NVL", 835.5, 417.5, 60.0),
    (r"GH200|\bH200\b", "H200", 989.4, 494.7, 66.9),
    (r"\bH100\b", "H100 SXM", 989.4, 494.7, 66.9),
    (r"\bA100\b", "A100", 312.0, 156.0, 19.5),
    (r"\bL40S\b", "L40S", 362.1, 183.0, 91.6),
    (r"\bL4\b", "L4", 121.0, 60.0, 30.3),
    (r"\bA10\b", "A10", 125.0, 62.5, 31.2),
)


class BatchDoesNotFit(ValueError):
    """The batch does not fit in the device's memory (a ValueError: the CLI exits with code 2)."""


# --------------------------------------------------------------------------------------------------------
# FLOPs


def forward_flops_per_segment(cfg: WorldActionConfig, attention: Literal["causal", "full"] = "causal"
                              ) -> dict[str, int]:
    """Forward matmul FLOPs of one full segment (max_steps steps, T = 296 tokens for 8 steps), by part.

    ``backbone``: the 4 attention projections and the 2 MLP matmuls of every layer on all T tokens,
    24·E² per token per layer. ``attention``: QK^T and softmax·V, 2·2·E FLOPs per query-key pair per layer,
    over the T(T+1)/2 pairs a causal query attends (``"causal"``) or all T² pairs (``"full"``, the
    nanoGPT/PaLM convention and what an explicit masked matmul executes). ``obs_head``: Linear(E,E) and
    Linear(E,V) on the T - L positions that predict an observation token. ``reward_end_heads``: the two small
    MLPs on the L action positions. ``q_head``: the num_q-member ensemble E→m→m→A·Z on the L last-observation
    positions; ``q_target``: the same for the frozen target head. Embedding lookups, LayerNorm, activations,
    softmax, the losses and the optimiser are not counted (elementwise or small).
    """
    E, L, T = cfg.embed_dim, cfg.max_steps, cfg.max_tokens
    pairs = T * (T + 1) // 2 if attention == "causal" else T * T
    if attention not in ("causal", "full"):
        raise ValueError(f"attention convention {attention!r}: expected 'causal' or 'full'")
    m, out = cfg.q_mlp_dim, cfg.num_actions * cfg.num_atoms
    q = cfg.num_q * L * 2 * (E * m + m * m + m * out)
    return {
        "backbone": cfg.num_layers * T * 24 * E * E,
        "attention": cfg.num_layers * pairs * 4 * E,
        "obs_head": (T - L) * 2 * (E * E + E * cfg.obs_vocab),
        "reward_end_heads": L * 2 * (E * E + 3 * E) + L * 2 * (E * E + 2 * E),
        "q_head": q,
        "q_target": q,
    }


def train_flops_per_step(cfg: WorldActionConfig, batch_size: int, stage: int = 2,
                         attention: Literal["causal", "full"] = "causal", detach_q_input: bool = False) -> int:
    """Model FLOPs of one training step on ``batch_size`` full segments (see ``forward_flops_per_segment``).

    Every trained matmul costs 3x its forward FLOPs (forward, input gradient, weight gradient). Stage 1 runs
    no Q head; stage 2 adds the Q ensemble (3x) and the target head (forward only, no gradient). With
    ``detach_q_input`` the first Q layer computes no input gradient (2x instead of 3x).
    """
    if stage not in (1, 2):
        raise ValueError(f"stage {stage}: expected 1 or 2")
    f = forward_flops_per_segment(cfg, attention)
    trained = f["backbone"] + f["attention"] + f["obs_head"] + f["reward_end_heads"]
    total = 3 * trained
    if stage == 2:
        total += 3 * f["q_head"] + f["q_target"]
        if detach_q_input:
            total -= cfg.num_q * cfg.max_steps * 2 * cfg.embed_dim * cfg.q_mlp_dim
    return batch_size * total


def peak_tflops_for(device_name: str, precision: Literal["bf16", "tf32", "fp32"]) -> tuple[float, str] | None:
    """(dense peak TFLOP/s, label) of a CUDA device name from ``PEAK_TFLOPS``; None when not in the table."""
    for pattern, label, bf16, tf32, fp32 in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            value = {"bf16": bf16, "tf32": tf32, "fp32": fp32}[precision]
            return value, f"{label} {precision} dense (datasheet)"
    return None


# --------------------------------------------------------------------------------------------------------
# Synthetic batches


def synthetic_batch(cfg: WorldActionConfig, batch_size: int, device: torch.device | str = "cpu",
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch shaped like the segment loader's: random observation tokens, actions valid in each row's game
    (BENCH_GAMES), rewards of both signs on ~10% of steps, and in ~1/8 of the segments a terminal step after
    which the remaining steps are padding (``valid`` False)."""
    g = torch.Generator().manual_seed(seed)
    B, L = batch_size, cfg.max_steps
    infos = [games.get(name) for name in BENCH_GAMES]
    pick = torch.randint(len(infos), (B,), generator=g)
    action_mask = torch.from_numpy(np.stack([info.action_mask() for info in infos]))[pick]  # (B, 18)
    game_id = torch.tensor([info.task_id for info in infos], dtype=torch.int64)[pick]
    scores = torch.rand(B, L, cfg.num_actions, generator=g).masked_fill(~action_mask[:, None], -1.0)
    action = scores.argmax(-1)  # uniform over the row's valid actions
    obs_tokens = torch.randint(cfg.obs_vocab, (B, L, cfg.tokens_per_obs), generator=g)
    sign = torch.randint(0, 2, (B, L), generator=g) * 2 - 1
    reward = (torch.rand(B, L, generator=g) < 0.1) * sign * torch.randint(1, 5, (B, L), generator=g)
    terminal = torch.zeros(B, L, dtype=torch.bool)
    valid = torch.ones(B, L, dtype=torch.bool)
    ends = (torch.rand(B, generator=g) < 0.125).nonzero()[:, 0]
    t_end = torch.randint(L, (len(ends),), generator=g)
    terminal[ends, t_end] = True
    valid[ends] = torch.arange(L)[None] <= t_end[:, None]
    batch = {"obs_tokens": obs_tokens, "action": action, "reward": reward.float(), "terminal": terminal,
             "valid": valid, "game_id": game_id, "action_mask": action_mask}
    return {k: v.to(device) for k, v in batch.items()}


# --------------------------------------------------------------------------------------------------------
# Measurement


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _attention_label(cfg: WorldActionConfig, device: torch.device, amp: bool) -> str:
    if cfg.attention == "manual":
        return "manual (explicit softmax)"
    flash = transformer.flash_attn_func is not None and device.type == "cuda" and amp
    if cfg.attention in ("auto", "flash") and flash:
        return "flash-attn"
    return "sdpa"


def sdpa_kernel_label(device: torch.device, dtype: torch.dtype, num_heads: int, head_dim: int, tokens: int,
                      dropout: float) -> str:
    """Which fused SDPA kernel takes causal attention of these shapes (training, with ``dropout``) on ``device``:
    probed by running SDPA restricted to each kernel in the dispatcher's order of preference (flash, then
    memory-efficient); "math" when neither runs. CPU: "cpu kernel"."""
    if device.type != "cuda":
        return "cpu kernel"
    q = torch.randn(1, num_heads, tokens, head_dim, device=device, dtype=dtype)
    for backend, label in ((SDPBackend.FLASH_ATTENTION, "flash"), (SDPBackend.EFFICIENT_ATTENTION, "memory-efficient")):
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, q, q, dropout_p=dropout, is_causal=True)
            return label
        except RuntimeError:
            continue
    return "math"


def optimizer_label(opt: torch.optim.Optimizer) -> str:
    """``AdamW (fused)``, ``(foreach)`` or ``(for-loop)``: the implementation ``opt.step`` runs (torch picks foreach
    by default when every parameter is on CUDA)."""
    d = opt.defaults
    params = [p for g in opt.param_groups for p in g["params"]]
    if d.get("fused"):
        kind = "fused"
    elif d.get("foreach") or (d.get("foreach") is None and params and all(p.is_cuda for p in params)):
        kind = "foreach"
    else:
        kind = "for-loop"
    return f"{type(opt).__name__} ({kind})"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class _Run:
    """One configuration under test: its model, optimiser, batches and per-step times."""

    def __init__(self, label: str, cfg: WorldActionConfig, tcfg: TrainConfig, stage: int, device: torch.device,
                 amp: bool, compile: bool):
        self.label, self.cfg, self.device, self.compile = label, cfg, device, compile
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        self.mem_before = torch.cuda.memory_allocated(device) if self.cuda else 0
        torch.manual_seed(0)
        self.model = model = WorldActionModel(cfg).to(device).train()
        if stage == 2:
            model.update_target()
        model.head_q.requires_grad_(stage == 2)
        self.opt = build_optimizer(model, tcfg)
        set_stage_lr(self.opt, stage, tcfg)
        self.net = torch.compile(model) if compile else model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.batches = [synthetic_batch(cfg, tcfg.batch_size, device, seed=s) for s in range(2)]
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext
        self.tcfg, self.stage = tcfg, stage
        self.times: list[float] = []
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.loss: torch.Tensor | None = None
        self.warmup_s = 0.0
        self.peak_memory_gib: float | None = None
        self.task = 0

    def step(self, i: int) -> None:
        with self.autocast():
            loss, _ = jowa_loss(self.net, self.batches[i % 2], self.stage, self.tcfg, self.model.support)
        optimizer_step(self.opt, loss, self.params, self.tcfg.grad_clip)
        self.loss = loss.detach()

    def warm_up(self, warmup: int, reporter, task: int) -> None:
        """Untimed steps (compilation, lazy optimiser state); this run's peak memory is measured here, before
        the timed steps, as the growth of allocated memory over what was allocated when it was built."""
        t0 = time.perf_counter()
        for i in range(warmup):
            self.step(i)
            reporter.advance(task)
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak_memory_gib = (torch.cuda.max_memory_allocated(self.device) - self.mem_before) / 2**30
        self.warmup_s = time.perf_counter() - t0

    def timed_step(self, i: int) -> None:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self.step(i)
            end.record()
            self.events.append((start, end))
        else:
            t = time.perf_counter()
            self.step(i)
            self.times.append(time.perf_counter() - t)

    def result(self, amp: bool) -> dict[str, Any]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.times = [start.elapsed_time(end) / 1e3 for start, end in self.events]
        final_loss = float(self.loss) if self.loss is not None else math.nan
        if not math.isfinite(final_loss):
            raise RuntimeError(f"{self.label}: the loss is {final_loss} (not finite) on the synthetic batch")
        attention = _attention_label(self.cfg, self.device, amp)
        if attention == "sdpa":
            cfg = self.cfg
            dtype = torch.bfloat16 if amp else torch.float32
            attention += " (" + sdpa_kernel_label(self.device, dtype, cfg.num_heads, cfg.embed_dim // cfg.num_heads,
                                                  cfg.max_tokens, cfg.attn_pdrop) + ")"
        return {
            "attention": attention,
            "optimizer": optimizer_label(self.opt),
            "compile": self.compile,
            "warmup_s": self.warmup_s,
            "step_time_median_s": statistics.median(self.times),
            "step_time_mean_s": statistics.fmean(self.times),
            "step_times_s": self.times,
            "peak_memory_gib": self.peak_memory_gib,
            "final_loss": final_loss,
        }


def _configs(preset: str, batch_size: int, stage: int, overrides: Sequence[str]
             ) -> tuple[WorldActionConfig, TrainConfig]:
    data = apply_overrides({"model": {"preset": preset}, "train": {"batch_size": batch_size}}, overrides)
    unknown = sorted(set(data) - {"model", "train"})
    if unknown:
        raise ValueError(f"overrides {unknown}: expected model.<key>=value or train.<key>=value")
    data["train"]["batch_size"] = batch_size
    return from_dict(WorldActionConfig, data["model"]), from_dict(TrainConfig, data["train"])


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
           f"{torch.get_num_threads()} torch threads)"


def command_line(preset: str, batch_size: int, steps: int, warmup: int, stage: int, device: str, precision: str,
                 compile: bool, baseline: bool, peak_tflops: float | None, overrides: Sequence[str]) -> str:
    """The `jowa bench train` command that reproduces a run (defaults left out)."""
    parts = ["jowa bench train", f"--preset {preset}"]
    for flag, value, default in (("--batch-size", batch_size, 512), ("--steps", steps, 20),
                                 ("--warmup", warmup, 3), ("--stage", stage, 2), ("--device", device, "auto"),
                                 ("--precision", precision, "auto"), ("--peak-tflops", peak_tflops, None)):
        if value != default:
            parts.append(f"{flag} {value}")
    parts += ["--compile"] * compile + ["--no-baseline"] * (not baseline) + list(overrides)
    return " ".join(parts)


def bench_train(preset: str = "150m", batch_size: int = 512, steps: int = 20, warmup: int = 3, stage: int = 2,
                device: str = "auto", precision: str = "auto", compile: bool = False, baseline: bool = True,
                peak_tflops: float | None = None, overrides: Sequence[str] = (), reporter=None,
                markdown: str | os.PathLike | None = None) -> dict[str, Any]:
    """Measure training steps of ``preset`` on synthetic batches; returns a JSON-serialisable dict.

    ``precision``: auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp32 (``off`` is read as fp32).
    ``overrides``: ``model.key=value`` / ``train.key=value``. ``peak_tflops`` overrides the device table
    (needed for an MFU on CPU or on a GPU not in ``PEAK_TFLOPS``). Raises ``BatchDoesNotFit`` (a ValueError)
    when our configuration runs out of memory; a baseline that runs out of memory is reported as such.
    ``markdown``: append a dated section.
    """
    reporter = reporter or NullReporter()
    if precision not in ("auto", "bf16", "fp32", "off"):
        raise ValueError(f"--precision {precision!r}: expected auto, bf16 or fp32")
    if stage not in (1, 2):
        raise ValueError(f"--stage {stage}: expected 1 or 2")
    if batch_size < 1 or steps < 1 or warmup < 1:
        raise ValueError("--batch-size, --steps and --warmup must be >= 1")
    if peak_tflops is not None and peak_tflops <= 0:
        raise ValueError(f"--peak-tflops {peak_tflops}: expected a positive number")
    cfg, tcfg = _configs(preset, batch_size, stage, overrides)
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # CUDA events record on the current device's stream
    use_amp = devices.use_bf16(dev, precision)
    if use_amp:
        precision_label, peak_column = "bf16 autocast", "bf16"
    elif torch.get_float32_matmul_precision() == "highest" or dev.type != "cuda":
        precision_label, peak_column = "fp32", "fp32"
    else:
        precision_label, peak_column = "fp32 (TF32 matmuls)", "tf32"
    name = _device_name(dev)
    if peak_tflops is not None:
        peak, peak_source = float(peak_tflops), "--peak-tflops"
    elif dev.type == "cuda" and (found := peak_tflops_for(name, peak_column)):
        peak, peak_source = found
    else:
        peak, peak_source = None, None

    flops = train_flops_per_step(cfg, batch_size, stage, "causal", tcfg.detach_q_input)
    flops_full = train_flops_per_step(cfg, batch_size, stage, "full", tcfg.detach_q_input)
    tokens = batch_size * cfg.max_tokens

    def derived(r: dict[str, Any]) -> dict[str, Any]:
        t = r["step_time_median_s"]
        tflops = flops / t / 1e12
        return {**r, "tokens_per_s": tokens / t, "segments_per_s": batch_size / t, "model_tflops": tflops,
                "mfu": tflops / peak if peak else None}

    runs: dict[str, _Run] = {}
    errors: dict[str, str] = {}
    manual = "manual (explicit softmax)"
    plan = [("ours", cfg, compile)] + ([("baseline", replace(cfg, attention="manual"), False)] if baseline else [])
    for label, run_cfg, run_compile in plan:  # built and warmed up one after the other
        task = reporter.task(f"bench train: {label}", total=warmup + steps, unit="steps")
        try:
            runs[label] = _Run(label, run_cfg, tcfg, stage, dev, use_amp, run_compile)
            runs[label].task = task
            runs[label].warm_up(warmup, reporter, task)
        except Exception as e:
            if not _is_oom(e):
                raise
            runs.pop(label, None)
            errors[label] = f"out of memory at batch {batch_size}"
        _free(dev)
        if "ours" in errors:
            total = (f" ({torch.cuda.get_device_properties(dev).total_memory / 2**30:.0f} GiB)"
                     if dev.type == "cuda" else "")
            raise BatchDoesNotFit(f"out of memory on {name}{total}: batch {batch_size} x {cfg.max_tokens} tokens "
                                  f"of preset {preset} does not fit; try --batch-size {max(1, batch_size // 2)}")
    for i in range(steps):  # timed steps interleaved, so that both runs see the same machine
        for label in list(runs):
            try:
                runs[label].timed_step(warmup + i)
                reporter.advance(runs[label].task)
                continue
            except Exception as e:
                if not _is_oom(e):
                    raise
                if label == "ours":
                    raise BatchDoesNotFit(f"out of memory on {name} while timing next to the baseline: try "
                                          f"--no-baseline or --batch-size {max(1, batch_size // 2)}") from None
            del runs[label]  # the baseline ran out of memory (outside the except block: its frames are gone)
            errors[label] = f"out of memory at batch {batch_size} (while timing next to ours)"
            _free(dev)
    ours = derived(runs["ours"].result(use_amp))
    params = sum(p.numel() for n, p in runs["ours"].model.named_parameters() if not n.startswith("head_q_target."))
    trainable = sum(p.numel() for p in runs["ours"].params)
    base: dict[str, Any] | None = None
    ratio = None
    if baseline:
        if "baseline" in runs:
            base = derived(runs["baseline"].result(use_amp))
            ratio = base["step_time_median_s"] / ours["step_time_median_s"]
        else:
            base = {"attention": manual, "compile": False, "error": errors["baseline"]}
        base["description"] = "official-style: attention=manual (explicit softmax over T x T), eager, same precision"
    runs.clear()
    _free(dev)

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "device": name,
        "device_type": dev.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "command": command_line(preset, batch_size, steps, warmup, stage, device, precision, compile, baseline,
                                peak_tflops, overrides),
        "preset": preset,
        "batch_size": batch_size,
        "tokens_per_segment": cfg.max_tokens,
        "tokens_per_step": tokens,
        "stage": stage,
        "precision": precision_label,
        "steps": steps,
        "warmup": warmup,
        "params": params,
        "trainable_params": trainable,
        "flops_per_step": flops,
        "flops_per_step_full_attention": flops_full,
        "flop_convention": "matmul model FLOPs, 2 per multiply-add, backward = 2x forward, causal attention "
                           "over T(T+1)/2 pairs; no recomputation",
        "peak_tflops": peak,
        "peak_source": peak_source,
        "ours": ours,
        "baseline": base,
        "speedup_vs_baseline": ratio,
        "model_config": to_dict(cfg),
        "train_config": {k: v for k, v in to_dict(tcfg).items()
                         if k in ("batch_size", "grad_clip", "weight_decay", "betas", "cql_actions", "detach_q_input",
                                  "world_weight_stage2", "cql_alpha")},
    }
    result["summary"] = summary_lines(result)
    if markdown:
        append_markdown(Path(markdown), result)
    return result


# --------------------------------------------------------------------------------------------------------
# Output


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, ours, baseline, ours ÷ baseline) rows shared by the CLI table and the Markdown record."""
    o, b = r["ours"], r["baseline"]
    ok = b is not None and "error" not in b

    def row(measure: str, key: str, fmt, ratio: bool = True) -> tuple[str, str, str, str]:
        ov = o.get(key)
        bv = b.get(key) if ok else None
        failed = b is not None and "error" in b and key == "step_time_median_s"
        bs = fmt(bv) if bv is not None else (b["error"] if failed else "")
        rs = f"{ov / bv:.2f}" if ratio and ov is not None and bv else ""
        return measure, fmt(ov) if ov is not None else "n/a", bs, rs

    peak = f"peak {r['peak_tflops']:g} TFLOP/s, {r['peak_source']}" if r["peak_tflops"] else "no peak given"
    rows = [
        ("attention", o["attention"] + (", compiled" if o["compile"] else ", eager"),
         (b["attention"] + ", eager") if b is not None else "", ""),
        ("optimizer", o["optimizer"], b.get("optimizer", "") if b is not None else "", ""),
        row("step time, median (s)", "step_time_median_s", lambda x: f"{x:.4g}"),
        row("step time, mean (s)", "step_time_mean_s", lambda x: f"{x:.4g}"),
        row("tokens/s", "tokens_per_s", fmt_rate),
        row("segments/s", "segments_per_s", fmt_rate),
        row("model TFLOP/s", "model_tflops", lambda x: f"{x:.3g}"),
        row(f"MFU ({peak})", "mfu", lambda x: f"{100 * x:.1f}%"),
    ]
    if r["device_type"] == "cuda":
        rows.append(row("peak GPU memory (GiB)", "peak_memory_gib", lambda x: f"{x:.1f}"))
    rows.append(row("warm-up incl. compile (s)", "warmup_s", lambda x: f"{x:.1f}", ratio=False))
    return rows


def describe(r: dict[str, Any]) -> str:
    return (f"preset {r['preset']} ({r['params'] / 1e6:.1f}M parameters without the target head), stage "
            f"{r['stage']}, batch {r['batch_size']} x {r['tokens_per_segment']} tokens, {r['precision']}, "
            f"{r['steps']} timed steps after {r['warmup']} warm-up steps; "
            f"{r['flops_per_step'] / 1e12:.3g} model TFLOP per step")


def summary_lines(r: dict[str, Any]) -> list[str]:
    o = r["ours"]
    mfu = f", MFU {100 * o['mfu']:.1f}%" if o["mfu"] is not None else ", MFU n/a (pass --peak-tflops)"
    lines = [f"{r['device']}, torch {r['torch']}: {describe(r)}",
             f"ours ({o['attention']}{', compiled' if o['compile'] else ''}, {o['optimizer']}): "
             f"{o['tokens_per_s']:,.0f} tokens/s, "
             f"{o['segments_per_s']:.3g} segments/s, {o['model_tflops']:.3g} TFLOP/s{mfu}"]
    b = r["baseline"]
    if b is not None and "error" in b:
        lines.append(f"baseline ({b['attention']}): {b['error']}")
    elif b is not None:
        lines.append(f"baseline ({b['attention']}, eager): {b['tokens_per_s']:,.0f} tokens/s; ours is "
                     f"{r['speedup_vs_baseline']:.2f}x the baseline's speed")
    return lines


def append_markdown(path: Path, r: dict[str, Any]) -> None:
    """Append a dated section (device, torch, command, table) to the Markdown file ``path``."""

    append_comparison(path, r, "Training throughput", "ours", "baseline: official-style (same run)", describe(r),
                      table_rows(r))
