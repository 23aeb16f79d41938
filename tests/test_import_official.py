"""`jowa import-official`: conversion of the released official JOWA checkpoints.

The official state dicts are synthesised here from the key list of the reference (§2.10, §1.2-1.4, §1.7),
written out by hand with the official names and shapes (not derived from this project's modules), filled
with random values and saved with ``torch.save``. The imported model is checked against an independent
functional forward written on the official names (embeddings, pre-LN GPT blocks, MLP heads, TD-MPC2 Q
ensemble in the official parameter order).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import typer
from typer.testing import CliRunner

from jowa_cli.import_cmd import import_official as import_cli
from jowa_core.interop.official import (
    OfficialFormatError,
    convert_tokenizer,
    convert_world_model,
    import_official,
    read_official,
    strip_prefix,
)
from jowa_core.models.world_action import WorldActionConfig, load_world_action

ACTIONS, ATOMS, TPS = 18, 51, 37
PREFIXES = ["", "module.", "_orig_mod.", "_orig_mod.module."]


# ----------------------------------------------------------------------------------------------------------
# Official-format state dicts, written from the reference key list
# ----------------------------------------------------------------------------------------------------------


def official_world_state(E: int, L: int, m: int, q: int, seed: int = 0, vocab: int = 2048, tasks: int = 60,
                         steps: int = 8, indices: bool = True, masks: bool = False,
                         meta: bool = False) -> dict[str, torch.Tensor]:
    """An official ``JOWAModel`` state dict (no prefix): reference §2.10, random values."""
    g = torch.Generator().manual_seed(seed)
    T = TPS * steps

    def t(*shape: int, scale: float = 0.02, offset: float = 0.0) -> torch.Tensor:
        if meta:
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=g) * scale + offset

    def lin(out_f: int, in_f: int, prefix: str, sd: dict) -> None:
        sd[prefix + ".weight"] = t(out_f, in_f, scale=1 / math.sqrt(in_f))
        sd[prefix + ".bias"] = t(out_f, scale=0.1)

    def ln(n: int, prefix: str, sd: dict) -> None:
        sd[prefix + ".weight"] = t(n, scale=0.1, offset=1.0)
        sd[prefix + ".bias"] = t(n, scale=0.1)

    sd: dict[str, torch.Tensor] = {
        "pos_emb.weight": t(T, E, scale=0.5),
        "task_emb.embedding_tables.0.weight": t(tasks, E, scale=0.5),
        "task_emb.embedding_tables.1.weight": t(tasks, E, scale=0.5),
        "embedder.embedding_tables.0.weight": t(18, E, scale=0.5),
        "embedder.embedding_tables.1.weight": t(vocab, E, scale=0.5),
    }
    for i in range(L):
        b = f"transformer.blocks.{i}"
        ln(E, f"{b}.ln1", sd)
        ln(E, f"{b}.ln2", sd)
        for name in ("key", "query", "value", "proj"):
            lin(E, E, f"{b}.attn.{name}", sd)
        if masks:
            sd[f"{b}.attn.mask"] = torch.tril(torch.ones(T, T))
        lin(4 * E, E, f"{b}.mlp.0", sd)
        lin(E, 4 * E, f"{b}.mlp.2", sd)
    ln(E, "transformer.ln_f", sd)
    # Head indices: absolute positions in the 37-token block pattern (Slicer.indices).
    pos = list(range(T))
    head_idx = {
        "head_observations": [p for p in pos if p % TPS != 35],
        "head_rewards": [p for p in pos if p % TPS == 36],
        "head_ends": [p for p in pos if p % TPS == 36],
        "head_q": [p for p in pos if p % TPS == 35],
        "head_q_target": [p for p in pos if p % TPS == 35],
    }
    for name, n_out in (("head_observations", vocab), ("head_rewards", 3), ("head_ends", 2)):
        if indices:
            sd[f"{name}.indices"] = torch.tensor(head_idx[name], dtype=torch.int64)
        lin(E, E, f"{name}.head_module.0", sd)
        lin(n_out, E, f"{name}.head_module.2", sd)
    for name in ("head_q", "head_q_target"):
        if indices:
            sd[f"{name}.indices"] = torch.tensor(head_idx[name], dtype=torch.int64)
        p = f"{name}.head_module.params."
        sd[p + "0"] = t(q, m, E, scale=1 / math.sqrt(E))  # W1
        sd[p + "1"] = t(q, m, scale=0.1)  # b1
        sd[p + "2"] = t(q, m, scale=0.1, offset=1.0)  # LN1.w
        sd[p + "3"] = t(q, m, scale=0.1)  # LN1.b
        sd[p + "4"] = t(q, m, m, scale=1 / math.sqrt(m))  # W2
        sd[p + "5"] = t(q, m, scale=0.1)  # b2
        sd[p + "6"] = t(q, m, scale=0.1, offset=1.0)  # LN2.w
        sd[p + "7"] = t(q, m, scale=0.1)  # LN2.b
        sd[p + "8"] = t(q, ACTIONS * ATOMS, m, scale=1 / math.sqrt(m))  # W3
        sd[p + "9"] = t(q, ACTIONS * ATOMS, scale=0.1)  # b3
    return sd


def _resnet(prefix: str, c: int, sd: dict, t) -> None:
    for n in ("norm1", "norm2"):
        sd[f"{prefix}.{n}.weight"], sd[f"{prefix}.{n}.bias"] = t(c, offset=1.0), t(c)
    for n in ("conv1", "conv2"):
        sd[f"{prefix}.{n}.weight"], sd[f"{prefix}.{n}.bias"] = t(c, c, 3, 3), t(c)


def _attn(prefix: str, c: int, sd: dict, t) -> None:
    sd[f"{prefix}.norm.weight"], sd[f"{prefix}.norm.bias"] = t(c, offset=1.0), t(c)
    for n in ("q", "k", "v", "proj_out"):
        sd[f"{prefix}.{n}.weight"], sd[f"{prefix}.{n}.bias"] = t(c, c, 1, 1), t(c)


def official_tokenizer_state(seed: int = 0, lpips: bool = True) -> dict[str, torch.Tensor]:
    """An official tokenizer state dict (reference §1.2, §1.4, §2.10): ch 64, z 512, codebook 2048x512."""
    g = torch.Generator().manual_seed(seed)

    def t(*shape: int, offset: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=g) * 0.05 + offset

    sd: dict[str, torch.Tensor] = {"encoder.conv_in.weight": t(64, 1, 3, 3), "encoder.conv_in.bias": t(64)}
    for lvl in range(3):
        for j in range(2):
            _resnet(f"encoder.down.{lvl}.block.{j}", 64, sd, t)
            if lvl in (1, 2):
                _attn(f"encoder.down.{lvl}.attn.{j}", 64, sd, t)
    sd["encoder.down.0.downsample.conv.weight"], sd["encoder.down.0.downsample.conv.bias"] = t(64, 64, 8, 8), t(64)
    sd["encoder.down.1.downsample.conv.weight"], sd["encoder.down.1.downsample.conv.bias"] = t(64, 64, 3, 3), t(64)
    _resnet("encoder.mid.block_1", 64, sd, t)
    _attn("encoder.mid.attn_1", 64, sd, t)
    _resnet("encoder.mid.block_2", 64, sd, t)
    sd["encoder.norm_out.weight"], sd["encoder.norm_out.bias"] = t(64, offset=1.0), t(64)
    sd["encoder.conv_out.weight"], sd["encoder.conv_out.bias"] = t(512, 64, 3, 3), t(512)
    sd["pre_quant_conv.weight"], sd["pre_quant_conv.bias"] = t(512, 512, 1, 1), t(512)
    sd["embedding.weight"] = t(2048, 512)
    sd["post_quant_conv.weight"], sd["post_quant_conv.bias"] = t(512, 512, 1, 1), t(512)
    sd["decoder.conv_in.weight"], sd["decoder.conv_in.bias"] = t(64, 512, 3, 3), t(64)
    _resnet("decoder.mid.block_1", 64, sd, t)
    _attn("decoder.mid.attn_1", 64, sd, t)
    _resnet("decoder.mid.block_2", 64, sd, t)
    for lvl in range(3):
        for j in range(3):
            _resnet(f"decoder.up.{lvl}.block.{j}", 64, sd, t)
    for lvl in (1, 2):
        sd[f"decoder.up.{lvl}.upsample.conv.weight"], sd[f"decoder.up.{lvl}.upsample.conv.bias"] = (
            t(64, 64, 3, 3), t(64))
    sd["decoder.norm_out.weight"], sd["decoder.norm_out.bias"] = t(64, offset=1.0), t(64)
    sd["decoder.conv_out.weight"], sd["decoder.conv_out.bias"] = t(1, 64, 3, 3), t(1)
    if lpips:
        sd["lpips.scaling_layer.shift"] = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
        sd["lpips.scaling_layer.scale"] = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
        vgg = {"slice1": [(0, 3, 64), (2, 64, 64)], "slice2": [(5, 64, 128), (7, 128, 128)],
               "slice3": [(10, 128, 256), (12, 256, 256), (14, 256, 256)],
               "slice4": [(17, 256, 512), (19, 512, 512), (21, 512, 512)],
               "slice5": [(24, 512, 512), (26, 512, 512), (28, 512, 512)]}
        for sl, convs in vgg.items():
            for idx, c_in, c_out in convs:
                sd[f"lpips.net.{sl}.{idx}.weight"], sd[f"lpips.net.{sl}.{idx}.bias"] = (
                    t(c_out, c_in, 3, 3), t(c_out))
        for i, c in enumerate((64, 128, 256, 512, 512)):
            sd[f"lpips.lin{i}.model.1.weight"] = t(1, c, 1, 1).abs()
    return sd


def with_prefix(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


# ----------------------------------------------------------------------------------------------------------
# Independent functional forward on the official names
# ----------------------------------------------------------------------------------------------------------


def mish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tanh(F.softplus(x))


def official_q_head(p: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """TD-MPC2 ensemble, member by member, official parameter order W1,b1,LN1.w,LN1.b,W2,b2,LN2.w,LN2.b,W3,b3:
    Linear -> Dropout (eval: none) -> LayerNorm -> Mish -> Linear -> LayerNorm -> Mish -> Linear. (N,E)->(q,N,918)"""
    outs = []
    for i in range(p[0].shape[0]):
        h = x @ p[0][i].T + p[1][i]
        h = mish(F.layer_norm(h, (h.shape[-1],), p[2][i], p[3][i], eps=1e-5))
        h = h @ p[4][i].T + p[5][i]
        h = mish(F.layer_norm(h, (h.shape[-1],), p[6][i], p[7][i], eps=1e-5))
        outs.append(h @ p[8][i].T + p[9][i])
    return torch.stack(outs)


def official_forward(sd: dict, tokens: torch.Tensor, task: int, num_heads: int) -> dict[str, torch.Tensor]:
    """Eval-mode forward of an official state dict on (1, T) tokens from position 0 (one game)."""
    T = tokens.shape[1]
    E = sd["pos_emb.weight"].shape[1]
    toks = tokens[0].tolist()
    rows = []
    for p in range(T):  # token by token, as the Embedder's block masks pick tables
        if p % TPS == 36:
            e = sd["embedder.embedding_tables.0.weight"][toks[p]] + sd["task_emb.embedding_tables.0.weight"][task]
        else:
            e = sd["embedder.embedding_tables.1.weight"][toks[p]] + sd["task_emb.embedding_tables.1.weight"][task]
        rows.append(e + sd["pos_emb.weight"][p])
    x = torch.stack(rows)[None]  # (1, T, E)
    d = E // num_heads
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    i = 0
    while f"transformer.blocks.{i}.ln1.weight" in sd:
        b = f"transformer.blocks.{i}."
        h = F.layer_norm(x, (E,), sd[b + "ln1.weight"], sd[b + "ln1.bias"])
        q, k, v = (F.linear(h, sd[f"{b}attn.{n}.weight"], sd[f"{b}attn.{n}.bias"]).view(1, T, num_heads, d)
                   .transpose(1, 2) for n in ("query", "key", "value"))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(1, T, E)
        x = x + F.linear(y, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        h = F.layer_norm(x, (E,), sd[b + "ln2.weight"], sd[b + "ln2.bias"])
        h = F.gelu(F.linear(h, sd[b + "mlp.0.weight"], sd[b + "mlp.0.bias"]))
        x = x + F.linear(h, sd[b + "mlp.2.weight"], sd[b + "mlp.2.bias"])
        i += 1
    x = F.layer_norm(x, (E,), sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"])[0]  # (T, E)

    def mlp_head(name: str, xs: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.linear(xs, sd[f"{name}.head_module.0.weight"], sd[f"{name}.head_module.0.bias"]))
        return F.linear(h, sd[f"{name}.head_module.2.weight"], sd[f"{name}.head_module.2.bias"])

    obs_pos = [p for p in range(T) if p % TPS != 35]
    act_pos = [p for p in range(T) if p % TPS == 36]
    q_pos = [p for p in range(T) if p % TPS == 35]
    return {
        "obs": mlp_head("head_observations", x[obs_pos]),
        "reward": mlp_head("head_rewards", x[act_pos]),
        "end": mlp_head("head_ends", x[act_pos]),
        "q": official_q_head([sd[f"head_q.head_module.params.{j}"] for j in range(10)], x[q_pos]),
        "q_target": official_q_head([sd[f"head_q_target.head_module.params.{j}"] for j in range(10)], x[q_pos]),
    }


def compare_forward(model, sd: dict, num_heads: int, steps: int = 2, task: int = 6, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, sd["embedder.embedding_tables.1.weight"].shape[0], (1, steps, 36), generator=g)
    act = torch.randint(0, ACTIONS, (1, steps, 1), generator=g)
    tokens = torch.cat([obs, act], -1).flatten(1)
    ref = official_forward(sd, tokens, task, num_heads)
    with torch.no_grad():
        out = model(tokens, torch.tensor([task]), with_target=True)
    tol = dict(atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(out.obs_logits[0], ref["obs"], **tol)
    torch.testing.assert_close(out.reward_logits[0], ref["reward"], **tol)
    torch.testing.assert_close(out.end_logits[0], ref["end"], **tol)
    nq = ref["q"].shape[0]
    # The official 918 outputs are '(a z)', a = 18 outer: logits of action a are [a*51, (a+1)*51).
    ref_q = ref["q"].view(nq, 1, steps, ACTIONS, ATOMS)
    torch.testing.assert_close(out.q_logits, ref_q, **tol)
    torch.testing.assert_close(out.q_target_logits, ref["q_target"].view(nq, 1, steps, ACTIONS, ATOMS), **tol)
    a = 5
    torch.testing.assert_close(out.q_logits[0, 0, 1, a], ref["q"][0, 1, a * ATOMS:(a + 1) * ATOMS], **tol)
    # Expected Q: mean over members of softmax . linspace(-10, 30, 51).
    support = torch.linspace(-10, 30, 51)
    exp_q = ref["q"].view(nq, steps, ACTIONS, ATOMS).softmax(-1).mean(0) @ support
    torch.testing.assert_close(model.q_values(out.q_logits)[0], exp_q, **tol)


# ----------------------------------------------------------------------------------------------------------
# CLI helpers
# ----------------------------------------------------------------------------------------------------------


def cli_app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command("import-official", help=import_cli.__doc__.splitlines()[0])(import_cli)
    return app


def run_cli(*args: str):
    return CliRunner().invoke(cli_app(), [str(a) for a in args])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# World-action model, 40M (the real released shapes)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imported_40m(tmp_path_factory):
    d = tmp_path_factory.mktemp("official40m")
    sd = official_world_state(E=512, L=4, m=768, q=1, masks=True)
    path = d / "JOWA_40M.pt"
    torch.save(with_prefix(sd, "module."), path)
    out = d / "ckpt"
    result = run_cli("--ckpt", path, "--out", out, "--json", "-")
    assert result.exit_code == 0, result.output
    return sd, path, out, json.loads(result.stdout)


def test_40m_summary_and_metadata(imported_40m):
    sd, path, out, summary = imported_40m
    m = summary["model"]
    assert m["preset"] == "40m" and m["key_prefix"] == "module."
    cfg = m["config"]
    assert (cfg["num_layers"], cfg["embed_dim"], cfg["num_heads"], cfg["q_mlp_dim"], cfg["num_q"]) == (4, 512, 8,
                                                                                                        768, 1)
    assert (cfg["obs_vocab"], cfg["max_steps"], cfg["max_tasks"]) == (2048, 8, 60)
    assert m["parameters"] == {"trainable": 17_416_091, "target_head": 19_109_681 - 17_416_091,
                               "total": 19_109_681}
    assert m["source"]["sha256"] == sha256(path) and m["source"]["file"] == "JOWA_40M.pt"
    assert sorted(m["dropped_keys"]) == sorted([f"transformer.blocks.{i}.attn.mask" for i in range(4)] + [
        f"{h}.indices" for h in ("head_observations", "head_rewards", "head_ends", "head_q", "head_q_target")])
    assert "tokenizer" not in summary and not (out / "tokenizer").exists() and not (out / "lpips.safetensors").exists()
    assert json.loads((out / "import.json").read_text()) == summary
    meta = json.loads((out / "model" / "checkpoint.json").read_text())
    assert meta["kind"] == "world_action" and meta["source"] == {"file": "JOWA_40M.pt", "sha256": sha256(path)}
    assert "import-official" in meta["converted_by"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["JOWA_40M.pt", "ckpt"]  # no temporary left


@pytest.fixture(scope="module")
def loaded_40m(imported_40m):
    return load_world_action(str(imported_40m[2] / "model"))


def test_40m_tensors_land_in_place(imported_40m, loaded_40m):
    sd = imported_40m[0]
    model, meta = loaded_40m
    assert meta["config"]["preset"] == "40m"
    assert model.num_trainable_parameters() == 17_416_091
    eq = torch.testing.assert_close
    eq(model.pos_emb.weight, sd["pos_emb.weight"], rtol=0, atol=0)
    eq(model.act_emb.weight, sd["embedder.embedding_tables.0.weight"], rtol=0, atol=0)
    eq(model.obs_emb.weight, sd["embedder.embedding_tables.1.weight"], rtol=0, atol=0)
    eq(model.act_task_emb.weight, sd["task_emb.embedding_tables.0.weight"], rtol=0, atol=0)
    eq(model.obs_task_emb.weight, sd["task_emb.embedding_tables.1.weight"], rtol=0, atol=0)
    blk = model.transformer.blocks[2]
    eq(blk.attn.query.weight, sd["transformer.blocks.2.attn.query.weight"], rtol=0, atol=0)
    eq(blk.attn.key.bias, sd["transformer.blocks.2.attn.key.bias"], rtol=0, atol=0)
    eq(blk.attn.value.weight, sd["transformer.blocks.2.attn.value.weight"], rtol=0, atol=0)
    eq(blk.mlp[2].weight, sd["transformer.blocks.2.mlp.2.weight"], rtol=0, atol=0)
    eq(blk.ln2.bias, sd["transformer.blocks.2.ln2.bias"], rtol=0, atol=0)
    eq(model.head_obs[2].weight, sd["head_observations.head_module.2.weight"], rtol=0, atol=0)
    eq(model.head_reward[0].bias, sd["head_rewards.head_module.0.bias"], rtol=0, atol=0)
    eq(model.head_end[2].weight, sd["head_ends.head_module.2.weight"], rtol=0, atol=0)
    for j, name in enumerate(("w1", "b1", "ln1_w", "ln1_b", "w2", "b2", "ln2_w", "ln2_b", "w3", "b3")):
        eq(getattr(model.head_q, name), sd[f"head_q.head_module.params.{j}"], rtol=0, atol=0)
        eq(getattr(model.head_q_target, name), sd[f"head_q_target.head_module.params.{j}"], rtol=0, atol=0)
    assert not any(p.requires_grad for p in model.head_q_target.parameters())


def test_40m_forward_matches_official_computation(imported_40m, loaded_40m):
    sd = imported_40m[0]
    model = loaded_40m[0]
    compare_forward(model, sd, num_heads=8)
    # The Q head alone, on arbitrary inputs, against the member-by-member official order.
    x = torch.randn(5, 512, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model.head_q(x)
    ref = official_q_head([sd[f"head_q.head_module.params.{j}"] for j in range(10)], x)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_existing_out_needs_overwrite(imported_40m, tmp_path):
    _, path, out, _ = imported_40m
    small = tmp_path / "small.pt"
    torch.save(official_world_state(E=64, L=1, m=32, q=1), small)
    again = run_cli("--ckpt", small, "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert load_world_action(str(out / "model"))[1]["config"]["preset"] == "40m"  # untouched
    target = tmp_path / "o"
    assert run_cli("--ckpt", small, "--out", target).exit_code == 0
    replaced = run_cli("--ckpt", small, "--out", target, "--overwrite", "--num-heads", "2")
    assert replaced.exit_code == 0, replaced.output
    assert load_world_action(str(target / "model"))[1]["config"]["num_heads"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "small.pt"]


# ----------------------------------------------------------------------------------------------------------
# Other shapes: num_q = 3 stacking, head count, 70M / 150M on meta tensors
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_heads", [None, 4])
def test_custom_three_member_ensemble(tmp_path, num_heads):
    sd = official_world_state(E=128, L=2, m=96, q=3, seed=7, vocab=300, tasks=20, steps=3)
    cfg, ours = convert_world_model(with_prefix(sd, "_orig_mod."), num_heads=num_heads)
    assert cfg.preset == "custom" and cfg.num_heads == (num_heads or 2)
    assert (cfg.num_q, cfg.q_mlp_dim, cfg.obs_vocab, cfg.max_tasks, cfg.max_steps) == (3, 96, 300, 20, 3)
    path = tmp_path / "custom.pt"
    torch.save({"state_dict": with_prefix(sd, "_orig_mod.module.")}, path)  # wrapper + double prefix
    summary = import_official(None, path, tmp_path / "out", num_heads=num_heads)
    assert summary["model"]["key_prefix"] == "_orig_mod.module."
    model, _ = load_world_action(str(tmp_path / "out" / "model"))
    torch.testing.assert_close(model.head_q.w2[1], sd["head_q.head_module.params.4"][1], rtol=0, atol=0)
    compare_forward(model, sd, num_heads=cfg.num_heads, steps=3, task=19)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_prefixes_give_the_same_tensors(prefix):
    sd = official_world_state(E=64, L=1, m=32, q=1, seed=2)
    base_cfg, base = convert_world_model(sd)
    cfg, ours = convert_world_model(with_prefix(sd, prefix))
    assert cfg == base_cfg and ours.keys() == base.keys()
    assert all(torch.equal(ours[k], base[k]) for k in ours)
    assert strip_prefix(with_prefix(sd, prefix)).keys() == sd.keys()


def test_indices_and_masks_are_optional():
    sd = official_world_state(E=64, L=2, m=32, q=1, seed=4, indices=False, masks=False)
    cfg, ours = convert_world_model(sd)
    assert cfg.num_layers == 2 and not any(k.endswith(("indices", "mask")) for k in ours)


@pytest.mark.parametrize(
    "E, L, m, q, preset, trainable, total",
    [
        (768, 6, 1024, 1, "70m", 50_567_579, 53_349_681),
        (768, 12, 1792, 3, "150m", 109_045_447, 127_778_185),
    ],
)
def test_released_sizes_on_meta_tensors(E, L, m, q, preset, trainable, total):
    sd = official_world_state(E=E, L=L, m=m, q=q, meta=True)
    assert sum(v.numel() for k, v in sd.items() if not k.endswith("indices")) == total  # the key list is right
    cfg, ours = convert_world_model(with_prefix(sd, "module."))
    assert cfg.preset == preset and cfg.num_heads == 12 and cfg.num_layers == L and cfg.num_q == q
    assert sum(v.numel() for k, v in ours.items() if not k.startswith("head_q_target.")) == trainable
    assert sum(v.numel() for v in ours.values()) == total
    assert WorldActionConfig.PRESETS[preset]["num_heads"] == cfg.num_heads


# ----------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the key, exit 2, nothing written
# ----------------------------------------------------------------------------------------------------------


def _drop(sd, key):
    sd.pop(key)


def _extra(sd, key):
    sd[key] = torch.zeros(3)


def _reshape(sd, key):
    sd[key] = torch.zeros(4, sd[key].shape[1])


def _bad_indices(sd, key):
    sd[key] = sd[key] + 1


def _bad_mask(sd, key):
    sd[key] = torch.ones_like(sd[key])


@pytest.mark.parametrize(
    "mutate, key, needle",
    [
        (_drop, "transformer.blocks.1.attn.proj.bias", "missing"),
        (_drop, "head_q_target.head_module.params.9", "missing"),
        (_extra, "transformer.blocks.0.attn.rel_bias", "unexpected"),
        (_extra, "head_values.indices", "unexpected"),
        (_reshape, "head_rewards.head_module.2.weight", "shape"),
        (_bad_indices, "head_q.indices", "token layout"),
        (_bad_mask, "transformer.blocks.0.attn.mask", "causal"),
    ],
)
def test_bad_model_file_exits_2(tmp_path, mutate, key, needle):
    sd = official_world_state(E=64, L=2, m=32, q=1, seed=5, masks=True)
    mutate(sd, key)
    path = tmp_path / "JOWA_bad.pt"
    torch.save(with_prefix(sd, "module."), path)
    out = tmp_path / "out"
    result = run_cli("--ckpt", path, "--out", out)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "JOWA_bad.pt" in lines[0] and key in lines[0] and needle in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["JOWA_bad.pt"]


class _NotAllowed:
    pass


@pytest.mark.parametrize("kind", ["lfs", "pickle", "garbage", "tensor", "missing"])
def test_unreadable_files_exit_2(tmp_path, kind):
    path = tmp_path / "JOWA_150M.pt"
    if kind == "lfs":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 511212618\n")
    elif kind == "pickle":
        torch.save({"w": _NotAllowed()}, path)  # needs code to unpickle: refused by weights_only
    elif kind == "garbage":
        path.write_bytes(b"\x00not a torch file")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    result = run_cli("--ckpt", path, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "JOWA_150M.pt" in lines[0], result.stderr
    if kind == "lfs":
        assert "LFS" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_needs_inputs(tmp_path):
    assert run_cli("--out", tmp_path / "o").exit_code == 2
    assert run_cli("--ckpt", tmp_path / "x.pt").exit_code == 2
    assert import_cli.__doc__.splitlines()[0].startswith("Convert the released official JOWA checkpoints")
    with pytest.raises(OfficialFormatError):
        read_official(_write(tmp_path / "l.pt", b"version https://git-lfs.github.com/spec/v1\n"))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------------------------------------
# Tokenizer (+ LPIPS)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok_state() -> dict[str, torch.Tensor]:
    return official_tokenizer_state(seed=3)


def no_lpips(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not k.startswith("lpips.")}


def test_official_tokenizer_key_list_has_the_released_sizes(tok_state):
    sd = tok_state
    tok = sum(v.numel() for k, v in sd.items() if not k.startswith("lpips."))
    lp = sum(v.numel() for k, v in sd.items() if k.startswith("lpips.") and "scaling_layer" not in k)
    assert (tok, lp) == (4_047_489, 14_716_160)  # reference §2.10


def test_tokenizer_import_roundtrip(tmp_path, tok_state):
    from jowa_core.models.tokenizer import load_tokenizer

    sd = tok_state
    path = tmp_path / "tokenizer.pt"
    torch.save(with_prefix(sd, "module."), path)
    out = tmp_path / "ckpt"
    result = run_cli("--tokenizer", path, "--out", out, "--json", "-")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    t = summary["tokenizer"]
    assert t["parameters"] == 4_047_489 and t["key_prefix"] == "module." and t["source"]["sha256"] == sha256(path)
    assert t["config"]["vocab_size"] == 2048 and t["config"]["embed_dim"] == 512
    assert "model" not in summary and not (out / "model").exists()
    meta = json.loads((out / "tokenizer" / "checkpoint.json").read_text())
    assert meta["kind"] == "tokenizer" and meta["source"]["sha256"] == sha256(path)

    tok = load_tokenizer(out / "tokenizer")
    own = tok.state_dict()
    assert own.keys() == {k for k in sd if not k.startswith("lpips.")}
    assert all(torch.equal(own[k], sd[k]) for k in own)
    frames = torch.randint(0, 256, (2, 84, 84), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tokens = tok.encode(frames)
    assert tokens.shape == (2, 36) and int(tokens.min()) >= 0 and int(tokens.max()) < 2048
    # Quantisation against the official codebook: nearest code in squared L2.
    z = tok.encode_latents(tok.preprocess(frames)).permute(0, 2, 3, 1).reshape(-1, 512)
    zd, cb = z.double(), sd["embedding.weight"].double()
    dist = (zd**2).sum(1, keepdim=True) + (cb**2).sum(1) - 2 * zd @ cb.T  # squared L2, (72, 2048)
    chosen = dist.gather(1, tokens.reshape(-1, 1))[:, 0]
    torch.testing.assert_close(chosen, dist.min(-1).values, rtol=1e-5, atol=1e-4)
    rec = tok.decode(tokens)
    assert rec.shape == (2, 1, 84, 84) and float(rec.min()) >= 0 and float(rec.max()) <= 1

    from safetensors.torch import load_file

    lp = load_file(str(out / "lpips.safetensors"))
    assert lp.keys() == {k[len("lpips."):] for k in sd if k.startswith("lpips.")}
    assert all(torch.equal(lp[k], sd["lpips." + k]) for k in lp)
    assert t["lpips"]["tensors"] == len(lp)


def test_lpips_weights_load_with_load_lpips(tmp_path, tok_state):
    lpips_mod = pytest.importorskip("jowa_core.models.lpips")
    sd = tok_state
    path = tmp_path / "tokenizer.pt"
    torch.save(sd, path)
    import_official(path, None, tmp_path / "out")
    lp = lpips_mod.load_lpips(tmp_path / "out" / "lpips.safetensors")
    own = lp.state_dict()
    assert all(torch.equal(own[k], sd["lpips." + k]) for k in own)
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        d = lp(x, x.flip(-1))
    assert torch.isfinite(d).all()


def test_tokenizer_without_lpips_and_with_model(tmp_path, tok_state):
    tpath, mpath = tmp_path / "tokenizer.pt", tmp_path / "JOWA_x.pt"
    torch.save(no_lpips(tok_state), tpath)
    torch.save(official_world_state(E=64, L=1, m=32, q=1), mpath)
    summary = import_official(tpath, mpath, tmp_path / "out", num_heads=1)
    assert summary["tokenizer"]["lpips"] is None and summary["model"]["preset"] == "custom"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["import.json", "model", "tokenizer"]


@pytest.mark.parametrize(
    "mutate, key",
    [
        (_drop, "decoder.up.2.block.1.conv2.weight"),
        (_extra, "decoder.up.1.attn.0.norm.weight"),
        (lambda sd, key: sd.__setitem__(key, torch.zeros(64, 64, 3, 3)), "encoder.down.0.downsample.conv.weight"),
    ],
)
def test_bad_tokenizer_file_exits_2(tmp_path, tok_state, mutate, key):
    sd = no_lpips(tok_state)
    mutate(sd, key)
    tpath, mpath = tmp_path / "tokenizer_bad.pt", tmp_path / "JOWA_ok.pt"
    torch.save(sd, tpath)
    torch.save(official_world_state(E=64, L=1, m=32, q=1), mpath)
    result = run_cli("--tokenizer", tpath, "--ckpt", mpath, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "tokenizer_bad.pt" in lines[0] and key in lines[0], result.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_convert_tokenizer_api(tok_state):
    sd = tok_state
    cfg, tok, lp = convert_tokenizer(with_prefix(sd, "_orig_mod."))
    assert cfg.vocab_size == 2048 and len(tok) + len(lp) == len(sd)
    assert all(not k.startswith("lpips.") for k in tok) and "lin4.model.1.weight" in lp
