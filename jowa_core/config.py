"""Typed configs: dataclasses loaded from YAML, with dotted ``key=value`` overrides from the command line.

Every config is a (nested) dataclass. ``load_config(Cls, "file.yaml", ["train.batch_size=64"])`` reads the
YAML (unknown keys are an error, naming the key and the file), applies the overrides (values parsed as
YAML, so ``1e-4``, ``true`` and ``[1, 2]`` work), and type-checks every leaf. ``to_dict`` gives the resolved
config back for checkpoints and logs.

Presets: a mapping that contains ``preset: <name>`` starts from that preset's values, looked up in the
dataclass's ``PRESETS`` class attribute, and the other keys of the mapping override it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and what is expected."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently convert) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} is not a {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return _build(tp, value, where)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # no setting means NaN or infinity; it would train or plan nonsense
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 1.75e6 in YAML
        if not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    data = dict(data)
    presets = getattr(cls, "PRESETS", None)
    base: dict[str, Any] = {}
    if "preset" in data and presets is not None and data["preset"] != "custom":  # custom: no preset values
        name = data["preset"]
        if name not in presets:
            raise ConfigError(f"{where or cls.__name__}.preset: unknown preset {name!r}; choose from {sorted(presets)}")
        base = dict(presets[name])
    merged = {**base, **data}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(merged) - set(fields))
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in merged.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:  # check_bounds in __post_init__: name the full key
        raise ConfigError(f"{where}.{e}" if where else str(e)) from None


def check_bounds(cfg: Any) -> None:
    """Check a config's numbers against its ``BOUNDS`` class attribute, ``{field: (low, high)}`` inclusive (None:
    open); called from ``__post_init__`` so a bad value fails before any work, naming the key."""
    for name, (low, high) in getattr(cfg, "BOUNDS", {}).items():
        value = getattr(cfg, name)
        if value is None or isinstance(value, bool):
            continue
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            want = f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
            raise ConfigError(f"{name}: must be {want}, got {value!r}")


def from_dict(cls: type[T], data: Mapping[str, Any] | None) -> T:
    """Build the dataclass ``cls`` from a (nested) mapping, checking keys and types."""
    return _build(cls, data or {})


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain (YAML/JSON-serialisable) data."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=1e-4'`` -> (['train', 'lr'], 0.0001). Values are parsed as YAML (``1e-4`` included)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.batch_size=64")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r}: empty key")
    return keys, parse_value(raw, text)


def parse_value(raw: str, text: str = "") -> Any:
    """An override's value parsed as YAML, except text YAML would silently change: a ``#`` (a comment to YAML)
    or a ``: `` outside ``{...}`` (a mapping to YAML) keeps the whole text as a string (paths like ``a #1``)."""
    stripped = raw.strip()
    if not stripped:
        return ""
    if "#" in stripped:
        return stripped
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        if ": " in stripped and not stripped.startswith(("{", "[")):
            return stripped
        raise ConfigError(f"override {text or raw!r}: cannot parse value: {e}") from None
    if isinstance(value, dict) and not stripped.startswith("{"):
        return stripped
    return value


def set_value(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of ``data`` with the dotted ``key`` set to ``value`` as is (never parsed: paths, names)."""
    out = _deepcopy(data)
    keys = [k for k in key.split(".") if k]
    node = out
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy); intermediate mappings are created when missing."""
    out = data
    for text in overrides:
        keys, value = parse_override(text)
        out = set_value(out, ".".join(keys), value)
    return _deepcopy(out)


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
                values: Mapping[str, Any] | None = None) -> T:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) plus dotted overrides, then ``values``:
    dotted keys set verbatim (options such as ``--data``; never spliced into YAML text)."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    for key, value in (values or {}).items():
        data = set_value(data, key, value)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
