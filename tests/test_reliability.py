"""Nothing silently wrong, nothing lost (issue 15): one test per kind of failure; docs/reliability.md lists them."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from jowa_cli.main import app
from jowa_core.config import load_config, parse_override
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
