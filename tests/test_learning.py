"""It learns: from random-policy Catch data only, the tiny preset trained for a few CPU minutes plays clearly better
than the random policy and than the data it learned from, and planning does not hurt.

The thresholds sit far below every recorded seed (docs/results.md), yet a model that did not learn fails them: the
random policy and the data average 1.67 catches of 10. "Planning must not hurt" is checked as the issue states it:
beam search K=2 H=2 (as `jowa evaluate` plans by default) scores no worse than greedy on Q̂ beyond two standard
errors of the difference. The official reading of imagined rewards (their mode) is reported and must beat the data.
The run is deterministic on a given machine. All scores are printed.
"""

from __future__ import annotations

import json
import math

import pytest

from jowa_core.envs import catch
from jowa_core.progress import NullReporter
from jowa_core.recipes.learning import _stats, run_learning_check, versus_greedy

MIN_GREEDY = 3.0  # mean return over 32 episodes; random (exact) 1.67, perfect 10
MIN_PLAN = 3.0


@pytest.mark.slow
def test_catch_learns_from_random_data(tmp_path):
    s = run_learning_check(tmp_path / "run", seed=0, reporter=NullReporter())
    random, data, greedy, plan = s["random"]["mean"], s["data"]["mean"], s["greedy"]["mean"], s["plan"]["mean"]
    print(json.dumps({k: s[k] for k in ("distinct_token_states", "data", "greedy", "plan", "plan-mode",
                                        "versus_greedy", "timings")}, indent=1))
    assert random == pytest.approx(catch.random_policy_return(), abs=1e-3)
    assert abs(data - random) < 0.5  # the data is random play
    assert greedy >= MIN_GREEDY and greedy >= data + 1.0, s["greedy"]
    assert plan >= MIN_PLAN and plan >= data + 1.0, s["plan"]
    # planning must not hurt: beam search (K=2, H=2, default expected imagined rewards) is no worse than greedy
    # beyond two standard errors of the difference
    assert s["versus_greedy"]["plan"]["within_noise"], s["versus_greedy"]["plan"]
    # the official reading of imagined rewards (their mode) is reported; it must still beat the data
    assert s["plan-mode"]["mean"] >= data + 0.5, s["plan-mode"]
    # the report puts them side by side
    rows = (tmp_path / "run" / "report" / "aggregates.csv").read_text()
    for method in ("JOWA-TINY-greedy", "JOWA-TINY-plan", "JOWA-TINY-plan-mode", "data (random policy)"):
        assert method in rows


def test_versus_greedy_is_the_difference_in_standard_errors():
    g = _stats([4.0, 6.0, 5.0, 5.0])
    worse, better = _stats([3.0, 5.0, 4.0, 4.0]), _stats([6.0, 8.0, 7.0, 7.0])
    v = versus_greedy(worse, g)
    se = math.hypot(g["sem"], worse["sem"])
    assert v["difference"] == pytest.approx(-1.0) and v["se"] == pytest.approx(se)
    assert v["z"] == pytest.approx(-1.0 / se)
    assert se == pytest.approx(math.sqrt(2 / 3 / 4 * 2)) and v["within_noise"]  # -1 is within 2 s.e. (1.15)
    assert not versus_greedy(_stats([1.0, 1.0, 1.5, 1.0]), g)["within_noise"]  # far below
    assert versus_greedy(better, g)["within_noise"] and versus_greedy(better, g)["z"] > 0
