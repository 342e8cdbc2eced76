"""What ctr2svc maps of a compose file, and how it refuses the rest: the keys it knows, hints for those
people often write, and the Source being mapped, which collects every refusal (the file, the key and
what to do) so that all of them are reported at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ctr2svc.errors import UsageError
from ctr2svc.model import PackageFormat
from ctr2svc.options.ranges import Limit
from ctr2svc.package import naming

STACK_SUFFIX = "-stack"

DOCS = "see docs/compose.md for the keys ctr2svc maps"

# Every service key ctr2svc maps (docs/compose.md has the table); "x-" keys are the user's own.
SERVICE_KEYS = frozenset(
    {
        "image", "command", "entrypoint", "environment", "env_file", "user", "working_dir", "ports",
        "expose", "networks", "network_mode", "volumes", "depends_on", "healthcheck", "restart",
        "stop_signal", "stop_grace_period", "cap_add", "cap_drop", "privileged", "read_only", "tmpfs",
        "mem_limit", "cpus", "pids_limit", "deploy", "secrets", "configs", "labels", "init",
        "container_name", "platform", "build", "pull_policy", "profiles",
    }
)  # fmt: skip

# What to do instead, for keys people often write.
HINTS = {
    "hostname": "drop it: a service's host name is its package name, and the others reach it by service name",
    "extra_hosts": "drop it, or add the names to the host's /etc/hosts (the container gets a copy)",
    "dns": "drop it: the containers use the ctr2svc network's resolver, then the host's",
    "logging": "drop it: the output goes to the journal (journalctl -u NAME)",
    "ulimits": "drop it: the unit's LimitNOFILE= applies; change it in a drop-in",
    "sysctls": "drop it, or set the sysctl on the host",
    "shm_size": "drop it: /dev/shm is 64 MB as under Docker's default",
    "links": "drop it: services reach each other by service name",
    "scale": "drop it: one container per service",
    "devices": "drop it: ctr2svc gives containers no host devices",
    "volumes_from": "name the volumes in each service instead",
    "pid": "drop it: each service has its own process namespace",
    "ipc": "drop it: each service has its own IPC namespace",
    "security_opt": "drop it: ctr2svc applies Docker's default seccomp profile",
}

TOP_KEYS = frozenset({"name", "services", "networks", "volumes", "secrets", "configs"})

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}

# Durations (health checks' timings): a day at most; beyond it the units' timeouts stop making sense.
MAX_DURATION = 86400

T = TypeVar("T")


def refuse(path: Path, where: str, problem: str, hint: str) -> UsageError:
    return UsageError(f"{path}: {where}: {problem}", hint=hint)


@dataclass
class Source:
    """The compose file being mapped, what may be read outside its directory, and the problems found so
    far: all of them are reported at once, not one per run."""

    path: Path
    allowed: tuple[Path, ...] = ()  # --allow-outside, symlinks resolved
    problems: list[UsageError] = field(default_factory=list)

    @property
    def base(self) -> Path:
        """The directory compose resolved the file's relative paths against."""
        return self.path.absolute().parent

    def refuse(self, where: str, problem: str, hint: str) -> UsageError:
        return refuse(self.path, where, problem, hint)

    def note(self, error: UsageError) -> None:
        if all(e.one_line() != error.one_line() for e in self.problems):
            self.problems.append(error)

    def attempt(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """FUNCTION's result, or None with its refusal noted (the rest of the file is checked on)."""
        try:
            return function(*args, **kwargs)
        except UsageError as exc:
            self.note(exc)
            return None

    def check(self) -> None:
        """One error for every problem noted: the file, and each key with what to do."""
        if not self.problems:
            return
        if len(self.problems) == 1:
            raise self.problems[0]
        prefix = f"{self.path}: "
        parts = [
            e.brief.removeprefix(prefix) + (f" (hint: {e.hint})" if e.hint else "") for e in self.problems
        ]
        raise UsageError(
            f"{self.path}: {len(parts)} problems: {'; '.join(parts)}", hint=f"fix each of them ({DOCS})"
        )

    def local(self, where: str, given: Path) -> Path:
        """GIVEN with its symlinks resolved, if that is in the project's directory or in a path given
        with --allow-outside: what is packaged is read from the build machine, and a compose file must
        not make ctr2svc package /etc/shadow, a path up the tree, or a file a symlink leads to."""
        real = given.resolve()
        if inside(real, self.base.resolve()) or any(inside(real, a) for a in self.allowed):
            return real
        shown = f"{given} (which leads to {real})" if real != given.absolute() else str(given)
        raise self.refuse(
            where,
            f"{shown} is outside the project's directory {self.base}, and would be packaged from this "
            "machine",
            f"put the file beside the compose file, or pass --allow-outside {real} to package it",
        )


def unknown_keys(src: Source, where: str, table: Mapping[str, Any], known: set[str] | frozenset[str]) -> None:
    for key, value in table.items():
        # A key that says nothing (false, empty) asks for nothing: compose writes some of them itself.
        if key in known or key.startswith("x-") or value in (None, False, "", [], {}):
            continue
        src.note(
            src.refuse(f"{where}.{key}", "not supported by ctr2svc", HINTS.get(key, f"remove it ({DOCS})"))
        )


def whole_number(src: Source, where: str, value: object, limit: Limit) -> int:
    """An integer of the model within LIMIT, or a refusal in the file's terms."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise src.refuse(where, f"{value!r} is not a number", f"e.g. {limit.example}")
    try:
        number = int(value)
    except ValueError:
        raise src.refuse(where, f"{value!r} is not a whole number", f"e.g. {limit.example}") from None
    problem = limit.problem(number)
    if problem is not None:
        raise src.refuse(where, problem, f"e.g. {limit.example}")
    return number


def duration(path: Path, where: str, text: object, most: int = MAX_DURATION) -> int:
    """Whole seconds (rounded up) of a Go duration such as 1m30s or 500ms, at most MOST."""
    value = str(text)
    if value.isdigit():
        seconds = float(value)
    else:
        parts = _DURATION.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise refuse(path, where, f"{value!r} is not a duration", "e.g. 30s, 1m30s or 500ms")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    whole = max(1, int(-(-seconds // 1))) if seconds else 0
    if whole > most:
        raise refuse(path, where, f"{value} is more than {most} s", "e.g. 30s, 1m30s or 500ms")
    return whole


def package_name(app: str, service: str) -> str:
    return f"{app}-{service}".lower().replace("_", "-")


def check_name(path: Path, where: str, name: str, fmt: PackageFormat) -> str:
    try:
        return naming.check_package_name(name, fmt)
    except UsageError as exc:
        raise refuse(path, where, exc.brief, "rename it, or pass --project-name NAME") from exc


def strings(path: Path, where: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise refuse(path, where, "is not a list of strings", DOCS)
    return tuple(value)


def inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
    except ValueError:
        return False
    return True
