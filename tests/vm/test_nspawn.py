"""--runtime nspawn on a real systemd host (the Debian 12 test VM, which has systemd-container):
systemd-nspawn runs the prepared bundle in the foreground as the unit's main process and registers the
container with machined. One module, one setup (the packages built once, the session's VM), the
scenarios in the order a service lives through them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.images import build_image, install_busybox, layered_service_image, service_image
from tests.support.registry import Registry, free_port
from tests.vm import vmhost
from tests.vm.conftest import Timings, install_network_stack, root_mounts

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

NAME = "kvn-svc"
UNIT = f"{NAME}.service"
HELPER = f"/usr/libexec/{NAME}/service"
# Not nspawn's SIGTERM: proves that nspawn passes the image's STOPSIGNAL on (--kill-signal=).
STOP_SIGNAL = "SIGINT"
# Paths only the container has (/www is the image's, /data its volume): the check runs inside.
HEALTH_CMD = "test -f /www/index.html && test ! -e /data/sick"
SHARED = "kvn-shared-svc"
# busybox httpd as the container's PID 1, with no handler for the stop signal: it ignores it.
STUBBORN = "stubborn-nspawn-svc"
STUBBORN_TIMEOUT = 5
APT = "DEBIAN_FRONTEND=noninteractive apt-get"


@dataclass(frozen=True)
class Packages:
    port: int
    debs: dict[str, str]  # kv version -> path inside the VM
    shared_port: int
    shared: list[str]  # the shared-layer service's package and its layers', paths inside the VM
    stubborn: str


@pytest.fixture(scope="module")
def packages(
    vm: vmhost.VM, registry: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory
) -> Packages:
    work = tmp_path_factory.mktemp("nspawn")
    port = free_port()
    nspawn = ("--runtime", "nspawn")
    debs = {}
    for version in ("1.0", "2.0"):
        source = service_image(
            work / "layout", version, port=port, version_text=f"kv {version}", stop_signal=STOP_SIGNAL
        )
        ref = registry.push(source, "e2e/kvn", version)
        options = ("--name", NAME, "--ready-port", str(port), "--health-cmd", HEALTH_CMD)
        built = ctr2svc("build", ref, *nspawn, *options, "--health-retries", "1", "-o", work / version)
        deb = Path(built.stdout.strip())
        vm.copy_to(deb, f"/root/{deb.name}")
        debs[version] = f"/root/{deb.name}"
    shared_port = free_port()
    source = layered_service_image(work / "shared", "1.0", port=shared_port, version_text="shared 1.0")
    ref = registry.push(source, "e2e/kvn-shared", "1.0")
    argv = ("build", ref, *nspawn, "--layers", "shared", "--name", SHARED, "--json")
    summary = json.loads(ctr2svc(*argv, "-o", work / "shared-out").stdout)
    shared = []
    for path in [Path(summary["package"]), *(Path(x["package"]) for x in summary["layers"])]:
        vm.copy_to(path, f"/root/{path.name}")
        shared.append(f"/root/{path.name}")
    stubborn = build_image(
        work / "stubborn",
        "1.0",
        lambda root: install_busybox(root, symlinks=("httpd",)),
        entrypoint=["/bin/httpd", "-f", "-p", "8091"],
    )
    ref = registry.push(stubborn, "e2e/stubborn-nspawn", "1.0")
    timeout = ("--stop-timeout", str(STUBBORN_TIMEOUT))
    built = ctr2svc("build", ref, *nspawn, "--name", STUBBORN, *timeout, "-o", work / "st")
    stubborn_deb = Path(built.stdout.strip())
    vm.copy_to(stubborn_deb, f"/root/{stubborn_deb.name}")
    return Packages(port, debs, shared_port, shared, f"/root/{stubborn_deb.name}")


def get(vm: vmhost.VM, port: int, path: str = "/", *, timeout: float = 60) -> str:
    return vm.wait_until(f"curl -fsS --max-time 2 http://127.0.0.1:{port}{path}", timeout=timeout)


def apt_install(vm: vmhost.VM, *debs: str) -> None:
    vm.ssh(f"{APT} install -y --allow-downgrades {' '.join(debs)}", timeout=600)


def show(vm: vmhost.VM, prop: str, unit: str = UNIT) -> str:
    return vm.ssh(f"systemctl show -p {prop} --value {unit}").stdout.strip()


def leader(vm: vmhost.VM, name: str = NAME) -> int:
    """The container's init, as machined knows it."""
    return int(vm.ssh(f"machinectl show {name} -p Leader --value").stdout.strip())


def journal(vm: vmhost.VM, unit: str = UNIT) -> str:
    return vm.ssh(f"journalctl -u {unit} --no-pager -o cat").stdout


def gone(vm: vmhost.VM, path: str) -> bool:
    return vm.ssh(f"test -e {path} && echo left || echo gone").stdout.strip() == "gone"


@pytest.fixture(scope="module")
def installed(vm: vmhost.VM, packages: Packages, timings: Timings) -> Iterator[Packages]:
    start = time.monotonic()
    apt_install(vm, packages.debs["1.0"])
    timings.record("nspawn: apt install → started (ready port listening)", time.monotonic() - start)
    yield packages


def test_install_answers_and_is_a_machine(vm: vmhost.VM, installed: Packages) -> None:
    """apt install → active, answering; nspawn is the main process, the container's init its child
    and machined's leader; `machinectl list` and `machinectl status` show it; the unit verifies."""
    # --ready-port: the start job (and so apt) returned once the port listened.
    assert vm.ssh(f"curl -fsS --max-time 2 http://127.0.0.1:{installed.port}/").stdout.strip() == "kv 1.0"
    assert show(vm, "Type") == "notify" and show(vm, "ActiveState") == "active"
    assert root_mounts(vm, NAME) == 1
    main = int(show(vm, "MainPID"))
    assert vm.ssh(f"cat /proc/{main}/comm").stdout.strip() == "systemd-nspawn"
    listed = vm.wait_until(f"machinectl list --no-legend | grep -w {NAME}", timeout=30)
    assert "container" in listed and "nspawn" in listed, listed
    init = leader(vm)
    assert vm.ssh(f"cat /proc/{main}/task/{main}/children").stdout.split() == [str(init)]
    shown = vm.ssh(f"machinectl show {NAME} -p Class -p Unit -p RootDirectory").stdout
    assert "Class=container" in shown and f"Unit={UNIT}" in shown, shown
    assert f"RootDirectory=/run/{NAME}/rootfs" in shown, shown
    status = vm.ssh(f"machinectl status --no-pager {NAME}", check=False).stdout
    assert "httpd -f -v" in status, status
    # In the unit's cgroup (--keep-unit), where the unit's limits apply.
    # cgroup v2 only (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1), as runc gives it.
    cgroup = vm.ssh(f"cat /proc/{init}/cgroup").stdout.strip()
    assert cgroup == f"0::/system.slice/{UNIT}/payload", cgroup
    assert get(vm, installed.port, "/cgi-bin/put?answer=42").strip() == "ok"
    assert vm.ssh(f"cat /var/lib/{NAME}/volumes/data/answer").stdout.strip() == "42"
    # The entrypoint dropped to the image's app user, as under runc.
    assert get(vm, installed.port, "/cgi-bin/whoami").strip() == "999:999"
    assert f"kv 1.0 serving on port {installed.port} as 999:999" in journal(vm)
    verify = vm.ssh(f"systemd-analyze verify {UNIT}", check=False)
    assert verify.returncode == 0 and NAME not in verify.stderr, verify.stderr


def test_health_check_runs_in_the_container(vm: vmhost.VM, installed: Packages) -> None:
    """The health check (nsenter into the init's namespaces and root) passes, and fails once the
    container's volume holds the file it looks for."""
    vm.ssh(f"systemctl start {NAME}-health.service")
    assert show(vm, "Result", f"{NAME}-health.service") == "success"
    # What `runc exec` gives: the container's root, its user (root here) and environment.
    assert vm.ssh(f"{HELPER} exec cat /www/index.html").stdout.strip() == "kv 1.0"
    assert vm.ssh(f"{HELPER} exec id -u").stdout.strip() == "0"
    assert f"PORT={installed.port}" in vm.ssh(f"{HELPER} exec env").stdout.split()
    # Read-only, as under runc (nspawn 252 alone would leave it writable: ctr2svc/service/nspawn.py).
    sysrq = vm.ssh(f"{HELPER} exec sh -c 'echo h >/proc/sysrq-trigger'", check=False)
    assert sysrq.returncode != 0 and "Read-only file system" in sysrq.stderr, sysrq.stderr
    vm.ssh(f"touch /var/lib/{NAME}/volumes/data/sick")
    try:
        sick = vm.ssh(f"{HELPER} health", check=False)
        assert sick.returncode == 1 and "unhealthy after 1 failed health checks" in sick.stderr, sick.stderr
    finally:
        vm.ssh(f"rm /var/lib/{NAME}/volumes/data/sick")
    assert vm.ssh(f"{HELPER} health", check=False).returncode == 0


def test_restart_and_a_killed_init_is_restarted(vm: vmhost.VM, installed: Packages) -> None:
    """systemctl restart: a new nspawn and init; kill -9 of the init: nspawn exits with a failure and
    systemd restarts the service."""
    before = int(show(vm, "MainPID"))
    vm.ssh(f"systemctl restart {UNIT}")
    assert int(show(vm, "MainPID")) != before
    assert get(vm, installed.port).strip() == "kv 1.0"
    main = int(show(vm, "MainPID"))
    restarts = int(show(vm, "NRestarts"))
    init = vm.wait_until(f"machinectl show {NAME} -p Leader --value", timeout=30).strip()
    vm.ssh(f"kill -9 {init}")
    vm.wait_until(
        f"test $(systemctl show -p MainPID --value {UNIT}) -ne 0 && "
        f"test $(systemctl show -p MainPID --value {UNIT}) -ne {main} && systemctl is-active {UNIT}",
        timeout=60,
    )
    assert int(show(vm, "NRestarts")) == restarts + 1
    assert get(vm, installed.port, "/cgi-bin/get?answer").strip() == "42"
    assert root_mounts(vm, NAME) == 1


def test_stop_uses_the_stop_signal(vm: vmhost.VM, installed: Packages, timings: Timings) -> None:
    """systemctl stop: nspawn passes the image's STOPSIGNAL on; all gone, machine unregistered."""
    init = leader(vm)
    count = f"journalctl -b -u {UNIT} --no-pager -o cat | grep -cFx 'stopping on {STOP_SIGNAL}' || true"
    before = int(vm.ssh(count).stdout.strip())
    start = time.monotonic()
    vm.ssh(f"systemctl stop {UNIT}")
    took = time.monotonic() - start
    timings.record("nspawn: systemctl stop", took)
    assert took < 30  # the stop timeout: a clean exit, not the SIGKILL that follows it
    assert gone(vm, f"/proc/{init}")
    assert show(vm, "Result") == "success"
    vm.wait_until(f"test $({count}) -gt {before}", timeout=20)
    assert NAME not in vm.ssh("machinectl list --no-legend").stdout
    assert root_mounts(vm, NAME) == 0
    assert gone(vm, f"/run/{NAME}") and gone(vm, f"/sys/fs/cgroup/system.slice/{UNIT}")
    vm.ssh(f"systemctl start {UNIT}")
    assert get(vm, installed.port).strip() == "kv 1.0"


def test_upgrade_keeps_data(vm: vmhost.VM, installed: Packages, timings: Timings) -> None:
    """apt install of 2.0: restarted on the new image, the volume's data kept, one root mount."""
    start = time.monotonic()
    apt_install(vm, installed.debs["2.0"])
    assert get(vm, installed.port).strip() == "kv 2.0"
    timings.record("nspawn: upgrade, apt install → new version answering", time.monotonic() - start)
    assert get(vm, installed.port, "/cgi-bin/get?answer").strip() == "42"
    assert vm.ssh(f"ls /opt/containers/{NAME}").stdout.split() == ["2.0"]
    assert root_mounts(vm, NAME) == 1
    vm.wait_until(f"machinectl list --no-legend | grep -w {NAME}", timeout=30)


def test_private_network(
    vm: vmhost.VM, installed: Packages, timings: Timings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """/etc/NAME/network says private: nspawn joins the namespace netavark wired
    (--network-namespace-path= through the config), with its own address and a published port; the
    readiness wait and machined see the container's network; back to the host's after."""
    install_network_stack(vm, tmp_path_factory.mktemp("nspawn-net"))
    published = free_port()
    config = f"/etc/{NAME}"
    vm.ssh(f"echo private > {config}/network && echo '{published}:{installed.port}' >> {config}/ports")
    try:
        start = time.monotonic()
        # --ready-port: the restart returns once the port listens in the container's namespace.
        vm.ssh(f"systemctl restart {UNIT}", timeout=300)
        timings.record("nspawn: restart on a private network (netavark)", time.monotonic() - start)
        assert get(vm, published).strip() == "kv 2.0"
        init = leader(vm)
        assert vm.ssh(f"readlink /proc/{init}/ns/net").stdout != vm.ssh("readlink /proc/1/ns/net").stdout
        shown = vm.ssh(f"machinectl status --no-pager {NAME}", check=False).stdout
        assert "Address: 10.89." in shown, shown
        # Its own UTS namespace, named after the service, as under runc.
        assert vm.ssh(f"{HELPER} exec cat /proc/sys/kernel/hostname").stdout.strip() == NAME
    finally:
        vm.ssh(f"echo host > {config}/network && sed -i '/^{published}:/d' {config}/ports")
        vm.ssh(f"systemctl restart {UNIT}", timeout=300)
    assert get(vm, installed.port).strip() == "kv 2.0"
    assert vm.ssh(f"test -e /run/netns/ctr2svc-{NAME} && echo left || echo gone").stdout.strip() == "gone"


def test_reboot_brings_the_service_back(vm: vmhost.VM, installed: Packages, timings: Timings) -> None:
    """Enabled by the package: after a reboot nspawn runs it again, registered, with its data."""
    vm.reboot()
    timings.record("nspawn: VM reboot (command → booted)", vm.reboot_seconds)
    assert get(vm, installed.port, timeout=180).strip() == "kv 2.0"
    assert get(vm, installed.port, "/cgi-bin/get?answer").strip() == "42"
    vm.wait_until(f"machinectl list --no-legend | grep -w {NAME}", timeout=30)
    # nspawn is the unit's main process again, and the registered leader is its child.
    parent = vm.ssh(f"ps -o ppid= -p {leader(vm)}").stdout.strip()
    assert parent == show(vm, "MainPID")
    assert root_mounts(vm, NAME) == 1


@pytest.fixture(scope="module")
def others(vm: vmhost.VM, packages: Packages) -> Packages:
    """The shared-layer and the stubborn services, installed with one apt run (each costs ~15 s under
    emulation); each test purges its own."""
    apt_install(vm, *packages.shared, packages.stubborn)
    return packages


def test_shared_layers(vm: vmhost.VM, others: Packages) -> None:
    """A --layers shared package runs under nspawn too (the root is the layers' overlay); purged,
    nothing of it is left."""
    unit = f"{SHARED}.service"
    try:
        assert get(vm, others.shared_port).strip() == "shared 1.0"
        assert show(vm, "Type", unit) == "notify"
        vm.wait_until(f"machinectl list --no-legend | grep -w {SHARED}", timeout=30)
        assert root_mounts(vm, SHARED) == 1
    finally:
        # The layer packages by name: apt installed them from files named on its command line, which
        # marks them manually installed, so --autoremove would leave them to the next module.
        layers = " ".join(
            n for n in (Path(d).name.split("_")[0] for d in others.shared) if n.startswith("ctr2svc-layer-")
        )
        vm.ssh(f"{APT} purge -y {SHARED} {layers}", timeout=300)
    assert root_mounts(vm, SHARED) == 0
    assert gone(vm, f"/run/{SHARED}") and gone(vm, f"/var/lib/{SHARED}")
    # Its layers are purged too: none is left for the next module's services to find.
    state = vm.ssh(f"dpkg-query -W -f='${{Status}}\\n' {layers} 2>/dev/null || true").stdout
    assert "installed" not in state.replace("not-installed", ""), state
    assert SHARED not in vm.ssh("machinectl list --no-legend").stdout


def test_an_init_that_ignores_its_stop_signal_is_killed_on_time(
    vm: vmhost.VM, others: Packages, timings: Timings
) -> None:
    """busybox httpd as PID 1 ignores SIGTERM: the stop takes the stop timeout (5 s) by systemd's
    clock, plus at most 4 s to kill it and clean up: runc's bound (test_lifecycle.py) and a second
    for nspawn's own teardown (it reaps the init and unregisters the machine before it exits), which
    took up to 1.5 s under emulation on a loaded host."""
    unit = f"{STUBBORN}.service"
    try:
        vm.wait_until("curl -s --max-time 2 -o /dev/null http://127.0.0.1:8091/", timeout=60)
        vm.ssh(f"systemctl stop {unit}", timeout=120)
        shown = vm.ssh(
            f"systemctl show -p ActiveExitTimestampMonotonic -p InactiveEnterTimestampMonotonic {unit}"
        )
        stamps = dict(line.split("=", 1) for line in shown.stdout.split())
        took = (
            int(stamps["InactiveEnterTimestampMonotonic"]) - int(stamps["ActiveExitTimestampMonotonic"])
        ) / 1e6
        timings.record(f"nspawn: systemctl stop, SIGTERM ignored, stop timeout {STUBBORN_TIMEOUT} s", took)
        assert STUBBORN_TIMEOUT <= took <= STUBBORN_TIMEOUT + 4, f"the stop took {took:.1f} s"
        assert f"{STUBBORN}: still running after {STUBBORN_TIMEOUT}s; killing it" in journal(vm, unit)
        assert root_mounts(vm, STUBBORN) == 0 and gone(vm, f"/run/{STUBBORN}")
    finally:
        vm.ssh(f"{APT} purge -y {STUBBORN}", timeout=300, check=False)


def test_remove_keeps_data_and_purge_deletes_everything(vm: vmhost.VM, installed: Packages) -> None:
    """apt remove: stopped, unregistered, data kept; apt purge: nothing of the package left."""
    init = leader(vm)
    vm.ssh(f"{APT} remove -y {NAME}", timeout=300)
    assert vm.ssh(f"systemctl is-active {UNIT}", check=False).stdout.strip() != "active"
    assert gone(vm, f"/proc/{init}") and root_mounts(vm, NAME) == 0
    assert NAME not in vm.ssh("machinectl list --no-legend").stdout
    assert vm.ssh(f"cat /var/lib/{NAME}/volumes/data/answer").stdout.strip() == "42"
    vm.ssh(f"{APT} purge -y {NAME}", timeout=300)
    for path in (f"/var/lib/{NAME}", f"/run/{NAME}", f"/usr/libexec/{NAME}", f"/opt/containers/{NAME}"):
        assert gone(vm, path), path
    assert root_mounts(vm, NAME) == 0
    assert vm.ssh(f"systemctl list-unit-files {UNIT} --no-legend", check=False).stdout.strip() == ""
