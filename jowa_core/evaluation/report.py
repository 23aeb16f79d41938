"""`jowa report`: per-game and aggregate tables, confidence intervals and plots from evaluation results.

Inputs are ``jowa evaluate`` JSON files (format ``jowa-eval``) and CSV files with columns ``method,game,score``
(one row per game or per episode). The paper's Table 2 (pretraining) and Tables 3/17 (fine-tuning on the 5
held-out games) columns (:mod:`jowa_core.evaluation.published`) can be added side by side, labelled "(published)".
See ``docs/report.md``.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jowa_core import games as _games
from jowa_core.evaluation import metrics as M
from jowa_core.evaluation.published import (
    FINETUNE_INCONSISTENT,
    FINETUNE_SOURCE,
    FINETUNED,
    INCONSISTENT,
    PUBLISHED,
    SOURCE,
    PublishedFinetune,
    PublishedMethod,
)

__all__ = [
    "AGG_COLUMNS",
    "PUBLISHED_CHOICES",
    "MethodScores",
    "aggregate_cell",
    "build_report",
    "load_results",
    "published_methods",
    "published_tables",
]

AGG_COLUMNS = ("method", "normalization", "metric", "value", "ci_low", "ci_high")
PER_GAME_COLUMNS = ("method", "game", "episodes", "score", "hns", "dns", "published")
METRICS = ("mean", "median", "iqm", "superhuman")
PRESETS = ("40m", "70m", "150m")
PUBLISHED_SUFFIX = " (published)"
PUBLISHED_CHOICES = ("auto", "pretrain", "finetune", "all", "none")
PUBLISHED_TABLES = ("pretrain", "finetune")  # Table 2; Tables 3/17
_PRINTED_TITLES = {
    "pretrain": f"Aggregates as printed in the paper ({SOURCE})",
    "finetune": f"Fine-tuning aggregates as printed in the paper ({FINETUNE_SOURCE}; FICC-85M and JOWA-40M/70M: "
    "v2 Table 3), 5 held-out games",
}
_HELD_OUT = frozenset(_games.GROUPS["atari5"])


@dataclass
class MethodScores:
    """Raw scores of one method: game -> array of episode returns (a single entry for per-game results)."""

    name: str
    scores: dict[str, np.ndarray]
    source: str = ""
    published: bool = False
    preset: str | None = None
    plan: bool | None = None
    notes: list[str] = field(default_factory=list)
    algo: str = "JOWA"  # JOWA, MTBC or SQL: the prefix of generic JSON names
    paper: PublishedMethod | PublishedFinetune | None = None  # the published column, for published methods


def _infer_preset(name: str) -> str | None:
    m = re.search(r"(?<![0-9])(40|70|150)m(?![a-z])", name.lower())
    return f"{m.group(1)}m" if m else None


def _infer_plan(name: str) -> bool | None:
    low = name.lower()
    if re.search(r"no[-_ ]?plan|greedy", low):
        return False
    if re.search(r"plan", low):
        return True
    return None


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}#{i}", i + 1
    return out


_ALGO_NAMES = {"mtbc": "MTBC", "scaled_ql": "SQL"}  # checkpoint kind -> report name (paper Table 2's columns)


def _json_name(stem: str, preset: str | None, plan: bool | None, taken: set[str], algo: str = "JOWA") -> str:
    """A JSON method's name: its file stem, or ``<ALGO>-<PRESET>[ no-plan]`` (JOWA, MTBC or SQL) for a generic or
    taken stem; unique."""
    name = stem
    if (name in taken or name in ("scores", "result", "results")) and preset and preset != "custom":
        name = f"{algo}-{preset.upper()}" + ("" if plan is not False or algo != "JOWA" else " no-plan")
    return _unique(name, taken)


def _load_json(path: Path) -> MethodScores:
    """One ``jowa evaluate`` JSON, named as if no other method were loaded (see ``_json_name``)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != "jowa-eval" or not isinstance(data.get("games"), dict):
        raise ValueError(f"{path}: not a `jowa evaluate` result (format 'jowa-eval')")
    config = (data.get("checkpoint") or {}).get("config") or {}
    preset = config.get("preset") if isinstance(config, dict) else None
    plan = (data.get("agent") or {}).get("plan")
    plan = None if plan is None else bool(plan)
    scores: dict[str, np.ndarray] = {}
    for game, entry in data["games"].items():
        raw = entry.get("raw_scores") if isinstance(entry, dict) else None
        if not raw:
            raise ValueError(f"{path}: game {game!r} has no raw_scores")
        try:
            values = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: game {game!r}: raw_scores are not numbers") from None
        if not np.isfinite(values).all():  # NaN would silently turn every aggregate into NaN
            raise ValueError(f"{path}: game {game!r}: raw_scores hold NaN or infinite values")
        scores[_games.get(game).name] = values
    algo = _ALGO_NAMES.get((data.get("checkpoint") or {}).get("kind"), "JOWA")
    return MethodScores(_json_name(path.stem, preset, plan, set(), algo), scores, str(path), preset=preset, plan=plan,
                        algo=algo)


def _load_csv(path: Path, taken: set[str]) -> list[MethodScores]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        missing = [c for c in ("method", "game", "score") if c not in cols]
        if missing:
            raise ValueError(f"{path}: missing CSV column(s) {', '.join(missing)} (need method,game,score)")
        rows: dict[str, dict[str, list[float]]] = {}
        for i, row in enumerate(reader, start=2):
            method = (row[cols["method"]] or "").strip()
            if not method:
                raise ValueError(f"{path}:{i}: empty method")
            game = _games.get((row[cols["game"]] or "").strip()).name
            try:
                score = float(row[cols["score"]])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{i}: score {row[cols['score']]!r} is not a number") from None
            if not np.isfinite(score):
                raise ValueError(f"{path}:{i}: score {row[cols['score']]!r} is not a finite number")
            rows.setdefault(method, {}).setdefault(game, []).append(score)
    if not rows:
        raise ValueError(f"{path}: no rows")
    out = []
    for method, per_game in rows.items():
        name = _unique(method, taken)
        taken.add(name)
        out.append(
            MethodScores(
                name,
                {g: np.asarray(v) for g, v in per_game.items()},
                str(path),
                preset=_infer_preset(method),
                plan=_infer_plan(method),
            )
        )
    return out


def load_results(paths: list[str] | list[Path]) -> list[MethodScores]:
    """Load ``jowa evaluate`` JSONs (one method each) and ``method,game,score`` CSVs (any number of methods).

    A JSON's method name is its file stem (or ``JOWA-<PRESET>[ no-plan]``, ``MTBC-<PRESET>``, ``SQL-<PRESET>`` by
    the checkpoint's kind, for a generic or repeated stem); its
    preset and planning flag come from ``checkpoint.config.preset`` and ``agent.plan``. For CSV methods they are
    guessed from the name ('...150M...', '...no-plan...'). JSONs with the same name (e.g. ``ft/Pong/JOWA-FT.json``,
    ``ft/Gravitar/JOWA-FT.json``), disjoint games and the same preset and planning flag are one method.
    """
    if not paths:
        raise ValueError("no input files")
    methods: list[MethodScores] = []
    taken: set[str] = set()
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"no such file: {p}")
        if p.suffix.lower() == ".csv":
            methods.extend(_load_csv(p, taken))
        else:
            m = _load_json(p)
            same = next((x for x in methods if x.name == m.name and x.source.endswith(".json")), None)
            if same is not None and not set(same.scores) & set(m.scores) and (same.preset, same.plan) == (
                    m.preset, m.plan):  # one method evaluated game by game (e.g. one fine-tuned model per game)
                same.scores.update(m.scores)
                same.source += f", {m.source}"
                continue
            m.name = _json_name(p.stem, m.preset, m.plan, taken, m.algo)
            taken.add(m.name)
            methods.append(m)
    return methods


def published_tables(published: bool | str, methods: list[MethodScores]) -> tuple[str, ...]:
    """The published tables to add for ``published`` (one of ``PUBLISHED_CHOICES``; True = 'auto', False = 'none').

    'auto': Table 2 ('pretrain') unless every game of ``methods`` is one of the 5 held-out games, and the
    fine-tuning Tables 3/17 ('finetune') when any game is held out.
    """
    choice = ("auto" if published else "none") if isinstance(published, bool) else str(published).lower()
    if choice not in PUBLISHED_CHOICES:
        raise ValueError(f"published must be one of {', '.join(PUBLISHED_CHOICES)}, got {published!r}")
    if choice == "auto":
        games = {g for m in methods for g in m.scores}
        wanted = {"pretrain": not games or bool(games - _HELD_OUT), "finetune": bool(games & _HELD_OUT)}
        return tuple(t for t in PUBLISHED_TABLES if wanted[t])
    return {"all": PUBLISHED_TABLES, "none": ()}.get(choice, (choice,))


def published_methods(tables: Iterable[str] = ("pretrain",)) -> list[MethodScores]:
    """The paper's columns as methods named '<name> (published)': Table 2 ('pretrain'), Tables 3/17 ('finetune')."""
    columns: dict[str, tuple[dict[str, Any], dict[str, dict[str, tuple[float, float]]]]] = {
        "pretrain": (PUBLISHED, INCONSISTENT),
        "finetune": (FINETUNED, FINETUNE_INCONSISTENT),
    }
    out = []
    for table in PUBLISHED_TABLES:
        if table not in tables:
            continue
        table_columns, inconsistent = columns[table]
        for name, p in table_columns.items():
            notes = [f"printed {k}={v[0]} but recomputed {v[1]}" for k, v in inconsistent.get(name, {}).items()]
            if not p.scores:
                notes.append("aggregates as printed (no per-game numbers published), without confidence intervals")
            out.append(
                MethodScores(
                    name + PUBLISHED_SUFFIX,
                    {g: np.array([s]) for g, s in p.scores.items()},
                    p.source,
                    published=True,
                    preset=p.preset,
                    plan=p.plan,
                    notes=notes,
                    paper=p,
                )
            )
    return out


# ---------------------------------------------------------------------------------------------------------------
def _norm_runs(m: MethodScores, kind: str) -> dict[str, np.ndarray]:
    out = {}
    for game, s in m.scores.items():
        try:
            out[game] = np.asarray(M.normalized(s, game, kind))
        except ValueError:  # no reference score for this game
            continue
    return out


def _fmt(x: float | None, digits: int = 3) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def build_report(
    methods: list[MethodScores],
    out: str | Path,
    published: bool | str = "auto",
    reps: int = 2000,
    seed: int = 0,
    plots: bool = True,
) -> dict[str, Any]:
    """Write ``per_game.csv``, ``aggregates.csv``, ``report.md``, ``report.json`` and PNG plots into ``out``.

    ``published`` picks the paper's baselines to add (see :func:`published_tables`). Returns a dict with
    ``methods`` (name, source, published, table, preset, plan, games, notes), ``per_game`` rows, ``aggregates``
    rows (``AGG_COLUMNS`` plus ``games``; published columns without per-game numbers give their printed values
    without CIs) and ``files``.
    """
    tables = published_tables(published, methods)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    all_methods = list(methods) + published_methods(tables)
    if not all_methods:
        raise ValueError("nothing to report")
    per_game: list[dict[str, Any]] = []
    aggregates: list[dict[str, Any]] = []
    profiles: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    taus = np.linspace(0.0, 3.0, 121)
    for m in all_methods:
        if m.paper is not None and not m.scores:  # published aggregates only: the printed values
            aggregates += [
                {"method": m.name, "normalization": kind, "metric": metric, "value": float(v), "ci_low": None,
                 "ci_high": None, "games": len(m.paper.games)}
                for (kind, metric), v in m.paper.printed.items()
            ]  # fmt: skip
            continue
        held_out = len(_HELD_OUT & m.scores.keys())
        if tables and not m.published and 0 < held_out < len(m.scores):
            m.notes.append(f"aggregates mix {held_out} held-out (fine-tuning) game(s) with {len(m.scores) - held_out}"
                           " other(s); each published table covers one game set")  # fmt: skip
        norm = {kind: _norm_runs(m, kind) for kind in M.KINDS}
        for game, s in m.scores.items():
            hns, dns = norm["human"].get(game), norm["dqn"].get(game)
            per_game.append({
                "method": m.name, "game": game, "episodes": int(s.size), "score": float(s.mean()),
                "hns": None if hns is None else float(hns.mean()), "dns": None if dns is None else float(dns.mean()),
                "published": m.published,
            })  # fmt: skip
        for kind in M.KINDS:
            runs = norm[kind]
            if not runs:
                m.notes.append(f"no game has a {kind} reference score")
                continue
            missing = sorted(set(m.scores) - set(runs))
            if missing:
                m.notes.append(f"{kind}-normalised aggregates leave out {', '.join(missing)} (no reference score)")
            for metric in METRICS:
                v, lo, hi = M.stratified_bootstrap_ci(list(runs.values()), metric, reps=reps, seed=seed)
                aggregates.append(
                    {
                        "method": m.name,
                        "normalization": kind,
                        "metric": metric,
                        "value": v,
                        "ci_low": lo,
                        "ci_high": hi,
                        "games": len(runs),
                    }
                )
            if kind == "human":
                profiles[m.name] = (taus, M.performance_profile(list(runs.values()), taus))

    files: dict[str, str] = {}
    files["per_game.csv"] = _write_csv(out / "per_game.csv", PER_GAME_COLUMNS, per_game)
    files["aggregates.csv"] = _write_csv(out / "aggregates.csv", AGG_COLUMNS, aggregates)
    meta = [
        {
            "name": m.name,
            "source": m.source,
            "published": m.published,
            "table": m.paper.table if m.paper is not None else None,
            "preset": m.preset,
            "plan": m.plan,
            "games": list(m.scores),
            "notes": m.notes,
        }
        for m in all_methods
    ]
    if plots:
        files.update(_plots(out, all_methods, aggregates, profiles))
    files["report.md"] = _write_markdown(out / "report.md", all_methods, per_game, aggregates, files)
    result = {
        "methods": meta,
        "per_game": per_game,
        "aggregates": aggregates,
        "files": files,
        "settings": {"reps": reps, "seed": seed, "published": list(tables)},
    }
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    files["report.json"] = str(out / "report.json")
    return result


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r[c] is None else r[c] for c in columns])
    return str(path)


def _agg(aggregates: list[dict[str, Any]], method: str, kind: str, metric: str) -> dict[str, Any] | None:
    return next((a for a in aggregates if a["method"] == method and a["normalization"] == kind
                 and a["metric"] == metric), None)  # fmt: skip


def _cell(a: dict[str, Any] | None, digits: int = 3) -> str:
    if a is None:
        return "n/a"
    if a["ci_low"] is None:
        return f"{a['value']:.{digits}f} (printed)"
    return f"{a['value']:.{digits}f} [{a['ci_low']:.{digits}f}, {a['ci_high']:.{digits}f}]"


def aggregate_cell(aggregates: list[dict[str, Any]], method: str, kind: str, metric: str, digits: int = 3) -> str:
    """'value [ci_low, ci_high]' of one aggregate row ('value (printed)' without CI, 'n/a' when missing)."""
    return _cell(_agg(aggregates, method, kind, metric), digits)


def _printed_header(kind: str, metric: str) -> str:
    if metric == "superhuman":
        return "#superhuman"
    return f"{'IQM' if metric == 'iqm' else metric} {'HNS' if kind == 'human' else 'DNS'}"


def _write_markdown(
    path: Path,
    methods: list[MethodScores],
    per_game: list[dict[str, Any]],
    aggregates: list[dict[str, Any]],
    files: dict[str, str],
) -> str:
    names = [m.name for m in methods]
    papers = [m.paper for m in methods if m.paper is not None]
    lines = [
        "# JOWA evaluation report",
        "",
        "Normalised scores: HNS = (s - min(random, human)) / |human - random|; DNS likewise with DQN scores "
        "(reference scores and their sources: `jowa_core/games.py`, `docs/games.md`). Aggregates are over "
        "per-game mean scores; brackets are stratified-bootstrap 95% confidence intervals. "
        "Superhuman = games with normalised score > 1.",
        "",
    ]
    if papers:
        lines += [
            f"Rows marked **(published)** are numbers printed in the paper "
            f"({'; '.join(dict.fromkeys(p.source for p in papers))}), not results of this code; their intervals "
            "resample games.",
            "",
        ]
    lines += [
        "## Aggregates",
        "",
        "| method | games | IQM HNS | median HNS | mean HNS | #superhuman | IQM DNS | median DNS | mean DNS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        iq = _agg(aggregates, n, "human", "iqm") or _agg(aggregates, n, "dqn", "iqm")
        lines.append(
            f"| {n} | {iq['games'] if iq else 0} | "
            + " | ".join(aggregate_cell(aggregates, n, kind, metric, 0 if metric == "superhuman" else 3)
                         for kind, metric in (("human", "iqm"), ("human", "median"), ("human", "mean"),
                                              ("human", "superhuman"), ("dqn", "iqm"), ("dqn", "median"),
                                              ("dqn", "mean")))
            + " |"
        )  # fmt: skip
    for table in PUBLISHED_TABLES:
        cols = [p for p in papers if p.table == table]
        if not cols:
            continue
        keys = list(cols[0].printed)
        lines += [
            "",
            f"### {_PRINTED_TITLES[table]}",
            "",
            "The table above recomputes the published rows from their per-game numbers (where printed); these "
            "are the paper's own aggregate rows (see `docs/report.md` for the ones that disagree).",
            "",
            "| method | " + " | ".join(_printed_header(*k) for k in keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        for p in cols:
            cells = [f"{v:.0f}" if k[1] == "superhuman" else f"{v:.3f}" for k, v in p.printed.items()]
            lines.append(f"| {p.name}{PUBLISHED_SUFFIX} | " + " | ".join(cells) + " |")
    notes = [(m.name, note) for m in methods for note in m.notes]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}: {note}" for n, note in notes]
    names = [m.name for m in methods if m.scores]  # columns without per-game numbers have no per-game cells
    games_order = [g for g in _games.REGISTRY if any(r["game"] == g for r in per_game)]
    lines += [
        "",
        "## Per-game scores (raw / HNS / DNS)",
        "",
        "| game | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for g in games_order:
        cells = []
        for n in names:
            r = next((r for r in per_game if r["method"] == n and r["game"] == g), None)
            cells.append("" if r is None else f"{r['score']:.1f} / {_fmt(r['hns'])} / {_fmt(r['dns'])}")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    pngs = [k for k in files if k.endswith(".png")]
    if pngs:
        lines += ["", "## Plots", ""] + [f"![{k}]({k})" for k in pngs]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _plots(
    out: Path,
    methods: list[MethodScores],
    aggregates: list[dict[str, Any]],
    profiles: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, str] = {}
    names = [m.name for m in methods if _agg(aggregates, m.name, "human", "iqm")]
    if names:
        fig, axes = plt.subplots(1, 3, figsize=(14, 0.45 * len(names) + 1.5), sharey=True)
        y = np.arange(len(names))
        for ax, metric in zip(axes, ("iqm", "median", "mean"), strict=True):
            rows = [_agg(aggregates, n, "human", metric) for n in names]
            v = np.array([r["value"] for r in rows])
            err = np.array([[r["value"] - r["ci_low"] for r in rows], [r["ci_high"] - r["value"] for r in rows]])
            colors = ["tab:gray" if n.endswith(PUBLISHED_SUFFIX) else "tab:blue" for n in names]
            ax.barh(y, v, xerr=np.maximum(err, 0), color=colors, capsize=3)
            ax.set_title(f"{metric.upper() if metric == 'iqm' else metric.capitalize()} HNS")
            ax.axvline(1.0, color="k", lw=0.5, ls="--")
        axes[0].set_yticks(y, names)
        axes[0].invert_yaxis()
        fig.tight_layout()
        files["aggregates.png"] = _save(fig, out / "aggregates.png", plt)
    if profiles:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for n, (t, p) in profiles.items():
            ax.plot(t, p, label=n, ls="--" if n.endswith(PUBLISHED_SUFFIX) else "-")
        ax.set_xlabel("human-normalised score τ")
        ax.set_ylabel("fraction of runs with score > τ")
        ax.set_title("Performance profile")
        ax.legend(fontsize=7)
        files["performance_profile.png"] = _save(fig, out / "performance_profile.png", plt)
    scaling = _scaling_groups(methods)
    if scaling:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, ms in scaling.items():
            xs = [PRESETS.index(m.preset) for m in ms]
            rows = [_agg(aggregates, m.name, "human", "iqm") for m in ms]
            v = np.array([r["value"] for r in rows])
            err = np.maximum([[r["value"] - r["ci_low"] for r in rows], [r["ci_high"] - r["value"] for r in rows]], 0)
            ax.errorbar(xs, v, yerr=err, marker="o", capsize=3, label=label)
        ax.set_xticks(range(len(PRESETS)), [p.upper() for p in PRESETS])
        ax.set_xlabel("model size")
        ax.set_ylabel("IQM HNS")
        ax.set_title("Scaling")
        ax.legend(fontsize=8)
        files["scaling.png"] = _save(fig, out / "scaling.png", plt)
    pairs = _planning_pairs(methods)
    # IQM HNS where every method of the pairs has it, else IQM DNS (games with a DQN reference only, e.g. MinAtar)
    kind = next((k for k in ("human", "dqn") if all(_agg(aggregates, m.name, k, "iqm") for p in pairs for m in p)),
                None)
    if pairs and kind:
        fig, ax = plt.subplots(figsize=(6, 4))
        x = np.arange(len(pairs))
        for off, idx, label in ((-0.2, 0, "no planning"), (0.2, 1, "planning")):
            rows = [_agg(aggregates, p[idx].name, kind, "iqm") for p in pairs]
            v = np.array([r["value"] for r in rows])
            err = np.maximum([[r["value"] - r["ci_low"] for r in rows], [r["ci_high"] - r["value"] for r in rows]], 0)
            ax.bar(x + off, v, width=0.4, yerr=err, capsize=3, label=label)
        ax.set_xticks(x, [p[1].preset.upper() if p[1].preset else p[1].name for p in pairs])
        ax.set_ylabel("IQM HNS" if kind == "human" else "IQM DNS")
        ax.set_title("With vs without planning")
        ax.legend()
        files["planning.png"] = _save(fig, out / "planning.png", plt)
    return files


def _save(fig: Any, path: Path, plt: Any) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def _scaling_groups(methods: list[MethodScores]) -> dict[str, list[MethodScores]]:
    """Methods with JOWA presets, one line per (origin, planning); only when >= 2 sizes of ours are present."""
    groups: dict[str, list[MethodScores]] = {}
    for m in methods:
        if m.preset not in PRESETS or (m.paper is not None and m.paper.table != "pretrain"):
            continue
        label = ("published" if m.published else "ours") + (" no-plan" if m.plan is False else "")
        groups.setdefault(label, []).append(m)
    ours = {m.preset for k, ms in groups.items() if not k.startswith("published") for m in ms}
    if len(ours) < 2:
        return {}
    out = {}
    for label, ms in groups.items():
        by_preset: dict[str, MethodScores] = {}
        for m in ms:
            by_preset.setdefault(m.preset, m)  # first method of each size
        out[label] = [by_preset[p] for p in PRESETS if p in by_preset]
    return out


def _planning_pairs(methods: list[MethodScores]) -> list[tuple[MethodScores, MethodScores]]:
    """(no-plan, plan) pairs of our methods with the same preset."""
    pairs = []
    ours = [m for m in methods if not m.published]
    for p in dict.fromkeys(m.preset for m in ours):
        off = next((m for m in ours if m.preset == p and m.plan is False), None)
        on = next((m for m in ours if m.preset == p and m.plan is True), None)
        if off is not None and on is not None:
            pairs.append((off, on))
    return pairs
