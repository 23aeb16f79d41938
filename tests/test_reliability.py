"""Nothing silently wrong, nothing lost (issue 15): one test per kind of failure; docs/reliability.md lists them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from jowa_cli.main import app
from jowa_core.config import load_config, parse_override
from jowa_core.data.collect import collect_run
from jowa_core.data.convert import PrepareOptions, prepare_data
from jowa_core.interop.official import import_official
from jowa_core.train.pretrain import PretrainConfig


def test_paths_are_values_not_yaml(tmp_path: Path) -> None:
    """`--data "runs/real #1"` names that folder (not `runs/real`); overrides keep '#' and ': ' in text."""
    data = tmp_path / "real #1"
    cfg = load_config(PretrainConfig, None, [], {"data.path": str(data)})
    assert cfg.data.path == str(data)
    assert parse_override("data.path=runs/real #1")[1] == "runs/real #1"
    assert parse_override("data.path=a: b")[1] == "a: b"
    assert float(parse_override("train.lr=1e-4")[1]) == 1e-4
    assert parse_override("x={a: 1}")[1] == {"a": 1}
    res = CliRunner().invoke(app, ["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 2
    assert "real #1" in res.output, res.output


def test_overwrite_never_deletes_inputs(tmp_path: Path) -> None:
    """--overwrite replaces only what the command wrote: never a folder holding its input, never foreign files."""
    out = tmp_path / "imported"
    out.mkdir()
    official = out / "JOWA_40M.pt"
    official.write_bytes(b"the only copy")
    res = CliRunner().invoke(app, ["import-official", "--ckpt", str(official), "--out", str(out), "--overwrite"])
    assert res.exit_code == 2 and "lies inside" in res.output, res.output
    assert official.read_bytes() == b"the only copy"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not written by `jowa import-official`"):
        import_official(None, official, foreign, overwrite=True)
    run_dir = tmp_path / "raw" / "Pong" / "1"
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not written by `jowa collect`"):
        collect_run("Pong", tmp_path / "raw", 1, 10, capacity=10, overwrite=True)
    store = tmp_path / "data" / "Pong.zarr"  # the source lives inside the store --overwrite would replace
    (store / "Pong" / "1" / "replay_logs").mkdir(parents=True)
    (store / "zarr.json").write_text("{}")
    with pytest.raises(ValueError, match="lies inside store"):
        prepare_data(PrepareOptions(source=str(store), out=str(tmp_path / "data"), games=["Pong"], overwrite=True))
    assert (store / "Pong" / "1" / "replay_logs").is_dir() and (foreign / "notes.txt").is_file()
    assert (run_dir / "notes.txt").is_file()
