"""Shared CLI plumbing: error handling with meaningful exit codes, JSON output."""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

# Exit codes: 0 success, 1 unexpected failure, 2 bad input (usage, files, options), 130 interrupted.
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
# The disk is full, over quota, read-only, or the file too large: the user's storage, not a bug.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one-line messages and exit codes instead of tracebacks."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            print("interrupted; run the same command again to resume", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (UserError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except OSError as e:
            if e.errno not in _STORAGE_ERRNOS:
                raise
            where = f" writing {e.filename}" if e.filename else ""
            print(f"error: {os.strerror(e.errno).lower()}{where}: free space there (or choose another output) and "
                  "run the same command again", file=sys.stderr)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper


def emit_json(obj: Any, path: str | None) -> None:
    """Write ``obj`` as JSON to ``path`` ('-' for stdout); nothing when ``path`` is None."""
    if path is None:
        return
    text = json.dumps(obj, indent=2, default=str)
    if path == "-":
        print(text)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")


# One spelling of --quiet for every command.
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress or summary output (errors and --json still).")]
