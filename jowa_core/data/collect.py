"""Play Atari games in the emulator and write DQN-Replay-format logs (``jowa collect``).

One *run* is one (game, run number) pair: a behaviour policy plays whole games in ``AtariEnv`` (Dopamine
preprocessing, the DQN-Replay settings by default) until ``num_steps`` transitions have been stored;
they go through ``LoggedReplayWriter`` into ``<out_root>/<Game>/<run>/replay_logs/``, the layout of the
public DQN-Replay bucket, so every later stage (``jowa prepare-data``) reads collected and downloaded
data the same way. Each stored row is Dopamine's ``(observation before the action, action, clipped
reward, terminal)``; the frame after the last step of an episode is not stored, as in Dopamine.

Runs are atomic: a run is built in ``<out_root>/<Game>/.<run>.partial/`` and renamed into place with its
``collect.json`` (settings, seeds, episode returns, versions, timings) once complete. A finished run is
skipped unless ``overwrite``; an interrupted one is started again from scratch.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import queue as queue_mod
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from jowa_core import games as _games
from jowa_core.constants import jowa_version
from jowa_core.data.dopamine_writer import STACK_SIZE, LoggedReplayWriter
from jowa_core.envs import make_env
from jowa_core.envs.atari import AtariSettings
from jowa_core.outputs import atomic_file, lock_output, release_output, write_json_atomic
from jowa_core.procs import die_with_parent

__all__ = ["POLICIES", "CollectError", "Policy", "RandomPolicy", "collect", "collect_run", "make_policy"]

POLICIES = ("random", "eps-greedy", "lookahead:EPS")
SUMMARY_FILE = "collect.json"
SUMMARY_FORMAT = "jowa-collect/1"
_PROGRESS_EVERY = 250  # steps between progress reports


class CollectError(RuntimeError):
    """One or more runs failed; the others are complete on disk."""


# --------------------------------------------------------------------------------------------------
# Behaviour policies
# --------------------------------------------------------------------------------------------------
class Policy(Protocol):
    """A behaviour policy: observation (84, 84) uint8 -> action index in the game's action set."""

    def act(self, obs: np.ndarray) -> int: ...


class RandomPolicy:
    """Uniform over the action set."""

    def __init__(self, num_actions: int, rng: np.random.Generator):
        self.num_actions = int(num_actions)
        self.rng = rng

    def act(self, obs: np.ndarray) -> int:
        return int(self.rng.integers(self.num_actions))


def _seed_sequence(seed: int, task_id: int, run: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), int(task_id), int(run)])


def derive_seeds(seed: int, game: str, run: int) -> tuple[np.random.SeedSequence, int]:
    """(policy seed sequence, ALE random_seed) for one run, both derived from (seed, task id, run)."""
    policy_ss, env_ss = _seed_sequence(seed, _games.get(game).task_id, run).spawn(2)
    ale_seed = int(env_ss.generate_state(1, np.uint32)[0] % (2**31 - 1))
    return policy_ss, ale_seed


class LookaheadPolicy:
    """Epsilon-greedy around the emulator-lookahead action of an env that has ``lookahead_action`` (MinAtar):
    with probability ``eps`` a uniform action, otherwise ``env.lookahead_action(rng)``."""

    def __init__(self, env: Any, eps: float, rng: np.random.Generator):
        self.env, self.eps, self.rng = env, float(eps), rng

    def act(self, obs: np.ndarray) -> int:
        if self.rng.random() < self.eps:
            return int(self.rng.integers(self.env.num_actions))
        return int(self.env.lookahead_action(self.rng))


def _lookahead_eps(name: str) -> float | None:
    """EPS of a ``lookahead:EPS`` policy name, None for other names; a ValueError for a bad EPS."""
    if not name.startswith("lookahead:"):
        return None
    try:
        eps = float(name.split(":", 1)[1])
    except ValueError:
        eps = -1.0
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"policy {name!r}: expected lookahead:EPS with EPS in [0, 1], e.g. lookahead:0.25")
    return eps


def make_policy(name: str, num_actions: int, seed_seq: np.random.SeedSequence | None = None,
                env: Any = None) -> Policy:
    """Build a behaviour policy by name; see ``POLICIES``. ``lookahead:EPS`` needs the ``env`` it plays (a game
    whose env has ``lookahead_action``: MinAtar)."""
    if name == "random":
        return RandomPolicy(num_actions, np.random.default_rng(seed_seq))
    eps = _lookahead_eps(name)
    if eps is not None:
        if env is not None and not hasattr(env, "lookahead_action"):
            raise ValueError(f"policy {name!r} needs a game jowa can copy and roll out (MinAtar); "
                             f"{env.info.name} cannot")
        return LookaheadPolicy(env, eps, np.random.default_rng(seed_seq))
    if name == "eps-greedy":
        raise ValueError(
            "policy 'eps-greedy' needs a trained model checkpoint to act greedily, and model "
            "checkpoints arrive with `jowa pretrain`; use --policy random for now"
        )
    raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}")


def check_policy(name: str) -> None:
    """Raise the error ``make_policy`` would, without building anything (for early validation)."""
    make_policy(name, 1, np.random.SeedSequence(0))


# --------------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------------
def _ale_version() -> str:
    import ale_py

    return str(ale_py.__version__)


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------
def run_dir(out_root: str | os.PathLike, game: str, run: int) -> Path:
    return Path(out_root) / _games.get(game).name / str(int(run))


def _read_summary(path: Path) -> dict[str, Any]:
    with open(path / SUMMARY_FILE) as f:
        return json.load(f)


def _validate(num_steps: int, capacity: int, runs: Sequence[int], seed: int, policy: str,
              compresslevel: int) -> None:
    """Reject bad options before any directory is created or process started."""
    if int(num_steps) < 1:
        raise ValueError(f"the number of steps must be >= 1, got {num_steps}")
    if int(capacity) < STACK_SIZE + 1:
        raise ValueError(f"capacity must be >= {STACK_SIZE + 1}, got {capacity}")
    bad = [r for r in runs if int(r) < 0]
    if bad:
        raise ValueError(f"run numbers must be >= 0, got {bad}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0 <= int(compresslevel) <= 9:
        raise ValueError(f"compresslevel must be in [0, 9], got {compresslevel}")
    check_policy(policy)


def collect_run(
    game: str,
    out_root: str | os.PathLike,
    run: int,
    num_steps: int,
    capacity: int = 1_000_000,
    policy: str = "random",
    seed: int = 0,
    settings: AtariSettings | None = None,
    compresslevel: int = 1,
    reporter=None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Collect one run; returns its summary (the contents of ``collect.json`` plus ``path`` and
    ``skipped``). A finished run (``collect.json`` present) is returned as is unless ``overwrite``; one collected
    with other steps, capacity, policy, seed or settings is an error."""
    info = _games.get(game)
    settings = settings or AtariSettings()
    num_steps, capacity, run, seed = int(num_steps), int(capacity), int(run), int(seed)
    _validate(num_steps, capacity, [run], seed, policy, compresslevel)

    game_dir = Path(out_root) / info.name
    final = game_dir / str(run)
    if final.exists() and overwrite and not (final / SUMMARY_FILE).is_file():
        raise ValueError(f"{final} exists but was not written by `jowa collect` (no {SUMMARY_FILE}): --overwrite "
                         "replaces only finished collect runs; move it away or choose another --out")
    if final.exists() and not overwrite:
        if (final / SUMMARY_FILE).is_file():
            summary = _read_summary(final)
            asked = {"num_steps": num_steps, "capacity": capacity, "policy": policy, "seed": seed,
                     "settings": settings.to_dict()}
            differ = [k for k, v in asked.items() if k in summary and summary[k] != v]
            if differ:
                raise ValueError(
                    f"{final} was collected with other {', '.join(differ)} "
                    f"({'; '.join(f'{k}: {summary[k]} there, {asked[k]} asked' for k in differ)}): "
                    "pass --overwrite to collect it again, or choose another --out"
                )
            return {**summary, "path": str(final), "skipped": True}
        raise ValueError(
            f"{final} exists but was not written by `jowa collect` (no {SUMMARY_FILE}); "
            "refusing to touch it without --overwrite"
        )
    partial = game_dir / f".{run}.partial"
    if partial.exists():
        shutil.rmtree(partial)  # an interrupted attempt: runs restart from scratch
    log_dir = partial / "replay_logs"
    log_dir.mkdir(parents=True)

    policy_ss, ale_seed = derive_seeds(seed, info.name, run)
    t0 = time.time()
    env = make_env(info.name, settings, seed=ale_seed)
    pol = make_policy(policy, env.num_actions, policy_ss, env=env)
    clip = bool(settings.clip_rewards)

    returns: list[float] = []
    lengths: list[int] = []
    truncated_eps: list[int] = []
    life_losses = 0
    task = reporter.task(f"{info.name} run {run}", total=num_steps, unit="steps") if reporter else None
    pending = 0
    with LoggedReplayWriter(log_dir, capacity, compresslevel=compresslevel) as writer:
        obs = env.reset()
        ep_return, ep_len = 0.0, 0
        for _ in range(num_steps):
            action = pol.act(obs)
            next_obs, reward, game_over, truncated = env.step(action)
            stored = min(max(reward, -1.0), 1.0) if clip else reward
            writer.add(obs, action, stored, env.terminal)
            ep_return += reward
            ep_len += 1
            if game_over or truncated:
                returns.append(ep_return)
                lengths.append(ep_len)
                if truncated:
                    truncated_eps.append(len(returns) - 1)
                ep_return, ep_len = 0.0, 0
                obs = env.reset()
            else:
                life_losses += int(env.terminal)  # only with terminal_on_life_loss
                obs = next_obs
            pending += 1
            if task is not None and pending >= _PROGRESS_EVERY:
                reporter.advance(task, pending)
                pending = 0
        writer.log_final_buffer()
        checkpoints = list(writer.logged)
        final_add_count = writer.add_count
    if task is not None and pending:
        reporter.advance(task, pending)
    wall = time.time() - t0

    summary: dict[str, Any] = {
        "format": SUMMARY_FORMAT,
        "game": info.name,
        "run": run,
        "seed": seed,
        "ale_seed": ale_seed,
        "policy": policy,
        "settings": settings.to_dict(),
        "num_steps": num_steps,
        "capacity": capacity,
        "compresslevel": int(compresslevel),
        "num_files": len(checkpoints) * 6,
        "num_checkpoints": len(checkpoints),
        "checkpoints": checkpoints,
        "add_count": final_add_count,
        "action_set": list(env.action_set),
        "episodes_completed": len(returns),
        "episode_returns": returns,
        "episode_lengths": lengths,
        "truncated_episodes": truncated_eps,
        "life_loss_terminals": life_losses,
        "unfinished_episode_steps": ep_len,
        "versions": {
            "jowa": jowa_version(),
            "ale_py": _ale_version(),
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "rom": info.rom,
        "rom_md5": env.rom_md5,
        "wall_time_s": round(wall, 3),
        "steps_per_s": round(num_steps / wall, 1) if wall > 0 else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    env.close()
    write_json_atomic(partial / SUMMARY_FILE, summary)

    if final.exists():  # overwrite: swap, then delete the old run
        old = game_dir / f".{run}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old)
    else:
        os.replace(partial, final)
    if reporter is not None:
        reporter.log(
            f"{info.name} run {run}: {num_steps} steps, {len(returns)} episodes"
            + (f" (mean return {np.mean(returns):.1f})" if returns else "")
            + f", {len(checkpoints)} checkpoints, {wall:.1f}s"
        )
    return {**summary, "path": str(final), "skipped": False}


# --------------------------------------------------------------------------------------------------
# Many runs, in parallel processes
# --------------------------------------------------------------------------------------------------
_QUEUE = None  # set in worker processes


class _QueueReporter:
    """Forwards a worker's reporter calls to the parent process (advances batched every 0.5 s)."""

    def __init__(self, q):
        self.q = q
        self.pid = os.getpid()
        self.n = 0
        self.acc: dict[int, float] = {}
        self.last = time.time()

    def task(self, description: str, total: float | None = None, unit: str = "", completed: float = 0.0) -> int:
        self.n += 1
        self.q.put(("task", (self.pid, self.n), description, total, unit, completed))
        return self.n

    def advance(self, task: int, amount: float = 1.0) -> None:
        self.acc[task] = self.acc.get(task, 0.0) + amount
        if time.time() - self.last >= 0.5:
            self.flush()

    def flush(self) -> None:
        for t, a in self.acc.items():
            self.q.put(("advance", (self.pid, t), a))
        self.acc.clear()
        self.last = time.time()

    def log(self, message: str) -> None:
        self.flush()
        self.q.put(("log", message))

    def close(self) -> None:
        self.flush()


def _init_worker(q, parent_pid: int) -> None:
    """Worker set-up: the progress queue; the worker dies with the parent (even on kill -9)."""
    die_with_parent(parent_pid)
    global _QUEUE
    _QUEUE = q


def _worker(kwargs: dict[str, Any]) -> dict[str, Any]:
    rep = _QueueReporter(_QUEUE) if _QUEUE is not None else None
    try:
        return collect_run(**kwargs, reporter=rep)
    finally:
        if rep is not None:
            rep.close()


def write_scores_csv(summaries: Sequence[dict[str, Any]], path: str | os.PathLike, method: str | None = None) -> int:
    """Write the raw (unclipped) return of every completed episode in ``summaries`` (``collect`` results) as
    ``method,game,score`` rows, the CSV that ``jowa report`` reads, so the data's own return sits beside the
    agents. ``method`` defaults to ``data (<policy>)``. Written atomically; returns the number of rows."""
    rows = [(method or f"data ({s['policy']})", s["game"], float(r)) for s in summaries for r in s["episode_returns"]]
    if not rows:
        raise ValueError("no completed episodes to write: collect more steps (or a shorter --max-episode-steps)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "game", "score"])
        w.writerows(rows)
    return len(rows)


def collect(
    games: str | Sequence[str],
    runs: Sequence[int],
    out_root: str | os.PathLike,
    num_steps: int,
    capacity: int = 1_000_000,
    policy: str = "random",
    seed: int = 0,
    settings: AtariSettings | None = None,
    compresslevel: int = 1,
    overwrite: bool = False,
    workers: int = 1,
    reporter=None,
) -> list[dict[str, Any]]:
    """Collect every (game, run) pair, ``workers`` runs at a time in separate processes.

    ``games`` is anything ``jowa_core.games.resolve`` accepts ("atari15", "Pong,Breakout", a list). Returns
    one summary per pair, in (game, run) order. Runs that fail do not stop the others; a
    ``CollectError`` naming them is raised at the end.
    """
    names = _games.resolve(games)
    run_list = list(dict.fromkeys(int(r) for r in runs))
    if not run_list:
        raise ValueError("no runs selected")
    _validate(num_steps, capacity, run_list, seed, policy, compresslevel)
    settings = settings or AtariSettings()
    common = dict(
        out_root=str(out_root), num_steps=num_steps, capacity=capacity, policy=policy, seed=seed,
        settings=settings, compresslevel=compresslevel, overwrite=overwrite,
    )
    pairs = [(g, r) for g in names for r in run_list]
    locked = lock_output(out_root)  # one collect per --out: a second one is refused
    try:
        return _collect_pairs(pairs, common, workers, reporter)
    finally:
        if locked:
            release_output(out_root)


def _collect_pairs(pairs: list[tuple[str, int]], common: dict[str, Any], workers: int,
                   reporter) -> list[dict[str, Any]]:
    """Collect ``pairs`` in this process or ``workers`` spawned ones (see ``collect``)."""
    if workers <= 1 or len(pairs) <= 1:
        return [collect_run(g, run=r, reporter=reporter, **common) for g, r in pairs]

    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no fork: the parent may hold threads (rich's live display)
    q = ctx.Queue()
    ids: dict[tuple[int, int], int] = {}

    def drain(timeout: float) -> None:
        try:
            msg = q.get(timeout=timeout)
            while True:
                if reporter is not None:
                    if msg[0] == "task":
                        ids[msg[1]] = reporter.task(msg[2], msg[3], msg[4], msg[5])
                    elif msg[0] == "advance" and msg[1] in ids:
                        reporter.advance(ids[msg[1]], msg[2])
                    elif msg[0] == "log":
                        reporter.log(msg[1])
                msg = q.get_nowait()
        except queue_mod.Empty:
            pass

    results: dict[tuple[str, int], dict[str, Any]] = {}
    errors: dict[tuple[str, int], BaseException] = {}
    with ProcessPoolExecutor(
        max_workers=min(int(workers), len(pairs)), mp_context=ctx, initializer=_init_worker,
        initargs=(q, os.getpid()),
    ) as ex:
        futures: dict[Future, tuple[str, int]] = {
            ex.submit(_worker, {"game": g, "run": r, **common}): (g, r) for g, r in pairs
        }
        remaining = set(futures)
        try:
            while remaining:
                done, remaining = wait(remaining, timeout=0.2, return_when=FIRST_COMPLETED)
                drain(0.0 if done else 0.05)
                for fut in done:
                    pair = futures[fut]
                    try:
                        results[pair] = fut.result()
                    except Exception as e:  # noqa: BLE001 - reported together below
                        errors[pair] = e
                        if reporter is not None:
                            reporter.log(f"{pair[0]} run {pair[1]} failed: {e}")
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise
        drain(0.0)
    if errors:
        failed = ", ".join(f"{g}/{r} ({type(e).__name__}: {e})" for (g, r), e in errors.items())
        raise CollectError(f"{len(errors)} of {len(pairs)} runs failed: {failed}")
    return [results[p] for p in pairs]
