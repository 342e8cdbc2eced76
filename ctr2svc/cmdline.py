"""Passwords given on ctr2svc's own command line, hidden from `ps` as early as possible."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path


def secret_args(argv: Sequence[str]) -> list[str]:
    """The passwords in a command line: what follows the ':' of `--creds USER:PASSWORD`."""
    found = []
    for i, arg in enumerate(argv):
        value = None
        if arg == "--creds" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--creds="):
            value = arg.removeprefix("--creds=")
        if value and ":" in value:
            value = value.split(":", 1)[1]
        if value:
            found.append(value)
    return found


def hide_from_ps(secrets: Sequence[str]) -> bool:
    """Overwrite SECRETS with 'x' in this process's own argument strings, which the kernel shows to
    anyone in /proc/PID/cmdline and `ps` (as mysql does with -pPASSWORD). Python has its own copy of
    the arguments, so nothing else changes. True when something was hidden.

    Only narrows the window: the password was visible from exec until here. --authfile has none.
    """
    wanted = [s.encode() for s in secrets if s]
    if not wanted:
        return False
    try:
        stat = Path("/proc/self/stat").read_text()
        # pid (comm) state ...: field N (1-based) is fields[N - 3] after comm; arg_start/arg_end are 48/49.
        fields = stat[stat.rindex(")") + 2 :].split()
        start, end = int(fields[45]), int(fields[46])
        shown = Path("/proc/self/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return False
    if not 0 < end - start == len(shown):
        return False
    area = (ctypes.c_char * (end - start)).from_address(start)
    # The address is the one the kernel reads cmdline from: only write when it holds what it showed.
    if area.raw != shown:
        return False
    hidden = False
    for secret in wanted:
        at = shown.find(secret)
        while at != -1:
            ctypes.memset(start + at, ord("x"), len(secret))
            hidden = True
            at = shown.find(secret, at + len(secret))
    return hidden
