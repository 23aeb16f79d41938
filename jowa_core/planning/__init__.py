"""Decision-time planning over the learned world model: beam search (``beam``), MCTS (``mcts``), the node-by-node
reference (``reference``) and the single-state inspector (``inspect``). Torch-free here, so the CLI can read the
defaults without importing torch."""

# How imagined rewards are read: "expected" (p(+1) - p(-1)) is the expectation that the paper's search objective
# (eq. 12, with r̂ ~ p_r of eq. 6) takes; "mode" (argmax - 1) is the official planner's shortcut (docs/planning.md).
REWARD_MODES = ("expected", "mode")
DEFAULT_REWARD_MODE = "expected"


def check_reward_mode(reward_mode: str) -> str:
    """``reward_mode`` if it is one of ``REWARD_MODES``, else a ValueError naming them."""
    if reward_mode not in REWARD_MODES:
        raise ValueError(f"reward_mode must be one of {', '.join(REWARD_MODES)}, got {reward_mode!r}")
    return reward_mode
