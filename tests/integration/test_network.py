"""--network private on this host: two images that both listen on port 80, installed side by side with
`-p HOST:80`, run by their installed helpers as the unit runs them (systemd is not PID 1 here; see
test_deb_lifecycle.py); tests/vm/test_network.py runs the same under systemd.

A second network namespace, joined to the host by a veth pair, plays another machine on the LAN.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctr2svc.service.network import BRIDGE, BRIDGE_MAC
from tests.conftest import Cli, require
from tests.support.images import web_image
from tests.support.registry import free_port

from .helpers import dpkg, leftovers, purge, sh, wait_for_http

pytestmark = pytest.mark.integration

# Unique names: the host's dpkg is shared with other tests running at the same time.
NAMES = ("ctr2svc-neta-svc", "ctr2svc-netb-svc")
SWITCHED = "ctr2svc-netc-svc"  # built for the host's network; the admin switches it
PEER = "ctr2svc-netpeer"  # the other machine's namespace
HOST_SIDE, PEER_SIDE = "c2snpeer0", "c2snpeer1"
HOST_IP, PEER_IP = "192.168.251.1", "192.168.251.2"
UNPUBLISHED = 9090  # web_image listens on it too; nothing publishes it


def helper(name: str) -> Path:
    return Path("/usr/libexec") / name / "service"


def start(name: str) -> None:
    sh(helper(name), "prepare")
    with Path(f"/tmp/{name}-journal.log").open("ab") as log:
        subprocess.run([str(helper(name)), "start"], stdout=log, stderr=log, check=True, timeout=60)


def in_container(name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("runc", "--root", f"/run/{name}/runc", "exec", name, *argv, check=check)


def in_peer(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", PEER, *argv, check=check)


def peer_get(url: str, deadline: float = 15.0) -> str:
    end = time.monotonic() + deadline
    while True:
        proc = in_peer("curl", "-sS", "--max-time", "2", url, check=False)
        if proc.returncode == 0 or time.monotonic() > end:
            return proc.stdout if proc.returncode == 0 else f"failed: {proc.stderr}"
        time.sleep(0.3)


def refused(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect((host, port))
        except OSError:
            return True
    return False


@dataclass(frozen=True)
class Installed:
    debs: dict[str, Path]
    ports: dict[str, int]


@contextlib.contextmanager
def peer_machine() -> Iterator[None]:
    sh("ip", "netns", "delete", PEER, check=False)
    sh("ip", "link", "delete", HOST_SIDE, check=False)
    sh("ip", "netns", "add", PEER)
    try:
        sh("ip", "link", "add", HOST_SIDE, "type", "veth", "peer", "name", PEER_SIDE)
        sh("ip", "link", "set", PEER_SIDE, "netns", PEER)
        sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", HOST_SIDE)
        sh("ip", "link", "set", HOST_SIDE, "up")
        in_peer("ip", "addr", "add", f"{PEER_IP}/24", "dev", PEER_SIDE)
        in_peer("ip", "link", "set", PEER_SIDE, "up")
        in_peer("ip", "link", "set", "lo", "up")
        yield
    finally:
        sh("ip", "link", "delete", HOST_SIDE, check=False)
        sh("ip", "netns", "delete", PEER, check=False)


@pytest.fixture(scope="module")
def installed(
    ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory, integration_host: None
) -> Iterator[Installed]:
    require(any(Path(d, "netavark").exists() for d in ("/usr/lib/podman", "/usr/libexec/podman")),
            "netavark is not installed (apt install netavark aardvark-dns)")  # fmt: skip
    require(Path("/usr/sbin/nft").exists(), "nftables is not installed")
    work = tmp_path_factory.mktemp("network")
    debs, ports = {}, {}
    for name, text in zip(NAMES, ("alpha", "beta"), strict=True):
        ports[name] = free_port()
        source = web_image(work / "layout", text, text)
        proc = ctr2svc(
            "build", source, "--name", name, "--version", "1.0", "--network", "private",
            "-p", f"{ports[name]}:80", "--stop-timeout", "5", "-o", work / name,
        )  # fmt: skip
        debs[name] = Path(proc.stdout.strip())
    for name in (*NAMES, SWITCHED):
        purge(name)
    with peer_machine():
        yield Installed(debs, ports)
        for name in (*NAMES, SWITCHED):
            if helper(name).exists():
                sh(helper(name), "stop", check=False)
            purge(name)


def dpkg_install(deb: Path) -> None:
    dpkg("-i", deb)


def test_package_depends_on_the_network_stack(installed: Installed) -> None:
    deb = installed.debs[NAMES[0]]
    depends = sh("dpkg-deb", "-f", deb, "Depends").stdout.strip()
    for needed in ("netavark", "aardvark-dns", "iptables", "iproute2"):
        assert needed in depends.split(", "), depends
    conffiles = sh("dpkg-deb", "-I", deb, "conffiles").stdout.split()
    assert f"/etc/{NAMES[0]}/ports" in conffiles


def test_two_services_on_one_container_port(installed: Installed) -> None:
    a, b = NAMES
    for name in NAMES:
        dpkg_install(installed.debs[name])
    start(a)
    try:
        start(b)
        try:
            # --ready-port's check looks inside the service's namespace.
            sh(helper(a), "wait-ready", "9090", "10")
            addresses = {n: Path(f"/var/lib/{n}/address").read_text().strip() for n in NAMES}
            assert len(set(addresses.values())) == 2
            assert all(a.startswith("10.89.240.") for a in addresses.values())
            for name, text in zip(NAMES, ("alpha", "beta"), strict=True):
                port = installed.ports[name]
                # From the host itself, on loopback and on its own address, and from another machine.
                assert wait_for_http(f"http://127.0.0.1:{port}/").strip() == text
                assert wait_for_http(f"http://{HOST_IP}:{port}/").strip() == text
                assert peer_get(f"http://{HOST_IP}:{port}/").strip() == text
                # The container's own port, not published: not on the host, not from outside.
                assert refused("127.0.0.1", UNPUBLISHED) and refused(HOST_IP, UNPUBLISHED)
                assert peer_get(f"http://{HOST_IP}:{UNPUBLISHED}/", deadline=0).startswith("failed")
                assert in_container(name, "hostname").stdout.strip() == name

            # A reaches B by its name, and by the short one; outside names go to the host's resolver.
            assert in_container(a, "wget", "-q", "-O", "-", f"http://{b}/").stdout.strip() == "beta"
            assert in_container(a, "wget", "-q", "-O", "-", "http://ctr2svc-netb/").stdout.strip() == "beta"
            assert in_container(b, "wget", "-q", "-O", "-", f"http://{a}:9090/").stdout.strip() == "alpha"
            resolv = in_container(a, "cat", "/etc/resolv.conf").stdout
            assert "nameserver 10.89.240.1" in resolv

            # Outbound: to a server on the other machine, through NAT (it sees the host's address).
            served = Path("/tmp/ctr2svc-netpeer-www")
            served.mkdir(exist_ok=True)
            (served / "index.html").write_text("from the other machine\n")
            peer_port = free_port()
            server = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    PEER,
                    "busybox",
                    "httpd",
                    "-f",
                    "-p",
                    str(peer_port),
                    "-h",
                    str(served),
                ]
            )
            try:
                got = ""
                for _ in range(20):
                    proc = in_container(
                        a, "wget", "-q", "-O", "-", f"http://{PEER_IP}:{peer_port}/", check=False
                    )
                    got = proc.stdout
                    if proc.returncode == 0:
                        break
                    time.sleep(0.2)
                assert got.strip() == "from the other machine"
            finally:
                server.terminate()
                server.wait()

            # A restart keeps the address and the ports.
            sh(helper(a), "stop")
            assert not Path(f"/run/netns/ctr2svc-{a}").exists()
            start(a)
            assert Path(f"/var/lib/{a}/address").read_text().strip() == addresses[a]
            assert wait_for_http(f"http://127.0.0.1:{installed.ports[a]}/").strip() == "alpha"
            # The bridge kept the MAC the helper gave it while A's veth went and came: B's ARP entry
            # for the gateway (aardvark-dns) stayed right, so B finds A by name at once.
            assert Path(f"/sys/class/net/{BRIDGE}/address").read_text().strip() == BRIDGE_MAC
            found = in_container(b, "wget", "-q", "-O", "-", f"http://{a}:9090/")
            assert found.stdout.strip() == "alpha"
        finally:
            sh(helper(b), "stop")
    finally:
        sh(helper(a), "stop")
    assert leftovers() == []


def test_crash_then_cleanup_leaves_nothing(installed: Installed) -> None:
    a = NAMES[0]
    dpkg_install(installed.debs[a])
    start(a)
    try:
        assert wait_for_http(f"http://127.0.0.1:{installed.ports[a]}/").strip() == "alpha"
        pid = int(Path(f"/run/{a}/pid").read_text())
        os.kill(pid, 9)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        # What systemd's ExecStopPost does after a crash.
        sh(helper(a), "cleanup")
        assert leftovers() == []
        # And the next start works as if nothing had happened.
        start(a)
        assert wait_for_http(f"http://127.0.0.1:{installed.ports[a]}/").strip() == "alpha"
    finally:
        sh(helper(a), "stop")
    assert leftovers() == []


def test_a_taken_port_fails_the_start_naming_it(installed: Installed) -> None:
    a, b = NAMES
    for name in NAMES:
        dpkg_install(installed.debs[name])
    port = installed.ports[a]
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("0.0.0.0", port))  # noqa: S104
        holder.listen()
        proc = sh(helper(a), "prepare", check=False)
        sh(helper(a), "cleanup")
    assert proc.returncode != 0
    assert f"cannot publish port {port}/tcp" in proc.stderr, proc.stderr
    assert f"(pid {os.getpid()})" in proc.stderr, proc.stderr
    assert leftovers() == []

    # Another service that publishes it: named too. The admin's ports file says what is published.
    ports_file = Path(f"/etc/{b}/ports")
    original = ports_file.read_text()
    start(a)
    try:
        ports_file.write_text(original + f"{port}:80\n")
        proc = sh(helper(b), "prepare", check=False)
        sh(helper(b), "cleanup")
        assert proc.returncode != 0
        assert f"cannot publish port {port}/tcp: the service {a} publishes it" in proc.stderr, proc.stderr
        ports_file.write_text("not a port\n")
        proc = sh(helper(b), "prepare", check=False)
        sh(helper(b), "cleanup")
        assert proc.returncode != 0
        assert f"{b}: {ports_file} line 1: not [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]" in proc.stderr
        # An admin's new port is applied at the next start.
        other = free_port()
        ports_file.write_text(f"{other}:9090\n")
        start(b)
        try:
            assert wait_for_http(f"http://127.0.0.1:{other}/").strip() == "beta"
            assert refused("127.0.0.1", installed.ports[b])
        finally:
            sh(helper(b), "stop")
    finally:
        ports_file.write_text(original)
        sh(helper(a), "stop")
    assert leftovers() == []


def test_purge_releases_the_address(installed: Installed) -> None:
    a, b = NAMES
    for name in NAMES:
        dpkg_install(installed.debs[name])
    start(a)
    sh(helper(a), "stop")
    address = Path(f"/var/lib/{a}/address").read_text().strip()
    # Remove keeps it, for a reinstall.
    dpkg("--remove", a)
    dpkg_install(installed.debs[a])
    start(a)
    sh(helper(a), "stop")
    assert Path(f"/var/lib/{a}/address").read_text().strip() == address
    dpkg("--purge", a)
    # Purged: b may have it now (the lowest free address), and never has a's while a holds it.
    Path(f"/var/lib/{b}/address").unlink(missing_ok=True)
    start(b)
    sh(helper(b), "stop")
    assert Path(f"/var/lib/{b}/address").read_text().strip() == address
    assert leftovers() == []


def test_admin_switches_the_network(ctr2svc: Cli, installed: Installed, tmp_path: Path) -> None:
    """/etc/NAME/network, the admin's like /etc/NAME/ports: a package built for the host's network
    runs on a private one with published ports, and back, each at the next start, leaving nothing."""
    source = web_image(tmp_path / "layout", "gamma", "gamma")
    built = ctr2svc("build", source, "--name", SWITCHED, "--version", "1.0", "-o", tmp_path / "o")
    deb = Path(built.stdout.strip())
    conffiles = sh("dpkg-deb", "-I", deb, "conffiles").stdout.split()
    assert {f"/etc/{SWITCHED}/network", f"/etc/{SWITCHED}/ports"} <= set(conffiles)
    # The network stack is the private network's to need: the host package does not pull it in.
    assert "netavark" not in sh("dpkg-deb", "-f", deb, "Depends").stdout
    dpkg_install(deb)
    config = Path("/etc") / SWITCHED
    assert [w for w in (config / "network").read_text().split("\n") if w and w[0] != "#"] == ["host"]
    published, own, second = free_port(), free_port(), free_port()
    env = (config / "env").read_text()
    (config / "env").write_text(env + f"HTTP_PORT={own}\nSECOND_PORT={second}\n")

    # Host package, private network: its own namespace, its name, the published port only.
    (config / "network").write_text("# the admin's\nprivate\n")
    (config / "ports").write_text(f"{published}:{own}\n")
    start(SWITCHED)
    try:
        assert Path(f"/run/netns/ctr2svc-{SWITCHED}").exists()
        assert peer_get(f"http://{HOST_IP}:{published}/").strip() == "gamma"
        assert refused("127.0.0.1", own) and refused("127.0.0.1", second)
        assert in_container(SWITCHED, "hostname").stdout.strip() == SWITCHED
        assert Path(f"/var/lib/{SWITCHED}/address").read_text().startswith("10.89.240.")
    finally:
        sh(helper(SWITCHED), "stop")
    assert leftovers() == []

    # Back to the host's network: its ports are the host's; the ports file is said to be unused.
    (config / "network").write_text("host\n")
    prepared = sh(helper(SWITCHED), "prepare")
    assert f"the ports in {config}/ports are not published" in prepared.stderr, prepared.stderr
    start(SWITCHED)
    try:
        assert not Path(f"/run/netns/ctr2svc-{SWITCHED}").exists()
        assert wait_for_http(f"http://{HOST_IP}:{own}/").strip() == "gamma"
        assert refused("127.0.0.1", published)
        assert in_container(SWITCHED, "hostname").stdout.strip() == socket.gethostname()
    finally:
        sh(helper(SWITCHED), "stop")
    assert leftovers() == []

    # A word the helper does not know: the start fails, naming the file and the two it takes.
    (config / "network").write_text("bridge\n")
    proc = sh(helper(SWITCHED), "prepare", check=False)
    sh(helper(SWITCHED), "cleanup")
    assert proc.returncode != 0
    assert f"{SWITCHED}: {config}/network says 'bridge': write host or private there" in proc.stderr
    assert leftovers() == []
