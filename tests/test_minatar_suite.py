"""`jowa learning-check --suite minatar` at a tiny scale: the plumbing (collect mixture, stores, tokenizer, multi-game
pretraining, greedy and planning evaluation, fine-tuning pretrained vs scratch, report, CLI). The numbers at this
scale mean nothing; docs/results.md records the real runs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("minatar")

from jowa_cli.main import app  # noqa: E402
from jowa_core.data.tokenize import existing_tokens_attrs  # noqa: E402
from jowa_core.recipes.minatar import DATA_POLICIES, HELD_OUT, PRETRAIN_GAMES  # noqa: E402

TINY = ["--transitions", "200", "--heldout-transitions", "120", "--tokenizer-steps", "3", "--stage1-steps", "3",
        "--stage2-steps", "3", "--finetune-steps", "3", "--finetune-seeds", "2", "--adapt-steps", "2",
        "--episodes", "2", "--max-eval-steps", "30"]


@pytest.mark.slow
def test_minatar_suite_plumbing(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["learning-check", "--suite", "minatar", "--out", str(out), "--quiet",
                                   "--json", str(tmp_path / "s.json"), *TINY])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["pretrain_games"] == list(PRETRAIN_GAMES) and s["held_out"] == HELD_OUT
    assert s["data_policies"] == list(DATA_POLICIES)
    for game in PRETRAIN_GAMES:  # run k of every game played DATA_POLICIES[k - 1]
        runs = sorted(p.name for p in (out / "raw" / game).iterdir())
        assert runs == [str(k) for k in range(1, len(DATA_POLICIES) + 1)], (game, runs)
    assert set(s["pretrained"]) == set(PRETRAIN_GAMES)
    for g in PRETRAIN_GAMES:
        r = s["pretrained"][g]
        assert r["greedy"]["episodes"] == r["plan"]["episodes"] == 2 and r["data"]["episodes"] >= 1
    for arm in ("pretrained", "scratch"):
        assert s["transfer"][arm]["per_seed"]["seeds"] == 2
    assert (out / "finetune" / "scratch-1" / "summary.json").is_file()
    # both arms fine-tune on tokens of the tokenizer adapted to the held-out game, which starts from the pretraining one
    assert s["transfer"]["tokenizer"] == str(out / "tokenizer-heldout") and s["adapt_steps"] == 2
    held_attrs = existing_tokens_attrs(out / "data-heldout" / f"{HELD_OUT}.zarr")
    assert str((out / "tokenizer-heldout").resolve()) in held_attrs["tokenizer_path"], held_attrs["tokenizer_path"]
    # a finished fine-tuning run made on other tokens (a folder from before the adaptation) is an error, not reused
    summary = out / "finetune" / "scratch-1" / "summary.json"
    done = json.loads(summary.read_text())
    summary.write_text(json.dumps({**done, "tokenizer": {**done["tokenizer"], "source": str(out / "tokenizer")}}))
    res = CliRunner().invoke(app, ["learning-check", "--suite", "minatar", "--out", str(out), "--quiet", *TINY])
    assert res.exit_code == 2 and "not of the adapted tokenizer" in res.output, res.output
    rows = (out / "report" / "aggregates.csv").read_text()
    for method in ("JOWA-tiny-multigame-greedy", "JOWA-tiny-multigame-plan", "JOWA-tiny fine-tuned (pretrained)",
                   "JOWA-tiny fine-tuned (scratch)", "data (mixture)"):
        assert method in rows


def test_suite_option_errors():
    res = CliRunner().invoke(app, ["learning-check", "--suite", "pong", "--out", "x"])
    assert res.exit_code == 2 and "unknown suite" in res.output
    res = CliRunner().invoke(app, ["learning-check", "--out", "x", "--finetune-steps", "3"])
    assert res.exit_code == 2 and "minatar option" in res.output


def test_seed_ci_is_a_t_interval_over_seeds():
    from jowa_core.recipes.minatar import _seed_ci

    ci = _seed_ci([1.0, 2.0, 3.0])
    assert ci["mean"] == pytest.approx(2.0) and ci["seeds"] == 3
    assert ci["ci95"] == pytest.approx([2.0 - 4.30 / 3**0.5, 2.0 + 4.30 / 3**0.5])  # t(2) = 4.30, s.d. 1


def test_object_fidelity_counts_objects_read_back():
    """A tokenizer that draws the frame scores 1, one that draws an empty screen scores 0 on objects (what the
    reduced run's 300-step tokenizer did: docs/results.md), one that shifts levels by a step loses them."""
    import numpy as np

    from jowa_core.envs.minatar import channel_levels, render
    from jowa_core.recipes.minatar import object_fidelity

    rng = np.random.default_rng(0)
    frames = np.stack([render(rng.random((10, 10, 4)) < 0.15) for _ in range(8)])  # (8, 84, 84)

    def as_recon(x):
        return x[:, None].astype(np.float32) / 255.0

    perfect = object_fidelity(as_recon, frames)
    assert perfect["objects"] == perfect["empty"] == 1.0 and 10 < perfect["cells_per_frame"] < 50
    blank = object_fidelity(lambda x: as_recon(np.zeros_like(x)), frames)
    assert blank["objects"] == 0.0 and blank["empty"] == 1.0
    levels = channel_levels(4)
    shifted = object_fidelity(lambda x: as_recon(np.where(x == levels[1], levels[2], x)), frames)
    assert 0.5 < shifted["objects"] < 1.0  # one of four channels read as its neighbour
