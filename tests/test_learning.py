"""It learns: from random-policy Catch data only, the tiny preset trained for a few CPU minutes plays clearly better
than the random policy and than the data it learned from, with and without planning.

The thresholds sit below every recorded seed (docs/results.md: greedy 3.6-7.1 of 10 catches, beam search
3.6-6.3), yet a model that did not learn fails them: the random policy and the data average 1.67. The run is
deterministic on a given machine (seed 0: greedy 7.06, beam search 5.19). Whether beam search matches greedy
play at this scale depends on the seed (a recorded, partly negative result), so the test checks that planning
beats the data, not that it matches greedy. All scores are printed.
"""

from __future__ import annotations

import json

import pytest

from jowa_core.envs import catch
from jowa_core.learning import run_learning_check
from jowa_core.progress import NullReporter

MIN_GREEDY = 3.0  # mean return over 32 episodes; random (exact) 1.67, perfect 10
MIN_PLAN = 2.5


def test_catch_learns_from_random_data(tmp_path):
    s = run_learning_check(tmp_path / "run", seed=0, reporter=NullReporter())
    random, data, greedy, plan = s["random"]["mean"], s["data"]["mean"], s["greedy"]["mean"], s["plan"]["mean"]
    print(json.dumps({k: s[k] for k in ("distinct_token_states", "data", "greedy", "plan", "timings")}, indent=1))
    assert random == pytest.approx(catch.random_policy_return(), abs=1e-3)
    assert abs(data - random) < 0.5  # the data is random play
    assert greedy >= MIN_GREEDY and greedy >= data + 1.0, s["greedy"]
    assert plan >= MIN_PLAN and plan >= data + 0.5, s["plan"]
    assert s["plan-expected"]["mean"] >= MIN_PLAN, s["plan-expected"]
    # the report puts them side by side
    rows = (tmp_path / "run" / "report" / "aggregates.csv").read_text()
    assert "JOWA-TINY-greedy" in rows and "JOWA-TINY-plan" in rows and "data (random policy)" in rows
