"""--network private under systemd (the Debian 12 test VM), issue 15's scenario: two images that both
listen on port 80, installed side by side with `-p 8081:80` and `-p 8082:80`; both answer from the VM
itself and from a network namespace in it that plays another machine (a veth into the VM); an
unpublished port is not reachable; A reaches B by name; outbound works; restart, upgrade and reboot keep
the addresses and ports; a port conflict fails the start clearly; the admin switches a service to the
host's network and back; after kill -9, stop, remove and purge nothing is left (interfaces, nft ruleset,
namespaces).

The VM has no route to Debian's mirror: netavark, aardvark-dns and iptables (with the libraries the
minimal image lacks) are downloaded on this host and installed with dpkg first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.images import web_image
from tests.vm import vmhost
from tests.vm.conftest import install_network_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

A, B = "neta-svc", "netb-svc"
PORTS = {A: 8081, B: 8082}
TEXT = {A: "alpha", B: "beta"}
PEER, PEER_IP, HOST_IP = "peer", "192.168.77.2", "192.168.77.1"


@dataclass(frozen=True)
class Debs:
    v1: dict[str, str]  # service -> path in the VM
    upgrade: str  # A's version 2.0


@pytest.fixture(scope="module")
def debs(vm: vmhost.VM, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory) -> Debs:
    work = tmp_path_factory.mktemp("network")
    install_network_stack(vm, work)

    def build(name: str, version: str, text: str) -> str:
        source = web_image(work / "layout", f"{name}-{version}", text)
        out = work / f"{name}-{version}"
        deb = Path(
            ctr2svc(
                "build", source, "--name", name, "--version", version, "--network", "private",
                "-p", f"{PORTS[name]}:80", "--stop-timeout", "10", "-o", out,
            ).stdout.strip()
        )  # fmt: skip
        vm.copy_to(deb, f"/root/{deb.name}")
        return f"/root/{deb.name}"

    v1 = {name: build(name, "1.0", TEXT[name]) for name in (A, B)}
    return Debs(v1, build(A, "2.0", "alpha 2"))


def apt_install(vm: vmhost.VM, *debs: str) -> None:
    vm.ssh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y {' '.join(debs)}", timeout=600)


def peer_machine(vm: vmhost.VM) -> None:
    """A namespace joined to the VM by a veth pair: another machine on the LAN (again after a reboot).
    The VM's networkd manages every Ethernet link (Type=ether), veths included, and would flush the
    peer link's address: it is told to leave it alone first."""
    rule = "/run/systemd/network/00-peer.network"
    vm.ssh(
        f"test -e {rule} || {{ mkdir -p /run/systemd/network && "
        f"printf '[Match]\\nName=peer0\\n\\n[Link]\\nUnmanaged=yes\\n' >{rule} && networkctl reload; }}"
    )
    vm.ssh(
        f"ip netns list | grep -qw {PEER} || {{ ip netns add {PEER} && "
        f"ip link add peer0 type veth peer name peer1 && ip link set peer1 netns {PEER} && "
        f"ip addr add {HOST_IP}/24 dev peer0 && ip link set peer0 up && "
        f"ip netns exec {PEER} ip addr add {PEER_IP}/24 dev peer1 && "
        f"ip netns exec {PEER} ip link set peer1 up && ip netns exec {PEER} ip link set lo up; }}"
    )


def get(vm: vmhost.VM, url: str, *, where: str = "", timeout: float = 60) -> str:
    return vm.wait_until(f"{where} curl -fsS --max-time 2 {url}", timeout=timeout).strip()


def in_container(vm: vmhost.VM, name: str, command: str) -> str:
    return vm.ssh(f"runc --root /run/{name}/runc exec {name} {command}").stdout.strip()


def address(vm: vmhost.VM, name: str) -> str:
    return vm.ssh(f"cat /var/lib/{name}/address").stdout.strip()


def answers(vm: vmhost.VM) -> None:
    """Both services answer on their published ports: on the VM's loopback and its address, and from
    the other machine."""
    peer_machine(vm)
    for name in (A, B):
        assert get(vm, f"http://127.0.0.1:{PORTS[name]}/").startswith(TEXT[name])
        assert get(vm, f"http://{HOST_IP}:{PORTS[name]}/").startswith(TEXT[name])
        assert get(vm, f"http://{HOST_IP}:{PORTS[name]}/", where=f"ip netns exec {PEER}").startswith(
            TEXT[name]
        )


def leftovers(vm: vmhost.VM) -> str:
    """Interfaces, namespaces, rules and processes of the private network (empty: none). The VM has no
    nft(8): iptables-save lists what netavark put in nftables through iptables-nft."""
    return vm.ssh(
        "{ ip -o link | grep -E 'ctr2svc0|veth'; ip netns list | grep ctr2svc; "
        "iptables-save | grep -E 'NETAVARK|10\\.89\\.240'; pgrep -a aardvark-dns; } || true"
    ).stdout.strip()


def test_two_services_on_port_80(vm: vmhost.VM, debs: Debs) -> None:
    apt_install(vm, *debs.v1.values())
    for name in (A, B):
        assert vm.ssh(f"systemctl is-active {name}").stdout.strip() == "active"
    answers(vm)
    assert address(vm, A) != address(vm, B)
    # Not published: the container's port 9090 is not on the host, nor 80 itself.
    for port in (9090, 80):
        refused = vm.ssh(f"ip netns exec {PEER} curl -sS --max-time 2 http://{HOST_IP}:{port}/", check=False)
        assert refused.returncode != 0
    # A reaches B by name (and by the short one); outbound reaches the other machine.
    assert in_container(vm, A, f"wget -q -O - http://{B}/") == "beta"
    assert in_container(vm, B, "wget -q -O - http://neta:9090/") == "alpha"
    vm.ssh(f"mkdir -p /root/www && echo outside > /root/www/index.html && "
           f"ip netns exec {PEER} busybox httpd -p 8000 -h /root/www")  # fmt: skip
    try:
        assert in_container(vm, A, f"wget -q -O - http://{PEER_IP}:8000/") == "outside"
    finally:
        vm.ssh("pkill -f 'busybox [h]ttpd -p 8000' || true")


def test_restart_upgrade_and_reboot_keep_addresses_and_ports(vm: vmhost.VM, debs: Debs) -> None:
    before = {name: address(vm, name) for name in (A, B)}
    vm.ssh(f"systemctl restart {A}")
    apt_install(vm, debs.upgrade)
    assert get(vm, f"http://127.0.0.1:{PORTS[A]}/") == "alpha 2"
    vm.reboot()
    for name in (A, B):
        vm.wait_until(f"systemctl is-active {name}", timeout=60)
    assert {name: address(vm, name) for name in (A, B)} == before
    answers(vm)
    assert in_container(vm, B, f"wget -q -O - http://{A}/") == "alpha 2"


def test_kill_9_restarts_cleanly(vm: vmhost.VM, debs: Debs) -> None:
    pid = vm.ssh(f"systemctl show -p MainPID --value {A}").stdout.strip()
    vm.ssh(f"kill -9 {pid}")
    vm.wait_until(
        f"test $(systemctl show -p MainPID --value {A}) -ne {pid} && systemctl is-active {A}", timeout=60
    )
    assert get(vm, f"http://127.0.0.1:{PORTS[A]}/") == "alpha 2"
    # The crashed run's interface and namespace went with its cleanup: one veth and namespace each.
    assert vm.ssh("ip -o link | grep -c veth").stdout.strip() == "2"
    assert vm.ssh("ip netns list | grep -c ctr2svc-").stdout.strip() == "2"


def test_a_taken_port_fails_the_start_clearly(vm: vmhost.VM, debs: Debs) -> None:
    vm.ssh(f"cp /etc/{B}/ports /root/ports.saved && echo 8083:80 >> /etc/{B}/ports")
    vm.ssh("mkdir -p /root/empty && busybox httpd -p 8083 -h /root/empty")
    try:
        failed = vm.ssh(f"systemctl restart {B}", check=False)
        assert failed.returncode != 0
        status = vm.ssh(f"journalctl -u {B} --no-pager -o cat -n 30").stdout
        assert "cannot publish port 8083/tcp: " in status and " listens on it on this host" in status, status
        # The failed start left nothing of B's network behind.
        assert vm.ssh(f"ip netns list | grep -c ctr2svc-{B}", check=False).stdout.strip() == "0"
    finally:
        vm.ssh("pkill -f 'busybox [h]ttpd -p 8083' || true")
        vm.ssh(f"cp /root/ports.saved /etc/{B}/ports && systemctl reset-failed {B} && systemctl restart {B}")
    answers(vm)


def test_the_admin_switches_the_network(vm: vmhost.VM, debs: Debs) -> None:
    """/etc/NAME/network under systemd: B onto the host's network (its ports are the VM's own, none
    published), then back onto the bridge, each with a `systemctl restart`."""
    vm.ssh(f"cp /etc/{B}/env /root/env.saved && printf 'HTTP_PORT=8090\\nSECOND_PORT=8091\\n' >>/etc/{B}/env")
    try:
        vm.ssh(f"echo host >/etc/{B}/network && systemctl restart {B}")
        assert get(vm, f"http://{HOST_IP}:8090/", where=f"ip netns exec {PEER}") == "beta"
        assert vm.ssh(f"ip netns list | grep -c ctr2svc-{B}", check=False).stdout.strip() == "0"
        assert in_container(vm, B, "hostname") == vm.ssh("hostname").stdout.strip()
        refused = vm.ssh(f"curl -sS --max-time 2 http://127.0.0.1:{PORTS[B]}/", check=False)
        assert refused.returncode != 0
        journal = vm.ssh(f"journalctl -u {B} --no-pager -o cat -n 20").stdout
        assert f"the ports in /etc/{B}/ports are not published" in journal, journal
    finally:
        vm.ssh(f"cp /root/env.saved /etc/{B}/env && echo private >/etc/{B}/network && systemctl restart {B}")
    answers(vm)
    assert in_container(vm, B, "hostname") == B


def test_stop_remove_purge_leave_nothing(vm: vmhost.VM, debs: Debs) -> None:
    # aardvark-dns runs in a scope of its own (netavark starts it with systemd-run), not in the cgroup
    # of the service that happened to start first: stopping that one leaves the others their names.
    vm.ssh(f"systemctl stop {A}")
    assert "Address: " in in_container(vm, B, f"nslookup {B}")
    assert get(vm, f"http://127.0.0.1:{PORTS[B]}/") == "beta"
    vm.ssh(f"systemctl stop {B}")
    assert leftovers(vm) == ""
    vm.ssh(f"systemctl start {A} {B}")
    answers(vm)
    held = address(vm, A)
    vm.ssh(f"DEBIAN_FRONTEND=noninteractive apt-get remove -y {A} {B}", timeout=300)
    assert leftovers(vm) == ""
    vm.ssh(f"DEBIAN_FRONTEND=noninteractive apt-get purge -y {A} {B}", timeout=300)
    assert leftovers(vm) == ""
    # Purged: the address is free again (its record named a service that no longer has it).
    assert vm.ssh(f"test -e /var/lib/{A}", check=False).returncode != 0
    assert vm.ssh(f"cat /var/lib/ctr2svc/addresses/{held}").stdout.strip() == A
    vm.ssh(f"ip netns delete {PEER}; ip link delete peer0 || true")
