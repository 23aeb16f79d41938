"""Multi-task BC: the loss against brute force, causality of the policy head, parameter counts per preset (the
paper's 34M/65M/120M), training with exact resume, greedy evaluation with JOWA's token memory, and (slow) the
Catch learning check of both baselines against random play."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_token_stores

from jowa_core.config import from_dict
from jowa_core.models.mtbc import MTBCConfig, MTBCModel, bc_loss, policy_log_probs
from jowa_core.models.world_action import segment_tokens
from jowa_core.train.baselines import train_baseline
from jowa_core.train.mtbc import MTBC, MTBCPretrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 64


def test_bc_loss_is_the_mixture_nll_over_valid_actions():
    torch.manual_seed(0)
    H, B, L, A = 2, 3, 4, 6
    logits = torch.randn(H, B, L, A, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 0, 1]], dtype=torch.bool)
    action = torch.tensor([[0, 1, 2, 0], [5, 4, 3, 2], [1, 3, 5, 1]])
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    action[0, 3] = 4  # padding may hold an invalid action: ignored
    loss = bc_loss(logits, action, valid, mask)
    want = []
    for b in range(B):
        ok = mask[b].nonzero()[:, 0].tolist()
        for t in range(L):
            if not valid[b, t]:
                continue
            probs = []
            for h in range(H):
                z = [math.exp(logits[h, b, t, a].item()) for a in ok]
                probs.append(math.exp(logits[h, b, t, action[b, t]].item()) / sum(z))
            want.append(-math.log(sum(probs) / H))
    assert loss.item() == pytest.approx(sum(want) / len(want), rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[:, 0, 3].abs().sum() == 0  # padding: no gradient
    assert logits.grad[:, 0, :, 3:].abs().sum() == 0  # invalid actions: no gradient
    lp = policy_log_probs(logits, mask)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(B, L), atol=1e-5)


def test_the_policy_at_step_t_sees_neither_its_action_nor_the_future():
    torch.manual_seed(0)
    m = MTBCModel(from_dict(MTBCConfig, {"preset": "tiny", "obs_vocab": VOCAB})).eval()
    obs = torch.randint(0, VOCAB, (1, 4, 36))
    act = torch.randint(0, 18, (1, 4))
    task = torch.tensor([3])
    base = m(segment_tokens(obs, act), task)  # (1, 1, 4, 18)
    act2, obs2 = act.clone(), obs.clone()
    act2[0, 2], obs2[0, 3] = (act[0, 2] + 1) % 18, (obs[0, 3] + 1) % VOCAB
    other = m(segment_tokens(obs2, act2), task)
    assert torch.allclose(base[:, :, :3], other[:, :, :3], atol=1e-6)  # steps 0..2 unchanged
    assert not torch.allclose(base[:, :, 3], other[:, :, 3])  # step 3 sees the changed past
    # a context ending at the current observation (as the agent builds it) gives the same last-step policy
    ctx = segment_tokens(obs, act)[:, :-1]
    assert torch.allclose(m(ctx, task)[:, :, -1], base[:, :, -1], atol=1e-6)


# The presets are JOWA's backbones without world heads, target head and atoms; the paper's nominal sizes add the
# tokenizer with LPIPS (4,047,489 + 14,716,160), as JOWA's do (docs/baselines.md).
PARAMS = {"tiny": 268_690, "34m": 14_882_834, "65m": 46_294_546, "120m": 100_853_814}
TOKENIZER_WITH_LPIPS = 4_047_489 + 14_716_160


@pytest.mark.parametrize("preset", sorted(PARAMS))
def test_parameter_counts(preset):
    with torch.device("meta"):
        m = MTBCModel(from_dict(MTBCConfig, {"preset": preset}))
    assert m.num_trainable_parameters() == PARAMS[preset]
    if preset != "tiny":
        assert round((PARAMS[preset] + TOKENIZER_WITH_LPIPS) / 1e6) == int(preset[:-1])


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    return make_token_stores(tmp_path_factory.mktemp("mtbc"), ["Catch"], num_steps=600, capacity=600, vocab=VOCAB)


def config(data: Path, **train) -> MTBCPretrainConfig:
    t = dict(batch_size=8, steps=8, log_every=2, save_every=4, tensorboard=False, seed=3, device="cpu")
    t.update(train)
    return from_dict(MTBCPretrainConfig, {
        "model": {"preset": "tiny", "num_layers": 1, "embed_dim": 32, "num_heads": 2, "q_mlp_dim": 32, "num_q": 2,
                  "obs_vocab": VOCAB, "max_tasks": 61},
        "data": {"path": str(data), "num_workers": 0}, "train": t})


def test_training_resumes_bit_for_bit(tokens, tmp_path):
    full = train_baseline(MTBC, config(tokens), tmp_path / "full")
    train_baseline(MTBC, config(tokens, stop_after=4), tmp_path / "part")
    resumed = train_baseline(MTBC, config(tokens), tmp_path / "part", resume=True)
    assert resumed["step"] == full["step"] == 8 and resumed["finished"]
    assert resumed["param_fingerprint"] == full["param_fingerprint"]
    other = train_baseline(MTBC, config(tokens, seed=4), tmp_path / "other")
    assert other["param_fingerprint"] != full["param_fingerprint"]
    meta = json.loads((tmp_path / "full" / "final" / "checkpoint.json").read_text())
    assert meta["kind"] == "mtbc" and meta["games"] == ["Catch"]


def test_bad_inputs_are_one_line(tokens, tmp_path):
    cfg = config(tokens)
    cfg.model.max_tasks = 60
    with pytest.raises(ValueError, match=r"task ids \[60\] do not fit model.max_tasks=60"):
        train_baseline(MTBC, cfg, tmp_path / "a")
    cfg = config(tokens)
    cfg.data.observations = "frames"
    with pytest.raises(ValueError, match="reads observation tokens"):
        train_baseline(MTBC, cfg, tmp_path / "b")


def test_evaluate_plays_the_greedy_policy_with_the_token_memory(tokens, tmp_path):
    from jowa_core.evaluation.runner import evaluate

    train_baseline(MTBC, config(tokens, steps=2), tmp_path / "run")
    _random_tokenizer(tmp_path / "tok")
    res = evaluate(tmp_path / "run", tmp_path / "tok", ["Catch"], episodes=2, device="cpu")
    assert res["checkpoint"]["kind"] == "mtbc" and res["agent"]["planner"] == "greedy"
    assert res["agent"]["history"] == 8  # BC trains every position: the full context
    assert len(res["games"]["Catch"]["raw_scores"]) == 2
    with pytest.raises(ValueError, match="pass --tokenizer"):
        evaluate(tmp_path / "run", None, ["Catch"], episodes=1, device="cpu")


def test_finetune_starts_from_the_pretrained_model_and_keeps_the_best_snapshot(tokens, tmp_path):
    from jowa_core import checkpoint as ckpt
    from jowa_core.recipes.baselines import run_baseline_finetune

    train_baseline(MTBC, config(tokens, steps=2), tmp_path / "pre")
    _random_tokenizer(tmp_path / "tok")
    s = run_baseline_finetune("mtbc", tmp_path / "pre", tmp_path / "tok", "Catch", tokens / "Catch.zarr",
                              tmp_path / "ft", ["train.steps=2", "train.batch_size=4", "train.device=cpu",
                                                "train.tensorboard=false", "data.num_workers=0", "eval.every=1",
                                                "eval.episodes=1", "eval.max_frames=100"])
    assert s["finished"] and s["best_step"] in (1, 2) and (tmp_path / "ft" / "best" / "model.safetensors").is_file()
    _, pre = ckpt.load_model(tmp_path / "pre" / "final", "mtbc")
    _, first = ckpt.load_model(tmp_path / "ft" / "checkpoints" / "step_00000001", "mtbc")
    assert first.keys() == pre.keys()
    moved = [k for k in pre if not torch.equal(pre[k], first[k])]
    assert moved and all((pre[k] - first[k]).abs().max() < 1e-3 for k in pre)  # one step of lr 5e-5 away
    with pytest.raises(ValueError, match="pass --tokenizer"):
        run_baseline_finetune("mtbc", tmp_path / "pre", None, "Catch", tokens / "Catch.zarr", tmp_path / "ft2")


def _random_tokenizer(path: Path) -> None:
    from jowa_core.models.tokenizer import Tokenizer, TokenizerConfig, save_tokenizer

    torch.manual_seed(0)
    save_tokenizer(Tokenizer(from_dict(TokenizerConfig, {
        "ch": 8, "num_res_blocks": 0, "embed_dim": 8, "z_channels": 8, "vocab_size": VOCAB, "attn_resolutions": [],
        "encoder_mid": False})), path)


# ---- Catch: both baselines beat random play (jowa_core/recipes/baselines.py)

MARGIN = 1.5  # catches of 10 above the random policy's exact 1.67; the noisy-expert data averages about 4.9


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["mtbc", "scaled-ql"])
def test_baselines_beat_random_play_on_catch(tmp_path, algo):
    from jowa_core.envs import catch
    from jowa_core.progress import NullReporter
    from jowa_core.recipes.baselines import run_baseline_check

    s = run_baseline_check(tmp_path / "run", algos=(algo,), reporter=NullReporter())
    print(json.dumps({k: s[k] for k in ("random", "data", algo, "timings")}, indent=1))
    random = s["random"]["mean"]
    assert random == pytest.approx(catch.random_policy_return(), abs=1e-3)
    assert s[algo]["mean"] >= random + MARGIN, s[algo]
    assert s[algo]["episodes"] == 16 and np.isfinite(s[algo]["sem"])
    assert (tmp_path / "run" / f"{algo}.json").is_file()
