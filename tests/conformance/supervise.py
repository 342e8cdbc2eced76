"""Stand-in for what systemd does around an installed ctr2svc service on a host without systemd.

    python -m tests.conformance.supervise NAME LOG STATUS

Becomes a child subreaper (as PID 1 is for a unit), runs ``/usr/libexec/NAME/service start`` with its
stdout and stderr connected to a UNIX stream socket (what journald hands a unit with
StandardOutput=journal), copies what arrives on the socket into LOG, adopts the container's init once
runc has detached it (Type=forking) and writes its wait status into STATUS when it ends:
"exited N" or "killed SIGNAME". Writes "started" to STATUS + ".started" once the start returned
(or "start failed N").
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def main(name: str, log_path: Path, status_path: Path) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def relay() -> None:
        with log_path.open("ab", buffering=0) as log:
            while chunk := ours.recv(65536):
                log.write(chunk)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    started = status_path.with_name(status_path.name + ".started")
    proc = subprocess.run(
        [f"/usr/libexec/{name}/service", "start"],
        stdin=subprocess.DEVNULL,
        stdout=theirs.fileno(),
        stderr=theirs.fileno(),
        check=False,
    )
    theirs.close()
    if proc.returncode != 0:
        started.write_text(f"start failed {proc.returncode}\n")
        reader.join(timeout=5)
        return 1
    main_pid = int(Path(f"/run/{name}/pid").read_text().strip())
    started.write_text("started\n")
    result = None
    while True:
        try:
            pid, wstatus = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == main_pid:
            if os.WIFEXITED(wstatus):
                result = f"exited {os.WEXITSTATUS(wstatus)}"
            else:
                result = f"killed {signal.Signals(os.WTERMSIG(wstatus)).name}"
    if result is None:  # never our child: runc did not hand it over
        result = "not adopted"
    # The last lines may still be on their way through the socket (or a relay in between).
    deadline = time.monotonic() + 5
    while reader.is_alive() and time.monotonic() < deadline:
        reader.join(timeout=0.1)
    status_path.write_text(result + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
