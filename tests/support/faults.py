"""Fault injection for the integration tests: a slow link to a registry, servers that accept and then
hang or trickle, a registry that stalls in the middle of a layer, a registry behind a self-signed
certificate, a corrupted registry blob, small or read-only filesystems, a PATH without some tool, and
stand-ins for old tool versions."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from .images import ToolError, run
from .registry import REGISTRY_BIN, START_TIMEOUT, Registry, free_port

# --------------------------------------------------------------------------------------------------
# A throttling TCP proxy


class SlowProxy:
    """Forwards 127.0.0.1:PORT to a local TCP port, sending the answers at `rate` bytes per second
    (None: as fast as they come). `sent` counts the bytes sent back to clients, so a test can tell
    that a download is under way."""

    CHUNK = 16 * 1024

    def __init__(self, target_port: int, rate: float | None) -> None:
        self.target_port = target_port
        self.rate = rate
        self.sent = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            self._track(client)
            self._track(upstream)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while True:
                data = src.recv(self.CHUNK)
                if not data:
                    break
                dst.sendall(data)
                if downstream:
                    with self._lock:
                        self.sent += len(data)
                    rate = self.rate
                    if rate:
                        time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
            self._sockets.clear()

    def __enter__(self) -> SlowProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# Servers that hang: they accept the connection, then answer nothing or next to nothing


class HangingServer:
    """A TCP server on 127.0.0.1 that reads each request and then, by MODE: `silent` sends nothing,
    `trickle` sends an HTTP answer one byte every `every` seconds, `api-only` answers the registry API
    check (GET /v2/) as a registry does and nothing else. Connections stay open until close()."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    API = (
        b"HTTP/1.1 200 OK\r\nDocker-Distribution-Api-Version: registry/2.0\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )

    def __init__(self, mode: str, every: float = 2.0) -> None:
        assert mode in ("silent", "trickle", "api-only"), mode
        self.mode = mode
        self.every = every
        self.accepted = 0
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            request = client.recv(65536)
            if self.mode == "api-only" and not request.startswith((b"GET ", b"HEAD ")):
                # A TLS handshake: refused at once, so the client goes on to plain HTTP.
                client.close()
                return
            while self.mode == "api-only" and request.startswith(b"GET /v2/ "):
                client.sendall(self.API)
                request = client.recv(65536)
            if self.mode == "trickle":
                for byte in self.ANSWER:
                    if self._closed.wait(self.every):
                        return
                    client.sendall(bytes([byte]))
            self._closed.wait()
        except OSError:
            pass

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> HangingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StallingProxy:
    """Forwards 127.0.0.1:PORT to a registry, but answers a request for a blob (/blobs/ in its path)
    with at most KEEP bytes, then nothing (or, with TRICKLE, one more byte every TRICKLE seconds)
    while the connection stays open: a registry that stops sending in the middle of a layer.
    Manifests and the API check pass at full speed."""

    def __init__(self, target_port: int, keep: int = 512, trickle: float | None = None) -> None:
        self.target_port = target_port
        self.keep = keep
        self.trickle = trickle
        self.blob_requests = 0
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            self._sockets += [client, upstream]
            state = {"blob": False}
            threading.Thread(target=self._requests, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, client, state), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := client.recv(65536):
                first = data.split(b"\r\n", 1)[0]
                if first.startswith((b"GET ", b"HEAD ")):
                    state["blob"] = b"/blobs/" in first and first.startswith(b"GET ")
                    self.blob_requests += state["blob"]
                upstream.sendall(data)
        except OSError:
            pass

    def _answers(self, upstream: socket.socket, client: socket.socket, state: dict[str, bool]) -> None:
        sent = 0
        try:
            while data := upstream.recv(65536):
                if not state["blob"]:
                    client.sendall(data)
                    continue
                for byte in data:
                    if sent >= self.keep:
                        if self.trickle is None:
                            self._closed.wait()
                            return
                        if self._closed.wait(self.trickle):
                            return
                    client.sendall(bytes([byte]))
                    sent += 1
        except OSError:
            pass

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> StallingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# A registry that speaks HTTPS with a self-signed certificate


def self_signed_cert(workdir: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """(certificate, key) for HOST, signed by nobody a client trusts."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", key, "-out", cert, "-subj", f"/CN={host}", "-addext", f"subjectAltName=IP:{host}",
        ]
    )  # fmt: skip
    return cert, key


def start_tls_registry(workdir: Path) -> Registry:
    """docker-registry on 127.0.0.1:<free port> serving HTTPS with a self-signed certificate."""
    workdir.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed_cert(workdir)
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "storage")}},
        "http": {
            "addr": f"127.0.0.1:{port}",
            "secret": "ctr2svc-test-only",
            "tls": {"certificate": str(cert), "key": str(key)},
        },
    }
    path = workdir / "config.yml"
    path.write_text(json.dumps(config, indent=2) + "\n")
    log = workdir / "registry.log"
    reg = Registry(f"127.0.0.1:{port}")
    reg._log = log
    with log.open("ab") as log_fh:
        reg._proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(path)], stdin=subprocess.DEVNULL, stdout=log_fh, stderr=log_fh
        )
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and reg._proc.poll() is None:
        try:
            with urllib.request.urlopen(f"https://{reg.host}/v2/", timeout=2, context=context):
                return reg
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    tail = reg.log_tail()
    reg.stop()
    raise ToolError(f"TLS registry on {reg.host} did not start; log {log}:\n{tail}")


# --------------------------------------------------------------------------------------------------
# Registry storage


def registry_blob(storage: Path, digest: str) -> Path:
    """Where docker-registry's filesystem driver keeps a blob's bytes."""
    hexdigest = digest.split(":", 1)[1]
    return storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


@contextlib.contextmanager
def corrupted(blob: Path) -> Iterator[None]:
    """Flip bytes in the middle of BLOB (same size, so only its digest gives it away); restore it after."""
    original = blob.read_bytes()
    middle = len(original) // 2
    damaged = bytearray(original)
    for i in range(middle, min(middle + 64, len(damaged))):
        damaged[i] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    try:
        yield
    finally:
        blob.write_bytes(original)


# --------------------------------------------------------------------------------------------------
# Small and read-only filesystems (needs root)


@contextlib.contextmanager
def tmpfs(path: Path, *, size: str, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of SIZE (e.g. 64k) mounted on PATH for the duration; always unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False, capture_output=True).returncode != 0:
            # Still busy (a process we could not stop): detach it so nothing stays mounted.
            subprocess.run(["umount", "-l", str(path)], check=False)


def resize_tmpfs(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def all_entries(path: Path) -> list[str]:
    """Every name under PATH, hidden ones included, relative to it."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --------------------------------------------------------------------------------------------------
# Tools: a PATH holding only some of them, and old versions of them


def tool_dir(path: Path, tools: Mapping[str, str | Path]) -> Path:
    """A directory of symlinks NAME -> real program, to be the whole PATH of a run."""
    path.mkdir(parents=True, exist_ok=True)
    for name, target in tools.items():
        (path / name).symlink_to(target)
    return path


def fake_old_tool(path: Path, name: str, version_output: str, real: str | Path) -> Path:
    """A NAME script on PATH that prints VERSION_OUTPUT when asked its version (`--version` or
    `version`) and otherwise runs the REAL tool: it stands in for an old release, which cannot be
    installed here."""
    path.mkdir(parents=True, exist_ok=True)
    script = path / name
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "    --version|version)\n"
        # printf is a shell builtin: the script works with a PATH that holds no coreutils.
        f"        printf '%s\\n' {shlex.quote(version_output)}\n"
        "        exit 0 ;;\n"
        "esac\n"
        f'exec {real} "$@"\n'
    )
    script.chmod(0o755)
    return script


def real_python() -> Path:
    """The interpreter binary itself (not a venv's symlink), so a copy of PATH can hold it alone."""
    import sys

    return Path(os.path.realpath(sys.executable))


def which(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ToolError(f"{name} is not installed")
    return found


# --------------------------------------------------------------------------------------------------
# Processes


def session_processes(sid: int) -> list[str]:
    """'PID COMMAND' of every process still in session SID (started with start_new_session=True)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...: comm may hold spaces, so split after its ')'.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid:
            found.append(f"{entry.name} {comm}")
    return found


def kill_session(sid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signal.SIGKILL)


class Job:
    """`python -m ctr2svc ARGS` in its own session (as a shell job), its stderr collected line by line."""

    def __init__(self, args: list[str | Path], env: Mapping[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.stdout = ""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ctr2svc", *map(str, args)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=Path(__file__).resolve().parents[2],
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"never got to {what}; exit {self.proc.poll()}:\n" + "\n".join(self.lines))

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def finish(self, timeout: float = 30) -> int:
        """The exit status (TimeoutExpired if it does not end in time); what it printed is in stdout."""
        status = self.proc.wait(timeout=timeout)
        if self.proc.stdout is not None:
            self.stdout = self.proc.stdout.read()
        self._reader.join(timeout=5)
        return status

    def close(self) -> None:
        """Kill whatever is left of the job (once the test has looked) and release its pipes."""
        kill_session(self.proc.pid)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)
