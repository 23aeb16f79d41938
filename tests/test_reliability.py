"""Nothing silently wrong, nothing lost (issue 15): one test per kind of failure; docs/reliability.md lists them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
import zstandard
from dopamine_emulator import write_run
from typer.testing import CliRunner

from jowa_cli.main import app
from jowa_core import checkpoint as ckpt
from jowa_core import games
from jowa_core.config import ConfigError, from_dict, load_config, parse_override
from jowa_core.data import convert
from jowa_core.data import store as st
from jowa_core.data.collect import collect, collect_run
from jowa_core.data.convert import PrepareOptions, prepare_data
from jowa_core.data.segments import load_obs_tokens
from jowa_core.evaluation.agent import AgentSettings
from jowa_core.evaluation.report import load_results
from jowa_core.interop.official import import_official
from jowa_core.models.world_action import WorldActionConfig, WorldActionModel, load_world_action, save_world_action
from jowa_core.outputs import LockError, lock_output, lock_path, release_output
from jowa_core.train.finetune import FinetuneConfig
from jowa_core.train.pretrain import PretrainConfig, pretrain
from jowa_core.train.run import prepare_run
from jowa_core.train.step import NonFiniteError, optimizer_step


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


def _small_store(path: Path, n: int = 40) -> tuple[Path, np.ndarray]:
    """A 40-frame store of blocky frames (compressible, like Atari) in shards of 16 frames."""
    rng = np.random.default_rng(0)
    obs = (rng.integers(0, 4, (n, 12, 12)).repeat(7, 1).repeat(7, 2) * 60).astype(np.uint8)
    terminal = np.zeros(n, bool)
    terminal[-1] = True
    pong = np.flatnonzero(games.get("Pong").action_mask())  # Pong's minimal set as full actions
    st.write_store(path, "Pong", obs, pong[rng.integers(0, 6, n)], np.zeros(n), terminal, np.array([0]), np.array([n]),
                   shard_frames=16)
    return path, obs


def _flip(path: Path, rnd: np.random.Generator) -> bytes:
    """Flip one random bit of the file; returns the original bytes."""
    data = path.read_bytes()
    pos = int(rnd.integers(len(data)))
    flipped = bytearray(data)
    flipped[pos] ^= 1 << int(rnd.integers(8))
    path.write_bytes(bytes(flipped))
    return data


def test_bit_flips_in_store_chunks_never_read_silently(tmp_path: Path) -> None:
    """Every chunk carries a zstd checksum: 300 random bit flips in frame shards and 50 in the action chunk are
    all errors (StoreError), none a wrong frame or action; zarr-python reads the checksummed store too."""
    path, obs = _small_store(tmp_path / "Pong.zarr")
    np.testing.assert_array_equal(zarr.open_group(str(path), mode="r")["obs"][:], obs)
    shards = sorted(p for p in (path / "obs" / "c").rglob("*") if p.is_file())
    weights = np.array([p.stat().st_size for p in shards], float)
    rnd = np.random.default_rng(1)
    outcome = {"error": 0, "same": 0, "wrong": 0}
    for _ in range(300):
        shard = shards[int(rnd.choice(len(shards), p=weights / weights.sum()))]
        original = _flip(shard, rnd)
        try:
            same = np.array_equal(st.FrameReader(path / "obs").read_range(0, len(obs)), obs)
            outcome["same" if same else "wrong"] += 1
        except st.StoreError:
            outcome["error"] += 1
        shard.write_bytes(original)
    assert outcome["wrong"] == 0, outcome
    action = st.open_store(path).action.copy()
    (chunk,) = [p for p in (path / "action" / "c").rglob("*") if p.is_file()]
    for _ in range(50):
        original = _flip(chunk, rnd)
        try:
            assert np.array_equal(st.open_store(path).action, action), "a flipped action chunk read silently"
        except st.StoreError:
            outcome["error"] += 1
        chunk.write_bytes(original)
    assert outcome["error"] >= 340, outcome


def test_stores_without_checksums_still_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores written before chunk checksums (no zstd checksum) open and read as before."""
    plain = zstandard.ZstdCompressor
    monkeypatch.setattr(st.zstandard, "ZstdCompressor", lambda level, write_checksum=False: plain(level=level))
    monkeypatch.setattr(st, "ZstdCodec", lambda level, checksum=False: zarr.codecs.ZstdCodec(level=level))
    path, obs = _small_store(tmp_path / "Pong.zarr")
    monkeypatch.undo()
    reader = st.open_store(path).frames
    assert not reader.checksummed
    np.testing.assert_array_equal(reader.read_range(0, len(obs)), obs)


def _holder(directory: Path) -> subprocess.Popen:
    """Another process holding the lock on ``directory`` until its stdin closes."""
    code = ("import sys; from jowa_core.outputs import lock_output; lock_output(sys.argv[1]); print('locked', "
            "flush=True); sys.stdin.read()")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(directory)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_one_writer_per_run_and_store(tmp_path: Path) -> None:
    """A second writer of a run directory or a prepare-data / collect --out is refused naming the owner; the lock
    of a killed owner is taken over."""
    run, data = tmp_path / "run", tmp_path / "data"
    holder = _holder(run)
    try:
        with pytest.raises(LockError, match=f"another jowa process.*{holder.pid}"):
            prepare_run(run, resume=True)
        res = CliRunner().invoke(app, ["pretrain", "--data", str(tmp_path), "--out", str(run), "--resume",
                                       "--quiet", "train.stage1_steps=1", "train.stage2_steps=0"])
        assert res.exit_code == 2 and "another jowa process" in res.output, res.output
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(run).is_file()  # left behind by the killed owner: taken over
    assert prepare_run(run, resume=False) is None
    release_output(run)
    assert not lock_path(run).exists()
    holder = _holder(data)
    try:
        with pytest.raises(LockError, match=str(holder.pid)):
            (tmp_path / "src" / "Pong" / "1" / "replay_logs").mkdir(parents=True)
            prepare_data(PrepareOptions(source=str(tmp_path / "src"), out=str(data), games=["Pong"]))
        with pytest.raises(LockError, match=str(holder.pid)):
            collect(["Pong"], [1], data, num_steps=10, capacity=10)
    finally:
        holder.stdin.close()
        holder.wait()
    assert lock_output(data) and not lock_output(data)  # re-entrant within a process
    release_output(data)


def test_non_finite_loss_stops_training_before_the_step() -> None:
    """A NaN loss (e.g. from NaN rewards) or an infinite gradient raises before the optimiser touches the weights;
    every trainer (pretrain, finetune, train-tokenizer) steps through optimizer_step, so nothing NaN is saved."""
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    x = torch.ones(4, 3)
    optimizer_step(opt, model(x).pow(2).mean(), model.parameters(), 1.0)  # a good step
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for bad in (model(x).mean() * float("nan"), model(x).mean() * float("inf")):
        with pytest.raises(NonFiniteError, match="non-finite training loss"):
            optimizer_step(opt, bad, model.parameters(), 1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and torch.isfinite(v).all()


@pytest.mark.parametrize("override", ["train.lr_q=-1", "train.stage1_steps=-5", "train.log_every=0", "train.gamma=nan",
                                      "train.lr_world_stage1=.inf", "train.grad_clip=-1", "model.attn_pdrop=nan"])
def test_nonsense_settings_fail_before_work(override: str) -> None:
    """NaN, infinite, negative and out-of-range settings are config errors naming the key."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(PretrainConfig, None, [override])


def test_nonsense_options_and_scores_fail_before_work(tmp_path: Path) -> None:
    """Options and inputs checked up front: finetune bounds, evaluate's beam, NaN scores in report, prepare-data's
    --subsample and --workers."""
    with pytest.raises(ConfigError, match="log_every"):
        load_config(FinetuneConfig, None, ["log_every=0"])
    for beam in (0, 50):
        with pytest.raises(ValueError, match="beam"):
            AgentSettings(beam=beam)
    scores = tmp_path / "scores.json"
    scores.write_text('{"format": "jowa-eval", "games": {"Pong": {"raw_scores": [1.0, NaN]}}}')
    with pytest.raises(ValueError, match="NaN"):
        load_results([scores])
    csv = tmp_path / "scores.csv"
    csv.write_text("method,game,score\nours,Pong,nan\n")
    with pytest.raises(ValueError, match="finite"):
        load_results([csv])
    for option in (["--subsample", "2"], ["--subsample", "nan"], ["--workers", "0"]):
        res = CliRunner().invoke(app, ["prepare-data", "--source", str(tmp_path), "--games", "Pong",
                                       "--out", str(tmp_path / "out"), *option])
        assert res.exit_code == 2 and option[0] in res.output, res.output


def test_outputs_checked_writable_before_long_work(tmp_path: Path) -> None:
    """evaluate --out DIR, collect --json DIR and prepare-data --json DIR fail before any episode or file is
    processed (the inputs here do not even exist: the output is checked first)."""
    folder = tmp_path / "a folder"
    folder.mkdir()
    runs = [
        ["evaluate", "--ckpt", str(tmp_path / "none"), "--tokenizer", str(tmp_path / "none"), "--games", "Pong",
         "--out", str(folder)],
        ["collect", "--games", "Pong", "--runs", "1", "--steps", "100000", "--out", str(tmp_path / "raw"),
         "--json", str(folder)],
        ["prepare-data", "--source", str(tmp_path / "none"), "--games", "Pong", "--out", str(tmp_path / "out"),
         "--json", str(folder)],
        ["evaluate", "--ckpt", str(tmp_path / "none"), "--tokenizer", str(tmp_path / "none"), "--games", "Pong",
         "--json", str(folder / "notes.txt" / "x.json")],
    ]
    (folder / "notes.txt").write_text("a file, not a folder")
    for args in runs:
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and ("is a directory" in res.output or "not a folder" in res.output), res.output
        assert str(tmp_path / "none") not in res.output, res.output
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("breaker", ["shifted_episodes", "action_99", "not_pong", "nan_reward", "stray_terminal"])
def test_store_internals_cross_checked_on_open(tmp_path: Path, breaker: str) -> None:
    """Shifted episode bounds (same sums), actions outside the 18-action space or the game's minimal set, NaN
    rewards and a terminal in mid-episode are StoreErrors on open, not silently trained on."""
    n = 12
    obs = np.zeros((n, 84, 84), np.uint8)
    action, reward, terminal = np.zeros(n, np.int16), np.zeros(n, np.float32), np.zeros(n, bool)
    starts, lengths = np.array([0, 5]), np.array([5, 7])
    terminal[[4, 11]] = True
    if breaker == "shifted_episodes":
        starts = np.array([1, 6])
    elif breaker == "action_99":
        action[3] = 99
    elif breaker == "not_pong":
        action[3] = 2  # UP: a valid ALE action, but not one of Pong's
    elif breaker == "nan_reward":
        reward[2] = np.nan
    else:
        terminal[2] = True
    path = st.write_store(tmp_path / "Pong.zarr", "Pong", obs, action, reward, terminal, starts, lengths)
    expected = "episode 0 starts|action 99|action 2 on row 3 is not in Pong|not finite|terminal set on row 2"
    with pytest.raises(st.StoreError, match=expected):
        st.open_store(path)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
@pytest.mark.parametrize("module", ["jowa_core.data.collect", "jowa_core.data.convert"])
def test_workers_die_with_their_parent(module: str) -> None:
    """After kill -9 of the parent, busy --workers processes of collect and prepare-data exit too (their pool
    initializer arms the parent-death signal)."""
    code = (f"import os, sys; from concurrent.futures import ProcessPoolExecutor; import multiprocessing as mp; "
            f"from {module} import _init_worker\n"
            "if __name__ == '__main__':\n"
            "    ex = ProcessPoolExecutor(1, mp_context=mp.get_context('spawn'), initializer=_init_worker, "
            "initargs=(None, os.getpid()))\n"
            "    ex.submit(__import__('subprocess').run, ['sh', '-c', 'echo $PPID $$; exec sleep 600'])\n"
            "    sys.stdin.read()\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    parent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=env)
    worker, busy = map(int, parent.stdout.readline().split())  # the worker is busy running `sleep`
    try:
        assert _alive(worker)
        parent.kill()
        parent.wait()
        for _ in range(600):  # the kernel signals at once; poll generously on a loaded machine
            if not _alive(worker):
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert not _alive(worker)
    finally:
        os.kill(busy, 9)


def test_prepare_data_retry_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Temporary files of writers killed mid-write are removed when the run is resumed: the published store and
    --out hold no temporary files."""
    src, out = tmp_path / "src", tmp_path / "out"
    write_run(src / "Pong" / "1" / "replay_logs", [50, 120, 80] * 3, 400, seed=9)
    merge = convert._merge_shared

    def killed(plan, partial, jobs_dir, shard_frames):  # a writer killed mid-write, then the run interrupted
        (partial / "obs" / "c" / "0" / "0").mkdir(parents=True, exist_ok=True)
        (partial / "obs" / "c" / "0" / "0" / ".0.tmp99999").write_bytes(b"torn")
        (jobs_dir / ".0.job.tmp99999.npz").write_bytes(b"torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "_merge_shared", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(PrepareOptions(source=str(src), out=str(out), games=["Pong"], shard_frames=8))
    monkeypatch.setattr(convert, "_merge_shared", merge)
    (summary,) = prepare_data(PrepareOptions(source=str(src), out=str(out), games=["Pong"], shard_frames=8))
    assert summary["status"] == "resumed"
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    st.open_store(out / "Pong.zarr").frames.read_range(0, 10)


@pytest.mark.parametrize("config", [{"max_steps": 0}, {"embed_dim": 1 << 20}, {"num_heads": 3}, None, "text"])
def test_odd_checkpoint_json_is_a_one_line_error(tmp_path: Path, config: object) -> None:
    """checkpoint.json with max_steps=0, a huge embed_dim (caught from the shapes, nothing allocated), heads that
    do not divide the width, or no config: a CheckpointError naming the checkpoint, not a traceback."""
    path = tmp_path / "model"
    save_world_action(WorldActionModel(WorldActionConfig()), str(path))
    meta = ckpt.read_json(path / ckpt.META)
    if isinstance(config, dict):
        meta["config"].update(config)
    else:
        meta["config"] = config
    ckpt.write_json_atomic(path / ckpt.META, meta)
    with pytest.raises(ckpt.CheckpointError, match=str(path)):
        load_world_action(str(path))


def test_corrupt_optimizer_state_is_a_one_line_error(tmp_path: Path) -> None:
    """A truncated optimizer.pt, or one of another model, on --resume: CheckpointError naming the file."""
    opt = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    good = tmp_path / "optimizer.pt"
    torch.save(opt.state_dict(), good)
    ckpt.load_optimizer_state(opt, good)
    other = tmp_path / "other.pt"
    torch.save(torch.optim.Adam([*torch.nn.Linear(3, 2).parameters(), torch.zeros(1)]).state_dict(), other)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    for bad in (truncated, other, tmp_path / "missing.pt"):
        with pytest.raises(ckpt.CheckpointError, match=bad.name):
            ckpt.load_optimizer_state(opt, bad)


def test_out_of_range_tokens_are_refused(tmp_path: Path) -> None:
    """obs_tokens outside the recording tokenizer's vocabulary (the embedding would clamp them) are a StoreError."""
    path, obs = _small_store(tmp_path / "Pong.zarr")
    tokens = np.zeros((len(obs), 36), np.int16)
    tokens[5, 7] = 512
    arr = zarr.open_group(str(path), mode="r+", zarr_format=3).create_array(
        "obs_tokens", shape=tokens.shape, dtype="int16", chunks=(4096, 36))
    arr[:] = tokens
    arr.attrs["tokenizer_config"] = {"vocab_size": 512}
    with pytest.raises(st.StoreError, match="outside the tokenizer's vocabulary"):
        load_obs_tokens(st.open_store(path))
    arr.attrs["tokenizer_config"] = {"vocab_size": 1024}
    assert load_obs_tokens(st.open_store(path))[5, 7] == 512


def test_task_ids_beyond_the_model_are_refused_before_training(tmp_path: Path) -> None:
    """A Pong store (task id 39) and model.max_tasks=39: pretraining refuses before its first step and writes
    nothing but the run directory's lock."""
    path, obs = _small_store(tmp_path / "data" / "Pong.zarr")
    arr = zarr.open_group(str(path), mode="r+", zarr_format=3).create_array(
        "obs_tokens", shape=(len(obs), 36), dtype="int16", chunks=(4096, 36))
    arr[:] = np.zeros((len(obs), 36), np.int16)
    arr.attrs["tokenizer_config"] = {"vocab_size": 16}
    cfg = from_dict(PretrainConfig, {"model": {"preset": "tiny", "obs_vocab": 16, "max_tasks": 39},
                                     "data": {"path": str(tmp_path / "data"), "num_workers": 0, "seq_len": 4},
                                     "train": {"batch_size": 2, "stage1_steps": 1, "stage2_steps": 1,
                                               "tensorboard": False, "device": "cpu"}})
    with pytest.raises(ValueError, match=r"task ids \[39\] do not fit model.max_tasks=39"):
        pretrain(cfg, tmp_path / "run")
    assert not list((tmp_path / "run").glob("checkpoints/*")) and not (tmp_path / "run" / "final").exists()


def test_ids_outside_the_embedding_tables_are_errors_not_clamped() -> None:
    """The model looks each position up in its own table only: an action id of 99, an observation token equal to
    the vocabulary size or a negative id raise (the old clamp turned 99 into action 17 silently)."""
    torch.manual_seed(0)
    model = WorldActionModel(from_dict(WorldActionConfig, {"preset": "tiny", "obs_vocab": 32})).eval()
    tasks = torch.tensor([0])
    ok = torch.zeros(1, 37, dtype=torch.long)
    ok[0, 36] = 17  # the last valid action; observation tokens may exceed 17 (up to the vocabulary)
    ok[0, :36] = 31
    with torch.no_grad():
        model(ok, tasks)
    for pos, value in ((36, 99), (36, 18), (5, 32), (5, -1), (36, -1)):
        bad = ok.clone()
        bad[0, pos] = value
        with pytest.raises(IndexError), torch.no_grad():
            model(bad, tasks)


def _verify_cli(*paths: Path) -> tuple[int, dict]:
    res = CliRunner().invoke(app, ["verify", *map(str, paths), "--json", "-", "--quiet"])
    return res.exit_code, (json.loads(res.stdout) if res.stdout.strip() else {})


def test_verify_finds_a_flipped_frame_bit_that_open_does_not_read(tmp_path: Path) -> None:
    """`jowa verify` decodes every chunk: a bit flipped in a frame shard, which open_store never touches, is a
    problem (exit 1) naming the shard; the folder of stores and the store itself are both accepted."""
    path, obs = _small_store(tmp_path / "data" / "Pong.zarr")
    code, out = _verify_cli(tmp_path / "data")
    assert code == 0 and out["ok"] and out["reports"][0]["kind"] == "stores", out
    assert out["reports"][0]["checked"][str(path)]["frames_decoded"] == len(obs)
    shard = max((p for p in (path / "obs" / "c").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x10  # inside the chunk data, far from the index at the end
    shard.write_bytes(bytes(data))
    st.open_store(path)  # the small arrays are fine: opening does not see it
    code, out = _verify_cli(path)
    assert code == 1 and not out["ok"] and out["reports"][0]["kind"] == "store"
    assert any("corrupt" in p and "obs" in p for p in out["reports"][0]["problems"]), out


def test_verify_checkpoints_and_runs(tmp_path: Path) -> None:
    """Weights are checked against the sha256 in checkpoint.json (on every load, and by verify); non-finite
    weights, a dangling checkpoints/latest, out-of-order metrics and an unreadable optimizer.pt are problems;
    a path that is none of the kinds is exit 2."""
    torch.manual_seed(0)
    model = WorldActionModel(from_dict(WorldActionConfig, {"preset": "tiny", "obs_vocab": 32}))
    good = tmp_path / "good"
    save_world_action(model, good)
    assert ckpt.read_meta(good)["weights_sha256"] == ckpt.sha256_file(good / ckpt.WEIGHTS)
    assert _verify_cli(good)[0] == 0
    weights = good / ckpt.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # a low mantissa bit of the last tensor: still a finite, plausible weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="sha256 is not the one"):
        load_world_action(str(good))
    code, out = _verify_cli(good)
    assert code == 1 and "sha256" in out["reports"][0]["problems"][0]
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    nan = tmp_path / "nan"
    save_world_action(model, nan)
    code, out = _verify_cli(nan)
    assert code == 1 and "non-finite weights" in out["reports"][0]["problems"][0]

    run = tmp_path / "run"
    step = run / "checkpoints" / "step_00000004"
    step.parent.mkdir(parents=True)
    torch.manual_seed(0)
    save_world_action(WorldActionModel(from_dict(WorldActionConfig, {"preset": "tiny", "obs_vocab": 32})), step)
    (step / "state.json").write_text('{"step": 4}')
    (step / "optimizer.pt").write_bytes(b"not a torch file")
    (run / "checkpoints" / "latest").write_text("step_00000009\n")
    (run / "metrics.csv").write_text("step,loss\n2,1.0\n4,0.9\n3,0.8\n")
    code, out = _verify_cli(run)
    problems = " | ".join(out["reports"][0]["problems"])
    assert code == 1 and out["reports"][0]["kind"] == "run"
    assert "optimizer.pt: cannot be read" in problems and "not a complete checkpoint" in problems, problems
    assert "out of order" in problems, problems
    res = CliRunner().invoke(app, ["verify", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "does not exist" in res.output


@contextlib.contextmanager
def _small_tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` for the block; skips the test where mounting is not allowed."""
    path.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {r.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tmpfs")
def test_disk_full_is_one_line_and_a_retry_resumes(tmp_path: Path) -> None:
    """prepare-data onto a full 1 MB tmpfs: exit 2 with one `error:` line naming the disk, no temporary files
    left; after the disk grows, the same command resumes and publishes the store. A checkpoint that does not fit
    leaves nothing at its name."""
    src = tmp_path / "src"
    write_run(src / "Pong" / "1" / "replay_logs", [50, 120, 80] * 3, 400, seed=9)
    with _small_tmpfs(tmp_path / "disk", "1m") as disk:
        args = ["prepare-data", "--source", str(src), "--games", "Pong", "--out", str(disk / "out")]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, res.output
        lines = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "no space left" in lines[0].lower(), res.output
        assert "Traceback" not in res.output
        assert not [p for p in disk.rglob("*") if ".tmp" in p.name]
        with pytest.raises(OSError), torch.no_grad():
            save_world_action(WorldActionModel(from_dict(WorldActionConfig, {"preset": "40m"})), disk / "model")
        assert not (disk / "model").exists() and not [p for p in disk.iterdir() if "model" in p.name]
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        st.open_store(disk / "out" / "Pong.zarr").frames.read_range(0, 10)
