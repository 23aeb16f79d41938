"""`jowa plan`: the search tree it reports is the planner's, from a store and from a live game; PNG strip size;
bad input exits with code 2."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from jowa_cli.plan_cmd import plan as plan_command
from jowa_core import games
from jowa_core.config import from_dict
from jowa_core.data.collect import collect
from jowa_core.data.convert import PrepareOptions, prepare_data
from jowa_core.data.store import open_store
from jowa_core.models.tokenizer import Tokenizer, TokenizerConfig, save_tokenizer
from jowa_core.models.world_action import WorldActionConfig, WorldActionModel, save_world_action, segment_tokens
from jowa_core.planning.beam import plan
from jowa_core.planning.inspect import inspect_state, live_context, strip_size

VOCAB = 16
app = typer.Typer()
app.command()(plan_command)
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("plan")
    collect(["Breakout"], [1], root / "raw", num_steps=400, capacity=1000, seed=0, workers=1)
    prepare_data(PrepareOptions(source=str(root / "raw"), out=str(root / "data"), games=["Breakout"], workers=1))
    torch.manual_seed(0)
    model = WorldActionModel(from_dict(WorldActionConfig, {"preset": "tiny", "obs_vocab": VOCAB})).eval()
    with torch.no_grad():  # spread the heads' outputs so that rewards and Q differ between actions
        model.head_reward[2].weight.mul_(30)
        model.head_q.w3.mul_(20)
    tok = Tokenizer(TokenizerConfig(ch=8, num_res_blocks=1, embed_dim=16, z_channels=16, vocab_size=VOCAB)).eval()
    save_world_action(model, str(root / "model"))
    save_tokenizer(tok, root / "tok")
    return {"root": root, "store": root / "data" / "Breakout.zarr", "model": model, "tok": tok,
            "ckpt": str(root / "model"), "tokpath": str(root / "tok")}


def expected_plan(model, tok, frames, actions, game, beam, horizon):
    info = games.get(game)
    obs = tok.encode(frames)
    acts = torch.cat([torch.as_tensor(actions, dtype=torch.long), torch.zeros(1, dtype=torch.long)])
    tokens = segment_tokens(obs[None], acts[None])[:, :-1]
    mask = torch.as_tensor(info.action_mask())[None]
    return plan(model, tokens, torch.tensor([info.task_id]), mask, beam=beam, horizon=horizon)


def check_tree(tree: list, beam: int, horizon: int, num_valid: int) -> None:
    assert len(tree) == horizon
    width = 1
    for depth in tree:
        assert len(depth) == width * beam
        kept = [n for n in depth if n["kept"]]
        assert len(kept) == min(beam, sum(n["valid"] for n in depth))
        assert len([n for n in depth if n["best"]]) == 1
        width = len(kept)
    first = tree[0]
    assert len({n["action"] for n in first if n["valid"]}) == min(beam, num_valid)


def test_plan_from_a_store(setup, tmp_path):
    index = 40
    png, js = tmp_path / "strip.png", tmp_path / "tree.json"
    r = runner.invoke(app, ["--ckpt", setup["ckpt"], "--tokenizer", setup["tokpath"], "--data", str(setup["store"]),
                            "--index", str(index), "--beam", "3", "--horizon", "2", "--device", "cpu",
                            "--png", str(png), "--json", str(js)])
    assert r.exit_code == 0, r.output
    out = json.loads(js.read_text())
    store = open_store(setup["store"])
    assert store.episode_start[0] == 0 and store.episode_length[0] > index + 2  # one long episode at the start
    ref = expected_plan(setup["model"], setup["tok"], store.frames.read_range(index - 4, index + 1),
                        store.action[index - 4:index].astype(np.int64), "Breakout", 3, 2)
    assert out["chosen"]["action_index"] == int(ref.action[0])
    assert out["chosen"]["action"] == games.FULL_ACTIONS[int(ref.action[0])]
    assert out["chosen"]["score"] == pytest.approx(float(ref.score[0]), abs=1e-5)
    assert out["history"] == 5 and out["context_tokens"] == 5 * 37 - 1  # default 8 - H - 1
    check_tree(out["tree"], 3, 2, 4)
    assert len(out["leaves"]) == 3
    assert out["real"]["next_indices"] == [index + 1, index + 2]
    assert out["real"]["action_index"] == int(store.action[index])
    assert set(out["root"]["q"]) == {games.FULL_ACTIONS[a] for a in games.get("Breakout").minimal_actions}
    img = cv2.imread(str(png))
    assert img is not None and img.shape[:2] == strip_size(1 + 3, 2)  # real row + 3 kept beams, 2 steps
    assert "chosen" in r.output


def test_plan_from_a_live_game(setup, tmp_path):
    png, js = tmp_path / "live.png", tmp_path / "live.json"
    r = runner.invoke(app, ["--ckpt", setup["ckpt"], "--tokenizer", setup["tokpath"], "--game", "Pong",
                            "--seed", "3", "--live-steps", "6", "--beam", "2", "--horizon", "1", "--device", "cpu",
                            "--png", str(png), "--json", str(js)])
    assert r.exit_code == 0, r.output
    out = json.loads(js.read_text())
    assert out["source"] == {"kind": "live", "seed": 3, "steps": 6}
    ctx = live_context("Pong", 3, 6, 6)  # 6 steps from reset: 7 frames, the default 8 - H - 1 = 6 kept
    assert out["history"] == len(ctx["frames"]) == 6
    ref = expected_plan(setup["model"], setup["tok"], ctx["frames"], ctx["actions"], "Pong", 2, 1)
    assert out["chosen"]["action_index"] == int(ref.action[0])
    check_tree(out["tree"], 2, 1, 6)
    assert "real" not in out
    img = cv2.imread(str(png))
    assert img.shape[:2] == strip_size(2, 1)


def test_context_stops_at_the_episode_start_and_greedy_has_no_tree(setup):
    store = open_store(setup["store"])
    model, tok = setup["model"], setup["tok"]
    out = inspect_state(model, tok, store=store, index=2, beam="auto", horizon=2)
    assert out["history"] == 3 and out["beam"] == games.get("Breakout").beam_width
    greedy = inspect_state(model, tok, store=store, index=30, beam=1, horizon=2, history=8)
    assert greedy["tree"] == [] and greedy["leaves"] == []
    assert greedy["chosen"]["action"] == max(greedy["root"]["q"], key=greedy["root"]["q"].get)
    last = int(store.episode_start[0] + store.episode_length[0] - 1)
    end = inspect_state(model, tok, store=store, index=last, beam=2, horizon=2)
    assert end["real"]["next_indices"] == []


@pytest.mark.parametrize("args", [["--index", "100000"], ["--index", "-1"], [], ["--index", "5", "--history", "7"],
                                  ["--index", "5", "--beam", "x"], ["--index", "5", "--game", "Pong"]])
def test_bad_input_exits_2(setup, args):
    r = runner.invoke(app, ["--ckpt", setup["ckpt"], "--tokenizer", setup["tokpath"], "--data",
                            str(setup["store"]), "--device", "cpu", "--no-png", *args])
    assert r.exit_code == 2, r.output
