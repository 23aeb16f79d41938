"""Reconstructing the chronological stream of a logged run, and the episodes in it.

Pure functions of the small per-checkpoint arrays (add_count, terminal, action, reward), so they can be
tested exhaustively against the logger emulator. The logger rules (batch_rl ``OutOfGraphLoggedReplayBuffer``
on Dopamine's ``OutOfGraphReplayBuffer``, stack size 4), with C the buffer capacity:

* Add index ``i`` (every add, padding included) is written to row ``i % C``.
* A file is logged right after an add that leaves ``add_count % C == C - 1``; it then holds add indices
  ``[add_count - C, add_count)``: row C-1 is the oldest and precedes row 0. (File 0's row C-1 is unwritten.)
* An add at an episode start first writes 3 all-zero padding rows, so one ``add`` can advance add_count by 4
  and jump over ``C - 1``: no file is logged for that lap, its adds are lost (a *lost lap*), and the next
  file's add_count is larger than the previous one by 2C or more.
* ``log_final_buffer`` writes a last file with add_count replaced by the cursor (< C). Only the rows written
  since the previous file are new; the rest are stale copies of that file's rows.
* A run whose only file is the final one may still have wrapped: when its first lap was lost (capacity about
  the run's length), the cursor alone cannot tell. Rows the buffer never wrote are all zero, so a non-zero row
  at or after the cursor, or rows 0-2 that are not the run's padding, mean the buffer wrapped
  (``final_alone``).

Episodes are recovered across file boundaries. After a gap (unselected file, start of the selection) the
position inside an episode is unknown, so rows are skipped up to the first terminal. After a lost lap it is
known: the add that jumped over C - 1 began an episode, so the next file's window begins inside that
episode's padding or on its first step, and the episode is complete (``head_padding``). Rows after the last
terminal of a contiguous block are an unfinished episode and are dropped. Only complete episodes
(reset → terminal) are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PADDING_ROWS = 3  # Dopamine stack_size - 1


class StreamError(ValueError):
    """The logs are inconsistent with the logger's rules."""


@dataclass(frozen=True)
class Cover:
    """The add indices [start, end) a logged file holds; add ``i`` sits in row ``i % capacity``."""

    ckpt: int
    start: int
    end: int
    capacity: int
    final: bool = False
    # a regular file logged after a lost lap, or a wrapped only file whose window begins in padding: the window
    # begins inside an episode's padding or on its first step
    after_lost_lap: bool = False

    def rows(self, start: int, end: int) -> list[tuple[int, int]]:
        """Row ranges [r0, r1) holding adds [start, end) (a subrange of this cover), in add order."""
        out = []
        while start < end:
            r0 = start % self.capacity
            n = min(end - start, self.capacity - r0)
            out.append((r0, r0 + n))
            start += n
        return out

    def chrono(self, values: np.ndarray) -> np.ndarray:
        """``values`` (C,) indexed by row → the held adds' values in add order, (end - start,)."""
        return np.roll(values, -(self.start % self.capacity))[: self.end - self.start]


def file_covers(
    add_counts: dict[int, int],
    capacity: int,
    stale_rows_match: Callable[[int, int, int, int], bool] | None = None,
    warn: Callable[[str], None] = lambda msg: None,
    label: str = "",
    final_alone: Callable[[int, int], str] | None = None,
) -> dict[int, Cover]:
    """Which add indices each logged file holds.

    ``add_counts`` maps every checkpoint number *present on disk* for the run to its add_count (used to
    place the final file after its predecessor). ``stale_rows_match(prev_ckpt, final_ckpt, r0, r1)`` says
    whether rows [r0, r1) of the final file equal the previous file's, which is what the logger produces
    when no lap was lost after the previous file. ``final_alone(ckpt, cursor)`` classifies a run's only file
    when it may be the final one: ``"fresh"`` (never wrapped: adds [0, cursor)), ``"wrapped"`` (its rows are the
    last C adds, where an episode starts is unknown until a terminal) or ``"wrapped_on_padding"`` (the last C
    adds, beginning inside the padding of the episode whose first add jumped over C - 1); without it the file
    is taken as never wrapped.
    """
    C = capacity
    covers: dict[int, Cover] = {}
    prev_ckpt, prev_end = None, None
    ckpts = sorted(add_counts)
    for pos, ck in enumerate(ckpts):
        a = add_counts[ck]
        last = pos == len(ckpts) - 1
        if a < 0:
            raise StreamError(f"{label}checkpoint {ck}: negative add_count {a}")
        if last and prev_end is None and a < C and final_alone is not None:
            covers[ck] = _alone(ck, a, C, final_alone(ck, a), warn, label)
            break
        if a % C == C - 1 and not (last and prev_end is not None and a < C):
            start, end, final = max(a - C, 0), a, False
        elif last and a < C:
            # the final file: `a` is the cursor, n adds happened since the previous file with n = a + 1,
            # or n = 0 when a == C - 1 (nothing new). Stale rows equal the previous file's unless a lap
            # was lost in between.
            if prev_end is None:
                start, end = 0, a
            else:
                rows = (0, C) if a == C - 1 else (a, C - 1)
                n = 0 if a == C - 1 else a + 1
                if stale_rows_match is None or stale_rows_match(prev_ckpt, ck, *rows):
                    start, end = prev_end, prev_end + n
                else:
                    warn(
                        f"{label}final checkpoint {ck}: its stale rows differ from checkpoint {prev_ckpt}; "
                        f"a lap was lost before it; episodes are cut there"
                    )
                    end = prev_end + n + C
                    start = end - C
            final = True
        else:
            raise StreamError(
                f"{label}checkpoint {ck}: add_count {a} is impossible for capacity {C} "
                f"(logged files have add_count % C == C-1; only the last may have add_count < C)"
            )
        if prev_end is not None and start < prev_end:
            raise StreamError(
                f"{label}checkpoint {ck}: add_count {a} overlaps checkpoint {prev_ckpt} (add_count "
                f"{add_counts[prev_ckpt]}); checkpoint numbers and add_counts disagree"
            )
        if prev_end is not None and start > prev_end:
            lost = start - prev_end
            warn(
                f"{label}lost lap between checkpoints {prev_ckpt} and {ck}: {lost} adds were never logged; "
                f"the episode in progress is cut there"
            )
        lost = prev_end is not None and start > prev_end and not final
        covers[ck] = Cover(ck, start, end, C, final, after_lost_lap=lost)
        prev_ckpt, prev_end = ck, end
    return covers


def _alone(ck: int, cursor: int, C: int, kind: str, warn: Callable[[str], None], label: str) -> Cover:
    """The cover of a run's only file, the final one with add_count ``cursor``, classified as ``kind``."""
    if kind == "fresh":
        return Cover(ck, 0, cursor, C, final=True)
    if kind not in ("wrapped", "wrapped_on_padding"):
        raise ValueError(f"final_alone returned {kind!r}")
    warn(f"{label}final checkpoint {ck} is the run's only file but its buffer wrapped (the first lap was never "
         f"logged); only its last {C} adds are kept and the episode in progress there is cut")
    start = cursor if cursor > 0 else C  # at least one lap before; add 0 stays the run's start
    return Cover(ck, start, start + C, C, final=True, after_lost_lap=kind == "wrapped_on_padding")


@dataclass(frozen=True)
class Block:
    """Selected files that hold one contiguous range of add indices."""

    covers: tuple[Cover, ...]

    @property
    def start(self) -> int:
        return self.covers[0].start

    @property
    def end(self) -> int:
        return self.covers[-1].end


def contiguous_blocks(covers: list[Cover]) -> list[Block]:
    """Group covers (sorted by start) into blocks of adjacent add ranges."""
    blocks: list[list[Cover]] = []
    for c in sorted(covers, key=lambda c: c.start):
        if c.end == c.start:
            continue
        if blocks and blocks[-1][-1].end == c.start:
            blocks[-1].append(c)
        else:
            blocks.append([c])
    return [Block(tuple(b)) for b in blocks]


@dataclass
class BlockEpisodes:
    starts: np.ndarray  # (E,) add index of each complete episode's first step
    ends: np.ndarray  # (E,) add index one past its terminal step
    skipped_head: int  # rows skipped after the block start (unknown episode position)
    dropped_tail: int  # rows after the last terminal (unfinished episode)


def find_episodes(
    block_start: int,
    terminal: np.ndarray,
    zero_row: np.ndarray | None = None,
    label: str = "",
    head_padding: int | None = None,
) -> BlockEpisodes:
    """Complete episodes in a contiguous block whose terminal flags, in add order, are ``terminal``.

    ``zero_row`` (same length) marks rows whose action, reward and terminal are all zero; padding rows must
    be. At the start of a run (add index 0) the block begins with padding; anywhere else the episode
    position is unknown until the first terminal, unless ``head_padding`` says the block begins with that many
    padding rows followed by an episode's first step (a window after a lost lap).
    """
    n = terminal.shape[0]
    all_term = np.flatnonzero(terminal)
    if block_start == 0 or head_padding is not None:  # the block begins on an episode's (visible) start
        first = -1 if block_start == 0 else head_padding - PADDING_ROWS - 1
        prev, term = np.concatenate([[first], all_term[:-1]])[: all_term.size], all_term
        skipped = 0 if block_start == 0 else int(head_padding)
    else:  # position unknown until the first terminal
        prev, term = all_term[:-1], all_term[1:]
        skipped = int(all_term[0]) + 1 if all_term.size else n
    if all_term.size:
        dropped = n - (int(all_term[-1]) + 1)
    else:
        dropped = n if block_start == 0 or head_padding is not None else 0
    starts = prev + 1 + PADDING_ROWS
    bad = np.flatnonzero(starts > term)
    if bad.size:
        t = int(term[bad[0]])
        raise StreamError(
            f"{label}terminal at add index {block_start + t} falls inside the {PADDING_ROWS} padding rows "
            f"after the previous episode; the logs do not follow Dopamine's padding rule (stack size 4)"
        )
    if zero_row is not None and starts.size:
        pad = (starts[:, None] - np.arange(PADDING_ROWS, 0, -1)[None, :]).reshape(-1)
        pad = pad[pad >= 0]
        not_zero = pad[~zero_row[pad]]
        if not_zero.size:
            raise StreamError(
                f"{label}add index {block_start + int(not_zero[0])} should be a padding row (all zeros) but is "
                f"not; the logs do not follow Dopamine's padding rule (stack size 4)"
            )
    return BlockEpisodes(block_start + starts, block_start + term + 1, skipped, dropped)


@dataclass
class Selection:
    """Episodes chosen for the store, in store order (indices into the candidate list)."""

    order: np.ndarray  # (K,) candidate episode indices (duplicates possible with replacement)
    lengths: np.ndarray  # (K,) steps kept of each (the last may be truncated by max_transitions)


def select_episodes(
    lengths: np.ndarray,
    fraction: float | None = None,
    max_transitions: int | None = None,
    replacement: bool = False,
    seed: int | list[int] = 0,
) -> Selection:
    """Choose whole episodes (candidates in chronological order, lengths (E,)).

    ``fraction``: without replacement (default), episodes in random order until their steps reach
    ``fraction`` of all steps; with replacement (the official code), ``ceil(fraction * steps / mean length)``
    uniform draws. ``max_transitions``: then episodes in random order while they fit; the one that crosses
    the cap is cut to fill it exactly (its last kept step is not terminal). The chosen episodes are stored in
    chronological order (duplicates next to each other).
    """
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int64)
    E = lengths.shape[0]
    chosen = np.arange(E)
    if fraction is not None and fraction < 1.0 and E:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"subsample fraction must be in (0, 1], got {fraction}")
        target = fraction * lengths.sum()
        if replacement:
            chosen = np.sort(rng.integers(0, E, int(np.ceil(target / lengths.mean()))))
        else:
            perm = rng.permutation(E)
            k = int(np.searchsorted(np.cumsum(lengths[perm]), target)) + 1
            chosen = np.sort(perm[: min(k, E)])
    kept = lengths[chosen].copy()
    if max_transitions is not None and kept.sum() > max_transitions:
        if max_transitions <= 0:
            raise ValueError(f"max_transitions must be positive, got {max_transitions}")
        perm = rng.permutation(chosen.shape[0])
        cum = np.cumsum(kept[perm])
        k = int(np.searchsorted(cum, max_transitions, side="right"))  # episodes that fit whole
        take = perm[: k + 1] if k < perm.shape[0] else perm
        new_len = kept[take].copy()
        if k < perm.shape[0]:
            new_len[-1] = max_transitions - (cum[k - 1] if k > 0 else 0)
        keep = new_len > 0
        take, new_len = take[keep], new_len[keep]
        sort = np.argsort(take, kind="stable")
        chosen, kept = chosen[take[sort]], new_len[sort]
    return Selection(order=chosen, lengths=kept)
