"""The trainer skeleton (jowa_core/train/run.py): fresh-run and resume rules, metrics truncated to the resumed
step, training checkpoints complete or absent with the newest ``keep`` kept."""

from __future__ import annotations

import csv

import pytest
import torch

from jowa_core import checkpoint as ckpt
from jowa_core.train.run import MetricsLog, prepare_run, rng_state, set_rng_state, training_checkpoint


def test_prepare_run_needs_an_empty_out_unless_resuming(tmp_path):
    out = tmp_path / "run"
    assert prepare_run(out, resume=False) is None  # missing: fine
    out.mkdir()
    assert prepare_run(out, resume=False) is None  # empty: fine
    (out / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        prepare_run(out, resume=False)
    assert prepare_run(out, resume=True) is None  # nothing to resume from yet: a fresh start
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        prepare_run(f, resume=True)


def test_checkpoints_are_complete_or_absent_and_pruned(tmp_path):
    for step in (1, 2, 3):
        with training_checkpoint(tmp_path, step, keep=2) as tmp:
            ckpt.write_json_atomic(tmp / ckpt.META, {"step": step})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()) == ["step_00000002",
                                                                                          "step_00000003"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000003"
    with pytest.raises(RuntimeError), training_checkpoint(tmp_path, 4, keep=2):
        raise RuntimeError("killed while writing")
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000003"
    assert not (tmp_path / "checkpoints" / "step_00000004").exists()
    assert not (tmp_path / "checkpoints" / ".step_00000004.partial").exists()


def test_metrics_keep_the_rows_up_to_the_resumed_step(tmp_path):
    cols = ["step", "loss"]
    log = MetricsLog(tmp_path, cols, 0)
    for s in (10, 20, 30):
        log.write({"step": s, "loss": s / 10, "ignored": 1})
    log.close()
    log = MetricsLog(tmp_path, cols, 20)  # resumed from step 20: the row of step 30 is dropped
    log.write({"step": 30, "loss": None})
    log.close()
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["loss"]) for r in rows] == [("10", "1.0"), ("20", "2.0"), ("30", "")]
    off = tmp_path / "rank1"
    off.mkdir()
    MetricsLog(off, cols, 0, enabled=False).write({"step": 1})
    assert not (off / "metrics.csv").exists()


def test_rng_state_round_trip():
    state = rng_state(torch.device("cpu"))
    a = torch.rand(3)
    set_rng_state(state, torch.device("cpu"))
    assert torch.equal(torch.rand(3), a)
