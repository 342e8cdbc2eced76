"""A directory served over HTTP on 127.0.0.1, as a web server serves a package repository to its hosts.

The server runs in a process of its own: package clients (dnf's librepo, apk) open parallel and
kept-alive connections and drop them mid-transfer, and a server thread inside the test process
then leaves sockets for the garbage collector, which pytest (warnings are errors) reports as a
failure of whichever test happens to be running.
"""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve DIRECTORY until the block ends; yields its base URL (http://127.0.0.1:PORT)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.support.webserver", str(directory)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError(f"the test web server did not start (exit {server.wait(10)})")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()


def _main(directory: str) -> None:
    handler = functools.partial(_Quiet, directory=directory)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


if __name__ == "__main__":
    _main(sys.argv[1])
