"""Online fine-tuning: the batch mix is exact, schedules are the stated functions, retrieval returns the true nearest
neighbours, the replay keeps episodes apart and round-trips through the store, reward-free pretraining never reads
rewards, and `jowa finetune --online` runs on Catch and resumes after kill -9 with its replay intact."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from jowa_core import checkpoint as ckpt
from jowa_core import games
from jowa_core.config import from_dict
from jowa_core.data.replay import ReplayBuffer, SegmentTable, mix_counts
from jowa_core.data.store import open_store
from jowa_core.models.tokenizer import Tokenizer, TokenizerConfig, save_tokenizer
from jowa_core.models.world_action import WorldActionConfig, WorldActionModel, save_world_action
from jowa_core.recipes.online import run_online
from jowa_core.train.finetune import FinetuneConfig, finetune
from jowa_core.train.online import (
    OnlineConfig,
    guide_probability,
    guide_window,
    linear_schedule,
    mixed_batch,
    nearest_neighbours,
    retrieve,
)
from jowa_core.train.pretrain import TrainConfig, _check_train, jowa_loss

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
GAME = "Catch"
VOCAB = 64
TASK = games.get(GAME).task_id


def tiny_model(seed: int = 0) -> WorldActionModel:
    torch.manual_seed(seed)
    return WorldActionModel(from_dict(WorldActionConfig, {
        "preset": "tiny", "num_layers": 1, "embed_dim": 32, "num_heads": 2, "q_mlp_dim": 32, "num_q": 2,
        "obs_vocab": VOCAB, "max_tasks": TASK + 1}))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("online")
    save_world_action(tiny_model(), str(root / "model"), step=7)
    torch.manual_seed(0)
    save_tokenizer(Tokenizer(TokenizerConfig(ch=8, num_res_blocks=1, embed_dim=16, z_channels=16,
                                             vocab_size=VOCAB)), root / "tok")
    return {"model": root / "model", "tok": root / "tok", "root": root}


def small(**kw) -> OnlineConfig:
    c = dict(env_steps=120, num_envs=2, learning_starts=40, utd=0.25, batch_size=8, eval_every=60, eval_episodes=1,
             eval_max_frames=200, eval_backend="loop", save_every=40, sticky_actions=0.0, eps_decay_steps=100,
             target_update_every=5, log_every=5, device="cpu", seed=1)
    c.update(kw)
    return from_dict(OnlineConfig, c)


# ---------------------------------------------------------------------------------------------------------------
# Pure pieces


def test_mix_counts_is_exact():
    assert mix_counts(32, [0.0, 0.0]) == [32, 0, 0]
    assert mix_counts(32, [0.25, 0.125]) == [20, 8, 4]
    assert mix_counts(10, [1 / 3, 1 / 3]) == [3, 4, 3]  # largest remainder; ties to the first
    for b in range(1, 40):
        for f in ([0.3, 0.2], [0.5, 0.0], [0.05, 0.9]):
            c = mix_counts(b, f)
            assert sum(c) == b and all(abs(n - b * x) < 1 for n, x in zip(c[1:], f, strict=True))
    with pytest.raises(ValueError, match="sum"):
        mix_counts(8, [0.7, 0.4])


def _table(n: int, task: int, episode: int, seed: int) -> SegmentTable:
    """``n`` rows in episodes of ``episode`` steps, tokens random, the row index in ``reward``."""
    rng = np.random.default_rng(seed)
    nxt = np.arange(1, n + 1)
    nxt[episode - 1::episode] = -1
    nxt[-1] = -1
    mask = games.get(GAME).action_mask()
    return SegmentTable(rng.integers(0, VOCAB, (n, 36)).astype(np.int16), np.zeros(n, np.int16),
                        np.arange(n, dtype=np.float32), np.zeros(n, bool), nxt, np.full(n, task, np.int64),
                        {task: mask})


def test_mixed_batch_takes_each_source_s_share():
    sources = [_table(50, 1, 10, 0), _table(50, 2, 10, 1), _table(50, 3, 10, 2)]
    counts = mix_counts(32, [0.25, 0.125])
    b = mixed_batch(sources, counts, 4, np.random.default_rng(0), [None, None, np.array([5, 7])])
    assert b["obs_tokens"].shape == (32, 4, 36)
    assert [int((b["game_id"] == t).sum()) for t in (1, 2, 3)] == counts == [20, 8, 4]
    rehearsed = b["reward"][b["game_id"] == 3][:, 0]
    assert set(rehearsed.tolist()) <= {5.0, 7.0}  # only the retrieved starts
    # segments never cross an episode end: rows 8, 9 then padding
    seg = sources[0].gather(np.array([8]), 4)
    assert seg["valid"][0].tolist() == [True, True, False, False] and seg["reward"][0].tolist() == [8, 9, 0, 0]


def test_schedules():
    assert linear_schedule(0, 1.0, 0.1, 100) == 1.0
    assert linear_schedule(50, 1.0, 0.1, 100) == pytest.approx(0.55)
    assert linear_schedule(100, 1.0, 0.1, 100) == linear_schedule(10**6, 1.0, 0.1, 100) == 0.1
    assert linear_schedule(0, 1.0, 0.1, 0) == 0.1
    cfg = small(guide_prob_start=0.8, guide_decay_steps=40)
    assert [guide_probability(cfg, s) for s in (0, 10, 40, 400)] == pytest.approx([0.8, 0.6, 0.0, 0.0])
    with pytest.raises(Exception, match="eps_start"):
        small(eps_start=1.5)
    rng = np.random.default_rng(0)
    assert {guide_window(rng, 0.0, 10, 5) for _ in range(100)} == {(0, 0)}
    draws = [guide_window(rng, 1.0, 10, 5) for _ in range(2000)]
    assert {s for s, _ in draws} == set(range(11)) and {n for _, n in draws} == set(range(1, 6))
    hits = sum(guide_window(rng, 0.3, 10, 5)[1] > 0 for _ in range(10_000))
    assert abs(hits / 10_000 - 0.3) < 0.02  # 4.4 standard errors


def test_nearest_neighbours_match_brute_force():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(7, 5, generator=g), torch.randn(40, 5, generator=g)
    got = nearest_neighbours(q, k, 4, chunk=3)
    for i in range(7):
        d = [(float(((q[i] - k[j]) ** 2).sum()), j) for j in range(40)]
        assert got[i].tolist() == [j for _, j in sorted(d)[:4]]


def test_retrieval_finds_the_planted_copies():
    """A pool of random segments with exact copies of the query segments planted at known rows: the nearest pool
    segment of every query (k=1) is its copy, in the model's embedding space."""
    model = tiny_model()
    online = _table(24, TASK, 8, seed=5)  # 3 episodes of 8 steps
    pool = _table(400, TASK, 8, seed=6)
    planted = np.array([80, 200, 336])  # episode starts in the pool
    for src, dst in zip((0, 8, 16), planted, strict=True):
        pool.tokens[dst:dst + 8] = online.tokens[src:src + 8]
    got = retrieve(model, online, np.array([0, 8, 16]), pool, np.arange(0, 400, 4), k=1, seq_len=8, task_id=TASK)
    assert got.tolist() == planted.tolist()


# ---------------------------------------------------------------------------------------------------------------
# Replay


def test_replay_chains_each_environment_s_episodes_and_round_trips(tmp_path):
    buf = ReplayBuffer(GAME, num_envs=2, capacity=2)
    frames = np.zeros((2, 84, 84), np.uint8)
    ends = {1: [False, True], 3: [True, False]}  # env 1 ends after 2 steps, env 0 after 4
    for t in range(5):
        frames[:] = np.array([[t], [100 + t]], np.uint8)[:, :, None]
        tokens = np.array([[t] * 36, [10 + t] * 36], np.int16)
        ended = np.array(ends.get(t, [False, False]))
        buf.add(frames, tokens, np.array([0, 3]), np.array([1.0, 0.0], np.float32), ended, ended)
    assert len(buf) == 10 and buf.finished == [1, 0]
    seg = buf.gather(np.array([0, 1]), 5)  # env 0's first episode (rows 0, 2, 4, 6), env 1's (rows 1, 3)
    assert seg["obs_tokens"][0, :, 0].tolist() == [0, 1, 2, 3, 0] and seg["valid"][0].tolist() == [1, 1, 1, 1, 0]
    assert seg["obs_tokens"][1, :, 0].tolist() == [10, 11, 0, 0, 0] and seg["terminal"][1].tolist()[:2] == [0, 1]
    sha = "f" * 64
    path = buf.save(tmp_path, sha)
    st = open_store(path)
    assert st.episode_length.tolist() == [4, 2, 3, 1]  # by episode id: env 0, env 1, env 1's second, env 0's
    assert st.terminal.tolist() == [0, 0, 0, 1, 0, 1, 0, 0, 0, 0]  # running episodes are stored cut
    assert st.frames.read_range(0, 4)[:, 0, 0].tolist() == [0, 1, 2, 3]
    back = ReplayBuffer.load(tmp_path, GAME, 2, sha)
    assert len(back) == 10 and back.finished == [0, 1, 2, 3]
    same = back.gather(np.array([0, 4]), 5)
    assert same["obs_tokens"][0, :, 0].tolist() == [0, 1, 2, 3, 0]
    assert same["obs_tokens"][1, :, 0].tolist() == [10, 11, 0, 0, 0]
    with pytest.raises(ValueError, match="another tokenizer"):
        ReplayBuffer.load(tmp_path, GAME, 2, "0" * 64)


# ---------------------------------------------------------------------------------------------------------------
# Reward-free pretraining


def test_reward_free_loss_never_reads_rewards_and_trains_no_q_or_reward_head():
    model = tiny_model().eval()  # no dropout: the losses are comparable
    g = torch.Generator().manual_seed(0)
    B, L = 3, 4
    batch = {"obs_tokens": torch.randint(0, VOCAB, (B, L, 36), generator=g),
             "action": torch.randint(0, 3, (B, L), generator=g), "terminal": torch.zeros(B, L, dtype=torch.bool),
             "valid": torch.ones(B, L, dtype=torch.bool), "game_id": torch.full((B,), TASK),
             "action_mask": torch.ones(B, 18, dtype=torch.bool)}
    cfg = TrainConfig(reward_free=True, stage2_steps=0)
    losses = []
    for reward in (torch.zeros(B, L), torch.randn(B, L, generator=g), torch.full((B, L), math.nan)):
        model.zero_grad(set_to_none=True)
        loss, terms = jowa_loss(model, {**batch, "reward": reward}, 1, cfg, model.support)
        loss.backward()
        losses.append(float(loss.detach()))
        assert "world_reward" not in terms
        assert float(loss.detach()) == pytest.approx(float((terms["world_obs"] + terms["world_end"]).detach()))
        assert all(p.grad is None or not p.grad.any() for p in model.head_reward.parameters())
        assert all(p.grad is None for p in model.head_q.parameters())
    assert losses[0] == losses[1] == losses[2]
    with_reward = jowa_loss(model, {**batch, "reward": torch.ones(B, L)}, 1, TrainConfig(), model.support)[0]
    assert float(with_reward.detach()) > losses[0]  # the ordinary loss has the reward term
    with pytest.raises(ValueError, match="reward_free"):
        _check_train(TrainConfig(reward_free=True), type("Ctx", (), {"world_size": 1})())


# ---------------------------------------------------------------------------------------------------------------
# The online loop


def test_online_run_on_catch(setup, tmp_path):
    out = tmp_path / "run"
    s = run_online(small(), setup["model"], setup["tok"], GAME, out)
    assert s["finished"] and s["env_steps"] == 120
    assert s["step"] == math.floor((120 - 40) * 0.25)  # the update-to-data ratio
    assert [e["env_steps"] for e in s["evals"]] == [60, 120]
    assert s["best"]["mean"] == max(e["mean"] for e in s["evals"])
    assert (out / "best" / "model.safetensors").exists() and (out / "final" / "model.safetensors").exists()
    st = open_store(out / "replay" / f"{GAME}.zarr")
    assert st.num_steps == 120 and st.game == GAME
    assert st.episode_length.sum() == 120 and int(st.terminal.sum()) == len(s["train_returns"])  # 50-step games
    # the replay is a store offline fine-tuning reads (its obs_tokens, frozen tokenizer)
    ft = finetune(from_dict(FinetuneConfig, {"stage1_steps": 2, "stage2_steps": 0, "batch_size": 4, "eval_episodes": 0,
                                             "train_tokenizer": False, "device": "cpu", "save_every": 0}),
                  out / "final", setup["tok"], GAME, out / "replay" / f"{GAME}.zarr", tmp_path / "ft")
    assert ft["step"] == 2


def test_online_run_on_an_ale_game(setup, tmp_path):
    """Pong in the emulator, tiny: acting, replay, updates, the paper's evaluation protocol on ale-py."""
    s = run_online(small(env_steps=60, learning_starts=20, eval_every=0, eval_max_frames=200, eval_backend="auto"),
                   setup["model"], setup["tok"], "Pong", tmp_path / "pong")
    assert s["finished"] and s["step"] == 10 and len(s["evals"]) == 1
    st = open_store(tmp_path / "pong" / "replay" / "Pong.zarr")
    assert st.num_steps == 60 and set(np.unique(st.action)) <= set(games.get("Pong").minimal_actions)


def test_online_mixes_offline_rehearsal_and_guidance(setup, tmp_path):
    """A first run's replay store serves as the offline store and as the rehearsal pool of a second run, which also
    acts with execution guidance and beam-search planning."""
    first = run_online(small(eval_episodes=0, env_steps=100), setup["model"], setup["tok"], GAME, tmp_path / "a")
    store = Path(first["replay"])
    cfg = small(env_steps=110, eval_episodes=0, offline_fraction=0.25, rehearsal_fraction=0.25, rehearsal_episodes=2,
                rehearsal_k=2, rehearsal_pool=50, guide_prob_start=1.0, guide_decay_steps=1000, guide_max_start=5,
                guide_max_length=20, plan=True)
    s = run_online(cfg, setup["model"], setup["tok"], GAME, tmp_path / "b", data=store, rehearsal_data=store)
    assert s["batch_mix"] == {"online": 4, "offline": 2, "rehearsal": 2}
    assert 0 < s["retrieved_segments"] <= 2 * 2 * 7  # k per query segment of two 50-step episodes
    assert 0 < s["guided_steps"] <= 2 * 2 * 20  # two episodes per environment began (110 steps), 20 steps at most
    with pytest.raises(ValueError, match="needs --data"):
        run_online(small(offline_fraction=0.5), setup["model"], setup["tok"], GAME, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "jowa_cli.main", "finetune", "--online", "--quiet", *args]


def test_cli_resume_after_kill_keeps_the_replay(setup, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    args = ["--game", GAME, "--ckpt", str(setup["model"]), "--tokenizer", str(setup["tok"]), "--out", str(out),
            "--env-steps", "120", "num_envs=2", "learning_starts=40", "utd=0.25", "batch_size=8", "eval_episodes=0",
            "save_every=40", "sticky_actions=0", "device=cpu"]
    proc = subprocess.Popen(_cli(*args), env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while ckpt.latest_checkpoint(out) is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = ckpt.latest_checkpoint(out)
    assert killed_at is not None and not (out / "final").exists()
    saved = json.loads((killed_at / "state.json").read_text())["env_steps"]
    assert open_store(out / "replay" / f"{GAME}.zarr").num_steps >= saved  # the replay is never behind
    res = _invoke(*args, "--resume", "--json", str(tmp_path / "s.json"))  # in this process: no second start-up
    assert res.exit_code == 0, res.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["finished"] and s["env_steps"] == 120 and s["step"] == math.floor((120 - 40) * 0.25)
    st = open_store(out / "replay" / f"{GAME}.zarr")
    assert st.num_steps == 120
    bad = _invoke(*args, "--resume", "utd=0.5")
    assert bad.exit_code == 2 and "utd (0.25 in the run, 0.5 now)" in bad.stderr


def _invoke(*args: str):
    """The real CLI in this process (no interpreter start): ``jowa finetune --online ...``."""
    from jowa_cli.main import app

    return CliRunner().invoke(app, ["finetune", "--online", "--quiet", *args])


def test_cli_bad_input_exits_2(setup, tmp_path):
    base = ["--game", GAME, "--ckpt", str(setup["model"]), "--tokenizer", str(setup["tok"]),
            "--out", str(tmp_path / "o")]
    for args, message in ((base[2:], "--game is required"), ([*base, "offline_fraction=0.5"], "needs --data"),
                          ([*base, "utd=-1"], "utd")):
        r = _invoke(*args)
        assert r.exit_code == 2 and message in r.stderr, (args, r.stderr)
    from jowa_cli.main import app

    r = CliRunner().invoke(app, ["finetune", "--env-steps", "10", *base])
    assert r.exit_code == 2 and "need --online" in r.stderr
    assert not (tmp_path / "o").exists()
