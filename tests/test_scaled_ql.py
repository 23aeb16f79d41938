"""Scaled-QL: losses against brute force (n-step returns, the n-step C51 projection, CQL on C51), feature
normalisation, per-game head routing, parameter counts per preset, training with exact resume, evaluation under
the JOWA protocol, and (slow) a Catch learning check against random play."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from jowa_core import games
from jowa_core.config import ConfigError, from_dict
from jowa_core.models.losses import c51_support, cql_loss
from jowa_core.models.scaled_ql import (
    ScaledQLConfig,
    ScaledQLModel,
    greedy_next_probs,
    n_step_returns,
    normalize_features,
    nstep_c51_loss,
)
from jowa_core.train.baselines import train_baseline
from jowa_core.train.scaled_ql import ScaledQL, ScaledQLPretrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


# ---- losses against brute force


def brute_n_step(reward, terminal, valid, start, n, gamma):
    """Loops: (G, discount, has) of one row."""
    if not valid[start]:
        return 0.0, 0.0, False
    G = 0.0
    for k in range(n):
        t = start + k
        if t >= len(valid) or not valid[t]:
            return G, 0.0, False  # the segment ran out before n steps: no target
        G += gamma**k * reward[t]
        if terminal[t]:
            return G, 0.0, True
    if start + n < len(valid) and valid[start + n]:
        return G, gamma**n, True
    return G, 0.0, False


def test_n_step_returns_match_loops():
    rng = np.random.default_rng(0)
    B, L, start, n, gamma = 300, 7, 3, 3, 0.9
    reward = rng.integers(-1, 2, (B, L)).astype(np.float32)
    terminal = rng.random((B, L)) < 0.15
    length = rng.integers(1, L + 1, B)
    valid = np.arange(L)[None] < length[:, None]
    terminal &= valid
    G, disc, has = n_step_returns(torch.tensor(reward), torch.tensor(terminal), torch.tensor(valid), start, n, gamma)
    for b in range(B):
        g, d, h = brute_n_step(reward[b], terminal[b], valid[b], start, n, gamma)
        assert bool(has[b]) == h, b
        if h:
            assert float(G[b]) == pytest.approx(g, abs=1e-6) and float(disc[b]) == pytest.approx(d, abs=1e-6), b
    assert 0 < int(has.sum()) < B and (disc[has] == 0).any() and (disc[has] > 0).any()  # both kinds occur


def brute_c51_target(G, discount, next_probs, support):
    """Bellemare et al. (2017) Algorithm 1: floor/ceil split of each shifted atom."""
    v_min, v_max, Z = float(support[0]), float(support[-1]), len(support)
    dz = (v_max - v_min) / (Z - 1)
    m = np.zeros(Z)
    for j in range(Z):
        tz = min(max(G + discount * float(support[j]), v_min), v_max)
        b = (tz - v_min) / dz
        lo, hi = math.floor(b), math.ceil(b)
        if lo == hi:
            m[lo] += next_probs[j]
        else:
            m[lo] += next_probs[j] * (hi - b)
            m[hi] += next_probs[j] * (b - lo)
    return m


def test_nstep_c51_loss_is_the_cross_entropy_to_the_projected_n_step_target():
    torch.manual_seed(0)
    B, A, Z = 6, 5, 51
    support = c51_support(-20.0, 20.0, Z)
    logits = torch.randn(B, A, Z, requires_grad=True)
    action = torch.randint(0, A, (B,))
    G = torch.tensor([0.0, 1.0, -2.71, 2.9701, 25.0, -0.3])  # 25: clipped at v_max
    disc = torch.tensor([0.99**3, 0.0, 0.99**3, 0.99**3, 0.5, 0.99**3])
    next_probs = torch.softmax(torch.randn(B, Z), -1)
    has = torch.tensor([True, True, True, True, True, False])
    loss = nstep_c51_loss(logits, action, G, disc, next_probs, has, support)
    total = 0.0
    for b in range(5):
        m = brute_c51_target(float(G[b]), float(disc[b]), next_probs[b].numpy(), support)
        assert m.sum() == pytest.approx(1.0, abs=1e-5)
        p = torch.softmax(logits[b, action[b]], -1).detach().numpy()
        total += -(m * np.log(p + 1e-8)).sum()
    assert loss.item() == pytest.approx(total / 5, rel=1e-5)
    loss.backward()
    assert logits.grad[5].abs().sum() == 0  # a row without a target has no gradient


def test_cql_on_c51_is_logsumexp_of_expected_q_over_valid_actions_minus_the_data_action():
    torch.manual_seed(1)
    B, A, Z = 4, 6, 11
    support = c51_support(-20.0, 20.0, Z)
    logits = torch.randn(B, A, Z)
    action = torch.tensor([0, 2, 1, 3])
    mask = torch.ones(B, A, dtype=torch.bool)
    mask[:, 4:] = False
    valid = torch.tensor([True, True, False, True])
    got = cql_loss(logits[None, :, None], action[:, None], valid[:, None], support, mask)
    want = []
    for b in range(B):
        if not valid[b]:
            continue
        q = [float((torch.softmax(logits[b, a], -1) * support).sum()) for a in range(A)]
        want.append(math.log(sum(math.exp(q[a]) for a in range(4))) - q[int(action[b])])
    assert float(got) == pytest.approx(sum(want) / len(want), rel=1e-5)


def test_the_target_reads_the_greedy_valid_action():
    support = c51_support(-1.0, 1.0, 3)
    logits = torch.full((1, 3, 3), -10.0)
    logits[0, 0, 2] = logits[0, 1, 0] = logits[0, 2, 1] = 10.0  # Q = +1, -1, 0
    mask = torch.tensor([[False, True, True]])  # action 0 (the best) is not valid
    probs = greedy_next_probs(logits, mask, support)
    assert probs.argmax().item() == 1  # action 2's distribution (Q = 0), not action 0's


# ---- network


def test_feature_normalisation_gives_unit_vectors_and_passes_gradients_orthogonal_to_them():
    e = torch.randn(5, 16, dtype=torch.float64, requires_grad=True)
    y = normalize_features(e)
    assert torch.allclose(y.norm(dim=-1), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(y, e / e.norm(dim=-1, keepdim=True))
    (y * torch.randn(5, 16, dtype=torch.float64)).sum().backward()
    assert e.grad.abs().sum() > 0
    assert torch.allclose((e.grad * e).sum(-1), torch.zeros(5, dtype=torch.float64), atol=1e-12)  # scale-invariant


def test_the_model_normalises_features_before_the_heads():
    m = ScaledQLModel(from_dict(ScaledQLConfig, {"preset": "tiny", "games": ["Catch"]}))
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    f = m.features(obs)
    assert f.shape == (3, 64) and torch.allclose(f.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_each_row_reads_its_own_games_head():
    torch.manual_seed(0)
    m = ScaledQLModel(from_dict(ScaledQLConfig, {"preset": "tiny", "games": ["Catch", "Pong", "Breakout"]}))
    tasks = torch.tensor([games.get(g).task_id for g in ["Pong", "Catch", "Pong", "Breakout"]])
    obs = torch.randint(0, 256, (4, 4, 84, 84), dtype=torch.uint8)
    out = m(obs, tasks)  # (4, 18, 51)
    e = m.features(obs)
    for row, head in enumerate([1, 0, 1, 2]):
        want = (e[row] @ m.head_w[head].T + m.head_b[head]).view(18, 51)
        assert torch.allclose(out[row], want, atol=1e-5)
    out.sum().backward()  # only the heads in the batch get gradients
    assert m.head_w.grad[[0, 1, 2]].abs().sum(dim=(1, 2)).gt(0).all()
    with pytest.raises(ValueError, match="no Q head"):
        m(obs[:1], torch.tensor([games.get("Seaquest").task_id]))


# Pinned parameter counts (heads: one per game; 18 actions x 51 atoms each). The 80m preset is ResNet-101 with
# atari15's 15 heads: 77.6M, the paper's "SQL-80M" (docs/baselines.md).
PARAMS = {("tiny", 1): 200_342, ("resnet34", 15): 42_225_482, ("resnet50", 15): 58_618_442,
          ("80m", 15): 77_610_570}


@pytest.mark.parametrize("preset,heads", sorted(PARAMS))
def test_parameter_counts(preset, heads):
    names = games.resolve("atari15")[:heads] if heads > 1 else ["Catch"]
    with torch.device("meta"):
        m = ScaledQLModel(from_dict(ScaledQLConfig, {"preset": preset, "games": names}))
    assert m.num_trainable_parameters() == PARAMS[(preset, heads)]
    per_head = 1024 * 18 * 51 + 18 * 51 if preset != "tiny" else 64 * 18 * 51 + 18 * 51
    assert m.head_w.numel() + m.head_b.numel() == heads * per_head


def test_config_errors():
    with pytest.raises(ConfigError, match="games is empty"):
        ScaledQLModel(from_dict(ScaledQLConfig, {"preset": "tiny"}))
    with pytest.raises(ConfigError):
        from_dict(ScaledQLConfig, {"layers": [1, 1], "widths": [8]})


# ---- training, resume, evaluation


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    from jowa_core.data.collect import collect
    from jowa_core.data.convert import PrepareOptions, prepare_data

    root = tmp_path_factory.mktemp("sql")
    collect(["Catch"], [1], root / "raw", num_steps=600, capacity=600, seed=0)
    prepare_data(PrepareOptions(source=str(root / "raw"), out=str(root / "data"), games=["Catch"], workers=1))
    return root / "data"


def config(data: Path, **train) -> ScaledQLPretrainConfig:
    t = dict(batch_size=8, steps=8, target_update_every=3, log_every=2, save_every=4, tensorboard=False, seed=3,
             device="cpu")
    t.update(train)
    return from_dict(ScaledQLPretrainConfig, {"model": {"preset": "tiny"}, "data": {"path": str(data),
                                                                                    "num_workers": 0}, "train": t})


def test_training_resumes_bit_for_bit_and_records_its_heads(frames, tmp_path):
    full = train_baseline(ScaledQL, config(frames), tmp_path / "full")
    train_baseline(ScaledQL, config(frames, stop_after=4), tmp_path / "part")
    resumed = train_baseline(ScaledQL, config(frames), tmp_path / "part", resume=True)
    assert resumed["step"] == full["step"] == 8 and resumed["finished"]
    assert resumed["param_fingerprint"] == full["param_fingerprint"]
    other = train_baseline(ScaledQL, config(frames, seed=4), tmp_path / "other")
    assert other["param_fingerprint"] != full["param_fingerprint"]
    meta = json.loads((tmp_path / "full" / "final" / "checkpoint.json").read_text())
    assert meta["kind"] == "scaled_ql" and meta["config"]["games"] == ["Catch"] and meta["gamma"] == 0.99


def test_bad_segment_length_is_one_line(frames, tmp_path):
    cfg = config(frames)
    cfg.data.seq_len = 8
    with pytest.raises(ValueError, match="frame_stack \\+ train.n_step = 7"):
        train_baseline(ScaledQL, cfg, tmp_path / "run")


def test_cli_pretrain_evaluate_report(frames, tmp_path):
    """`jowa pretrain --algo scaled-ql`, `jowa evaluate` (no tokenizer: frames) and `jowa report` (an SQL row)."""
    from typer.testing import CliRunner

    from jowa_cli.main import app

    run, scores, cli = tmp_path / "run", tmp_path / "scores.json", CliRunner()
    r = cli.invoke(app, ["pretrain", "--algo", "scaled-ql", "--data", str(frames), "--out", str(run), "--quiet",
                         "train.batch_size=4", "train.steps=3", "train.tensorboard=false", "train.device=cpu",
                         "data.num_workers=0"])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["evaluate", "--ckpt", str(run), "--games", "Catch", "--episodes", "2", "--device", "cpu",
                         "--out", str(scores), "--quiet"])
    assert r.exit_code == 0, r.output
    res = json.loads(scores.read_text())
    assert res["checkpoint"]["kind"] == "scaled_ql" and res["agent"]["planner"] == "greedy"
    assert len(res["games"]["Catch"]["raw_scores"]) == 2 and res["tokenizer"] is None
    r = cli.invoke(app, ["report", str(scores), "--out", str(tmp_path / "report"), "--published", "none"])
    assert r.exit_code == 0, r.output
    assert "SQL-TINY" in (tmp_path / "report" / "aggregates.csv").read_text()
    r = cli.invoke(app, ["pretrain", "--algo", "dqn", "--data", str(frames), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "error: unknown --algo 'dqn'; choose from jowa, mtbc, scaled-ql" in r.output


def test_finetuning_keeps_the_shared_network_and_the_games_head(tmp_path):
    from jowa_core import checkpoint as ckpt
    from jowa_core.config import to_dict
    from jowa_core.train.algos import pretrained_init

    torch.manual_seed(0)
    pre = ScaledQLModel(from_dict(ScaledQLConfig, {"preset": "tiny", "games": ["Pong", "Catch"]}))
    ckpt.save_model(tmp_path / "pre", "scaled_ql", to_dict(pre.cfg), pre.state_dict())
    for game, head in (("Catch", 1), ("Breakout", None)):  # a pretraining game keeps its head; a new one starts fresh
        ft = ScaledQLModel(from_dict(ScaledQLConfig, {"preset": "tiny", "games": [game]}))
        pretrained_init("scaled-ql", tmp_path / "pre")(ft, [game])
        assert torch.equal(ft.encoder.spatial, pre.encoder.spatial)
        assert torch.equal(ft.mlp[0].weight, pre.mlp[0].weight)
        assert torch.equal(ft.head_w[0], pre.head_w[head]) if head is not None else not torch.equal(
            ft.head_w[0], pre.head_w[1])


def test_cli_finetune_keeps_the_best_snapshot(frames, tmp_path):
    from typer.testing import CliRunner

    from jowa_cli.main import app

    train_baseline(ScaledQL, config(frames, steps=2), tmp_path / "pre")
    r = CliRunner().invoke(app, ["finetune", "--algo", "scaled-ql", "--ckpt", str(tmp_path / "pre"), "--game",
                                 "Catch", "--data", str(frames), "--out", str(tmp_path / "ft"), "--quiet", "--json",
                                 str(tmp_path / "ft.json"), "train.steps=4", "train.device=cpu",
                                 "data.num_workers=0", "train.tensorboard=false", "eval.every=2", "eval.episodes=1",
                                 "eval.max_frames=200"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "ft.json").read_text())
    assert s["finished"] and s["best_step"] in (2, 4) and s["best_score"] is not None
    assert sorted(p.name for p in (tmp_path / "ft" / "evals").iterdir()) == ["step_00000002.json",
                                                                            "step_00000004.json"]
    assert (tmp_path / "ft" / "best" / "model.safetensors").is_file()
    cfg = (tmp_path / "ft" / "config.yaml").read_text()
    assert "batch_size: 32" in cfg and "lr: 5.0e-05" in cfg


def test_verify_checks_a_baseline_run(frames, tmp_path):
    from jowa_core.recipes.verify import verify

    train_baseline(ScaledQL, config(frames, steps=2), tmp_path / "run")
    report = verify(tmp_path / "run")
    assert report["ok"], report["problems"]
    assert any(v.get("kind") == "scaled_ql" for v in report["checked"].values())


DDP_SCRIPT = """
import json, os, sys
from jowa_core.config import from_dict
from jowa_core.train.algos import load_baseline_config, pretrain_baseline
algo, data, out = sys.argv[1:4]
cfg = load_baseline_config(algo, None, ["model.preset=tiny", "data.num_workers=0", "train.batch_size=8",
                                        "train.steps=4", "train.device=cpu", "train.tensorboard=false"],
                           {"data.path": data})
s = pretrain_baseline(algo, cfg, out)
open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w").write(json.dumps(s))
"""


def test_torchrun_two_cpu_processes_keep_the_heads_in_sync(frames, tmp_path):
    """DDP (find_unused_parameters: heads of games absent from a batch): the ranks read different shards, so equal
    weights after 4 steps mean synchronised gradients."""
    import os
    import subprocess
    import sys

    script, out = tmp_path / "ddp.py", tmp_path / "run"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(script), "scaled-ql", str(frames),
                        str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s0, s1 = (json.loads((out / f"rank{i}.json").read_text()) for i in (0, 1))
    assert s0["world_size"] == s1["world_size"] == 2 and s0["step"] == 4
    assert s0["param_fingerprint"] == s1["param_fingerprint"]
