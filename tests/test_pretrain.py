"""Pretraining on a small emulator dataset: losses fall, stages switch, resume is exact, DDP stays in sync."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_token_stores

from jowa_core import checkpoint as ckpt
from jowa_core.config import from_dict
from jowa_core.models.world_action import load_world_action
from jowa_core.train.pretrain import (
    PretrainConfig,
    TrainConfig,
    build_optimizer,
    lr_factor,
    param_fingerprint,
    pretrain,
)

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 64
GAMES = ["Pong", "Breakout"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_token_stores(tmp_path_factory.mktemp("pretrain"), GAMES, num_steps=2500, capacity=1000, vocab=VOCAB,
                             workers=2)


def config(data: Path, **train) -> PretrainConfig:
    t = dict(batch_size=8, stage1_steps=6, stage2_steps=6, target_update_every=4, log_every=2, save_every=4,
             tensorboard=False, seed=3)
    t.update(train)
    return from_dict(PretrainConfig, {
        "model": {"preset": "tiny", "num_layers": 1, "embed_dim": 32, "num_heads": 2, "q_mlp_dim": 32,
                  "num_q": 2, "obs_vocab": VOCAB},
        "data": {"path": str(data), "num_workers": 0},
        "train": t,
    })


def metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_losses_fall_and_stages_switch(data, tmp_path):
    cfg = config(data, stage1_steps=60, stage2_steps=60, log_every=10, save_every=1000, batch_size=16,
                 lr_world_stage1=3e-3, lr_world_stage2=1e-3, lr_q=1e-3, target_update_every=10)
    summary = pretrain(cfg, tmp_path / "run")
    assert summary["finished"] and summary["step"] == 120
    rows = metrics(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == list(range(10, 121, 10))
    s1 = [r for r in rows if r["stage"] == "1"]
    s2 = [r for r in rows if r["stage"] == "2"]
    assert len(s1) == 6 and len(s2) == 6
    assert float(s1[-1]["world_obs"]) < 0.8 * float(s1[0]["world_obs"])
    assert float(s2[-1]["td"]) < float(s2[0]["td"])
    assert all(r["td"] == "" for r in s1) and all(r["td"] != "" for r in s2)
    assert {float(r["lr_world"]) for r in s1} == {3e-3} and {float(r["lr_world"]) for r in s2} == {1e-3}
    model, meta = load_world_action(tmp_path / "run" / "final")
    assert meta["step"] == 120 and meta["stage"] == 2
    # the Q head trained in stage 2 only, and the target copy is the head of step 120 (120 % 10 == 0)
    for a, b in zip(model.head_q.parameters(), model.head_q_target.parameters(), strict=True):
        assert torch.equal(a, b)


def test_cosine_schedule_falls_within_each_stage():
    cfg = TrainConfig(stage1_steps=5, stage2_steps=9, lr_schedule="cosine", lr_final_ratio=0.2)
    f = [lr_factor(s, cfg) for s in range(14)]
    assert f[0] == pytest.approx(1.0) and f[4] == pytest.approx(0.2)  # stage 1: steps 0..4
    assert f[5] == pytest.approx(1.0) and f[13] == pytest.approx(0.2)  # stage 2 starts again from its own lr
    assert f[2] == pytest.approx(0.6) and f[9] == pytest.approx(0.6)  # half-way: the mean of 1 and the ratio
    assert all(a > b for a, b in zip(f[:4], f[1:5], strict=True))
    assert all(a > b for a, b in zip(f[5:13], f[6:14], strict=True))
    assert {lr_factor(s, TrainConfig(stage1_steps=5, stage2_steps=9)) for s in range(14)} == {1.0}


def test_pretrain_follows_the_cosine_schedule(data, tmp_path):
    cfg = config(data, stage1_steps=4, stage2_steps=5, log_every=1, save_every=1000, lr_world_stage1=2e-3,
                 lr_world_stage2=1e-3, lr_q=5e-4, lr_schedule="cosine", lr_final_ratio=0.0)
    pretrain(cfg, tmp_path / "run")
    rows = metrics(tmp_path / "run")
    # the row of step s shows the learning rates of its last optimiser step (0-based s - 1)
    expect_world = [2e-3 * lr_factor(s, cfg.train) for s in range(4)] + [1e-3 * lr_factor(s, cfg.train)
                                                                       for s in range(4, 9)]
    assert [float(r["lr_world"]) for r in rows] == pytest.approx(expect_world)
    assert [float(r["lr_q"]) for r in rows[4:]] == pytest.approx([5e-4 * lr_factor(s, cfg.train) for s in range(4, 9)])
    assert float(rows[3]["lr_world"]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="lr_final_ratio"):
        pretrain(config(data, lr_schedule="cosine", lr_final_ratio=1.5), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_q_head_is_frozen_in_stage_1(data, tmp_path):
    cfg = config(data, stage1_steps=4, stage2_steps=0, save_every=1000)
    pretrain(cfg, tmp_path / "run")
    torch.manual_seed(cfg.train.seed)
    from jowa_core.models.world_action import WorldActionModel

    init = WorldActionModel(cfg.model)
    trained, _ = load_world_action(tmp_path / "run" / "final")
    assert torch.equal(init.head_q.w1, trained.head_q.w1)
    assert not torch.equal(init.head_obs[0].weight, trained.head_obs[0].weight)


def test_optimizer_groups_follow_the_official_split(data):
    cfg = config(data)
    from jowa_core.models.world_action import WorldActionModel

    model = WorldActionModel(cfg.model)
    opt = build_optimizer(model, cfg.train)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: {names[id(p)] for p in g["params"]} for g in opt.param_groups}
    assert "transformer.blocks.0.attn.query.weight" in groups["world_decay"]
    assert "head_obs.2.weight" in groups["world_decay"]
    assert {"pos_emb.weight", "obs_emb.weight", "transformer.ln_f.weight", "head_obs.2.bias"} <= groups[
        "world_no_decay"]
    assert groups["q"] == {n for n in names.values() if n.startswith("head_q.")}
    assert not any(n.startswith("head_q_target") for g in groups.values() for n in g)
    assert sum(len(g) for g in groups.values()) == len([p for p in model.parameters() if p.requires_grad])


def test_resume_is_bit_for_bit(data, tmp_path):
    full = pretrain(config(data), tmp_path / "full")
    # stop at 4 (stage 1), resume, stop at 8 (stage 2), resume to the end
    pretrain(config(data, stop_after=4), tmp_path / "part")
    assert ckpt.latest_checkpoint(tmp_path / "part").name == "step_00000004"
    pretrain(config(data, stop_after=8), tmp_path / "part", resume=True)
    resumed = pretrain(config(data), tmp_path / "part", resume=True)
    assert resumed["step"] == full["step"] == 12
    assert resumed["param_fingerprint"] == full["param_fingerprint"]
    a, b = metrics(tmp_path / "part"), metrics(tmp_path / "full")
    strip = ("tokens_per_s", "segments_per_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in a] == [
        {k: v for k, v in r.items() if k not in strip} for r in b]
    # a different seed gives different weights (the comparison can fail)
    other = pretrain(config(data, seed=4), tmp_path / "other")
    assert other["param_fingerprint"] != full["param_fingerprint"]


def test_the_model_records_which_tokenizer_made_its_tokens(data, tmp_path):
    """``jowa tokenize`` stamps the tokens with the tokenizer's sha256; pretraining writes it into every checkpoint
    (evaluation then refuses another tokenizer), refuses stores tokenized by different tokenizers, and refuses to
    resume on re-tokenized data."""
    import shutil

    import zarr

    from jowa_core.data.store import StoreError

    copy = tmp_path / "data"
    shutil.copytree(data, copy)

    def stamp(game: str, sha: str) -> None:
        zarr.open_group(str(copy / f"{game}.zarr"), mode="r+", zarr_format=3)["obs_tokens"].attrs[
            "tokenizer_sha256"] = sha

    for g in GAMES:
        stamp(g, "a" * 64)
    cfg = config(copy, stage1_steps=2, stage2_steps=2, save_every=2)
    pretrain(cfg, tmp_path / "run")
    for d in (tmp_path / "run" / "final", ckpt.latest_checkpoint(tmp_path / "run")):
        assert ckpt.read_json(d / ckpt.META)["tokens_tokenizer_sha256"] == "a" * 64
    meta = ckpt.read_json(tmp_path / "run" / "final" / ckpt.META)
    ckpt.check_tokens_tokenizer(meta, "a" * 64, "m", "t")
    ckpt.check_tokens_tokenizer({}, "b" * 64, "m", "t")  # imported / older models: not checked
    with pytest.raises(ckpt.CheckpointError, match="another tokenizer"):
        ckpt.check_tokens_tokenizer(meta, "b" * 64, "m", "t")
    stamp(GAMES[0], "c" * 64)
    with pytest.raises(StoreError, match="different tokenizers"):
        pretrain(cfg, tmp_path / "run2")
    stamp(GAMES[1], "c" * 64)
    longer = config(copy, stage1_steps=2, stage2_steps=4, save_every=2)
    saved_config = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(ValueError, match="Resume on the data it started with"):
        pretrain(longer, tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "config.yaml").read_text() == saved_config  # refused before anything is rewritten


def test_fresh_run_into_a_used_directory_is_refused(data, tmp_path):
    pretrain(config(data, stop_after=2), tmp_path / "run")
    with pytest.raises(ValueError, match="not empty"):
        pretrain(config(data), tmp_path / "run")


def test_a_failed_resume_leaves_the_run_as_it_was(data, tmp_path):
    pretrain(config(data, stop_after=2), tmp_path / "run")
    before = (tmp_path / "run" / "config.yaml").read_text()
    wider = config(data)
    wider.model.embed_dim = 48  # the checkpoint's weights do not fit
    with pytest.raises(Exception, match="size mismatch"):
        pretrain(wider, tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "config.yaml").read_text() == before


def _cli(*args: str, env: dict | None = None) -> list[str]:
    return [sys.executable, "-m", "jowa_cli.main", *args]


def _cli_args(data: Path, out: Path, *extra: str) -> list[str]:
    model = ["model.preset=tiny", "model.num_layers=1", "model.embed_dim=32", "model.num_heads=2",
             "model.q_mlp_dim=32", "model.num_q=2", f"model.obs_vocab={VOCAB}"]
    train = ["train.batch_size=8", "train.target_update_every=4", "train.log_every=2", "train.tensorboard=false",
             "data.num_workers=0", "train.seed=3"]
    return ["pretrain", "--data", str(data), "--out", str(out), "--quiet", *model, *train, *extra]


def test_cli_resume_after_kill_reproduces_the_uninterrupted_run(data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    steps = ["train.stage1_steps=30", "train.stage2_steps=30", "train.save_every=5"]
    ref = subprocess.run(_cli(*_cli_args(data, tmp_path / "ref", *steps, "--json", str(tmp_path / "ref.json"))),
                         env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(_cli(*_cli_args(data, tmp_path / "run", *steps)), env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while ckpt.latest_checkpoint(tmp_path / "run") is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = ckpt.latest_checkpoint(tmp_path / "run")
    assert killed_at is not None and not (tmp_path / "run" / "final").exists()
    res = subprocess.run(_cli(*_cli_args(data, tmp_path / "run", *steps, "--resume", "--json",
                                         str(tmp_path / "run.json"))), env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    a, b = json.loads((tmp_path / "ref.json").read_text()), json.loads((tmp_path / "run.json").read_text())
    assert a["step"] == b["step"] == 60
    assert a["param_fingerprint"] == b["param_fingerprint"]


def test_cli_bad_input_exit_codes(data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(_cli("pretrain", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")), env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(_cli(*_cli_args(data, tmp_path / "o", "train.batch_size=abc")), env=env, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "train.batch_size" in r.stderr
    r = subprocess.run(_cli(*_cli_args(data, tmp_path / "o", "model.obs_vocab=2048")), env=env, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "obs_vocab" in r.stderr


DDP_SCRIPT = """
import json, os, sys
import torch
from jowa_core.config import load_config
from jowa_core.train import pretrain as P
if os.environ.get("NEG_CONTROL") == "1":  # the official bug: call the module, bypassing the DDP wrapper
    orig = P.jowa_loss
    P.jowa_loss = lambda model, *a, **k: orig(getattr(model, "module", model), *a, **k)
cfg = load_config(P.PretrainConfig, None, sys.argv[2:])
s = P.pretrain(cfg, sys.argv[1])
with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(s, f)
"""


@pytest.mark.slow
@pytest.mark.parametrize("negative_control", [False, True])
def test_torchrun_two_cpu_processes_keep_parameters_identical(data, tmp_path, negative_control):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    args = [a for a in _cli_args(data, out)[5:] if a != "--quiet"] + ["train.stage1_steps=4", "train.stage2_steps=4",
                                                                     "train.save_every=4", f"data.path={data}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NEG_CONTROL": "1" if negative_control else "0",
           "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(out), *args], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s0, s1 = (json.loads((out / f"rank{i}.json").read_text()) for i in (0, 1))
    assert s0["world_size"] == s1["world_size"] == 2 and s0["step"] == 8
    if negative_control:
        assert s0["param_fingerprint"] != s1["param_fingerprint"]
    else:
        assert s0["param_fingerprint"] == s1["param_fingerprint"]
        model, _ = load_world_action(out / "final")
        assert param_fingerprint(model) == s0["param_fingerprint"]


def test_joint_stage1_tokenizer_training_and_exact_resume(data, tmp_path):
    from jowa_core.models.tokenizer import Tokenizer, TokenizerConfig, load_tokenizer, save_tokenizer

    torch.manual_seed(0)
    tok = Tokenizer(from_dict(TokenizerConfig, {"ch": 8, "num_res_blocks": 1, "embed_dim": 16, "z_channels": 16,
                                                "vocab_size": VOCAB}))
    save_tokenizer(tok, tmp_path / "tok0")

    def cfg(**kw):
        c = config(data, stage1_steps=3, stage2_steps=2, save_every=100, log_every=1, tokenizer_training="joint_stage1",
                   tokenizer_batch_size=8, **kw)
        c.data.observations, c.data.tokenizer = "frames", str(tmp_path / "tok0")
        return c

    full = pretrain(cfg(), tmp_path / "full")
    rows = metrics(tmp_path / "full")
    assert all(r["tokenizer_total"] != "" for r in rows if r["stage"] == "1")
    assert all(r["tokenizer_total"] == "" for r in rows if r["stage"] == "2")
    trained = load_tokenizer(tmp_path / "full" / "final_tokenizer")
    assert not torch.equal(trained.encoder.conv_in.weight, tok.encoder.conv_in.weight)
    pretrain(cfg(stop_after=2), tmp_path / "part")
    assert (ckpt.latest_checkpoint(tmp_path / "part") / "tokenizer.safetensors").is_file()
    resumed = pretrain(cfg(), tmp_path / "part", resume=True)
    assert resumed["param_fingerprint"] == full["param_fingerprint"]
    again = load_tokenizer(tmp_path / "part" / "final_tokenizer")
    for a, b in zip(trained.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="observations=frames"):
        pretrain(config(data, tokenizer_training="joint_stage1"), tmp_path / "bad")
