"""The import contract (docs/architecture.md): jowa_core's layers import one way only, never the CLI, never another
module's private names, and jowa modules are imported at the top of a module (lazy imports are for optional or
heavy third-party packages only)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "jowa_core"

# Lower layers never import higher ones; a module may import its own layer (without cycles between packages).
LAYERS: dict[str, int] = {
    "games": 0, "config": 0, "checkpoint": 0, "devices": 0, "dist": 0, "progress": 0, "constants": 0, "outputs": 0,
    "procs": 0,
    "envs": 1, "models": 1,
    "data": 2,
    "train": 3, "planning": 3,
    "evaluation": 4,
    "recipes": 5, "bench": 5, "interop": 5,
}


def _unit(module: str) -> str:
    """'jowa_core.data.store' -> 'data'; 'jowa_core.games' -> 'games'; 'jowa_core' -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """(imported jowa module, names, inside a function) for every import of a jowa module in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        nested = getattr(node, "col_offset", 0) > 0
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("jowa_core", "jowa_cli"):
            names = [a.name for a in node.names]
            if node.module == "jowa_core":  # from jowa_core import games -> jowa_core.games
                out += [(f"jowa_core.{n}", [], nested) for n in names]
            else:
                out.append((node.module, names, nested))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], nested) for a in node.names if a.name.split(".")[0] in ("jowa_core", "jowa_cli")]
    return out


def _core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_every_core_module_has_a_layer():
    units = {_unit(_module_name(p)) for p in _core_files()} - {""}
    assert units <= set(LAYERS), f"modules without a layer: {sorted(units - set(LAYERS))}"


def test_layers_import_downwards_only():
    bad = []
    for path in _core_files():
        src = _unit(_module_name(path))
        for target, _, _ in _imports(path):
            if target.startswith("jowa_cli"):
                bad.append(f"{path.relative_to(ROOT)} imports the CLI ({target})")
                continue
            dst = _unit(target)
            if src and dst and LAYERS[dst] > LAYERS[src]:
                bad.append(f"{path.relative_to(ROOT)} ({src}, layer {LAYERS[src]}) imports {target} "
                           f"(layer {LAYERS[dst]})")
    assert not bad, "\n".join(bad)


def test_no_cycles_between_packages():
    edges: dict[str, set[str]] = {}
    for path in _core_files():
        src = _unit(_module_name(path))
        for target, _, _ in _imports(path):
            dst = _unit(target)
            if src and dst and dst != src:
                edges.setdefault(src, set()).add(dst)

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in edges.get(a, ()))

    cycles = sorted(f"{a} <-> {b}" for a in edges for b in edges[a] if reaches(b, a, {b}))
    assert not cycles, cycles


def test_core_never_runs_the_cli():
    offenders = [str(p.relative_to(ROOT)) for p in _core_files() if "jowa_cli" in p.read_text()]
    assert not offenders, offenders


def test_no_private_names_across_modules_and_no_lazy_jowa_imports():
    bad = []
    for path in _core_files():
        me = _module_name(path)
        for target, names, nested in _imports(path):
            if nested:
                bad.append(f"{path.relative_to(ROOT)}: {target} imported inside a function")
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private and target != me:
                bad.append(f"{path.relative_to(ROOT)} imports private {private} from {target}")
    assert not bad, "\n".join(bad)


def test_the_contract_can_fail(tmp_path):
    """The checker sees an upward import (so the tests above are not vacuous)."""
    f = tmp_path / "m.py"
    f.write_text("from jowa_core.evaluation.runner import evaluate\n\ndef g():\n    from jowa_core import _x\n")
    found = _imports(f)
    assert ("jowa_core.evaluation.runner", ["evaluate"], False) in found
    assert ("jowa_core._x", [], True) in found
    assert LAYERS[_unit("jowa_core.evaluation.runner")] > LAYERS["train"]
