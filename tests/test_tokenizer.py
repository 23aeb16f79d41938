"""The VQ-VAE tokenizer: official architecture (names, shapes, counts, the decoder quirk), quantizer, losses,
LPIPS loading, training (loss goes down, resume is bit-for-bit), tokenizing stores, and the CLI.

Real Atari frames come straight from the emulator (a few hundred steps of two games). Training uses a tiny
config; everything runs single-threaded, which on a small shared CPU is much faster than 2 threads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import zarr
from safetensors.torch import save_file
from typer.testing import CliRunner

from jowa_cli import tokenizer_cmd
from jowa_core import games
from jowa_core.checkpoint import CheckpointError, latest_checkpoint
from jowa_core.config import load_config
from jowa_core.data import tokenize as tokenize_mod
from jowa_core.data.segments import load_obs_tokens
from jowa_core.data.store import open_store, write_store
from jowa_core.data.tokenize import TokenizeError, tokenize_stores
from jowa_core.envs.atari import AtariEnv, AtariSettings
from jowa_core.models.lpips import LPIPS, load_lpips
from jowa_core.models.tokenizer import Tokenizer, TokenizerConfig, load_tokenizer, save_tokenizer
from jowa_core.train.tokenizer import (
    METRIC_COLUMNS,
    TokenizerTrainConfig,
    TrainError,
    batch_counts,
    read_metrics,
    train_tokenizer,
)

TINY = dict(ch=8, z_channels=16, embed_dim=16, vocab_size=32, num_res_blocks=1, attn_resolutions=[6])
GAMES = {"Pong": 3, "Breakout": 4}  # episodes per game
EPISODE_STEPS = 40
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tokenizer.yaml"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """2 OpenMP threads on 2 busy cores spin-wait badly (10x slower here); one thread is fast and exact."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_cfg(**kw) -> TokenizerConfig:
    return TokenizerConfig(**{**TINY, **kw})


def _emulator_episodes(game: str, episodes: int, seed: int) -> dict[str, np.ndarray]:
    env = AtariEnv(game, AtariSettings(max_episode_steps=EPISODE_STEPS), seed=seed)
    full = np.array(games.get(game).minimal_actions, np.int16)
    rng = np.random.default_rng(seed)
    obs, action, reward, terminal, lengths = [], [], [], [], []
    for _ in range(episodes):
        o = env.reset()
        n = 0
        while True:
            a = int(rng.integers(env.num_actions))
            obs.append(o)
            action.append(full[a])
            o, r, _, _ = env.step(a)
            reward.append(np.clip(r, -1, 1))
            terminal.append(env.terminal)
            n += 1
            if env.terminal:
                break
        lengths.append(n)
    lengths_a = np.array(lengths, np.int64)
    return dict(
        obs=np.stack(obs),
        action=np.array(action, np.int16),
        reward=np.array(reward, np.float32),
        terminal=np.array(terminal, bool),
        episode_start=np.concatenate([[0], np.cumsum(lengths_a)[:-1]]).astype(np.int64),
        episode_length=lengths_a,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("atari")
    for seed, (game, episodes) in enumerate(GAMES.items()):
        write_store(root / f"{game}.zarr", game, **_emulator_episodes(game, episodes, seed))
    return root


def train_cfg(**kw) -> TokenizerTrainConfig:
    base = dict(model=TINY, steps=12, batch_size=8, lr=3e-3, heldout_frames=12, grid_frames=6, log_every=1,
                save_every=4, grid_every=6, num_workers=0, device="cpu", seed=3)
    return load_config(TokenizerTrainConfig, None, [f"{k}={json.dumps(v)}" for k, v in {**base, **kw}.items()])


@pytest.fixture(scope="module")
def tiny_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tok"
    summary = train_tokenizer(train_cfg(), data, out)
    return out, summary


# --------------------------------------------------------------------------------------------------------
# Architecture


def _wb(prefix: str) -> list[str]:
    return [f"{prefix}.weight", f"{prefix}.bias"]


RES = ("norm1", "conv1", "norm2", "conv2")
ATTN = ("norm", "q", "k", "v", "proj_out")


def official_tokenizer_keys() -> set[str]:
    """Reference §2.10, written out: the official Tokenizer state dict without ``lpips.*``."""
    keys = _wb("encoder.conv_in")
    for level in (0, 1, 2):
        for b in (0, 1):
            keys += [k for m in RES for k in _wb(f"encoder.down.{level}.block.{b}.{m}")]
    for level in (1, 2):  # attention at 12x12 and 6x6, not at 84x84
        for a in (0, 1):
            keys += [k for m in ATTN for k in _wb(f"encoder.down.{level}.attn.{a}.{m}")]
    for level in (0, 1):
        keys += _wb(f"encoder.down.{level}.downsample.conv")
    for part in ("encoder", "decoder"):
        keys += [k for blk in ("block_1", "block_2") for m in RES for k in _wb(f"{part}.mid.{blk}.{m}")]
        keys += [k for m in ATTN for k in _wb(f"{part}.mid.attn_1.{m}")]
        keys += _wb(f"{part}.norm_out") + _wb(f"{part}.conv_out")
    keys += _wb("pre_quant_conv") + ["embedding.weight"] + _wb("post_quant_conv") + _wb("decoder.conv_in")
    for level in (0, 1, 2):
        for b in (0, 1, 2):
            keys += [k for m in RES for k in _wb(f"decoder.up.{level}.block.{b}.{m}")]
    for level in (1, 2):
        keys += _wb(f"decoder.up.{level}.upsample.conv")
    return set(keys)


def test_default_tokenizer_matches_official_layout():
    tok = Tokenizer()
    assert sum(p.numel() for p in tok.parameters()) == 4_047_489
    state = tok.state_dict()
    assert set(state) == official_tokenizer_keys()
    shapes = {
        "encoder.conv_in.weight": (64, 1, 3, 3),
        "encoder.down.0.downsample.conv.weight": (64, 64, 8, 8),  # k = 7 + 1, stride 7
        "encoder.down.1.downsample.conv.weight": (64, 64, 3, 3),
        "encoder.conv_out.weight": (512, 64, 3, 3),
        "pre_quant_conv.weight": (512, 512, 1, 1),
        "embedding.weight": (2048, 512),
        "decoder.conv_in.weight": (64, 512, 3, 3),
        "decoder.up.2.upsample.conv.weight": (64, 64, 3, 3),
        "decoder.conv_out.weight": (1, 64, 3, 3),
        "encoder.down.1.attn.0.q.weight": (64, 64, 1, 1),
    }
    for k, shape in shapes.items():
        assert tuple(state[k].shape) == shape, k
    norms = [m for m in tok.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 2 and m.eps == 1e-6 for m in norms)
    # Init: orthogonal encoder/decoder convs (relu gain), zero biases, codebook uniform(+-1/2048).
    w = state["encoder.down.0.block.0.conv1.weight"].flatten(1)
    torch.testing.assert_close(w @ w.T, 2.0 * torch.eye(64), atol=1e-4, rtol=0)  # gain^2 = 2
    assert not state["encoder.conv_in.bias"].any() and not state["decoder.conv_out.bias"].any()
    assert state["embedding.weight"].abs().max() <= 1 / 2048


def test_decoder_up_path_has_no_attention_and_spatial_path():
    tok = Tokenizer().eval()
    assert all(len(level.attn) == 0 for level in tok.decoder.up)
    assert not any(".up." in k and ".attn." in k for k in tok.state_dict())
    assert [len(level.block) for level in tok.decoder.up] == [3, 3, 3]
    sizes = {}
    for name in ("2", "1"):
        tok.decoder.up[int(name)].upsample.register_forward_hook(
            lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape[-2:]))
        )
    frames = torch.randint(0, 256, (1, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        z = tok.encode_latents(tok.preprocess(frames))
    assert z.shape == (1, 512, 6, 6)
    out = tok.decode(tok.encode(frames))
    assert sizes == {"2": (42, 42), "1": (84, 84)}  # x7 then x2
    assert out.shape == (1, 1, 84, 84) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_attention_block_is_the_official_formula():
    from jowa_core.models.tokenizer import AttnBlock

    torch.manual_seed(7)
    blk = AttnBlock(16, groups=2)
    x = torch.randn(2, 16, 6, 6)
    h = blk.norm(x)
    q, k, v = (m(h).reshape(2, 16, 36) for m in (blk.q, blk.k, blk.v))
    w = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * 16**-0.5, dim=2)  # (b, hw_q, hw_k)
    ref = x + blk.proj_out(torch.bmm(v, w.permute(0, 2, 1)).reshape(2, 16, 6, 6))
    torch.testing.assert_close(blk(x), ref, atol=1e-5, rtol=1e-5)


def test_quantizer_is_brute_force_nearest_code_row_major():
    torch.manual_seed(0)
    tok = Tokenizer(tiny_cfg()).eval()
    with torch.no_grad():
        tok.embedding.weight.normal_()  # well separated codes: no near-ties
    frames = torch.randint(0, 256, (3, 84, 84), dtype=torch.uint8)
    tokens = tok.encode(frames)
    assert tokens.shape == (3, 36) and tokens.dtype == torch.int64
    with torch.no_grad():
        z = tok.encode_latents(tok.preprocess(frames)).double()
    codes = tok.embedding.weight.double()
    for b in range(3):
        for h in range(6):
            for w in range(6):
                d = ((z[b, :, h, w][None] - codes) ** 2).sum(1)
                assert int(tokens[b, h * 6 + w]) == int(d.argmin())


def test_encode_accepts_uint8_channel_and_float_inputs():
    torch.manual_seed(1)
    tok = Tokenizer(tiny_cfg()).eval()
    frames = np.random.default_rng(0).integers(0, 256, (4, 84, 84), dtype=np.uint8)
    t1 = tok.encode(frames)
    torch.testing.assert_close(tok.encode(torch.from_numpy(frames)[:, None]), t1)
    torch.testing.assert_close(tok.encode(torch.from_numpy(frames).float() / 255), t1)
    with pytest.raises(ValueError, match="expected"):
        tok.encode(np.zeros((2, 80, 80), np.uint8))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the official way to tokenize (on GPU)
        tb = tok.encode(frames)
    assert tb.shape == (4, 36) and int(tb.max()) < 32
    out = tok.decode(t1.numpy())
    assert out.shape == (4, 1, 84, 84) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_straight_through_gradient_reaches_encoder():
    torch.manual_seed(2)
    tok = Tokenizer(tiny_cfg())
    frames = torch.randint(0, 256, (2, 84, 84), dtype=torch.uint8)
    losses = tok.compute_loss(frames)
    assert set(losses) == {"reconstruction", "commitment", "total"}
    torch.testing.assert_close(losses["total"], losses["reconstruction"] + losses["commitment"])
    losses["reconstruction"].backward()  # only through the decoder: reaches the encoder by straight-through
    assert tok.encoder.conv_in.weight.grad is not None and tok.encoder.conv_in.weight.grad.abs().sum() > 0
    assert tok.embedding.weight.grad is None or not tok.embedding.weight.grad.any()
    tok.zero_grad()
    tok.compute_loss(frames)["commitment"].backward()  # codebook term moves the codebook
    assert tok.embedding.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------------
# LPIPS


def official_lpips_keys() -> set[str]:
    keys = ["scaling_layer.shift", "scaling_layer.scale"]
    for s, idx in {1: (0, 2), 2: (5, 7), 3: (10, 12, 14), 4: (17, 19, 21), 5: (24, 26, 28)}.items():
        keys += [k for i in idx for k in _wb(f"net.slice{s}.{i}")]
    keys += [f"lin{i}.model.1.weight" for i in range(5)]
    return set(keys)


@pytest.fixture(scope="module")
def lpips_state():
    torch.manual_seed(4)
    m = LPIPS()
    state = m.state_dict()
    for i in range(5):  # learned LPIPS weights are non-negative
        state[f"lin{i}.model.1.weight"] = state[f"lin{i}.model.1.weight"].abs()
    return state


def test_lpips_layout(lpips_state):
    m = LPIPS()
    assert sum(p.numel() for p in m.parameters()) == 14_716_160
    assert set(m.state_dict()) == official_lpips_keys()
    assert not any(p.requires_grad for p in m.parameters()) and not m.training


def test_lpips_loads_from_safetensors_and_official_torch_file(tmp_path, lpips_state):
    st = tmp_path / "lpips.safetensors"
    save_file({k: v.contiguous() for k, v in lpips_state.items()}, str(st))
    m1 = load_lpips(st)
    pt = tmp_path / "tokenizer.pt"  # like the official tokenizer.pt: module.-prefixed, with the VQ-VAE keys too
    official = {f"module.lpips.{k}": v for k, v in lpips_state.items()}
    official["module.embedding.weight"] = torch.zeros(4, 2)
    torch.save(official, pt)
    m2 = load_lpips(pt)
    assert not m2.training and not any(p.requires_grad for p in m2.parameters())
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    d_same, d_diff = m1(x, x).flatten(), m1(x, y).flatten()
    assert torch.all(d_same.abs() < 1e-6) and torch.all(d_diff > 0)
    torch.testing.assert_close(m2(x, y), m1(x, y))
    incomplete = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in lpips_state.items() if not k.startswith("net.slice5")}, str(incomplete))
    with pytest.raises(CheckpointError, match=r"partial\.safetensors.*missing keys: net\.slice5"):
        load_lpips(incomplete)


def test_compute_loss_with_perceptual_term(lpips_state):
    m = LPIPS()
    m.load_state_dict(lpips_state)
    torch.manual_seed(5)
    tok = Tokenizer(tiny_cfg())
    losses = tok.compute_loss(torch.randint(0, 256, (1, 84, 84), dtype=torch.uint8), perceptual=m)
    assert float(losses["perceptual"].detach()) > 0
    torch.testing.assert_close(losses["total"],
                               losses["reconstruction"] + losses["commitment"] + losses["perceptual"])
    losses["perceptual"].backward()
    assert tok.encoder.conv_in.weight.grad.abs().sum() > 0


def test_encoder_without_mid_block_sees_a_neighbourhood(tmp_path):
    """encoder_mid=False (and no ResNet blocks) drops the encoder's middle attention: a token's latent then
    depends on its cell's 3x3 neighbourhood, and far cells move only through GroupNorm's shared statistics."""
    torch.manual_seed(3)
    cfg = tiny_cfg(num_res_blocks=0, attn_resolutions=[], encoder_mid=False)
    tok = Tokenizer(cfg).eval()
    assert isinstance(tok.encoder.mid, torch.nn.Identity)
    assert not any(k.startswith("encoder.mid.") for k in tok.state_dict())
    assert any(k.startswith("decoder.mid.") for k in tok.state_dict())
    blank = torch.zeros(1, 84, 84, dtype=torch.uint8)
    ball = blank.clone()
    ball[0, :14, :14] = 255  # the top-left cell lights up
    with torch.no_grad():
        moved = {}
        for name, t in (("local", tok), ("default", Tokenizer(tiny_cfg()).eval())):
            z0, z1 = (t.encode_latents(t.preprocess(f)) for f in (blank, ball))
            moved[name] = (z1 - z0).abs().sum(1)[0]  # (6, 6)
    far = moved["local"][2:, 2:].max() / moved["local"][0, 0]
    assert far < 0.25, moved["local"]
    assert moved["default"][2:, 2:].max() / moved["default"][0, 0] > far  # the attentive encoder mixes more
    save_tokenizer(tok, tmp_path / "ck")
    back = load_tokenizer(tmp_path / "ck")
    assert back.config == cfg and torch.equal(back.encode(ball), tok.encode(ball))


def test_save_load_and_official_state_dict(tmp_path):
    torch.manual_seed(6)
    tok = Tokenizer(tiny_cfg())
    save_tokenizer(tok, tmp_path / "ck", note="x")
    back = load_tokenizer(tmp_path / "ck")
    assert back.config == tok.config and not back.training
    for k, v in tok.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    official = Tokenizer()  # the released format: one flat state dict, module.-prefixed, LPIPS inside
    pt = tmp_path / "tokenizer.pt"
    torch.save({**{f"module.{k}": v for k, v in official.state_dict().items()},
                "module.lpips.lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, pt)
    loaded = load_tokenizer(pt)
    assert loaded.config == TokenizerConfig()
    assert torch.equal(loaded.embedding.weight, official.embedding.weight)
    torch.save({"module.embedding.weight": torch.zeros(2048, 512)}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt.*missing keys"):
        load_tokenizer(tmp_path / "bad.pt")


# --------------------------------------------------------------------------------------------------------
# Training


def test_batches_are_balanced_and_deterministic():
    assert batch_counts(3, 8, 0).tolist() == [3, 3, 2]
    assert batch_counts(3, 8, 1).tolist() == [3, 2, 3]
    assert sum(batch_counts(3, 8, s).sum() for s in range(3)) == 24


def test_frame_batches_deterministic_across_workers(data):
    from jowa_core.train.tokenizer import FrameBatches, batch_stream, read_rows, select_stores, split_store

    parts = [split_store(s, 2) for s in select_stores(data, ["Pong", "Breakout"])]
    assert [p.game for p in parts] == ["Pong", "Breakout"]
    ds = FrameBatches(parts, batch_size=7, seed=1)
    direct = [ds[s] for s in range(1, 4)]
    for a, b in zip(direct, batch_stream(ds, 1, 4, num_workers=2, pin=False), strict=True):
        assert a.shape == (7, 84, 84) and torch.equal(a, b)
    rows = ds.rows(2)
    assert all(r.max() < p.train_rows for r, p in zip(rows, parts, strict=True))
    reader = ds.readers[0]
    expect = np.stack([reader.read_range(int(r), int(r) + 1)[0] for r in rows[0]])
    np.testing.assert_array_equal(read_rows(reader, rows[0]), expect)
    assert not torch.equal(ds[1], ds[2])


def test_training_reduces_loss_and_writes_outputs(tiny_run, data):
    out, summary = tiny_run
    rows = read_metrics(out / "metrics.csv")
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    total = [float(r["total"]) for r in rows]
    heldout = [float(r["heldout_l1"]) for r in rows]
    assert np.mean(total[-3:]) < 0.8 * np.mean(total[:3])
    assert heldout[-1] < heldout[0]
    assert all(r["perceptual"] == "" for r in rows)
    assert 0 < float(rows[-1]["codebook_usage"]) <= 1 and float(rows[-1]["perplexity"]) >= 1
    assert summary["perceptual"] is False and summary["games"] == list(sorted(GAMES))
    import cv2

    grids = sorted(p.name for p in (out / "samples").glob("*.png"))
    assert grids == ["step_00000006.png", "step_00000012.png"]
    img = cv2.imread(str(out / "samples" / grids[0]), cv2.IMREAD_GRAYSCALE)
    assert img.shape == (2 + 2 * 84 + 6, 2 + 6 * 86)  # one row of 6 originals above 6 reconstructions
    assert latest_checkpoint(out).name == "step_00000012"
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == [
        "step_00000004", "step_00000008", "step_00000012"]
    assert torch.load(out / "checkpoints" / "step_00000012" / "optimizer.pt", weights_only=True)["state"]
    tok = load_tokenizer(out)
    assert tok.config == tiny_cfg()
    # held-out rows (each game's last episode) are never drawn for training
    store = open_store(data / "Pong.zarr")
    assert summary["train_frames"] == sum(open_store(data / f"{g}.zarr").episode_start[-1] for g in GAMES)
    assert store.num_episodes == GAMES["Pong"]


class _StopAfter:
    """A reporter that interrupts training after ``n`` steps (like a kill between checkpoints)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def task(self, *a, **k):
        return 0

    def advance(self, task, amount=1.0):
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt

    def log(self, message):
        pass

    def close(self):
        pass


def test_resume_is_bit_for_bit(data, tmp_path):
    cfg = train_cfg(steps=5, save_every=2, grid_every=100, heldout_frames=4)
    train_tokenizer(cfg, data, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):  # dies during step 4, after the step-2 checkpoint and 3 metric rows
        train_tokenizer(cfg, data, tmp_path / "b", reporter=_StopAfter(3))
    assert latest_checkpoint(tmp_path / "b").name == "step_00000002"
    with pytest.raises(TrainError, match="--resume"):
        train_tokenizer(cfg, data, tmp_path / "b")
    with pytest.raises(TrainError, match="lr"):
        train_tokenizer(train_cfg(steps=5, save_every=2, grid_every=100, heldout_frames=4, lr=1e-3), data,
                        tmp_path / "b", resume=True)
    summary = train_tokenizer(cfg, data, tmp_path / "b", resume=True)
    assert summary["resumed_from"] == 2
    ra, rb = read_metrics(tmp_path / "a" / "metrics.csv"), read_metrics(tmp_path / "b" / "metrics.csv")
    drop = ("frames_per_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in ra] == [
        {k: v for k, v in r.items() if k not in drop} for r in rb]
    ta, tb = load_tokenizer(tmp_path / "a").state_dict(), load_tokenizer(tmp_path / "b").state_dict()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    oa = torch.load(tmp_path / "a" / "checkpoints" / "step_00000005" / "optimizer.pt", weights_only=True)
    ob = torch.load(tmp_path / "b" / "checkpoints" / "step_00000005" / "optimizer.pt", weights_only=True)
    assert all(torch.equal(oa["state"][i]["exp_avg_sq"], ob["state"][i]["exp_avg_sq"]) for i in oa["state"])


def test_init_starts_from_a_tokenizers_weights(data, tiny_run, tmp_path):
    """``init``: the run starts from the given tokenizer (one step at a negligible lr stays at its weights, a
    random start does not); another architecture or a missing path is a clear error before any training."""
    src, _ = tiny_run
    start = load_tokenizer(src).state_dict()
    train_tokenizer(train_cfg(steps=1, lr=1e-9, heldout_frames=4, init=str(src)), data, tmp_path / "init")
    train_tokenizer(train_cfg(steps=1, lr=1e-9, heldout_frames=4), data, tmp_path / "fresh")
    got, fresh = load_tokenizer(tmp_path / "init").state_dict(), load_tokenizer(tmp_path / "fresh").state_dict()
    float_keys = [k for k in start if start[k].is_floating_point()]
    assert all(torch.allclose(got[k], start[k], atol=1e-6) for k in float_keys)
    assert not all(torch.allclose(fresh[k], start[k], atol=1e-3) for k in float_keys)
    with pytest.raises(TrainError, match="vocab_size"):
        train_tokenizer(train_cfg(steps=1, init=str(src), model={**TINY, "vocab_size": 64}), data, tmp_path / "x")
    with pytest.raises(TrainError, match="cannot load"):
        train_tokenizer(train_cfg(steps=1, init=str(tmp_path / "missing")), data, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # nothing written


# --------------------------------------------------------------------------------------------------------
# Tokenizing stores


def _expected_tokens(tok: Tokenizer, store_path) -> np.ndarray:
    st = open_store(store_path)
    return tok.encode(st.frames.read_range(0, st.num_steps)).numpy()


def test_tokenize_writes_obs_tokens_equal_to_encode(data, tiny_run, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data, root)
    run, _ = tiny_run
    tok = load_tokenizer(run)
    monkeypatch.setattr(tokenize_mod, "TOKEN_CHUNK_ROWS", 32)  # several chunks per store: exercises resume
    with pytest.raises(KeyboardInterrupt):
        tokenize_stores(root, run, batch_size=16, device="cpu", reporter=_StopAfter(4))
    group = zarr.open_group(str(root / "Breakout.zarr"), mode="r", zarr_format=3)
    assert "obs_tokens" not in group  # nothing half-written is visible
    assert (root / ".Breakout.zarr.obs_tokens.partial").is_dir()

    summary = tokenize_stores(root, run, batch_size=16, device="cpu")
    assert [s["status"] for s in summary["stores"]] == ["tokenized", "tokenized"]
    assert not list(root.glob(".*partial"))
    for game in GAMES:
        st = open_store(root / f"{game}.zarr")
        tokens = load_obs_tokens(st)
        assert tokens.dtype == np.int16 and tokens.shape == (st.num_steps, 36)
        np.testing.assert_array_equal(tokens, _expected_tokens(tok, root / f"{game}.zarr"))
        attrs = dict(zarr.open_group(str(st.path), mode="r", zarr_format=3)["obs_tokens"].attrs)
        assert attrs["tokenizer_sha256"] == summary["tokenizer_sha256"] and attrs["precision"] == "fp32"
        assert attrs["tokenizer_config"]["vocab_size"] == 32 and "done_rows" not in attrs

    again = tokenize_stores(root, run, batch_size=16, device="cpu")
    assert [s["status"] for s in again["stores"]] == ["skipped", "skipped"]

    torch.manual_seed(11)
    other = Tokenizer(tiny_cfg())
    save_tokenizer(other, tmp_path / "other")
    with pytest.raises(TokenizeError, match="another tokenizer.*--overwrite"):
        tokenize_stores(root, tmp_path / "other", device="cpu")
    tokenize_stores(root, tmp_path / "other", batch_size=64, device="cpu", overwrite=True)
    np.testing.assert_array_equal(load_obs_tokens(open_store(root / "Pong.zarr")),
                                  _expected_tokens(other, root / "Pong.zarr"))


# --------------------------------------------------------------------------------------------------------
# CLI


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("train-tokenizer")(tokenizer_cmd.train_tokenizer)
    app.command("tokenize")(tokenizer_cmd.tokenize)
    return app


def test_cli_missing_data_is_exit_2(tmp_path):
    runner = CliRunner()
    for args in (["train-tokenizer", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "steps=1"],
                 ["tokenize", "--data", str(tmp_path / "nope"), "--tokenizer", str(tmp_path)]):
        res = runner.invoke(_app(), args)
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0]
    assert not (tmp_path / "o").exists()


def test_cli_train_and_tokenize(data, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data / "Pong.zarr", root / "Pong.zarr")
    runner = CliRunner()
    out = tmp_path / "tok"
    args = ["train-tokenizer", "--data", str(root), "--config", str(CONFIG), "--out", str(out),
            "--quiet", "--json", "-", "steps=2", "batch_size=4", "num_workers=0", "device=cpu", "heldout_frames=4",
            *[f"model.{k}={json.dumps(v)}" for k, v in TINY.items()]]
    res = runner.invoke(_app(), args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["steps"] == 2
    res = runner.invoke(_app(), args)  # existing run without --resume
    assert res.exit_code == 2 and "--resume" in res.output
    res = runner.invoke(_app(), ["tokenize", "--data", str(root), "--tokenizer", str(out), "--batch-size", "32",
                                 "--device", "cpu", "--quiet", "--json", "-"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["stores"][0]["status"] == "tokenized"
    assert load_obs_tokens(open_store(root / "Pong.zarr")).shape[1] == 36
