"""--userns auto under systemd (the Debian 12 test VM): the service's root is an unprivileged id on the
host, its data is owned by its range, which an upgrade keeps, a root-owned host directory bound into it
cannot be written through, and a purge frees the range; a service on shared layers sees them idmapped
while its layer package stays as installed; an .rpm does the same as the .deb. One module-scoped setup:
the packages are built once and installed into the session's VM; the scenarios run in the order a
service lives them (each builds on the one before). tests/integration/test_userns.py covers the flat
.deb on the development host, beside podman's --userns=auto.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.images import service_image
from tests.support.registry import Registry, free_port
from tests.vm import vmhost
from tests.vm.conftest import root_mounts

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

NAME = "uns-svc"
UNIT = f"{NAME}.service"
# Built with --layers shared: its layer package stays as installed, mounted idmapped for the service.
# Installed after NAME's purge: it gets NAME's range.
SHARED = "uns-shared-svc"
# The same service as an .rpm (Debian's rpm, --nodeps: runc comes from dpkg).
RPM = "uns-rpm-svc"
APP = 999  # the test service's user, which its entrypoint drops to
BREAKOUT = "/srv/breakout"
APT = "DEBIAN_FRONTEND=noninteractive apt-get -q"


@dataclass(frozen=True)
class Packages:
    port: int
    debs: dict[str, str]  # version or other service's name -> path inside the VM
    shared_port: int
    shared: list[str]  # SHARED's package and its layer package, paths inside the VM
    rpm: str  # RPM's package, built from SHARED's image (--layers flat), path inside the VM


@pytest.fixture(scope="module")
def packages(
    vm: vmhost.VM, registry: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Packages]:
    work = tmp_path_factory.mktemp("userns")
    port = free_port()
    debs = {}
    for version in ("1.0", "2.0"):
        source = service_image(work / "layout", version, port=port, version_text=f"kv {version}")
        ref = registry.push(source, "e2e/uns", version)
        deb = Path(
            ctr2svc("build", ref, "--name", NAME, "--userns", "auto", "-o", work / version).stdout.strip()
        )
        vm.copy_to(deb, f"/root/{deb.name}")
        debs[version] = f"/root/{deb.name}"
    shared_port = free_port()
    source = service_image(work / "shared", "1.0", port=shared_port, version_text="shared 1.0")
    ref = registry.push(source, "e2e/uns-shared", "1.0")
    out = work / "shared-debs"
    ctr2svc("build", ref, "--name", SHARED, "--userns", "auto", "--layers", "shared", "-o", out)
    shared = []
    for deb in sorted(out.glob("*.deb")):
        vm.copy_to(deb, f"/root/{deb.name}")
        shared.append(f"/root/{deb.name}")
    flags = ("--format", "rpm", "--name", RPM, "--userns", "auto", "--activation", "start")
    built = ctr2svc("build", ref, *flags, "-o", work / "rpm")
    rpm = Path(built.stdout.strip())
    vm.copy_to(rpm, f"/root/{rpm.name}")
    vm.ssh(f"install -d -m 0755 -o root -g root {BREAKOUT}")
    yield Packages(port, debs, shared_port, shared, f"/root/{rpm.name}")
    # The layer packages by name: installed from files named on apt's command line, they are marked
    # manually installed, which --autoremove leaves.
    layers = " ".join(
        n for n in (Path(d).name.split("_")[0] for d in shared) if n.startswith("ctr2svc-layer-")
    )
    vm.ssh(
        f"rpm -e --nodeps {RPM}; {APT} purge -y {NAME} {SHARED} {layers}; rm -rf /var/lib/{RPM} {BREAKOUT}",
        check=False,
        timeout=600,
    )


def get(vm: vmhost.VM, port: int, path: str = "/") -> str:
    return vm.wait_until(f"curl -fsS --max-time 2 http://127.0.0.1:{port}{path}", timeout=60)


def range_start(vm: vmhost.VM, name: str = NAME) -> int:
    start, size = vm.ssh(f"cat /var/lib/{name}/userns").stdout.split()
    assert size == "65536"
    assert vm.ssh(f"cat /var/lib/ctr2svc/userns/{start}").stdout.strip() == name
    return int(start)


def main_pid(vm: vmhost.VM) -> int:
    return int(vm.ssh(f"systemctl show -p MainPID --value {UNIT}").stdout.strip())


def host_uids(vm: vmhost.VM, pid: int) -> list[int]:
    """PID's real, effective, saved and filesystem uids, as the host sees them."""
    return [int(x) for x in vm.ssh(f"sed -n 's/^Uid://p' /proc/{pid}/status").stdout.split()]


def owner(vm: vmhost.VM, path: str) -> str:
    return vm.ssh(f"stat -c %u:%g {path}").stdout.strip()


def exec_root(vm: vmhost.VM, command: str) -> subprocess.CompletedProcess[str]:
    return vm.ssh(f"runc --root /run/{NAME}/runc exec --user 0:0 {NAME} {command}", check=False)


def test_root_inside_is_an_unprivileged_id_outside(vm: vmhost.VM, packages: Packages) -> None:
    vm.ssh(f"{APT} install -y {packages.debs['1.0']}", timeout=600)
    assert vm.ssh(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    assert get(vm, packages.port, "/cgi-bin/whoami").strip() == f"{APP}:{APP}"
    start = range_start(vm)
    assert start >= 65536
    # Inside: root for an exec'd process, the app user for the service, as the image says.
    assert exec_root(vm, "id -u").stdout.strip() == "0"
    assert exec_root(vm, "cat /proc/self/uid_map").stdout.split() == ["0", str(start), "65536"]
    # Outside: the range's ids; the container still in the unit's cgroup, its root mounted once.
    pid = main_pid(vm)
    assert host_uids(vm, pid) == [start + APP] * 4
    assert vm.ssh(f"cat /proc/{pid}/cgroup").stdout.strip() == f"0::/system.slice/{UNIT}/{NAME}"
    assert root_mounts(vm, NAME) == 1
    # The data, what the service writes and its writable layer are the range's.
    assert get(vm, packages.port, "/cgi-bin/put?k=kept").strip() == "ok"
    assert owner(vm, f"/var/lib/{NAME}/volumes/data/k") == f"{start + APP}:{start + APP}"
    assert owner(vm, f"/var/lib/{NAME}/overlay/upper") == f"{start}:{start}"
    assert owner(vm, f"/opt/containers/{NAME}/1.0/rootfs/bin/busybox") == f"{start}:{start}"


def test_a_root_owned_host_directory_cannot_be_written(vm: vmhost.VM, packages: Packages) -> None:
    """The breakout: root in the container writing into a root-owned host directory bound read-write.
    Refused with the user namespace; done without it (the admin's /etc/NAME/userns says host)."""
    vm.ssh(f"echo '{BREAKOUT} /breakout rw' >/etc/{NAME}/mounts && systemctl restart {UNIT}")
    get(vm, packages.port)
    write = exec_root(vm, "sh -c 'echo from the container >/breakout/f'")
    assert write.returncode != 0 and "Permission denied" in write.stderr, write
    assert vm.ssh(f"test -e {BREAKOUT}/f", check=False).returncode == 1
    vm.ssh(f"echo host >/etc/{NAME}/userns && systemctl restart {UNIT}")
    get(vm, packages.port)
    assert exec_root(vm, "sh -c 'echo from the container >/breakout/f'").returncode == 0
    assert owner(vm, f"{BREAKOUT}/f") == "0:0"
    assert host_uids(vm, main_pid(vm)) == [APP] * 4
    vm.ssh(f"echo auto >/etc/{NAME}/userns && systemctl restart {UNIT}")
    assert get(vm, packages.port, "/cgi-bin/get?k").strip() == "kept"
    assert host_uids(vm, main_pid(vm)) == [range_start(vm) + APP] * 4


def test_an_upgrade_keeps_the_range_and_the_data(vm: vmhost.VM, packages: Packages) -> None:
    start = range_start(vm)
    vm.ssh(f"{APT} install -y {packages.debs['2.0']}", timeout=600)
    assert get(vm, packages.port).strip() == "kv 2.0"
    assert range_start(vm) == start
    assert get(vm, packages.port, "/cgi-bin/get?k").strip() == "kept"
    assert host_uids(vm, main_pid(vm)) == [start + APP] * 4
    assert owner(vm, f"/opt/containers/{NAME}/2.0/rootfs/www/index.html") == f"{start}:{start}"
    # A clean stop: the image's signal, no SIGKILL.
    vm.ssh(f"systemctl stop {UNIT}")
    result = vm.ssh(f"systemctl show -p Result --value {UNIT}").stdout.strip()
    assert result == "success", result


def test_a_purge_frees_the_range(vm: vmhost.VM, packages: Packages) -> None:
    """The purged service's claim stays on disk, naming it, but its own record is gone: the range is free,
    and the next service installed gets it (SHARED, below), not the next range up."""
    start = range_start(vm)
    vm.ssh(f"dpkg --purge {NAME}", timeout=600)
    assert vm.ssh(f"test -e /var/lib/{NAME}", check=False).returncode == 1
    assert vm.ssh(f"cat /var/lib/ctr2svc/userns/{start}").stdout.strip() == NAME
    vm.ssh(f"{APT} install -y {' '.join(packages.shared)}", timeout=600)
    assert range_start(vm, SHARED) == start


def test_shared_layers_stay_shared(vm: vmhost.VM, packages: Packages) -> None:
    """A service on shared layers: its layer package's files stay as installed (root's, usable by every
    service), mounted idmapped and read-only for this one; its writes go to its writable layer with the
    range's ids; a stop leaves no mount."""
    assert get(vm, packages.shared_port, "/cgi-bin/whoami").strip() == f"{APP}:{APP}"
    start = range_start(vm, SHARED)
    pid = int(vm.ssh(f"systemctl show -p MainPID --value {SHARED}.service").stdout.strip())
    assert host_uids(vm, pid) == [start + APP] * 4
    # ctr2svc-layer-<12 hex>_VERSION_ARCH.deb installs /opt/containers/layers/<12 hex>/rootfs.
    (layer_deb,) = (Path(deb).name for deb in packages.shared if Path(deb).name.startswith("ctr2svc-layer-"))
    layer = f"/opt/containers/layers/{layer_deb.split('_')[0].removeprefix('ctr2svc-layer-')}/rootfs"
    assert owner(vm, f"{layer}/bin/busybox") == "0:0"
    mapped = vm.ssh(f"grep ' /run/ctr2svc/idmapped/{SHARED}/' /proc/self/mountinfo").stdout
    assert " ro," in mapped and ",idmapped " in mapped, mapped
    runc = f"runc --root /run/{SHARED}/runc exec --user 0:0 {SHARED}"
    assert vm.ssh(f"{runc} sh -c 'touch /bin/new; stat -c %u /bin/busybox'").stdout.strip() == "0"
    assert owner(vm, f"/var/lib/{SHARED}/overlay/upper/bin/new") == f"{start}:{start}"
    assert vm.ssh(f"test -e {layer}/bin/new", check=False).returncode == 1
    vm.ssh(f"systemctl stop {SHARED}.service")
    assert vm.ssh(f"grep -c '{SHARED}' /proc/self/mountinfo", check=False).stdout.strip() == "0"


def test_an_rpm_runs_in_a_user_namespace_too(vm: vmhost.VM, packages: Packages) -> None:
    """The .rpm's %post allocates the range and shifts the image as the .deb's postinst does (the port
    is SHARED's image's: that service is stopped)."""
    vm.ssh(f"rpm -ivh --nodeps {packages.rpm}", timeout=600)
    assert get(vm, packages.shared_port, "/cgi-bin/whoami").strip() == f"{APP}:{APP}"
    start = range_start(vm, RPM)
    pid = int(vm.ssh(f"systemctl show -p MainPID --value {RPM}.service").stdout.strip())
    assert host_uids(vm, pid) == [start + APP] * 4
    assert owner(vm, f"/opt/containers/{RPM}/*/rootfs/bin/busybox") == f"{start}:{start}"
    vm.ssh(f"rpm -e --nodeps {RPM}", timeout=600)
    # rpm has no purge: the range stays the service's until /var/lib/NAME is deleted.
    assert range_start(vm, RPM) == start
