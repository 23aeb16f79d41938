"""Fine-tuning on a small emulator store: both stages run, synthetic segments are aligned, COMBO is eq. 4, the
tokenizer trains (or stays frozen) and is the one evaluated, and a stopped run resumes exactly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_token_stores

from jowa_core import checkpoint as ckpt
from jowa_core import games
from jowa_core.config import from_dict
from jowa_core.data.segments import make_loader
from jowa_core.models.losses import cql_loss
from jowa_core.models.tokenizer import Tokenizer, TokenizerConfig, load_tokenizer, save_tokenizer
from jowa_core.models.world_action import WorldActionConfig, WorldActionModel, load_world_action, save_world_action
from jowa_core.planning.beam import plan
from jowa_core.recipes.finetune import run_finetune as finetune
from jowa_core.train.finetune import FinetuneConfig, best_path, combo_loss, synthesize

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 64
GAME = "Pong"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune")
    path = make_token_stores(root, [GAME], num_steps=2000, capacity=1000, vocab=VOCAB) / f"{GAME}.zarr"
    torch.manual_seed(0)
    mcfg = from_dict(WorldActionConfig, {"preset": "tiny", "num_layers": 1, "embed_dim": 32, "num_heads": 2,
                                         "q_mlp_dim": 32, "num_q": 2, "obs_vocab": VOCAB})
    save_world_action(WorldActionModel(mcfg), str(root / "model"), step=7)
    save_tokenizer(Tokenizer(TokenizerConfig(ch=8, num_res_blocks=1, embed_dim=16, z_channels=16,
                                             vocab_size=VOCAB)), root / "tok")
    return {"store": path, "model": root / "model", "tok": root / "tok"}


def small(**kw) -> FinetuneConfig:
    c = dict(stage1_steps=3, stage2_steps=3, batch_size=8, log_every=2, save_every=0, eval_every=3,
             eval_episodes=1, eval_max_frames=40, eval_backend="loop", target_update_every=2, seed=1,
             tokenizer_batch_size=8)
    c.update(kw)
    return from_dict(FinetuneConfig, c)


def test_combo_hand_computed():
    # one head, B=2 rows (row 0 real, row 1 synthetic), L=1, A=2 actions, Z=2 atoms on support (0, 1)
    support = torch.tensor([0.0, 1.0])
    big = 50.0  # softmax((0, big)) ~ (0, 1): expected Q ~ 1; (big, 0) ~ 0
    q_logits = torch.tensor([[[[[big, 0.0], [0.0, big]]], [[[0.0, big], [0.0, big]]]]])  # (1, 2, 1, 2, 2)
    # expected Q: row 0 = (0, 1), row 1 = (1, 1)
    action = torch.tensor([[1], [0]])
    valid = torch.ones(2, 1, dtype=torch.bool)
    real = torch.tensor([True, False])
    mask = torch.ones(2, 2, dtype=torch.bool)
    lse0, lse1 = np.log(np.exp(0) + np.exp(1)), np.log(2 * np.exp(1))
    expected = (lse0 + lse1) / 2 - 1.0  # positive term: Q(s, a) of the real row only
    got = combo_loss(q_logits, action, valid, real, support, mask)
    assert float(got) == pytest.approx(expected, abs=1e-5)
    # with every row real it is CQL
    all_real = torch.ones(2, dtype=torch.bool)
    assert float(combo_loss(q_logits, action, valid, all_real, support, mask)) == pytest.approx(
        float(cql_loss(q_logits, action, valid, support, mask)), abs=1e-6)
    # the action mask restricts the negative term
    mask1 = torch.tensor([[False, True], [True, True]])
    expected1 = (1.0 + lse1) / 2 - 1.0
    assert float(combo_loss(q_logits, action, valid, real, support, mask1)) == pytest.approx(expected1, abs=1e-5)


def test_synthetic_segments_are_aligned_and_planned(setup):
    model, _ = load_world_action(str(setup["model"]))
    loader = make_loader(setup["store"], 16, seq_len=6, stride=1, seed=0, observations="tokens")
    loader.batch_sampler.set_epoch(0)
    batch = next(iter(loader))
    ok = batch["valid"].all(1) & ~batch["terminal"].any(1)
    real = {k: v[ok][:4] for k, v in batch.items()}
    n = len(real["action"])
    assert n >= 2
    task = games.get(GAME).task_id
    assert (real["game_id"] == task).all()
    syn = synthesize(model, real, beam=2, horizon=2)
    assert syn["obs_tokens"].shape == (n, 8, 36) and syn["action"].shape == (n, 8) and syn["reward"].shape == (n, 8)
    assert syn["valid"].all() and not syn["terminal"].any()
    assert (syn["game_id"] == task).all()
    # the real prefix is the real data, each action and reward with its own frame
    assert torch.equal(syn["obs_tokens"][:, :6], real["obs_tokens"])
    assert torch.equal(syn["action"][:, :5], real["action"][:, :5])
    assert torch.equal(syn["reward"][:, :5], real["reward"][:, :5])
    # the imagined part is the best leaf's path of the planner
    from jowa_core.models.world_action import segment_tokens

    res = plan(model, segment_tokens(real["obs_tokens"], real["action"])[:, :-1], real["game_id"],
               real["action_mask"], beam=2, horizon=2, record=True, reward_mode="mode")
    path = best_path(res)
    assert torch.equal(syn["action"][:, 5:7], path["action"])
    assert torch.equal(syn["action"][:, 5], res.action)  # the planned first action sits on the 6th real frame
    assert torch.equal(syn["obs_tokens"][:, 6:], path["obs_tokens"])
    assert torch.equal(syn["reward"][:, 5:7], path["reward"])
    assert set(syn["reward"][:, 5:7].unique().tolist()) <= {-1.0, 0.0, 1.0}
    mask = real["action_mask"]
    assert mask.gather(1, syn["action"]).all()  # every action valid for the game
    # the path is consistent with the tree: its last score is the plan's score
    assert torch.allclose(res.tree[-1]["score"].max(-1).values, res.score)


def test_finetune_runs_both_stages_and_keeps_best_and_final(setup, tmp_path):
    out = tmp_path / "run"
    summary = finetune(small(eval_plan=True), setup["model"], setup["tok"], GAME, setup["store"], out)
    assert summary["step"] == 6 and summary["task_id"] == games.get(GAME).task_id
    assert summary["synthetic_per_batch"] == 2 and summary["source_step"] == 7
    assert [e["step"] for e in summary["evals"]] == [3, 6]
    best = summary["best"]
    assert best["step"] in (3, 6) and best["mean"] == max(e["mean"] for e in summary["evals"])
    for d in ("best", "final"):
        model, meta = load_world_action(str(out / d))
        assert meta["game"] == GAME and meta["task_id"] == games.get(GAME).task_id
    assert load_world_action(str(out / "final"))[1]["step"] == 6
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 3, 4, 6]
    assert {r["stage"] for r in rows} == {"1", "2"}
    assert [r["n_synthetic"] for r in rows] == ["0.0", "0.0", "2.0", "2.0"]  # means since the last row
    assert rows[1]["eval_mean"] != "" and rows[-1]["best_mean"] != ""
    assert json.loads((out / "summary.json").read_text())["best"] == best
    ev = json.loads((out / "evals" / "step_00000006.json").read_text())
    assert ev["agent"]["planner"] == "beam" and ev["games"][GAME]["task_id"] == games.get(GAME).task_id
    # every part of the model trained, the Q head included
    init, _ = load_world_action(str(setup["model"]))
    final, _ = load_world_action(str(out / "final"))
    assert not torch.equal(init.head_q.w1, final.head_q.w1)
    assert not torch.equal(init.transformer.ln_f.weight, final.transformer.ln_f.weight)


def test_from_scratch_and_cql(setup, tmp_path):
    cfg = small(stage1_steps=1, stage2_steps=1, eval_episodes=0, from_scratch=True, action_loss="cql")
    summary = finetune(cfg, setup["model"], setup["tok"], GAME, setup["store"], tmp_path / "run")
    assert summary["best"] is None and summary["from_scratch"]
    init, _ = load_world_action(str(setup["model"]))
    final, _ = load_world_action(str(tmp_path / "run" / "final"))
    # random init: far from the pretrained weights after one step
    assert (init.obs_emb.weight - final.obs_emb.weight).abs().max() > 1e-2


def test_shipped_config_loads():
    from jowa_core.config import load_config

    cfg = load_config(FinetuneConfig, Path(__file__).resolve().parents[1] / "configs" / "finetune.yaml")
    assert (cfg.stage1_steps, cfg.stage2_steps, cfg.batch_size, cfg.lr) == (3000, 7000, 32, 5e-5)
    assert cfg.action_loss == "combo" and cfg.synthetic_fraction == 0.25 and cfg.world_weight == 0.5


def test_bad_input(setup, tmp_path):
    with pytest.raises(ValueError, match="not Breakout"):
        finetune(small(), setup["model"], setup["tok"], "Breakout", setup["store"], tmp_path / "a")
    with pytest.raises(ValueError, match="synthetic_fraction"):
        finetune(small(synthetic_fraction=1.0), setup["model"], setup["tok"], GAME, setup["store"], tmp_path / "b")


def test_cli_bad_input_exits_2(setup, tmp_path):
    import typer
    from typer.testing import CliRunner

    from jowa_cli import finetune_cmd

    app = typer.Typer()
    app.command("finetune")(finetune_cmd.finetune)
    app.command("noop")(lambda: None)
    base = ["finetune", "--ckpt", str(setup["model"]), "--tokenizer", str(setup["tok"]), "--game", GAME,
            "--out", str(tmp_path / "r")]
    r = CliRunner().invoke(app, [*base, "--data", str(tmp_path / "missing.zarr")])
    assert r.exit_code == 2, r.output
    r = CliRunner().invoke(app, [*base, "--data", str(setup["store"]), "no_such_key=1"])
    assert r.exit_code == 2, r.output
    r = CliRunner().invoke(app, [*base[:-2], "--data", str(setup["store"])])  # --out missing
    assert r.exit_code == 2, r.output
    bad = [*base, "--data", str(setup["store"])]
    bad[2] = str(tmp_path / "no_ckpt")
    r = CliRunner().invoke(app, bad)
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "r").exists()  # nothing written on bad input


def test_shipped_configs_load_paper_and_official_presets():
    from jowa_core.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    paper = load_config(FinetuneConfig, root / "finetune.yaml")
    official = load_config(FinetuneConfig, root / "finetune-official.yaml")
    assert (paper.stage1_steps, paper.stage2_steps, paper.action_loss, paper.synthetic_fraction, paper.batch_size) == (
        3000, 7000, "combo", 0.25, 32)
    assert (official.stage1_steps + official.stage2_steps, official.action_loss, official.synthetic_fraction) == (
        50000, "cql", 0.5)
    assert paper.train_tokenizer and official.train_tokenizer  # both train it (official: 128 frames, lr 1e-4)
    assert (official.tokenizer_batch_size, official.tokenizer_lr) == (128, 1e-4)


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in csv.DictReader(f)]


def _sha(tok_dir: Path) -> str:
    return ckpt.sha256_file(tok_dir / ckpt.WEIGHTS)


def test_resume_is_exact_and_trained_tokenizer_is_saved_and_evaluated(setup, tmp_path):
    # 4 steps, evaluations at 2 and 4; log_every=3 so that the stop at 3 falls between two metrics rows
    def cfg(**kw) -> FinetuneConfig:
        return small(stage1_steps=2, stage2_steps=2, eval_every=2, log_every=3, save_every=0, **kw)

    args = (setup["model"], setup["tok"], GAME, setup["store"])
    full = finetune(cfg(), *args, tmp_path / "full")
    part = finetune(cfg(stop_after=3), *args, tmp_path / "part")
    assert part["step"] == 3 and not part["finished"] and not (tmp_path / "part" / "final").exists()
    last = ckpt.latest_checkpoint(tmp_path / "part")
    assert last.name == "step_00000003"
    assert {"optimizer.pt", "state.json", "tokenizer.safetensors", "tokenizer_optimizer.pt"} <= {
        p.name for p in last.iterdir()}
    assert load_tokenizer(last / "tokenizer").cfg.vocab_size == VOCAB  # step checkpoints are evaluable
    assert (tmp_path / "part" / "best" / "tokenizer").is_dir()  # the step-2 evaluation ran before the stop
    with pytest.raises(ValueError, match=r"lr \(5e-05 in the run, 0.001 now\)"):
        finetune(cfg(lr=1e-3), *args, tmp_path / "part", resume=True)
    with pytest.raises(ValueError, match="not empty"):
        finetune(cfg(), *args, tmp_path / "part")
    resumed = finetune(cfg(), *args, tmp_path / "part", resume=True)
    assert resumed["step"] == full["step"] == 4
    assert resumed["param_fingerprint"] == full["param_fingerprint"]
    assert resumed["evals"] == full["evals"] and [e["step"] for e in full["evals"]] == [2, 4]
    strip = ("path", "tokenizer")
    assert {k: v for k, v in resumed["best"].items() if k not in strip} == {
        k: v for k, v in full["best"].items() if k not in strip}
    assert _metrics(tmp_path / "part") == _metrics(tmp_path / "full")
    assert [int(r["step"]) for r in _metrics(tmp_path / "full")] == [2, 3, 4]
    for d in ("final", "best"):
        assert _sha(tmp_path / "part" / d / "tokenizer") == _sha(tmp_path / "full" / d / "tokenizer")

    # the tokenizer trained, is saved with final/ and best/, and is what the evaluations loaded
    out = tmp_path / "full"
    tok0 = load_tokenizer(setup["tok"])
    tok1 = load_tokenizer(out / "final" / "tokenizer")
    assert not torch.equal(tok0.encoder.conv_in.weight, tok1.encoder.conv_in.weight)
    assert full["tokenizer"] == {"source": str(setup["tok"]), "trained": True,
                                 "final": str(out / "final" / "tokenizer"), "best": str(out / "best" / "tokenizer")}
    assert full["final"]["tokenizer"] == str(out / "final" / "tokenizer")
    ev = json.loads((out / "evals" / "step_00000004.json").read_text())
    assert ev["tokenizer"]["sha256"] == _sha(out / "final" / "tokenizer") != _sha(setup["tok"])
    best_ev = json.loads((out / "evals" / f"step_{full['best']['step']:08d}.json").read_text())
    assert best_ev["tokenizer"]["sha256"] == _sha(out / "best" / "tokenizer")
    assert [r["tokenizer_total"] != "" for r in _metrics(out)] == [True] * 3


def test_frozen_tokenizer_is_unchanged_evaluated_and_resumes(setup, tmp_path):
    def cfg(**kw) -> FinetuneConfig:
        return small(**{"stage1_steps": 1, "stage2_steps": 1, "eval_every": 0, "log_every": 1, "train_tokenizer": False,
                        **kw})

    args = (setup["model"], setup["tok"], GAME, setup["store"])
    sha0 = _sha(setup["tok"])
    full = finetune(cfg(), *args, tmp_path / "full")
    finetune(cfg(stop_after=1, eval_episodes=0), *args, tmp_path / "part")
    with pytest.raises(ValueError, match="train_tokenizer"):
        finetune(cfg(train_tokenizer=True), *args, tmp_path / "part", resume=True)
    resumed = finetune(cfg(eval_episodes=0), *args, tmp_path / "part", resume=True)
    assert resumed["param_fingerprint"] == full["param_fingerprint"]
    out = tmp_path / "full"
    assert full["tokenizer"] == {"source": str(setup["tok"]), "trained": False, "final": str(setup["tok"]),
                                 "best": str(setup["tok"])}
    assert not (out / "final" / "tokenizer").exists() and not (out / "best" / "tokenizer").exists()
    ev = json.loads((out / "evals" / "step_00000002.json").read_text())
    assert ev["tokenizer"]["sha256"] == sha0 == _sha(setup["tok"])
    assert all(r["tokenizer_total"] == "" for r in _metrics(out))


def test_cli_resume_with_another_config_exits_2(setup, tmp_path):
    import typer
    from typer.testing import CliRunner

    from jowa_cli import finetune_cmd

    app = typer.Typer()
    app.command("finetune")(finetune_cmd.finetune)
    app.command("noop")(lambda: None)
    base = ["finetune", "--ckpt", str(setup["model"]), "--tokenizer", str(setup["tok"]), "--game", GAME, "--data",
            str(setup["store"]), "--out", str(tmp_path / "r"), "--quiet", "train_tokenizer=false", "eval_episodes=0",
            "stage1_steps=2", "stage2_steps=0"]
    r = CliRunner().invoke(app, [*base, "stop_after=1"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, [*base, "--resume", "seed=5"])
    assert r.exit_code == 2 and "seed" in r.output, r.output
    r = CliRunner().invoke(app, [*base, "--resume", "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s.json").read_text())["step"] == 2
