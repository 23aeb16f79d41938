"""Evaluation: the pinned protocol, the batched env against single envs, the agent's memory and batching, the
runner's JSON (single process and torchrun) and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from jowa_core import games
from jowa_core.config import from_dict
from jowa_core.envs.atari import AtariEnv
from jowa_core.evaluation.agent import Agent, AgentSettings
from jowa_core.evaluation.envs import EvalSettings, VecAtari, rom_md5
from jowa_core.evaluation.runner import evaluate, summarize
from jowa_core.models.tokenizer import Tokenizer, TokenizerConfig, load_tokenizer, save_tokenizer
from jowa_core.models.world_action import (
    WorldActionConfig,
    WorldActionModel,
    load_world_action,
    save_world_action,
)

ROOT = Path(__file__).resolve().parents[1]
V = 64
BACKENDS = ["loop", "vector"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval_ckpts")
    torch.manual_seed(0)
    save_world_action(WorldActionModel(from_dict(WorldActionConfig, {"preset": "tiny", "obs_vocab": V})),
                      root / "model")
    save_tokenizer(Tokenizer(TokenizerConfig(ch=8, num_res_blocks=1, embed_dim=16, z_channels=16, vocab_size=V)),
                   root / "tok")
    return root / "model", root / "tok"


def random_valid(rng: np.random.Generator, names: list[str]) -> np.ndarray:
    return np.array([rng.choice(games.get(g).minimal_actions) for g in names], dtype=np.int64)


# ---------------------------------------------------------------------------------------------- protocol


def test_protocol_defaults_are_pinned():
    s = EvalSettings()
    assert s.to_dict() == {
        "sticky_actions": 0.0, "frame_skip": 4, "max_pool": True, "screen_size": 84, "grayscale": True,
        "frame_stack": 1, "noop_max": 0, "fire_reset": False, "terminal_on_life_loss": False,
        "clip_rewards": False, "max_frames": 108_000, "epsilon": 0.001,
    }
    assert s.max_steps == 27_000
    a = s.atari_settings()
    assert (a.sticky_actions, a.frame_skip, a.max_pool, a.screen_size, a.clip_rewards, a.terminal_on_life_loss,
            a.max_episode_steps, a.full_action_space) == (0.0, 4, True, 84, False, False, 27_000, False)
    assert EvalSettings.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("bad", [{"frame_stack": 4}, {"noop_max": 30}, {"terminal_on_life_loss": True},
                                 {"clip_rewards": True}, {"grayscale": False}, {"fire_reset": True},
                                 {"max_frames": 10}, {"epsilon": 2.0}, {"sticky_actions": -0.1}])
def test_settings_reject_other_protocols(bad):
    with pytest.raises(ValueError):
        EvalSettings(**bad)


# ---------------------------------------------------------------------------------------------- VecAtari


@pytest.mark.parametrize("backend", BACKENDS)
def test_vec_atari_equals_independent_single_envs(backend):
    eps = [("Pong", 0), ("Pong", 1), ("SpaceInvaders", 0), ("SpaceInvaders", 1)]
    settings = EvalSettings()
    vec = VecAtari(eps, settings, backend=backend)
    assert vec.backend == backend
    singles = [AtariEnv(g, settings.atari_settings(), seed=s) for g, s in eps]
    obs = vec.reset()
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    np.testing.assert_array_equal(obs, np.stack([e.reset() for e in singles]))
    assert vec.task_ids.tolist() == [games.get(g).task_id for g, _ in eps]
    rng = np.random.default_rng(0)
    total = np.zeros(4)
    for _ in range(150):
        a = random_valid(rng, vec.games)
        obs, r, done, info = vec.step(a)
        ref = [e.step(int(games.get(g).to_minimal(x))) for e, (g, _), x in zip(singles, eps, a, strict=True)]
        np.testing.assert_array_equal(obs, np.stack([o for o, *_ in ref]))
        np.testing.assert_array_equal(r, [x[1] for x in ref])
        assert r.dtype == np.float64 and not done.any()
        total += r
    np.testing.assert_array_equal(info["returns"], total)
    assert (info["steps"] == 150).all() and (vec.frames == 600).all()
    with pytest.raises(ValueError, match="not in the minimal action set"):
        vec.step(np.array([2, 0, 0, 0]))  # UP is not a Pong action
    vec.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_episode_ends_at_frame_cap_and_at_game_over(backend):
    vec = VecAtari([("Breakout", 0), ("Pong", 0)], EvalSettings(max_frames=40 * 4), backend=backend)
    vec.reset()
    rng = np.random.default_rng(1)
    ended_at = {}
    for t in range(1, 60):
        _, r, done, info = vec.step(random_valid(rng, vec.games))
        for i in np.flatnonzero(info["ended"]):
            ended_at[i] = t
        if t > 40:
            assert done[1] and r[1] == 0.0  # a finished slot stays finished and earns nothing
    assert ended_at[1] == 40 and info["truncated"][1] and not info["game_over"][1]
    assert info["steps"][1] == 40 and vec.frames[1] == 160
    # Breakout, random play: game over long before any cap
    vec = VecAtari([("Breakout", 3)], EvalSettings(), backend=backend)
    vec.reset()
    done, t = np.zeros(1, bool), 0
    while not done[0] and t < 2000:
        _, _, done, info = vec.step(random_valid(rng, vec.games))
        t += 1
    assert done[0] and info["game_over"][0] and not info["truncated"][0] and 50 < t < 2000
    assert info["steps"][0] == t


def test_rewards_are_raw_game_scores():
    vec = VecAtari([("SpaceInvaders", 0)], EvalSettings(), backend="loop")
    vec.reset()
    rng = np.random.default_rng(0)
    rewards = []
    for _ in range(400):
        _, r, done, info = vec.step(random_valid(rng, vec.games))
        rewards.append(r[0])
        if done[0]:
            break
    rewards = np.array(rewards)
    assert rewards.max() >= 5  # SpaceInvaders: 5..30 points per invader
    assert info["returns"][0] == rewards.sum()
    assert info["clipped_returns"][0] == np.sign(rewards).sum() < rewards.sum()


def test_rom_md5_is_the_file_ale_loads():
    from ale_py import roms

    assert rom_md5("Pong") == hashlib.md5(Path(roms.get_rom_path("pong")).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- agent


class FakeTokenizer:
    """Tokens = the first 36 pixels of the frame's first row (mod V): easy to check in contexts."""

    tokens_per_frame = 36
    cfg = SimpleNamespace(vocab_size=V)

    def encode(self, frames):
        return torch.as_tensor(np.asarray(frames)[:, 0, :36].astype(np.int64) % V)


class RecordingPlanner:
    def __init__(self):
        self.calls = []

    def __call__(self, model, tokens, tasks, mask, beam, horizon, gamma, reward_mode="mode"):
        self.calls.append({"tokens": tokens.clone(), "tasks": tasks.clone(), "beam": beam, "horizon": horizon})
        return SimpleNamespace(action=mask.float().argmax(-1))  # first valid action


def frame(v: int) -> np.ndarray:
    f = np.zeros((84, 84), np.uint8)
    f[0, :36] = v
    return f


def tiny_model() -> WorldActionModel:
    torch.manual_seed(0)
    return WorldActionModel(from_dict(WorldActionConfig, {"preset": "tiny", "obs_vocab": V})).eval()


def test_agent_memory_rolls_like_the_official_token_buffer():
    rec = RecordingPlanner()
    agent = Agent(tiny_model(), FakeTokenizer(), ["Pong"], beam=2, horizon=2, history=3, epsilon=0.0, planner=rec)
    steps = []  # (obs value, action) played so far
    for t in range(6):
        v = 10 + t
        a = agent.act(frame(v)[None])
        assert a.tolist() == [0]
        call = rec.calls[-1]
        assert call["beam"] == 2 and call["horizon"] == 2 and call["tasks"].tolist() == [games.get("Pong").task_id]
        played = steps[-2:]  # history 3: two past steps and the current observation
        want = []
        for ov, act in played:
            want += [ov] * 36 + [act]
        want += [v] * 36
        assert call["tokens"].tolist() == [want], t
        assert call["tokens"].shape[1] == 37 * len(played) + 36
        action = 1 + t % 5  # any full action: the memory stores what the env was given
        agent.observe_action(np.array([action]))
        steps.append((v, action))
    agent.reset(np.array([True]))
    agent.act(frame(33)[None])
    assert rec.calls[-1]["tokens"].tolist() == [[33] * 36]


def test_history_is_capped_with_planning():
    with pytest.warns(UserWarning, match="capped at 6"):
        agent = Agent(tiny_model(), FakeTokenizer(), ["Pong"], beam=2, horizon=2, history=8, planner=RecordingPlanner())
    assert agent.history == 6 and agent.notes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Agent(tiny_model(), FakeTokenizer(), ["Pong"], plan=False, history=8).history == 8
        # defaults keep every Q̂ read off the last position (no TD target there in pretraining): 8 - H - 1
        assert Agent(tiny_model(), FakeTokenizer(), ["Pong"], horizon=2).history == 5
        assert Agent(tiny_model(), FakeTokenizer(), ["Pong"], horizon=3).history == 4
        assert Agent(tiny_model(), FakeTokenizer(), ["Pong"], plan=False).history == 7
        assert Agent(tiny_model(), FakeTokenizer(), ["Pong"], horizon=2, history=6).history == 6  # honoured
    with pytest.raises(ValueError):
        Agent(tiny_model(), FakeTokenizer(), ["Pong"], history=0)


def test_beam_auto_uses_each_games_paper_width_and_groups_by_length():
    rec = RecordingPlanner()
    names = ["Seaquest", "Pong", "Seaquest"]
    agent = Agent(tiny_model(), FakeTokenizer(), names, beam="auto", epsilon=0.0, planner=rec)
    assert agent.beams.tolist() == [games.get(g).beam_width for g in names] == [3, 2, 3]
    obs = np.stack([frame(1), frame(2), frame(3)])
    a = agent.act(obs)
    agent.observe_action(a)
    assert sorted((c["beam"], c["tokens"].shape) for c in rec.calls) == [(2, (1, 36)), (3, (2, 36))]
    agent.reset(np.array([False, False, True]))  # row 2 starts a new episode: its context is shorter
    rec.calls.clear()
    agent.act(obs)
    assert sorted((c["beam"], tuple(c["tokens"].shape)) for c in rec.calls) == [(2, (1, 73)), (3, (1, 36)),
                                                                                (3, (1, 73))]
    inactive = agent.act(obs, np.array([True, False, True]))
    assert inactive[1] == -1


def test_batched_grouped_actions_equal_unbatched_per_env_calls(ckpts):
    model, _ = load_world_action(str(ckpts[0]))
    tok = load_tokenizer(ckpts[1])
    names = ["Pong", "SpaceInvaders", "Seaquest", "Pong"]
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (7, 4, 84, 84), dtype=np.uint8)
    starts = [0, 0, 2, 3]  # episodes begin at different steps, so context lengths differ within a call
    kw = dict(beam="auto", horizon=2, history=3, epsilon=0.0)
    batched = Agent(model, tok, names, **kw)
    singles = [Agent(model, tok, [g], **kw) for g in names]
    for t in range(7):
        active = np.array([t >= s for s in starts])
        a = batched.act(frames[t], active)
        batched.observe_action(a, active)
        for i in np.flatnonzero(active):
            ai = singles[i].act(frames[t, i:i + 1])
            singles[i].observe_action(ai)
            assert ai[0] == a[i], (t, i)
    assert batched.stats.planner_calls > 7  # several groups per call while lengths differ


def test_epsilon_streams_are_per_env_and_batch_independent():
    def never(*a, **k):
        raise AssertionError("no planning with epsilon = 1")

    names = ["Pong", "Seaquest", "Breakout"]
    obs = np.stack([frame(1)] * 3)
    together = Agent(tiny_model(), FakeTokenizer(), names, epsilon=1.0, seeds=[5, 6, 7], planner=never)
    alone = Agent(tiny_model(), FakeTokenizer(), names[1:2], epsilon=1.0, seeds=[6], planner=never)
    seen = []
    for _ in range(50):
        a = together.act(obs)
        together.observe_action(a)
        b = alone.act(obs[1:2])
        alone.observe_action(b)
        assert a[1] == b[0]
        for g, x in zip(names, a, strict=True):
            assert games.get(g).action_mask()[x]
        seen.append(a)
    assert len({int(x) for x in np.array(seen)[:, 1]}) > 5  # Seaquest: 18 actions, uniformly drawn
    assert together.stats.random_actions == 150 and together.stats.decisions == 0


# ---------------------------------------------------------------------------------------------- runner


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_evaluate_end_to_end_writes_the_json(ckpts, tmp_path):
    model, tok = ckpts
    out = tmp_path / "scores.json"
    res = evaluate(model, tok, "SpaceInvaders,Pong", episodes=2, settings=EvalSettings(max_frames=48),
                   agent=AgentSettings(beam="auto", horizon=2, plan=True), seed=3, device="cpu", out_json=out,
                   backend="loop")
    on_disk = json.loads(out.read_text())
    assert on_disk["games"] == json.loads(json.dumps(res["games"]))
    assert on_disk["format"] == "jowa-eval" and on_disk["jowa_version"] and on_disk["date"]
    assert on_disk["device"].startswith("cpu")
    assert on_disk["settings"] == EvalSettings(max_frames=48).to_dict()
    assert on_disk["checkpoint"]["sha256"] == sha256(model / "model.safetensors")
    assert on_disk["tokenizer"]["sha256"] == sha256(tok / "model.safetensors")
    assert on_disk["roms"] == {"SpaceInvaders": rom_md5("SpaceInvaders"), "Pong": rom_md5("Pong")}
    agent = on_disk["agent"]
    assert agent["plan"] and agent["horizon"] == 2 and agent["history"] == 5 and agent["beam"] == "auto"
    assert list(on_disk["games"]) == ["SpaceInvaders", "Pong"]
    for g, r in on_disk["games"].items():
        assert r["beam"] == games.get(g).beam_width and r["task_id"] == games.get(g).task_id
        assert [e["episode"] for e in r["episodes"]] == [0, 1]
        assert [e["seed"] for e in r["episodes"]] == [3, 4]
        for e in r["episodes"]:
            assert e["length"] == 12 and e["frames"] == 48 and e["truncated"] and not e["game_over"]
            assert e["wall_time_s"] >= 0 and isinstance(e["return"], float)
        assert r["raw_scores"] == [e["return"] for e in r["episodes"]]
        assert r["mean"] == pytest.approx(np.mean(r["raw_scores"]))
    t = on_disk["throughput"]
    assert t["env_steps"] == 48 and t["decisions"] + t["random_actions"] == 48


def test_summarize_iqm():
    s = summarize([1, 2, 3, 4, 5, 6, 7, 100])
    assert s["iqm"] == pytest.approx(4.5) and s["min"] == 1 and s["max"] == 100 and s["median"] == 4.5


def test_torchrun_shares_episodes_and_rank0_merges(ckpts, tmp_path):
    model, tok = ckpts
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "from jowa_core.evaluation.runner import evaluate\n"
        "from jowa_core.evaluation.envs import EvalSettings\n"
        "from jowa_core.evaluation.agent import AgentSettings\n"
        f"evaluate({str(model)!r}, {str(tok)!r}, 'Pong,Breakout', episodes=3, settings=EvalSettings(max_frames=40),"
        " agent=AgentSettings(plan=False), device='cpu', out_json=sys.argv[1], backend='loop')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "dist.json"
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(out)], env=env,
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    dist = json.loads(out.read_text())
    assert dist["world_size"] == 2 and len(dist["throughput"]["per_rank"]) == 2
    assert sorted(c["rank"] for c in dist["throughput"]["per_rank"]) == [0, 1]
    single = evaluate(model, tok, "Pong,Breakout", episodes=3, settings=EvalSettings(max_frames=40),
                      agent=AgentSettings(plan=False), device="cpu", backend="loop")
    for g in ("Pong", "Breakout"):
        d, s = dist["games"][g]["episodes"], single["games"][g]["episodes"]
        assert [e["episode"] for e in d] == [0, 1, 2]
        assert [(e["return"], e["length"], e["seed"]) for e in d] == [(e["return"], e["length"], e["seed"]) for e in s]


# ---------------------------------------------------------------------------------------------- CLI


def cli():
    import typer

    from jowa_cli import evaluate_cmd

    app = typer.Typer()
    app.command("evaluate")(evaluate_cmd.evaluate)
    app.command("noop")(lambda: None)  # two commands: keep "evaluate" as a subcommand
    return app


def test_cli_missing_checkpoint_exits_2(tmp_path, ckpts):
    r = CliRunner().invoke(cli(), ["evaluate", "--ckpt", str(tmp_path / "nope"), "--tokenizer", str(ckpts[1]),
                                   "--out", str(tmp_path / "s.json")])
    assert r.exit_code == 2, r.output
    assert "does not exist" in r.output
    r = CliRunner().invoke(cli(), ["evaluate", "--ckpt", str(ckpts[0])])  # --tokenizer is required
    assert r.exit_code == 2
    r = CliRunner().invoke(cli(), ["evaluate", "--ckpt", str(ckpts[0]), "--tokenizer", str(ckpts[1]),
                                   "--beam", "wide"])
    assert r.exit_code == 2 and "--beam" in r.output


def test_a_model_refuses_a_tokenizer_other_than_its_tokens(tmp_path, ckpts):
    """A model trained on tokens of one tokenizer is not evaluated with another (exit 2, nothing written)."""
    import shutil

    model, tok = ckpts
    trained = tmp_path / "model"
    shutil.copytree(model, trained)
    meta = json.loads((trained / "checkpoint.json").read_text())
    (trained / "checkpoint.json").write_text(json.dumps({**meta, "tokens_tokenizer_sha256": "0" * 64}))
    out = tmp_path / "s.json"
    r = CliRunner().invoke(cli(), ["evaluate", "--ckpt", str(trained), "--tokenizer", str(tok), "--games", "Pong",
                                   "--episodes", "1", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert "another tokenizer" in r.output and not out.exists()
    (trained / "checkpoint.json").write_text(json.dumps({**meta, "tokens_tokenizer_sha256": sha256(
        tok / "model.safetensors")}))
    res = evaluate(trained, tok, "Pong", episodes=1, settings=EvalSettings(max_frames=8),
                   agent=AgentSettings(plan=False), device="cpu", backend="loop")
    assert res["games"]["Pong"]["episodes"][0]["length"] == 2


def test_cli_greedy_run_prints_a_table_and_writes_json(tmp_path, ckpts):
    out = tmp_path / "s.json"
    r = CliRunner().invoke(cli(), ["evaluate", "--ckpt", str(ckpts[0]), "--tokenizer", str(ckpts[1]),
                                   "--games", "Pong", "--episodes", "2", "--no-plan", "--max-frames", "24",
                                   "--history", "4", "--device", "cpu", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "Pong" in r.output and "greedy" in r.output
    res = json.loads(out.read_text())
    assert res["agent"]["plan"] is False and res["agent"]["history"] == 4
    assert [e["length"] for e in res["games"]["Pong"]["episodes"]] == [6, 6]


def test_evaluate_with_mcts_planner_records_it(tmp_path, ckpts):
    from jowa_core.evaluation.envs import EvalSettings
    from jowa_core.evaluation.runner import evaluate

    model_dir, tok_dir = ckpts
    res = evaluate(model_dir, tok_dir, ["Pong"], episodes=1, settings=EvalSettings(max_frames=40),
                   agent=AgentSettings(beam=2, horizon=1, planner="mcts"), device="cpu")
    assert res["agent"]["planner"] == "mcts"
    assert res["games"]["Pong"]["episodes"][0]["length"] == 10


def test_evaluate_writes_videos_of_chosen_episodes(tmp_path, ckpts):
    import cv2

    from jowa_core.evaluation.envs import EvalSettings
    from jowa_core.evaluation.runner import evaluate

    model_dir, tok_dir = ckpts
    res = evaluate(model_dir, tok_dir, ["Pong"], episodes=2, settings=EvalSettings(max_frames=48),
                   agent=AgentSettings(plan=False), device="cpu", video_dir=tmp_path / "videos", video_episodes=[1])
    eps = res["games"]["Pong"]["episodes"]
    assert "video" not in eps[0] and eps[1]["video"].endswith("Pong_episode1.mp4")
    cap = cv2.VideoCapture(eps[1]["video"])
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = cap.read()
    assert ok and frame.shape == (336, 336, 3) and n == eps[1]["length"] == 12
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["Pong_episode1.mp4"]


def test_evaluate_with_the_fast_path_plays_the_same_episodes(tmp_path, ckpts):
    from jowa_core.evaluation.envs import EvalSettings
    from jowa_core.evaluation.runner import evaluate

    model_dir, tok_dir = ckpts
    kw = {"episodes": 2, "settings": EvalSettings(max_frames=40), "device": "cpu", "backend": "loop"}
    slow = evaluate(model_dir, tok_dir, ["Pong"], agent=AgentSettings(beam=2, horizon=2), **kw)
    fast = evaluate(model_dir, tok_dir, ["Pong"], agent=AgentSettings(beam=2, horizon=2, fast_path="auto"), **kw)
    assert fast["agent"]["fast_path"] == "static" and "fast_path" not in slow["agent"]
    assert fast["games"]["Pong"]["raw_scores"] == slow["games"]["Pong"]["raw_scores"]
    assert [e["length"] for e in fast["games"]["Pong"]["episodes"]] == [10, 10]
    assert fast["throughput"]["decisions"] == slow["throughput"]["decisions"] > 0
    with pytest.raises(ValueError, match="fast_path"):
        AgentSettings(fast_path="warp")


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_async_then_wait_equals_step(backend):
    eps = [("Pong", 0), ("SpaceInvaders", 1), ("SpaceInvaders", 2)]
    a, b = VecAtari(eps, backend=backend), VecAtari(eps, backend=backend)
    np.testing.assert_array_equal(a.reset(), b.reset())
    rng = np.random.default_rng(1)
    for _ in range(40):
        act = random_valid(rng, a.games)
        want = a.step(act)
        b.step_async(act)
        got = b.step_wait()
        for x, y in zip(want[:3], got[:3], strict=True):
            np.testing.assert_array_equal(x, y)
    b.step_async(act)
    with pytest.raises(RuntimeError, match="twice"):
        b.step_async(act)
    with pytest.raises(RuntimeError, match="reset during a step"):
        b.reset()
    b.step_wait()
    with pytest.raises(RuntimeError, match="without step_async"):
        b.step_wait()
    a.close(), b.close()


def test_overlapped_lanes_play_the_same_episodes(ckpts):
    """Two lanes (one stepping while the other plans) give every episode the result one batch gives it."""
    model_dir, tok_dir = ckpts
    kw = {"episodes": 3, "settings": EvalSettings(max_frames=400, epsilon=0.3), "device": "cpu",
          "backend": "vector", "agent": AgentSettings(beam=2, horizon=1), "seed": 5}
    one = evaluate(model_dir, tok_dir, ["SpaceInvaders", "Pong"], overlap=False, **kw)
    two = evaluate(model_dir, tok_dir, ["SpaceInvaders", "Pong"], overlap=True, **kw)
    assert two["agent"]["overlap"] and not one["agent"]["overlap"]
    assert two["throughput"]["per_rank"][0]["lanes"] == 2 and one["throughput"]["per_rank"][0]["lanes"] == 1
    for g in ("SpaceInvaders", "Pong"):
        strip = [{k: v for k, v in e.items() if k != "wall_time_s"} for e in one["games"][g]["episodes"]]
        assert strip == [{k: v for k, v in e.items() if k != "wall_time_s"} for e in two["games"][g]["episodes"]]
    assert sum(one["games"]["SpaceInvaders"]["raw_scores"]) > 0  # the comparison covers scoring episodes
    for k in ("env_steps", "decisions", "random_actions"):
        assert one["throughput"][k] == two["throughput"][k]
