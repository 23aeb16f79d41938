"""Progress reporting for long jobs: a rich live display on a terminal, plain log lines otherwise.

Core functions take an optional ``Reporter`` and call ``task``/``advance``/``log``; they never print.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Reporter(Protocol):
    """``task(..., completed=n)``: n units were done before this process started (a resumed job); they show in
    the count and the ETA but not in the rate."""

    def task(self, description: str, total: float | None = None, unit: str = "", completed: float = 0.0) -> int: ...
    def advance(self, task: int, amount: float = 1.0) -> None: ...
    def log(self, message: str) -> None: ...
    def close(self) -> None: ...


class NullReporter:
    def task(self, description: str, total: float | None = None, unit: str = "", completed: float = 0.0) -> int:
        return 0

    def advance(self, task: int, amount: float = 1.0) -> None:
        pass

    def log(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


class PlainReporter:
    """One line per task every ``interval`` seconds (and at completion): for CI logs and pipes."""

    def __init__(self, stream: TextIO | None = None, interval: float = 10.0):
        self.stream = stream or sys.stderr
        self.interval = interval
        self.tasks: dict[int, dict] = {}

    def task(self, description: str, total: float | None = None, unit: str = "", completed: float = 0.0) -> int:
        tid = len(self.tasks)
        self.tasks[tid] = {"d": description, "total": total, "unit": unit, "done": float(completed),
                           "start": float(completed), "t0": time.time(), "last": 0.0}
        return tid

    def advance(self, task: int, amount: float = 1.0) -> None:
        t = self.tasks[task]
        t["done"] += amount
        now = time.time()
        finished = t["total"] is not None and t["done"] >= t["total"]
        if finished or now - t["last"] >= self.interval:
            t["last"] = now
            self._line(t, now)

    def _line(self, t: dict, now: float) -> None:
        elapsed = max(now - t["t0"], 1e-9)
        rate = (t["done"] - t["start"]) / elapsed
        total = t["total"]
        if total:
            eta = (total - t["done"]) / rate if rate > 0 else float("inf")
            msg = (
                f"{t['d']}: {t['done']:.0f}/{total:.0f} {t['unit']} ({100 * t['done'] / total:.0f}%, "
                f"{rate:.1f} {t['unit']}/s, eta {eta:.0f}s)"
            )
        else:
            msg = f"{t['d']}: {t['done']:.0f} {t['unit']} ({rate:.1f} {t['unit']}/s)"
        print(msg, file=self.stream, flush=True)

    def log(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class RichReporter:
    """A rich live progress display (bars with rate and ETA)."""

    def __init__(self, console=None):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.units: dict[int, str] = {}
        self.progress.start()

    def task(self, description: str, total: float | None = None, unit: str = "", completed: float = 0.0) -> int:
        tid = self.progress.add_task(description, total=total, completed=completed, rate="")
        self.units[tid] = unit
        return tid

    def advance(self, task: int, amount: float = 1.0) -> None:
        self.progress.advance(task, amount)
        t = self.progress.tasks[task] if task < len(self.progress.tasks) else None
        if t is not None and t.speed:
            self.progress.update(task, rate=f"{t.speed:,.1f} {self.units[task]}/s")

    def log(self, message: str) -> None:
        self.progress.console.print(message)

    def close(self) -> None:
        self.progress.stop()


def make_reporter(quiet: bool = False, stream: TextIO | None = None) -> Reporter:
    """Rich display when stderr is a terminal, plain lines otherwise, nothing when ``quiet``."""
    if quiet:
        return NullReporter()
    stream = stream or sys.stderr
    if stream.isatty():
        from rich.console import Console

        return RichReporter(Console(file=stream))
    return PlainReporter(stream)
