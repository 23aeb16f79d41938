"""Plain progress lines: a resumed job's earlier work shows in the count and ETA, never in the rate."""

import io
import re

from jowa_core import progress


def test_resumed_work_is_counted_but_not_in_the_rate(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: clock[0])
    out = io.StringIO()
    rep = progress.PlainReporter(stream=out, interval=0.0)
    task = rep.task("pretrain", total=11000, unit="steps", completed=5000)
    clock[0] += 10.0
    rep.advance(task, 100)  # 100 steps in 10 s after resuming at 5,000
    line = out.getvalue().strip().splitlines()[-1]
    assert "5100/11000 steps" in line
    rate = float(re.search(r"([\d.]+) steps/s", line).group(1))
    eta = float(re.search(r"eta (\d+)s", line).group(1))
    assert rate == 10.0 and eta == 590  # (11000 - 5100) / 10, not / 510


def test_rich_and_null_reporters_take_completed():
    from rich.console import Console

    progress.NullReporter().task("x", total=10, completed=4)
    rich = progress.RichReporter(console=Console(file=io.StringIO(), force_terminal=True))
    task = rich.task("x", total=10, completed=4)
    rich.advance(task, 1)
    assert rich.progress.tasks[task].completed == 5
    rich.close()
