"""YAML presets hold only what differs from the dataclass defaults (one place per default), and every key is one
the config knows."""

from __future__ import annotations

from pathlib import Path

import pytest

from jowa_core.config import load_config, read_yaml, to_dict
from jowa_core.train.finetune import FinetuneConfig
from jowa_core.train.mtbc import MTBCPretrainConfig
from jowa_core.train.pretrain import PretrainConfig
from jowa_core.train.scaled_ql import ScaledQLPretrainConfig
from jowa_core.train.tokenizer import TokenizerTrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KINDS = {"jowa-40m": PretrainConfig, "jowa-70m": PretrainConfig, "jowa-150m": PretrainConfig,
         "jowa-tiny": PretrainConfig, "finetune": FinetuneConfig, "finetune-official": FinetuneConfig,
         "tokenizer": TokenizerTrainConfig, "mtbc-34m": MTBCPretrainConfig, "mtbc-65m": MTBCPretrainConfig,
         "mtbc-120m": MTBCPretrainConfig, "scaled-ql-80m": ScaledQLPretrainConfig}


def _same_as_default(raw: dict, default: dict, where: str = "") -> list[str]:
    out = []
    for k, v in raw.items():
        if isinstance(v, dict) and isinstance(default.get(k), dict) and k != "model":
            out += _same_as_default(v, default[k], f"{where}{k}.")
        elif k != "model" and default.get(k) == v:
            out.append(f"{where}{k}")
    return out


def test_every_preset_is_known():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(KINDS)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_preset_holds_only_differences(name):
    cls = KINDS[name]
    path = CONFIGS / f"{name}.yaml"
    load_config(cls, path)  # every key is one the config knows
    repeated = _same_as_default(read_yaml(path), to_dict(cls()))
    assert not repeated, f"{path.name} repeats defaults: {repeated}"


def test_the_check_sees_a_repeated_default():
    assert _same_as_default({"train": {"batch_size": 512, "log_every": 7}}, to_dict(PretrainConfig())) == [
        "train.batch_size"]
