"""What each number among the options may be, and why, in one place: beyond these a value passes into the
unit or config.json and fails on the host (systemd ignores the line, runc or the kernel refuses it).

The command line's option types bound most of them already; project and compose files reach
BuildOptions without click, so the request checks them again (check_ranges), and the files' loaders
check them first in their own terms (Limit: `stop_timeout = 0` in a project file is named as such).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ctr2svc.errors import UsageError
from ctr2svc.model import MAX_HEALTH_RETRIES, MAX_HEALTH_SECONDS

MAX_STOP_TIMEOUT = 3600  # an hour: systemd would wait that long for a stop; longer is a hung service
MAX_PIDS = 4_194_304  # the kernel's PID_MAX_LIMIT: pids.max takes nothing larger
MIN_MEMORY = 6 * 1024**2  # Docker's minimum: less and the container dies of OOM as it starts
MAX_MEMORY = 2**63 - 1  # runc's memory limit is a signed 64-bit number of bytes
MIN_CPUS = 0.01  # the kernel's smallest CFS quota, 1 ms per 100 ms period (Docker's minimum too)
MAX_CPUS = 4096
# The kernel's largest user and group id: uid_t and gid_t are 32 bits, (uid_t)-1 is the "no change" of
# setresuid(2), and runc's config.json has no room beyond 32 bits.
MAX_ID = 2**32 - 2


def in_range(what: str, value: int | None, low: int, high: int, hint: str) -> None:
    # bool is an int to Python, and a project file's `true` is no number of seconds.
    if value is not None and (isinstance(value, bool) or not low <= value <= high):
        raise UsageError(f"{what} {value} is out of range: it goes from {low} to {high}", hint=hint)


def check_ranges(
    *,
    stop_timeout: int,
    pids_limit: int,
    ready_port: int | None,
    health_interval: int | None,
    health_timeout: int | None,
    health_start_period: int | None,
    health_retries: int | None,
) -> None:
    """The numbers the CLI's option types bound, bounded again for project and compose files, in the
    command line's terms."""
    in_range("--stop-timeout", stop_timeout, 1, MAX_STOP_TIMEOUT, "e.g. --stop-timeout 30")
    in_range("--pids-limit", pids_limit, 0, MAX_PIDS, "e.g. --pids-limit 4096 (0: no limit)")
    in_range("--ready-port", ready_port, 1, 65535, "e.g. --ready-port 8080")
    for what, value in (("--health-interval", health_interval), ("health timeout", health_timeout)):
        in_range(what, value, 1, MAX_HEALTH_SECONDS, "e.g. 30 (seconds)")
    in_range("health start period", health_start_period, 0, MAX_HEALTH_SECONDS, "e.g. 30 (seconds)")
    in_range("--health-retries", health_retries, 1, MAX_HEALTH_RETRIES, "e.g. --health-retries 3")


@dataclass(frozen=True)
class Limit:
    """The values a number may take: what the unit, runc, the kernel and the helper's shell accept, or,
    where they would take anything, what a setting can sensibly be. A value outside passes TOML and
    the type check, then fails on the host (a pids limit above the kernel's refused by the cgroup, a
    retry count the shell cannot compare), so it is refused up front, in the file's own terms."""

    low: int
    high: int
    what: str
    example: str
    low_open: bool = False  # above LOW rather than from it (a CPU count)

    def problem(self, value: float) -> str | None:
        low_ok = value > self.low if self.low_open else value >= self.low
        if math.isfinite(value) and low_ok and value <= self.high:
            return None
        low = f"above {self.low}" if self.low_open else f"{self.low}"
        return f"{value} is not {self.what} ({low} to {self.high})"


# A project file's numbers, in its terms.
LIMITS = {
    "stop_timeout": Limit(1, MAX_STOP_TIMEOUT, "a stop timeout in seconds", "stop_timeout = 30"),
    "pids_limit": Limit(0, MAX_PIDS, "a number of processes", "pids_limit = 4096, or 0 for no limit"),
    "ready_port": Limit(1, 65535, "a TCP port", "ready_port = 8080"),
    "health_interval": Limit(1, MAX_HEALTH_SECONDS, "an interval in seconds", "health_interval = 30"),
    "health_retries": Limit(1, MAX_HEALTH_RETRIES, "a number of failures", "health_retries = 3"),
    "cpus": Limit(0, MAX_CPUS, "a number of CPUs", "cpus = 1.5", low_open=True),
    "keep": Limit(1, 1000, "a number of versions to keep", "keep = 3"),
}


# A compose file's, in its terms where they differ: its -1 is "no limit" for pids, and 0 retries is "not
# given" (the image's, else Docker's default).
COMPOSE_LIMITS = {
    "memory": Limit(1, MAX_MEMORY, "a memory limit in bytes", "mem_limit: 512m"),
    "pids": Limit(-1, MAX_PIDS, "a number of processes", "pids_limit: 4096, or -1 for no limit"),
    "retries": Limit(0, MAX_HEALTH_RETRIES, "a number of failures", "retries: 3"),
    "cpus": Limit(0, MAX_CPUS, "a number of CPUs", "cpus: 1.5", low_open=True),
}


def user_problem(text: str) -> str | None:
    """What is wrong with the numbers of a USER[:GROUP] in a file (names are the image's to resolve)."""
    for part in text.split(":", 1):
        if part.isdigit() and int(part) > MAX_ID:
            return f"{part} is not a user or group id (0 to {MAX_ID})"
    return None
