"""Convert the released checkpoints of the official JOWA code (CJReinforce/JOWA) into jowa checkpoints.

The official files are fp32 torch pickles of a ``state_dict`` (reference §2.10):

* ``JOWA_{40M,70M,150M}.pt``: the world-action model (``JOWAModel``), including the target Q head;
* ``tokenizer.pt``: the VQ-VAE, including the frozen LPIPS network (``lpips.*``).

Keys may carry a ``module.`` (DDP), ``_orig_mod.`` (torch.compile) or ``_orig_mod.module.`` prefix. They are
read with ``torch.load(..., weights_only=True)`` (no pickled code runs). The world-model keys are renamed to
this project's names; the config is inferred from the tensor shapes (the number of attention heads is not in
the weights: ``embed_dim // 64``, the head size of every official model, unless given). Dropped keys: the
heads' ``indices`` buffers (checked against the token layout when their values are present) and the
``attn.mask`` buffers that exist only when the model was built without flash-attn (checked to be causal).
Anything else that does not fit (a missing key, an unknown key, a wrong shape) is an error naming the file
and the key(s).

``import_official`` writes ``<out>/tokenizer/`` and ``<out>/model/`` (jowa checkpoint directories),
``<out>/lpips.safetensors`` (the perceptual-loss weights, when the tokenizer file has them) and
``<out>/import.json`` (a summary), all under a temporary name renamed when complete.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from jowa_core import checkpoint as ckpt
from jowa_core.checkpoint import sha256_file
from jowa_core.config import from_dict, to_dict
from jowa_core.constants import jowa_version
from jowa_core.models.lpips import LPIPS
from jowa_core.models.tokenizer import Tokenizer, TokenizerConfig, save_tokenizer
from jowa_core.models.world_action import WorldActionConfig, WorldActionModel, save_world_action
from jowa_core.outputs import refuse_inputs_inside

OFFICIAL_PREFIXES = ckpt.WRAPPER_PREFIXES  # longest first
OFFICIAL_HEAD_DIM = 64  # every released model: 512/8 and 768/12
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
LPIPS_PREFIX = "lpips."
LPIPS_FILE = "lpips.safetensors"
SUMMARY_FILE = "import.json"

# Official world-model names -> ours (the part after the prefix, for whole groups).
_EMBEDDINGS = {
    "pos_emb.weight": "pos_emb.weight",
    "task_emb.embedding_tables.0.weight": "act_task_emb.weight",
    "task_emb.embedding_tables.1.weight": "obs_task_emb.weight",
    "embedder.embedding_tables.0.weight": "act_emb.weight",
    "embedder.embedding_tables.1.weight": "obs_emb.weight",
}
_MLP_HEADS = {"head_observations": "head_obs", "head_rewards": "head_reward", "head_ends": "head_end"}
_Q_HEADS = {"head_q": "head_q", "head_q_target": "head_q_target"}
# Ensemble parameter order: named_parameters of Sequential(NormedLinear, NormedLinear, Linear).
_Q_PARAMS = ("w1", "b1", "ln1_w", "ln1_b", "w2", "b2", "ln2_w", "ln2_b", "w3", "b3")
_BLOCK_PARTS = ("ln1", "ln2", "attn.key", "attn.query", "attn.value", "attn.proj", "mlp.0", "mlp.2")
_BLOCK_RE = re.compile(r"^transformer\.blocks\.(\d+)\.")
_MASK_RE = re.compile(r"^transformer\.blocks\.\d+\.attn\.mask$")


class OfficialFormatError(ckpt.CheckpointError):
    """An official checkpoint that cannot be converted; the message names the file and the key(s)."""


# --------------------------------------------------------------------------------------------------------
# Reading


class _SkipMetaInit(TorchFunctionMode):
    """Skip in-place random init of meta tensors (``normal_`` on meta otherwise imports torch._dynamo: seconds)."""

    _INIT = frozenset({"normal_", "uniform_", "trunc_normal_", "orthogonal_", "kaiming_uniform_", "xavier_uniform_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        t = args[0] if args else kwargs.get("tensor")
        if getattr(func, "__name__", "") in self._INIT and isinstance(t, Tensor) and t.is_meta:
            return t
        return func(*args, **kwargs)


def _on_meta(factory, *args):
    """``factory(*args)`` built on the meta device: shapes and names only, no memory, no init."""
    with torch.device("meta"), _SkipMetaInit():
        return factory(*args)


def strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict without the ``module.`` / ``_orig_mod.`` / ``_orig_mod.module.`` prefix its keys share."""
    return strip_prefix_named(state_dict)[0]


def strip_prefix_named(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(state dict without the shared prefix, the prefix removed: '' when none)."""
    return ckpt.strip_wrapper_prefix(state_dict)


def read_official(path: str | Path) -> dict[str, Tensor]:
    """The state dict in an official ``.pt`` file (``weights_only=True``; ``{"state_dict": ...}`` and
    ``{"model": ...}`` wrappers accepted). Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    with open(path, "rb") as f:
        head = f.read(len(LFS_POINTER))
    if head == LFS_POINTER:
        raise OfficialFormatError(f"{path}: a Git LFS pointer, not the checkpoint; download the real file "
                                  "(see docs/import-official.md)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a torch file, truncated, or a pickle that needs code
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OfficialFormatError(f"{path}: cannot read as a torch state dict with weights_only=True ({msg})") \
            from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise OfficialFormatError(f"{path}: expected a state dict, found {type(obj).__name__}")
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor))
    if bad:
        raise OfficialFormatError(f"{path}: not a state dict of tensors; non-tensor entries: {_some(bad)}")
    return dict(obj)


def _some(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def _check_against(expected: Mapping[str, tuple[int, ...]], actual: Mapping[str, Tensor], source: str,
                   what: str) -> None:
    """Error (one line, naming ``source`` and the keys) unless ``actual`` has exactly ``expected``'s keys/shapes."""
    problems = ckpt.state_dict_problems(expected, actual)
    if problems:
        raise OfficialFormatError(f"{source}: not an official JOWA {what} checkpoint: " + "; ".join(problems))


def _need(state: Mapping[str, Tensor], key: str, ndim: int, source: str, what: str) -> Tensor:
    t = state.get(key)
    if t is None:
        raise OfficialFormatError(f"{source}: not an official JOWA {what} checkpoint: missing key(s) {key}")
    if t.ndim != ndim:
        raise OfficialFormatError(f"{source}: not an official JOWA {what} checkpoint: shape mismatch {key} "
                                  f"{tuple(t.shape)} (expected {ndim} dimensions)")
    return t


# --------------------------------------------------------------------------------------------------------
# World-action model


def official_world_model_shapes(cfg: WorldActionConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an official ``JOWAModel`` state dict (no prefix, no ``indices``/``mask`` buffers), written
    from the reference (§2.10), independently of this project's module names."""
    E, m, q = cfg.embed_dim, cfg.q_mlp_dim, cfg.num_q
    out_q = cfg.num_actions * cfg.num_atoms
    s: dict[str, tuple[int, ...]] = {
        "pos_emb.weight": (cfg.max_tokens, E),
        "task_emb.embedding_tables.0.weight": (cfg.max_tasks, E),
        "task_emb.embedding_tables.1.weight": (cfg.max_tasks, E),
        "embedder.embedding_tables.0.weight": (cfg.num_actions, E),
        "embedder.embedding_tables.1.weight": (cfg.obs_vocab, E),
    }
    for i in range(cfg.num_layers):
        b = f"transformer.blocks.{i}."
        for ln in ("ln1", "ln2"):
            s[b + ln + ".weight"], s[b + ln + ".bias"] = (E,), (E,)
        for lin in ("key", "query", "value", "proj"):
            s[f"{b}attn.{lin}.weight"], s[f"{b}attn.{lin}.bias"] = (E, E), (E,)
        s[b + "mlp.0.weight"], s[b + "mlp.0.bias"] = (4 * E, E), (4 * E,)
        s[b + "mlp.2.weight"], s[b + "mlp.2.bias"] = (E, 4 * E), (E,)
    s["transformer.ln_f.weight"], s["transformer.ln_f.bias"] = (E,), (E,)
    for name, n_out in (("head_observations", cfg.obs_vocab), ("head_rewards", 3), ("head_ends", 2)):
        s[f"{name}.head_module.0.weight"], s[f"{name}.head_module.0.bias"] = (E, E), (E,)
        s[f"{name}.head_module.2.weight"], s[f"{name}.head_module.2.bias"] = (n_out, E), (n_out,)
    q_shapes = [(q, m, E), (q, m), (q, m), (q, m), (q, m, m), (q, m), (q, m), (q, m), (q, out_q, m), (q, out_q)]
    for name in _Q_HEADS:
        for j, shape in enumerate(q_shapes):
            s[f"{name}.head_module.params.{j}"] = shape
    return s


def official_head_indices(cfg: WorldActionConfig) -> dict[str, Tensor]:
    """The official heads' ``indices`` buffers: absolute positions each head reads in a full context."""
    tps = cfg.tokens_per_step
    pos = torch.arange(cfg.max_tokens)
    k = pos % tps
    last_obs, act = cfg.tokens_per_obs - 1, cfg.tokens_per_obs
    q_idx = pos[k == last_obs]
    return {"head_observations": pos[k != last_obs], "head_rewards": pos[k == act], "head_ends": pos[k == act],
            "head_q": q_idx, "head_q_target": q_idx}


def official_to_ours_name(key: str) -> str:
    """Our parameter name for an official world-model key (no prefix); KeyError if it has none."""
    if key in _EMBEDDINGS:
        return _EMBEDDINGS[key]
    if key.startswith("transformer."):
        m = _BLOCK_RE.match(key)
        rest = key[m.end():] if m else key[len("transformer."):]
        if m and any(rest in (f"{p}.weight", f"{p}.bias") for p in _BLOCK_PARTS):
            return key
        if not m and rest in ("ln_f.weight", "ln_f.bias"):
            return key
    for off, ours in _MLP_HEADS.items():
        for layer in ("0", "2"):
            for p in ("weight", "bias"):
                if key == f"{off}.head_module.{layer}.{p}":
                    return f"{ours}.{layer}.{p}"
    for off, ours in _Q_HEADS.items():
        for j, p in enumerate(_Q_PARAMS):
            if key == f"{off}.head_module.params.{j}":
                return f"{ours}.{p}"
    raise KeyError(key)


def infer_world_config(state: Mapping[str, Tensor], num_heads: int | None = None,
                       source: str = "<state dict>") -> WorldActionConfig:
    """The ``WorldActionConfig`` of an official state dict (prefix stripped), from its tensor shapes."""
    what = "world-action model"
    pos = _need(state, "pos_emb.weight", 2, source, what)
    max_tokens, E = (int(x) for x in pos.shape)
    tps = WorldActionConfig.tokens_per_obs + 1
    if max_tokens % tps:
        raise OfficialFormatError(f"{source}: pos_emb.weight has {max_tokens} rows, not a multiple of the "
                                  f"{tps} tokens per step")
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK_RE.match(k))}
    num_layers = max(blocks) + 1 if blocks else 0
    if num_layers == 0:
        raise OfficialFormatError(f"{source}: not an official JOWA {what} checkpoint: missing key(s) "
                                  "transformer.blocks.0.*")
    w1 = _need(state, "head_q.head_module.params.0", 3, source, what)
    num_q, q_mlp_dim = int(w1.shape[0]), int(w1.shape[1])
    obs_vocab = int(_need(state, "embedder.embedding_tables.1.weight", 2, source, what).shape[0])
    num_actions = int(_need(state, "embedder.embedding_tables.0.weight", 2, source, what).shape[0])
    max_tasks = int(_need(state, "task_emb.embedding_tables.0.weight", 2, source, what).shape[0])
    out_q = int(_need(state, "head_q.head_module.params.8", 3, source, what).shape[1])
    if num_actions < 1 or out_q % num_actions:
        raise OfficialFormatError(f"{source}: head_q.head_module.params.8 has {out_q} outputs, not a multiple of "
                                  f"the {num_actions} actions")
    if num_heads is None:
        num_heads = max(1, E // OFFICIAL_HEAD_DIM)
    if num_heads < 1 or E % num_heads:
        raise ValueError(f"{source}: embed_dim {E} is not divisible by num_heads {num_heads}")
    fields = dict(num_layers=num_layers, embed_dim=E, num_heads=num_heads, q_mlp_dim=q_mlp_dim, num_q=num_q,
                  obs_vocab=obs_vocab, max_steps=max_tokens // tps, max_tasks=max_tasks, num_actions=num_actions,
                  num_atoms=out_q // num_actions)
    defaults = WorldActionConfig()
    preset = "custom"
    for name, values in WorldActionConfig.PRESETS.items():
        same_preset = all(fields[k] == v for k, v in values.items())
        same_rest = all(fields[k] == getattr(defaults, k) for k in fields if k not in values)
        if same_preset and same_rest:
            preset = name
            break
    return WorldActionConfig(preset=preset, **fields)


def _check_buffers(dropped: Mapping[str, Tensor], cfg: WorldActionConfig, source: str) -> None:
    """The dropped buffers must agree with the model we build: head indices = our head positions, masks causal."""
    expected_idx = official_head_indices(cfg)
    for key, t in dropped.items():
        if t.is_meta:
            continue
        if key.endswith(".indices"):
            exp = expected_idx[key[: -len(".indices")]]
            if t.shape != exp.shape or not torch.equal(t.long(), exp):
                raise OfficialFormatError(f"{source}: {key} does not match the token layout (36 observation tokens "
                                          f"+ 1 action per step, {cfg.max_steps} steps); the heads would read "
                                          "other positions")
        else:  # attn.mask
            T = cfg.max_tokens
            causal = torch.ones(T, T).tril()
            if tuple(t.shape) != (T, T) or not torch.equal((t != 0).float(), causal):
                raise OfficialFormatError(f"{source}: {key} is not a causal ({T}, {T}) mask; only 'causal' "
                                          "attention models can be converted")


def convert_world_model(state_dict: Mapping[str, Tensor], num_heads: int | None = None,
                        source: str = "<state dict>") -> tuple[WorldActionConfig, dict[str, Tensor]]:
    """(config, tensors under our names) of an official ``JOWAModel`` state dict (prefix optional).

    ``num_heads`` defaults to ``embed_dim // 64``. Raises ``OfficialFormatError`` (naming ``source`` and the
    keys) for missing, unknown or misshapen tensors.
    """
    state, _ = strip_prefix_named(state_dict)
    dropped = {k: v for k, v in state.items()
               if _MASK_RE.match(k) or (k.endswith(".indices") and k[: -len(".indices")] in (*_MLP_HEADS, *_Q_HEADS))}
    state = {k: v for k, v in state.items() if k not in dropped}
    cfg = infer_world_config(state, num_heads, source)
    _check_against(official_world_model_shapes(cfg), state, source, "world-action model")
    _check_buffers(dropped, cfg, source)
    ours = {official_to_ours_name(k): v for k, v in state.items()}
    # Second, independent check: our model's own names and shapes (built on the meta device: no memory, no init).
    own = _on_meta(WorldActionModel, cfg).state_dict()
    _check_against({k: tuple(v.shape) for k, v in own.items()}, ours, f"{source} (after renaming)",
                   "world-action model")
    ours = {k: v.float() if v.is_floating_point() else v for k, v in ours.items()}
    return cfg, {k: ours[k] for k in own}


def build_world_model(cfg: WorldActionConfig, tensors: Mapping[str, Tensor]) -> WorldActionModel:
    """A model (CPU, eval mode) holding ``tensors`` (no copy, no random init of the weights)."""
    model = _on_meta(WorldActionModel, cfg)
    model.load_state_dict(dict(tensors), strict=True, assign=True)
    model.support = torch.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms)  # the only non-persistent buffer
    return model.eval()


def save_converted_world_model(model: WorldActionModel, path: str | Path, **extra: Any) -> None:
    """``save_world_action`` with a check that the inferred config survives a save/load round trip."""
    if from_dict(WorldActionConfig, to_dict(model.cfg)) != model.cfg:
        raise RuntimeError(f"the config {to_dict(model.cfg)} does not survive a save/load round trip")
    save_world_action(model, str(path), **extra)


# --------------------------------------------------------------------------------------------------------
# Tokenizer


def infer_tokenizer_config(state: Mapping[str, Tensor], source: str = "<state dict>"):
    """A ``TokenizerConfig``: codebook size and dimension, channels read from the shapes; the rest defaults."""
    what = "tokenizer"
    emb = _need(state, "embedding.weight", 2, source, what)
    conv_in = _need(state, "encoder.conv_in.weight", 4, source, what)
    conv_out = _need(state, "encoder.conv_out.weight", 4, source, what)
    dec_out = _need(state, "decoder.conv_out.weight", 4, source, what)
    return TokenizerConfig(vocab_size=int(emb.shape[0]), embed_dim=int(emb.shape[1]), ch=int(conv_in.shape[0]),
                           in_channels=int(conv_in.shape[1]), z_channels=int(conv_out.shape[0]),
                           out_channels=int(dec_out.shape[0]))


def _lpips_shapes() -> dict[str, tuple[int, ...]] | None:
    """Key -> shape of this project's LPIPS module."""
    module = _on_meta(LPIPS)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def convert_tokenizer(state_dict: Mapping[str, Tensor], source: str = "<state dict>"):
    """(TokenizerConfig, tokenizer tensors, LPIPS tensors) of an official tokenizer state dict.

    The ``lpips.*`` keys (prefix stripped) are returned apart, as the perceptual-loss weights (empty when the
    file has none); all other keys must be exactly our ``Tokenizer``'s.
    """
    state, _ = strip_prefix_named(state_dict)
    lpips = {k[len(LPIPS_PREFIX):]: v for k, v in state.items() if k.startswith(LPIPS_PREFIX)}
    tok_state = {k: v for k, v in state.items() if not k.startswith(LPIPS_PREFIX)}
    try:
        cfg = infer_tokenizer_config(tok_state, source)
    except ValueError as e:  # ConfigError from TokenizerConfig validation
        if isinstance(e, OfficialFormatError):
            raise
        raise OfficialFormatError(f"{source}: unsupported tokenizer shapes ({e})") from None
    own = _on_meta(Tokenizer, cfg).state_dict()
    _check_against({k: tuple(v.shape) for k, v in own.items()}, tok_state, source, "tokenizer")
    if lpips:
        expected = _lpips_shapes()
        if expected is not None:
            _check_against({LPIPS_PREFIX + k: s for k, s in expected.items()},
                           {LPIPS_PREFIX + k: v for k, v in lpips.items()}, source, "tokenizer (LPIPS part)")
    tok_tensors = {k: tok_state[k].float() if tok_state[k].is_floating_point() else tok_state[k] for k in own}
    lpips = {k: v.float() if v.is_floating_point() else v for k, v in lpips.items()}
    return cfg, tok_tensors, lpips


# --------------------------------------------------------------------------------------------------------
# Import


def _converted_by() -> str:
    return f"jowa {jowa_version()} import-official"


def _source(path: Path) -> dict[str, Any]:
    return {"file": path.name, "path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def import_official(tokenizer_path: str | Path | None, model_path: str | Path | None, out: str | Path,
                    num_heads: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Convert the official ``tokenizer.pt`` and/or ``JOWA_*.pt`` into ``out`` (see the module docstring).

    Returns the summary also written to ``<out>/import.json``. Everything is checked and converted before
    anything is written, and ``out`` appears only when complete; an existing non-empty ``out`` is an error
    unless ``overwrite`` (then it is replaced as a whole).
    """
    if tokenizer_path is None and model_path is None:
        raise ValueError("nothing to import: give a tokenizer file, a model file, or both")
    out = Path(out)
    refuse_inputs_inside(out, [tokenizer_path, model_path])
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not overwrite:
            raise ValueError(f"{out} already exists and is not empty; use --overwrite to replace it")
        if any(out.iterdir()) and not (out / SUMMARY_FILE).is_file():  # --overwrite replaces only our own output
            raise ValueError(f"{out} is not empty and was not written by `jowa import-official` (no {SUMMARY_FILE}):"
                             " --overwrite replaces only an earlier import; choose another --out")
    converted_by = _converted_by()
    summary: dict[str, Any] = {"format": "jowa-import", "converted_by": converted_by, "out": str(out)}

    tok_part = model_part = None
    if tokenizer_path is not None:
        path = Path(tokenizer_path)
        state, prefix = strip_prefix_named(read_official(path))
        tcfg, tok_tensors, lpips = convert_tokenizer(state, str(path))
        src = _source(path)
        tok_part = (tcfg, tok_tensors, lpips, src)
        summary["tokenizer"] = {
            "source": src, "key_prefix": prefix, "config": to_dict(tcfg),
            "parameters": sum(v.numel() for v in tok_tensors.values()),
            "lpips": ({"file": LPIPS_FILE, "tensors": len(lpips), "numel": sum(v.numel() for v in lpips.values())}
                      if lpips else None),
        }
    if model_path is not None:
        path = Path(model_path)
        state, prefix = strip_prefix_named(read_official(path))
        wcfg, tensors = convert_world_model(state, num_heads, str(path))
        dropped = sorted(k for k in state if _MASK_RE.match(k) or k.endswith(".indices"))
        src = _source(path)
        model = build_world_model(wcfg, tensors)
        target = sum(p.numel() for p in model.head_q_target.parameters())
        model_part = (model, src)
        summary["model"] = {
            "source": src, "key_prefix": prefix, "preset": wcfg.preset, "config": to_dict(wcfg),
            "num_heads_inferred": num_heads is None,
            "parameters": {"trainable": model.num_trainable_parameters(), "target_head": target,
                           "total": sum(p.numel() for p in model.parameters())},
            "dropped_keys": dropped,
        }

    with ckpt.atomic_dir(out, overwrite=True) as tmp:
        if tok_part is not None:
            tcfg, tok_tensors, lpips, src = tok_part
            tok = _on_meta(Tokenizer, tcfg)
            tok.load_state_dict(tok_tensors, strict=True, assign=True)
            save_tokenizer(tok, tmp / "tokenizer", source={"file": src["file"], "sha256": src["sha256"]},
                           converted_by=converted_by)
            if lpips:
                ckpt.save_tensors(tmp / LPIPS_FILE, lpips)
        if model_part is not None:
            model, src = model_part
            save_converted_world_model(model, tmp / "model", converted_by=converted_by,
                                       source={"file": src["file"], "sha256": src["sha256"]})
        ckpt.write_json_atomic(tmp / SUMMARY_FILE, summary)
    return summary
