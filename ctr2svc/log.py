"""Output helpers: progress lines on stderr, debug lines only with --debug."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class _State:
    verbosity: int = 0  # -1 quiet, 0 normal, 1 debug


STATE = _State()


def set_verbosity(level: int) -> None:
    STATE.verbosity = level


def debug(message: str) -> None:
    if STATE.verbosity > 0:
        print(f"debug: {message}", file=sys.stderr, flush=True)


def info(message: str) -> None:
    if STATE.verbosity >= 0:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    # Warnings show even with -q: they describe something the package will not do.
    print(f"warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Announce a pipeline stage and, with --debug, how long it took."""
    info(f"‣ {title}")
    start = time.monotonic()
    yield
    debug(f"{title}: {time.monotonic() - start:.2f}s")
