"""Fidelity to Docker for what images built like the official ones do (issue: nginx crash-loops, Debian
links packaged as directories).

An image with nginx's log links (/var/log/app/access.log -> /dev/stdout, error.log -> /dev/stderr),
Debian's absolute directory links (var/run -> /run, var/lock -> /run/lock), a relative link, content in
/tmp and a root directory of mode 0555 is built, packaged, installed with dpkg and started as the unit
starts it, with the helper's stdout and stderr on a UNIX stream socket: what journald gives a unit, and
what opening /dev/stdout fails on (ENXIO). The conformance suite (tests/conformance) compares whole
containers with podman; this module pins the individual fixes.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.images import DEFAULT_PATH, build_image, install_busybox, put_dir, put_file
from tests.support.registry import Registry, free_port

from .helpers import deb_listing, purge, sh, wait_for_http

pytestmark = pytest.mark.integration

ENTRYPOINT = r"""#!/bin/sh
# As nginx does: the logs are files the server opens by name, linked to the container's stdout/stderr.
if echo "access line via /var/log/app/access.log" >>/var/log/app/access.log; then
    echo "stdout-open ok"
else
    echo "stdout-open failed"
fi
if echo "error line via /var/log/app/error.log" >>/var/log/app/error.log; then
    echo "stderr-open ok"
else
    echo "stderr-open failed"
fi
httpd -f -p "$PORT" -h /www &
child=$!
trap 'echo "stopping on SIGQUIT"; kill "$child"; wait "$child"; exit 0' QUIT
wait "$child"
"""


def _populate(root: Path) -> None:
    install_busybox(
        root,
        symlinks=("cat", "echo", "grep", "hostname", "httpd", "id", "kill", "ls", "stat", "touch"),
    )
    put_file(root, "usr/local/bin/entrypoint.sh", ENTRYPOINT, mode=0o755)
    put_file(root, "www/index.html", "fidelity\n")
    put_file(root, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    put_dir(root, "var/log/app")
    (root / "var/log/app/access.log").symlink_to("/dev/stdout")
    (root / "var/log/app/error.log").symlink_to("/dev/stderr")
    put_dir(root, "run/lock", mode=0o1777)
    (root / "var/run").symlink_to("/run")
    (root / "var/lock").symlink_to("/run/lock")
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/sh-link").symlink_to("../../bin/busybox")
    put_dir(root, "tmp", mode=0o1777)
    put_file(root, "tmp/from-the-image", "kept\n")
    root.chmod(0o555)


@pytest.fixture(scope="module")
def image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    port = free_port()
    source = build_image(
        tmp_path_factory.mktemp("fidelity") / "layout",
        "1.0",
        _populate,
        entrypoint=["/usr/local/bin/entrypoint.sh"],
        env={"PATH": DEFAULT_PATH, "PORT": str(port)},
        stop_signal="SIGQUIT",
        exposed_ports=[f"{port}/tcp"],
    )
    return registry.push(source, "itest/fidelity", "1.0"), port


@dataclass
class JournalSocket:
    """A UNIX stream socket standing in for journald's stdout socket, collecting what arrives."""

    server: socket.socket
    received: list[bytes] = field(default_factory=list)

    def client(self) -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.server.getsockname())
        return conn

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with conn:
            while chunk := conn.recv(65536):
                self.received.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self.received).decode(errors="replace")

    def wait_for(self, needle: str, deadline: float = 15) -> str:
        end = time.monotonic() + deadline
        while needle not in self.text:
            if time.monotonic() > end:
                raise AssertionError(f"{needle!r} never reached the log:\n{self.text}")
            time.sleep(0.1)
        return self.text


@contextlib.contextmanager
def journal_socket(tmp: Path) -> Iterator[JournalSocket]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp / "stdout.sock"))
    server.listen()
    journal = JournalSocket(server)
    threading.Thread(target=journal.serve, daemon=True).start()
    try:
        yield journal
    finally:
        server.close()


@dataclass(frozen=True)
class Service:
    name: str
    deb: Path
    journal: JournalSocket
    pid: int

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return sh("runc", "--root", f"/run/{self.name}/runc", "exec", self.name, *argv, check=False)


@contextlib.contextmanager
def installed(ctr2svc: Cli, ref: str, port: int, out: Path, name: str, *flags: str) -> Iterator[Service]:
    deb = Path(ctr2svc("build", ref, "--name", name, "-o", out, *flags).stdout.strip())
    purge(name)
    sh("dpkg", "-i", deb)
    helper = f"/usr/libexec/{name}/service"
    try:
        with journal_socket(out) as journal:
            conn = journal.client()
            sh(helper, "prepare")
            # As systemd runs ExecStart=: stdout and stderr both on the journal's stream socket.
            fd = conn.fileno()
            subprocess.run([helper, "start"], stdout=fd, stderr=fd, check=True, timeout=60)
            conn.close()
            wait_for_http(f"http://127.0.0.1:{port}/")
            yield Service(name, deb, journal, int(Path(f"/run/{name}/pid").read_text()))
    finally:
        sh(helper, "stop", check=False)
        purge(name)


@pytest.fixture(scope="module")
def service(
    image: tuple[str, int], ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with installed(ctr2svc, *image, tmp_path_factory.mktemp("svc"), "fidelity-svc", "-q") as svc:
        yield svc


def test_log_files_linked_to_stdout_and_stderr_reach_the_journal(service: Service) -> None:
    text = service.journal.wait_for("stderr-open")
    assert "stdout-open ok" in text and "stderr-open ok" in text, text
    assert "access line via /var/log/app/access.log" in text
    assert "error line via /var/log/app/error.log" in text
    # The relay is one process beside the container's, gone when the container is.
    relays = [
        proc.name
        for proc in Path("/proc").iterdir()
        if proc.name.isdigit() and _cmdline(proc.name)[:2] == ["cat", f"/run/{service.name}/stdio"]
    ]
    assert len(relays) == 1, relays


def _cmdline(pid: str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def test_without_the_pipe_the_open_fails_as_it_did(
    image: tuple[str, int], ctr2svc: Cli, tmp_path: Path
) -> None:
    """--stdio journal is the old way: proof that the socket is what made nginx crash-loop."""
    with installed(ctr2svc, *image, tmp_path, "fidelity-sock-svc", "--stdio", "journal") as svc:
        text = svc.journal.wait_for("stderr-open")
    assert "stdout-open failed" in text and "stderr-open failed" in text, text
    assert "No such device or address" in text, text


def test_debian_directory_links_stay_links(service: Service) -> None:
    listing = deb_listing(service.deb)
    rootfs = "opt/containers/fidelity-svc/1.0/rootfs"
    for path, target in (
        ("var/run", "/run"),
        ("var/lock", "/run/lock"),
        ("usr/bin/sh-link", "../../bin/busybox"),
        ("var/log/app/access.log", "/dev/stdout"),
    ):
        entry = listing[f"{rootfs}/{path}"]
        assert entry.mode == "lrwxrwxrwx" and entry.link == target, entry
    # Installed as links, and seen as links inside the container.
    assert Path(f"/{rootfs}/var/run").readlink() == Path("/run")
    seen = service.exec("stat", "-c", "%F %N", "/var/run").stdout.strip()
    assert seen == "symbolic link '/var/run' -> '/run'"


def test_root_tmp_hosts_and_hostname_as_docker_gives_them(service: Service) -> None:
    # The root directory's mode is the image's (0555), not the overlay layer's.
    assert service.exec("stat", "-c", "%a %u:%g", "/").stdout.strip() == "555 0:0"
    # No tmpfs hides the image's /tmp.
    assert service.exec("cat", "/tmp/from-the-image").stdout == "kept\n"
    # Writable copies of the host's files; the host's name.
    assert service.exec("touch", "/etc/hosts", "/etc/resolv.conf").returncode == 0
    hostname = Path("/proc/sys/kernel/hostname").read_text().strip()
    assert service.exec("cat", "/etc/hostname").stdout.strip() == hostname
    assert service.exec("hostname").stdout.strip() == hostname
    assert Path("/etc/hosts").read_text() == service.exec("cat", "/etc/hosts").stdout


def test_private_cgroup_namespace(service: Service) -> None:
    assert Path(f"/proc/{service.pid}/ns/cgroup").readlink() != Path("/proc/self/ns/cgroup").readlink()
    # The container sees its own cgroup as the root.
    assert set(service.exec("cat", "/proc/self/cgroup").stdout.split()) <= {
        line.split(":", 2)[0] + ":" + line.split(":", 2)[1] + ":/"
        for line in Path("/proc/self/cgroup").read_text().splitlines()
    }


def test_quiet_is_accepted_after_the_command(image: tuple[str, int], ctr2svc: Cli, tmp_path: Path) -> None:
    for argv in (["-q", "inspect", image[0]], ["inspect", image[0], "-q"], ["inspect", "-q", image[0]]):
        proc = ctr2svc(*argv)
        assert proc.returncode == 0 and proc.stdout, argv
    loud = ctr2svc("build", image[0], "-o", tmp_path, "-v", "-q")
    assert "debug: + " in loud.stderr  # --debug wins over --quiet, wherever each is written


def test_environment_as_docker_sets_it(service: Service) -> None:
    env = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{service.pid}/environ").read_bytes().decode().split("\0")
        if "=" in item
    )
    # Docker sets HOSTNAME (the host's, with host networking) and no TERM without a terminal.
    assert env["HOSTNAME"] == Path("/proc/sys/kernel/hostname").read_text().strip()
    assert "TERM" not in env, env
    assert env["HOME"] == "/root"
