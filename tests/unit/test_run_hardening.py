"""run() and main() hardening (issue 13): tools' log wrappers stripped from messages, children that die
with ctr2svc, passwords hidden from /proc/PID/cmdline, and a last-resort handler instead of a traceback.

Everything here runs real processes; nothing is mocked except where noted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ctr2svc.cmdline import secret_args
from ctr2svc.errors import ToolFailed, ToolTimedOut
from ctr2svc.run import Halted, Watchdog, halted, last_words, run, tool_message

REPO = Path(__file__).resolve().parents[2]

SKOPEO_FATAL = (
    'time="2026-12-02T06:02:41Z" level=fatal msg="Error parsing image name '
    '\\"docker://127.0.0.1:5000/cat/svc:9.9\\": reading manifest 9.9 in 127.0.0.1:5000/cat/svc: '
    'manifest unknown: manifest unknown"'
)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            SKOPEO_FATAL,
            'Error parsing image name "docker://127.0.0.1:5000/cat/svc:9.9": reading manifest 9.9 in '
            "127.0.0.1:5000/cat/svc: manifest unknown: manifest unknown",
        ),
        ('time="x" level=fatal msg="a \\\\ backslash\\nand a newline"', "a \\ backslash and a newline"),
        ("time=x level=fatal msg=bare", "bare"),
        (
            "   \u2a2f create rootfs: unpack layer: archive/tar: invalid tar header",
            "create rootfs: unpack layer: archive/tar: invalid tar header",
        ),
        ("plain text stays", "plain text stays"),
    ],
)
def test_tool_message_strips_the_wrapper(line: str, message: str) -> None:
    assert tool_message(line) == message


def test_last_words_prefers_the_lines_marked_as_errors() -> None:
    umoci = (
        "\u2022 unpacking rootfs ...\n   \u2022 unpack layer: sha256:ab\n   \u2a2f create rootfs: broken\n"
    )
    assert last_words(umoci) == "create rootfs: broken"
    skopeo = 'time="t" level=warning msg="retrying"\n' + SKOPEO_FATAL + "\n"
    words = last_words(skopeo)
    assert "level=" not in words and "time=" not in words and words.endswith("manifest unknown")
    assert last_words("one\ntwo\nthree\nfour") == "two / three / four"


@pytest.mark.parametrize(
    ("argv", "secrets"),
    [
        (["build", "x", "--creds", "tester:s3cret"], ["s3cret"]),
        (["build", "x", "--creds=tester:pa:ss"], ["pa:ss"]),
        (["build", "x", "--creds", "tokenonly"], ["tokenonly"]),
        (["build", "x", "--creds"], []),
        (["build", "x", "--authfile", "a.json"], []),
    ],
)
def test_secret_args(argv: list[str], secrets: list[str]) -> None:
    assert secret_args(argv) == secrets


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_password_hidden_from_proc_cmdline() -> None:
    """The real main() entry point, with a password on its command line: once it runs, neither its
    /proc/PID/cmdline nor `ps` shows the password; Python's own sys.argv still has it."""
    code = """
        import sys, time
        from ctr2svc.cmdline import hide_from_ps, secret_args
        assert hide_from_ps(secret_args(sys.argv[1:]))
        print(sys.argv[-1], flush=True)
        time.sleep(30)
    """
    proc = _python(code, "build", "img", "--creds", "tester:Very-S3cret-Word")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "tester:Very-S3cret-Word"
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"Very-S3cret-Word" not in cmdline, cmdline
        assert b"tester:xxxxxxxxxxxxxxxx" in cmdline, cmdline
        ps = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(proc.pid)], capture_output=True, text=True)
        assert "S3cret" not in ps.stdout and "--creds tester:" in ps.stdout, ps.stdout
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("progress", [False, True], ids=["communicate", "line-by-line"])
def test_children_die_with_ctr2svc(progress: bool) -> None:
    """A process calling run() (both of its reading modes, and with another thread running, as the
    progress line has) is killed with SIGKILL: the child it started goes too, by PR_SET_PDEATHSIG."""
    code = f"""
        import threading, time
        from ctr2svc.run import run
        threading.Thread(target=lambda: time.sleep(60), daemon=True).start()
        on_line = (lambda line: None) if {progress} else None
        run(["sleep", "300"], on_start=lambda pid: print(pid, flush=True), on_line=on_line)
    """
    proc = _python(code)
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        assert _alive(child)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 2
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(child), f"sleep {child} outlived the process that ran it"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def test_internal_error_is_one_line_and_exit_70() -> None:
    """The one mock here: a bug is stood in for by a build() that raises, since a real input that
    crashes ctr2svc is exactly what must not exist. Without --debug: one line, no traceback, exit 70;
    with --debug the traceback follows too."""
    code = """
        import sys
        import ctr2svc.cli as cli
        import ctr2svc.build.pipeline as command
        def broken(options):
            raise KeyError("surprise")
        command.build = broken
        sys.argv = ["ctr2svc", *sys.argv[1:]]
        cli.main()
    """
    for debug in (False, True):
        args = ["--debug"] if debug else []
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), *args, "build", "oci:examples/hello:1.0"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 70, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("ctr2svc: internal error: KeyError: 'surprise' (please report it;"), last
        assert ("Traceback" in proc.stderr) is debug, proc.stderr


def test_halted_stops_running_tools_and_refuses_new_ones() -> None:
    """The race an interrupted shared build hit in CI: a worker thread between two nfpm runs started the
    next one after the main thread had stopped the running ones, and the main thread then waited minutes
    for it. While halted, a running tool is stopped and a new one is not started."""
    results: dict[str, BaseException | None] = {}
    started = threading.Event()

    def worker(name: str, argv: list[str], wait: threading.Event | None) -> None:
        if wait is not None:
            wait.wait()
        try:
            run(argv, on_start=lambda _pid: started.set())
            results[name] = None
        except BaseException as exc:
            results[name] = exc

    go = threading.Event()
    running = threading.Thread(target=worker, args=("running", ["sleep", "60"], None))
    late = threading.Thread(target=worker, args=("late", ["touch", "/nonexistent-dir/x"], go))
    running.start()
    late.start()
    assert started.wait(10)
    begin = time.monotonic()
    with halted():
        running.join(15)
        go.set()
        late.join(15)
    assert time.monotonic() - begin < 12, "the running tool was not stopped"
    assert isinstance(results["running"], ToolFailed), results
    assert isinstance(results["late"], Halted), results
    # Once the block is over, tools run again.
    assert run(["true"]).returncode == 0


# The watchdog (issue 22): a tool whose progress stops is stopped, one that goes on slowly is not. The
# tools are real processes writing to a real file; progress is that file's size, as a pull's is the
# bytes of blobs in the cache.


def _writer(path: Path, chunk: int, every: float, count: int) -> list[str]:
    """A process that appends CHUNK bytes to PATH every EVERY seconds, COUNT times, then prints done."""
    code = (
        "import sys, time\n"
        "with open(sys.argv[1], 'ab', buffering=0) as f:\n"
        f"    for _ in range({count}):\n"
        f"        f.write(b'x' * {chunk}); time.sleep({every})\n"
        "print('done')\n"
    )
    return [sys.executable, "-c", code, str(path)]


def _size(path: Path) -> Callable[[], int]:
    return lambda: path.stat().st_size if path.exists() else 0


def test_watchdog_lets_a_slow_but_moving_tool_finish(tmp_path: Path) -> None:
    out = tmp_path / "out"
    start = time.monotonic()
    proc = run(_writer(out, 4096, 0.2, 15), watchdog=Watchdog(_size(out), 1.0, 1024))
    assert proc.stdout == b"done\n"
    assert time.monotonic() - start > 2.5  # longer than the watchdog's period, many times over


@pytest.mark.parametrize(("chunk", "what"), [(0, "silent"), (10, "trickle")])
def test_watchdog_stops_a_tool_that_stalls(tmp_path: Path, chunk: int, what: str) -> None:
    """Nothing at all, or 10 bytes every 0.2 s (less than the 1 KiB a period asks for)."""
    out = tmp_path / "out"
    start = time.monotonic()
    with pytest.raises(ToolTimedOut) as info:
        run(_writer(out, chunk, 0.2, 500), what="copy", watchdog=Watchdog(_size(out), 1.0, 1024))
    assert info.value.stalled and info.value.seconds == 1.0
    assert info.value.brief.endswith(" made no progress for 1s while trying to copy"), info.value.brief
    assert 1.0 <= time.monotonic() - start < 5
    assert info.value.details and "command: " in info.value.details


def test_timeout_is_a_tool_timed_out_with_the_command_in_the_details(tmp_path: Path) -> None:
    with pytest.raises(ToolTimedOut) as info:
        run(["sleep", "30"], timeout=0.5, what="wait")
    assert info.value.brief == "sleep did not finish within 0.5s while trying to wait"
    assert not info.value.stalled
    assert info.value.details == "command: sleep 30"
    # The watched variant has the same total limit.
    out = tmp_path / "out"
    with pytest.raises(ToolTimedOut) as watched:
        run(_writer(out, 4096, 0.1, 500), timeout=1, watchdog=Watchdog(_size(out), 5.0, 1))
    assert not watched.value.stalled
