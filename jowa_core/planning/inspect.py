"""`jowa plan`: run the planner on one state (from a dataset store or a live game) and show its search.

``inspect_state`` builds the context (the last ``history`` steps ending at the state, within its episode),
runs the batched planner with ``record=True`` and returns the search tree as plain JSON-able data;
``render_strip`` decodes the imagined observations of each kept beam into a PNG strip.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jowa_core import games as _games
from jowa_core.envs import make_env
from jowa_core.models.tokenizer import Tokenizer
from jowa_core.models.world_action import WorldActionModel, segment_tokens
from jowa_core.planning import DEFAULT_REWARD_MODE
from jowa_core.planning.beam import default_history, plan

TILE = 84  # decoded frame side, pixels
GAP = 2  # pixels between tiles
DEFAULT_LIVE_STEPS = 16


def max_history(model: WorldActionModel, beam: int, horizon: int) -> int:
    """Most steps of context (the current one included) that leave room for ``horizon`` imagined steps."""
    greedy = beam <= 1 or horizon <= 0
    return model.cfg.max_steps - (0 if greedy else horizon)


def _name(a: int) -> str:
    return _games.FULL_ACTIONS[int(a)]


def _f(x: float) -> float | None:
    """A finite float, or None (JSON has no -inf)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _q_dict(q: torch.Tensor, mask: np.ndarray) -> dict[str, float]:
    return {_name(a): float(q[a]) for a in np.flatnonzero(mask)}


# --------------------------------------------------------------------------------------------------------
# Contexts


def store_context(store, index: int, history: int) -> dict[str, Any]:
    """Frames (n, 84, 84) uint8 and actions (n - 1,) of the ``history`` steps ending at ``index`` within its
    episode (fewer at an episode's start), and the real continuation: the store's action, reward and terminal
    at ``index`` and the frames after it (up to the episode's end)."""
    n = store.num_steps
    if not 0 <= int(index) < n:
        raise ValueError(f"--index {index} is outside the store's {n} steps (0..{n - 1})")
    index = int(index)
    ep = int(np.searchsorted(store.episode_start, index, side="right")) - 1
    ep_start = int(store.episode_start[ep])
    ep_end = ep_start + int(store.episode_length[ep])  # exclusive
    start = max(ep_start, index - history + 1)
    return {
        "frames": store.frames.read_range(start, index + 1),
        "actions": store.action[start:index].astype(np.int64),
        "start": start,
        "episode": ep,
        "episode_start": ep_start,
        "episode_end": ep_end,
    }


def live_context(game: str, seed: int, history: int, steps: int = DEFAULT_LIVE_STEPS) -> dict[str, Any]:
    """Reset an ALE game (Dopamine preprocessing) with ``seed``, play ``steps`` uniformly random actions of its
    minimal set (the first half no-ops, to let the game start), and keep the last ``history`` steps."""
    info = _games.get(game)
    env = make_env(info.name, seed=seed)
    rng = np.random.default_rng(seed)
    try:
        frames = [env.reset()]
        actions: list[int] = []
        for t in range(int(steps)):
            a = 0 if t < steps // 2 else int(rng.integers(env.num_actions))
            obs, _, game_over, truncated = env.step(a)
            if game_over or truncated:
                frames, actions = [env.reset()], []
                continue
            actions.append(int(info.to_full(np.array([a]))[0]))
            frames.append(obs)
    finally:
        env.close()
    keep = min(history, len(frames))
    return {"frames": np.stack(frames[-keep:]), "actions": np.asarray(actions[len(actions) - keep + 1:], np.int64),
            "steps": int(steps)}


# --------------------------------------------------------------------------------------------------------
# Inspection


@torch.no_grad()
def inspect_state(model: WorldActionModel, tokenizer: Tokenizer, game: str | None = None, store=None,
                  index: int | None = None, live_seed: int | None = None, history: int | None = None,
                  beam: int | str | None = None, horizon: int = _games.PLANNING_HORIZON, gamma: float = 0.99,
                  live_steps: int = DEFAULT_LIVE_STEPS, reward_mode: str = DEFAULT_REWARD_MODE) -> dict[str, Any]:
    """Plan on one state and return the search as JSON-able data.

    The state is row ``index`` of ``store`` (a ``GameStore``; its game is used when ``game`` is None) or,
    without a store, a live game reset with ``live_seed`` (default 0) after ``live_steps`` steps. The
    context is the last ``history`` steps (default ``default_history``: 8 - H - 1, at most 8 - H) within
    the episode, frames encoded with ``tokenizer``, the current step without an action.

    Returns ``game``, ``task_id``, ``source`` (store path/index/episode or live seed), ``beam``, ``horizon``,
    ``gamma``, ``history`` (steps used), ``root`` (Q̂ of valid actions, max), ``chosen`` (action name and
    index, score), ``tree`` (one list of nodes per depth 1..H: ``id``, ``parent`` ("root" or the id of a
    node one depth up), ``action``, ``action_index``, ``reward``, ``q_max``, ``q`` (valid actions), ``score``,
    ``valid``, ``kept``, ``best`` (on the chosen path), ``obs_tokens``), ``leaves`` (ids of the kept nodes at
    depth H, best first) and, from a store, ``real`` (the store's action, reward, terminal at the state and
    the indices of the real next frames, up to H, within the episode). ``reward_mode``: how imagined rewards
    are read (``jowa_core.planning.beam.imagine_step``); it is returned as ``reward_mode``.
    """
    if model.cfg.obs_vocab != tokenizer.cfg.vocab_size:
        raise ValueError(f"the model's observation vocabulary ({model.cfg.obs_vocab}) differs from the "
                         f"tokenizer's codebook ({tokenizer.cfg.vocab_size}): not a matching pair")
    if store is not None:
        if game is not None and _games.get(game).name != _games.get(store.game).name:
            raise ValueError(f"--game {game} but the store holds {store.game}")
        game = store.game
        if index is None:
            raise ValueError("a store needs --index (the step to plan from)")
    elif game is None:
        raise ValueError("give --game for a live game (or --data)")
    info = _games.get(game)
    K = _games.beam_width(info.name, beam)
    H = int(horizon)
    if H < 0:
        raise ValueError(f"--horizon {H}: expected >= 0")
    if not 0 < gamma <= 1:
        raise ValueError(f"--gamma {gamma}: expected in (0, 1]")
    cap = max_history(model, K, H)
    if cap < 1:
        raise ValueError(f"horizon {H} leaves no room for a context in {model.cfg.max_steps} steps")
    if history is None:
        history = default_history(model.cfg.max_steps, 0 if K <= 1 or H <= 0 else H)  # <= cap
    history = int(history)
    if not 1 <= history <= cap:
        raise ValueError(f"--history {history}: expected 1..{cap} (the context and {H} imagined steps must fit "
                         f"in the model's {model.cfg.max_steps} steps)")

    if store is not None:
        ctx = store_context(store, index, history)
        source: dict[str, Any] = {"kind": "store", "store": str(store.path), "index": int(index),
                                  "episode": ctx["episode"], "first_step": ctx["start"]}
    else:
        seed = 0 if live_seed is None else int(live_seed)
        ctx = live_context(info.name, seed, history, live_steps)
        source = {"kind": "live", "seed": seed, "steps": ctx["steps"]}
    frames, actions = ctx["frames"], ctx["actions"]
    device = next(model.parameters()).device
    obs_tokens = tokenizer.encode(frames).to(device)  # (n, 36)
    acts = torch.cat([torch.as_tensor(actions, device=device), torch.zeros(1, dtype=torch.long, device=device)])
    tokens = segment_tokens(obs_tokens[None], acts[None])[:, :-1]  # the current step has no action
    tasks = torch.tensor([info.task_id], device=device)
    mask_np = info.action_mask()
    mask = torch.as_tensor(mask_np, device=device)[None]
    res = plan(model, tokens, tasks, mask, beam=K, horizon=H, gamma=gamma, record=True, reward_mode=reward_mode)

    q_root = res.q_root[0].float().cpu()
    out: dict[str, Any] = {
        "game": info.name,
        "task_id": info.task_id,
        "source": source,
        "beam": K,
        "horizon": H,
        "gamma": gamma,
        "reward_mode": reward_mode,
        "history": int(frames.shape[0]),
        "context_tokens": int(tokens.shape[1]),
        "root": {"q": _q_dict(q_root, mask_np), "q_max": float(q_root.max())},
        "chosen": {"action": _name(res.action[0]), "action_index": int(res.action[0]),
                   "score": float(res.score[0])},
        "tree": _tree(res.tree, mask_np),
        "leaves": [],
    }
    if out["tree"]:
        last = out["tree"][-1]
        out["leaves"] = [n["id"] for n in sorted((n for n in last if n["kept"]), key=lambda n: -n["score"])]
    if store is not None:
        nxt = list(range(index + 1, min(index + 1 + max(H, 1), ctx["episode_end"])))
        out["real"] = {"action": _name(store.action[index]), "action_index": int(store.action[index]),
                       "reward": float(store.reward[index]), "terminal": bool(store.terminal[index]),
                       "next_indices": nxt}
    return out


def _tree(tree: list[dict[str, torch.Tensor]], mask: np.ndarray) -> list[list[dict[str, Any]]]:
    """Nodes per depth from a recorded search of one environment (row 0)."""
    depths: list[list[dict[str, Any]]] = []
    prev_keep: list[int] = []
    for d, level in enumerate(tree, start=1):
        keep = level["keep"][0].tolist()
        valid = level["valid"][0].tolist()
        q = level["q"][0].float().cpu()
        nodes = []
        for j in range(len(valid)):
            p = int(level["parent"][0, j])
            qj = q[j]
            nodes.append({
                "id": f"{d}.{j}",
                "parent": "root" if d == 1 else f"{d - 1}.{prev_keep[p]}",
                "action": _name(level["action"][0, j]),
                "action_index": int(level["action"][0, j]),
                "reward": float(level["reward"][0, j]),
                "q_max": _f(qj.max()) if valid[j] else None,
                "q": _q_dict(qj, mask) if valid[j] else {},
                "score": _f(level["score"][0, j]),
                "valid": bool(valid[j]),
                "kept": bool(valid[j] and j in keep),
                "best": False,
                "obs_tokens": level["obs_tokens"][0, j].tolist(),
            })
        depths.append(nodes)
        prev_keep = keep
    if depths:  # mark the chosen path: the best leaf and its ancestors
        leaf = max((n for n in depths[-1] if n["valid"]), key=lambda n: n["score"], default=None)
        by_id = {n["id"]: n for level in depths for n in level}
        while leaf is not None:
            leaf["best"] = True
            leaf = by_id.get(leaf["parent"])
    return depths


def beam_paths(result: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The path (depth 1..H) to each kept leaf, best leaf first."""
    by_id = {n["id"]: n for level in result["tree"] for n in level}
    paths = []
    for leaf_id in result["leaves"]:
        path, node = [], by_id[leaf_id]
        while node is not None:
            path.append(node)
            node = by_id.get(node["parent"])
        paths.append(path[::-1])
    return paths


# --------------------------------------------------------------------------------------------------------
# Rendering


def strip_size(rows: int, cols: int, scale: int = 2) -> tuple[int, int]:
    """(height, width) in pixels of a strip of ``rows`` x ``cols`` tiles."""
    t = TILE * scale
    return rows * t + (rows - 1) * GAP, cols * t + (cols - 1) * GAP


def render_strip(result: dict[str, Any], tokenizer: Tokenizer, path: str | os.PathLike, store=None,
                 scale: int = 2) -> dict[str, Any]:
    """Write a PNG of the decoded imagined frames along each kept beam (one row per kept leaf at depth H,
    best first; columns = depths 1..H), under a first row of the real next frames from ``store`` when the
    state comes from one (black where the episode ended). Tiles are labelled with the action and reward
    (imagined rows) or the store's frame index (real row). Returns {path, rows, cols, height, width}."""
    import cv2

    paths = beam_paths(result)
    H = result["horizon"]
    if not paths or H < 1:
        raise ValueError("nothing to render: the search was greedy (beam 1 or horizon 0)")
    rows: list[list[tuple[np.ndarray, str]]] = []
    real = result.get("real")
    has_real = store is not None and real is not None
    if has_real:
        idx = real["next_indices"][:H]
        frames = store.frames.read_range(idx[0], idx[-1] + 1) if idx else np.zeros((0, 84, 84), np.uint8)
        row = [(frames[i], f"real t+{i + 1}") if i < len(frames) else (np.zeros((84, 84), np.uint8), "episode end")
               for i in range(H)]
        rows.append(row)
    tokens = torch.tensor([n["obs_tokens"] for p in paths for n in p])
    decoded = (tokenizer.decode(tokens)[:, 0].cpu().numpy() * 255).round().astype(np.uint8)
    k = 0
    for p in paths:
        row = []
        for n in p:
            row.append((decoded[k], f"{n['action']} r{n['reward']:+.2f}"))
            k += 1
        rows.append(row)
    t = TILE * scale
    height, width = strip_size(len(rows), H, scale)
    img = np.full((height, width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, (frame, label) in enumerate(row):
            tile = cv2.resize(frame, (t, t), interpolation=cv2.INTER_NEAREST)
            tile = cv2.cvtColor(tile, cv2.COLOR_GRAY2BGR)
            beam_row = r - has_real
            color = (255, 255, 255) if beam_row < 0 else (0, 200, 0) if beam_row == 0 else (0, 200, 255)
            cv2.putText(tile, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 2, cv2.LINE_AA)
            cv2.putText(tile, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, color, 1, cv2.LINE_AA)
            y, x = r * (t + GAP), c * (t + GAP)
            img[y:y + t, x:x + t] = tile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise ValueError(f"cannot write {path}")
    return {"path": str(path), "rows": len(rows), "cols": H, "height": height, "width": width}
