"""Output helpers: progress lines on stderr, debug lines only with --debug."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class _State:
    verbosity: int = 0  # -1 quiet, 0 normal, 1 debug


STATE = _State()


def set_verbosity(level: int) -> None:
    STATE.verbosity = level


_LINES = threading.Lock()


def _line(text: str) -> None:
    # One write per line, under a lock: layer packages are packed in worker threads, and print()'s
    # separate write of the newline let their lines run into each other.
    with _LINES:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def debug(message: str) -> None:
    if STATE.verbosity > 0:
        _line(f"debug: {message}")


def info(message: str) -> None:
    if STATE.verbosity >= 0:
        _line(message)


def warn(message: str) -> None:
    # Warnings show even with -q: they describe something the package will not do.
    _line(f"warning: {message}")


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Announce a pipeline stage and, with --debug, how long it took."""
    info(f"‣ {title}")
    start = time.monotonic()
    yield
    debug(f"{title}: {time.monotonic() - start:.2f}s")


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    """A single self-rewriting status line for a long step, drawn only on a terminal.

    A ticker thread calls `poll()` (bytes done so far, or None) a few times a second; `note()` adds a
    word such as "layer 2/3". Off a terminal (a pipe, a CI log, ssh without a tty) the same line is
    printed as a line of its own every PLAIN_INTERVAL seconds once the step has lasted that long, so a
    long step never looks hung and a log is not flooded. With -q, or with --debug (whose command lines
    would interleave with it), nothing is drawn.
    """

    INTERVAL = 0.25
    PLAIN_INTERVAL = 10.0

    def __init__(self, title: str, total: int | None = None, poll: Callable[[], int | None] | None = None):
        self.title = title
        self.total = total
        self.poll = poll
        self.detail = ""
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False

    @staticmethod
    def enabled() -> bool:
        return STATE.verbosity == 0 and sys.stderr.isatty()

    @staticmethod
    def plain_interval() -> float | None:
        """Seconds between the plain lines off a terminal; None when none are printed."""
        if STATE.verbosity != 0 or sys.stderr.isatty():
            return None
        # For tests and for logs that want more (or fewer) lines: CTR2SVC_PROGRESS_INTERVAL=SECONDS.
        value = os.environ.get("CTR2SVC_PROGRESS_INTERVAL", "")
        try:
            seconds = float(value) if value else Progress.PLAIN_INTERVAL
        except ValueError:
            seconds = Progress.PLAIN_INTERVAL
        return seconds if seconds > 0 else None

    def note(self, detail: str) -> None:
        self.detail = detail

    def watch_reads(self, pid: int) -> None:
        """Count progress as the bytes process PID has read (a packer reading the files it packs)."""
        self.poll = lambda: process_read_bytes(pid)

    def on_line(self, line: str) -> None:
        """A line of the tool's stderr; subclasses turn those they understand into notes."""

    def line(self) -> str:
        done = None
        if self.poll is not None:
            with contextlib.suppress(OSError, ValueError):
                done = self.poll()
        parts = [f"  {self.title}"]
        if done is not None and self.total:
            done = min(done, self.total)
            parts.append(f"{_human(done)} / {_human(self.total)} ({100 * done // self.total}%)")
        elif done is not None:
            parts.append(_human(done))
        if self.detail:
            parts.append(self.detail)
        parts.append(f"{time.monotonic() - self._start:.0f}s")
        return "  ".join(parts)

    def _tick(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            width = shutil.get_terminal_size((100, 24)).columns - 1
            sys.stderr.write("\r\x1b[K" + self.line()[:width])
            sys.stderr.flush()
            self._drawn = True

    def _tick_plain(self, interval: float) -> None:
        while not self._stop.wait(interval):
            _line(self.line())

    def __enter__(self) -> Progress:
        plain = self.plain_interval()
        if self.enabled():
            self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)
        elif plain is not None:
            self._thread = threading.Thread(
                target=self._tick_plain, args=(plain,), name="progress", daemon=True
            )
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if self._drawn:
                sys.stderr.write("\r\x1b[K")
                sys.stderr.flush()


def process_read_bytes(pid: int) -> int:
    """Bytes a running process has read so far (/proc/PID/io rchar): how far a packer has got."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0
