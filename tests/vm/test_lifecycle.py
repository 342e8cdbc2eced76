"""The packages ctr2svc builds, on a real host with systemd as PID 1 (the Debian 12 test VM).

Images come from a local registry, packages from `ctr2svc build`; the VM installs them with apt and
drives them with systemctl. One scenario a test, in the order a service lives through them (issue 3's
numbering in brackets). Timings go to the end-of-run summary (see conftest.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.images import build_image, install_busybox, service_image
from tests.support.registry import Registry, free_port
from tests.vm import vmhost
from tests.vm.conftest import Timings, root_mounts

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

NAME = "kv-svc"
UNIT = f"{NAME}.service"
# Not the image's default SIGTERM: proves the unit sends the image's STOPSIGNAL and nothing else.
STOP_SIGNAL = "SIGINT"
HELLO = "hello-svc"
HELLO_PORT = 8080  # examples/hello's ENV PORT
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello"


# busybox httpd as the container's PID 1, with no handler for the stop signal: it ignores it.
STUBBORN = "stubborn-svc"
STUBBORN_TIMEOUT = 5


@dataclass(frozen=True)
class Packages:
    port: int
    debs: dict[str, str]  # kv version -> path inside the VM
    hello: str  # the example image's package, path inside the VM
    stubborn: str  # an image that ignores SIGTERM, its package's path inside the VM


@pytest.fixture(scope="module")
def packages(
    vm: vmhost.VM, registry: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory
) -> Packages:
    work = tmp_path_factory.mktemp("lifecycle")
    port = free_port()
    debs = {}
    for version in ("1.0", "2.0"):
        source = service_image(
            work / "layout", version, port=port, version_text=f"kv {version}", stop_signal=STOP_SIGNAL
        )
        ref = registry.push(source, "e2e/kv", version)
        deb = Path(ctr2svc("build", ref, "-o", work / version).stdout.strip())
        vm.copy_to(deb, f"/root/{deb.name}")
        debs[version] = f"/root/{deb.name}"
    ref = registry.push(f"oci:{EXAMPLE}:1.0", "e2e/hello", "1.0")
    deb = Path(ctr2svc("build", ref, "-o", work / "hello").stdout.strip())
    vm.copy_to(deb, f"/root/{deb.name}")
    stubborn = build_image(
        work / "stubborn",
        "1.0",
        lambda root: install_busybox(root, symlinks=("httpd",)),
        entrypoint=["/bin/httpd", "-f", "-p", "8090"],
    )
    ref = registry.push(stubborn, "e2e/stubborn", "1.0")
    built = ctr2svc(
        "build", ref, "--name", STUBBORN, "--stop-timeout", str(STUBBORN_TIMEOUT), "-o", work / "st"
    )
    stubborn_deb = Path(built.stdout.strip())
    vm.copy_to(stubborn_deb, f"/root/{stubborn_deb.name}")
    return Packages(port, debs, f"/root/{deb.name}", f"/root/{stubborn_deb.name}")


def get(vm: vmhost.VM, port: int, path: str = "/", *, timeout: float = 60) -> str:
    return vm.wait_until(f"curl -fsS --max-time 2 http://127.0.0.1:{port}{path}", timeout=timeout)


def apt_install(vm: vmhost.VM, deb: str) -> None:
    vm.ssh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades {deb}", timeout=600)


def main_pid(vm: vmhost.VM, unit: str = UNIT) -> int:
    return int(vm.ssh(f"systemctl show -p MainPID --value {unit}").stdout.strip())


def journal(vm: vmhost.VM, unit: str = UNIT) -> str:
    return vm.ssh(f"journalctl -u {unit} --no-pager -o cat").stdout


@pytest.fixture(scope="module")
def installed(vm: vmhost.VM, packages: Packages) -> Iterator[Packages]:
    apt_install(vm, packages.debs["1.0"])
    yield packages


def test_install_enables_starts_answers_and_logs(vm: vmhost.VM, installed: Packages) -> None:
    """[1] apt install → enabled, active, answering; its output is in the journal; unit verifies."""
    assert vm.ssh(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled"
    assert get(vm, installed.port).strip() == "kv 1.0"
    assert vm.ssh(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    assert root_mounts(vm, NAME) == 1
    assert get(vm, installed.port, "/cgi-bin/put?answer=42").strip() == "ok"
    assert get(vm, installed.port, "/cgi-bin/get?answer").strip() == "42"
    # The entrypoint ran as root, chowned the data dir, and the server runs as the image's app user.
    assert vm.ssh(f"cat /var/lib/{NAME}/volumes/data/answer").stdout.strip() == "42"
    assert vm.ssh(f"stat -c %u /var/lib/{NAME}/volumes/data/answer").stdout.strip() == "999"
    assert get(vm, installed.port, "/cgi-bin/whoami").strip() == "999:999"
    # The container's stdout and stderr are in the journal under the service's name.
    assert f"kv 1.0 serving on port {installed.port} as 999:999" in journal(vm)
    vm.wait_until(f"journalctl -u {UNIT} --no-pager -o cat | grep -F 'response:200'", timeout=30)
    verify = vm.ssh(f"systemd-analyze verify {UNIT}", check=False)
    assert verify.returncode == 0 and NAME not in verify.stderr, verify.stderr


def test_container_runs_inside_the_units_cgroup(vm: vmhost.VM, installed: Packages) -> None:
    pid = main_pid(vm)
    cgroup = vm.ssh(f"cat /proc/{pid}/cgroup").stdout.strip()
    assert cgroup == f"0::/system.slice/{UNIT}/{NAME}", cgroup
    status = vm.ssh(f"systemctl status --no-pager {UNIT}", check=False).stdout
    assert "httpd -f -v" in status and "entrypoint.sh serve" in status, status


def test_the_service_is_a_machine(vm: vmhost.VM, installed: Packages) -> None:
    """machinectl sees the container as podman's and nspawn's are seen: listed, its status the unit's
    tree with the container's init as leader; gone from the list once the service stops."""
    pid = main_pid(vm)
    listed = vm.wait_until(f"machinectl list --no-legend | grep -w {NAME}", timeout=30)
    assert "container" in listed and "ctr2svc" in listed, listed
    shown = vm.ssh(f"machinectl show {NAME} -p Leader -p Class -p Unit -p RootDirectory").stdout
    assert f"Leader={pid}" in shown and "Class=container" in shown and f"Unit={UNIT}" in shown, shown
    assert f"RootDirectory=/run/{NAME}/rootfs" in shown, shown
    status = vm.ssh(f"machinectl status --no-pager {NAME}", check=False).stdout
    assert "httpd -f -v" in status, status
    vm.ssh(f"systemctl stop {UNIT}")
    try:
        assert NAME not in vm.ssh("machinectl list --no-legend").stdout
    finally:
        vm.ssh(f"systemctl start {UNIT}")
        get(vm, installed.port)
    vm.wait_until(f"machinectl list --no-legend | grep -w {NAME}", timeout=30)


def test_memory_limit_applies_to_the_container(vm: vmhost.VM, installed: Packages, timings: Timings) -> None:
    """[7] MemoryMax= in a drop-in: the container's processes are charged to it and OOM-killed past it."""
    dropin = f"/etc/systemd/system/{UNIT}.d"
    vm.ssh(
        f"mkdir -p {dropin} && printf '[Service]\\nMemoryMax=64M\\nMemorySwapMax=0\\n' > {dropin}/limit.conf "
        f"&& systemctl daemon-reload && systemctl restart {UNIT}"
    )
    try:
        get(vm, installed.port)
        cgroup = f"/sys/fs/cgroup/system.slice/{UNIT}"
        assert vm.ssh(f"cat {cgroup}/memory.max").stdout.strip() == str(64 * 2**20)
        pid = main_pid(vm)
        assert vm.ssh(f"cat /proc/{pid}/cgroup").stdout.strip().startswith(f"0::/system.slice/{UNIT}/")
        # dd with a 128 MiB block allocates and fills a 128 MiB buffer inside the container.
        hog = vm.ssh(
            f"runc --root /run/{NAME}/runc exec {NAME} dd if=/dev/zero of=/dev/null bs=128M count=1",
            check=False,
        )
        assert hog.returncode != 0, hog.stdout + hog.stderr
        events = dict(
            line.split() for line in vm.ssh(f"cat {cgroup}/memory.events").stdout.strip().splitlines()
        )
        assert int(events["oom_kill"]) >= 1, events
        # Only the hog died: the service itself goes on.
        assert get(vm, installed.port).strip() == "kv 1.0"
    finally:
        vm.ssh(f"rm -rf {dropin} && systemctl daemon-reload && systemctl restart {UNIT}")
    get(vm, installed.port)


def test_killed_container_is_restarted(vm: vmhost.VM, installed: Packages) -> None:
    """[4] kill -9 of the container's init → systemd restarts the service."""
    before = main_pid(vm)
    restarts = int(vm.ssh(f"systemctl show -p NRestarts --value {UNIT}").stdout.strip())
    vm.ssh(f"kill -9 {before}")
    vm.wait_until(
        f"test $(systemctl show -p MainPID --value {UNIT}) -ne 0 && "
        f"test $(systemctl show -p MainPID --value {UNIT}) -ne {before} && "
        f"systemctl is-active {UNIT}",
        timeout=60,
    )
    assert get(vm, installed.port).strip() == "kv 1.0"
    assert int(vm.ssh(f"systemctl show -p NRestarts --value {UNIT}").stdout.strip()) == restarts + 1
    assert get(vm, installed.port, "/cgi-bin/get?answer").strip() == "42"


PROBE = (
    "nohup sh -c 'while :; do "
    "if curl -fs -o /dev/null --max-time 0.5 http://127.0.0.1:{port}/; then s=up; else s=down; fi; "
    'echo "$(date +%s.%N) $s"; sleep 0.05; done\' > /tmp/probe.log 2>&1 & echo $!'
)


def unreachable_seconds(log: str) -> float:
    """The longest time between two successful probes that had failed ones between them."""
    worst, last_up, failed = 0.0, None, False
    for line in log.splitlines():
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("up", "down"):
            continue
        stamp, state = fields
        if state == "up":
            if last_up is not None and failed:
                worst = max(worst, float(stamp) - last_up)
            last_up, failed = float(stamp), False
        else:
            failed = True
    return worst


def test_upgrade_keeps_data_and_switches_version(
    vm: vmhost.VM, installed: Packages, timings: Timings
) -> None:
    """[2] apt install of the next version: restarted on the new image, data kept, downtime measured."""
    probe = vm.ssh(PROBE.format(port=installed.port)).stdout.strip()
    start = time.monotonic()
    try:
        apt_install(vm, installed.debs["2.0"])
        assert get(vm, installed.port).strip() == "kv 2.0"
        took = time.monotonic() - start
        time.sleep(1)
    finally:
        vm.ssh(f"kill {probe}")
    log = vm.ssh("cat /tmp/probe.log").stdout
    assert " up" in log
    timings.record("upgrade: apt install → new version answering", took)
    timings.record("upgrade: service unreachable", unreachable_seconds(log))
    assert get(vm, installed.port, "/cgi-bin/get?answer").strip() == "42"
    assert "kv 2.0 serving" in journal(vm)
    # The old version's tree is gone with its package files; the new one is what runs, on one mount
    # (the old one's went with its stop, although dpkg had deleted its files first).
    assert vm.ssh(f"ls /opt/containers/{NAME}").stdout.split() == ["2.0"]
    assert vm.ssh(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled"
    assert root_mounts(vm, NAME) == 1


def test_downgrade_keeps_data(vm: vmhost.VM, installed: Packages) -> None:
    """[3] back to the first version: data still there; up and down again, one mount all along."""
    apt_install(vm, installed.debs["1.0"])
    assert get(vm, installed.port).strip() == "kv 1.0"
    assert get(vm, installed.port, "/cgi-bin/get?answer").strip() == "42"
    assert vm.ssh(f"ls /opt/containers/{NAME}").stdout.split() == ["1.0"]
    assert root_mounts(vm, NAME) == 1
    for version in ("2.0", "1.0"):
        apt_install(vm, installed.debs[version])
        assert get(vm, installed.port).strip() == f"kv {version}"
        assert root_mounts(vm, NAME) == 1, f"after the move to {version}"


def test_two_services_side_by_side(vm: vmhost.VM, installed: Packages) -> None:
    """[9] the example image (non-root User, no chown) installed beside the kv service."""
    apt_install(vm, installed.hello)
    assert "Hello from ctr2svc" in get(vm, HELLO_PORT)
    assert get(vm, installed.port).strip() == "kv 1.0"
    for unit in (UNIT, f"{HELLO}.service"):
        assert vm.ssh(f"systemctl is-active {unit}").stdout.strip() == "active"
    hello_pid = main_pid(vm, f"{HELLO}.service")
    # Image User www (101) from the start: no entrypoint privilege drop involved.
    assert vm.ssh(f"stat -c %u:%g /proc/{hello_pid}").stdout.strip() == "101:101"
    cgroup = vm.ssh(f"cat /proc/{hello_pid}/cgroup").stdout.strip()
    assert cgroup == f"0::/system.slice/{HELLO}.service/{HELLO}", cgroup


def test_reboot_brings_the_services_back(vm: vmhost.VM, installed: Packages, timings: Timings) -> None:
    """[5] a reboot: both services come back by themselves, no stale runtime state in the way."""
    vm.reboot()
    timings.record("VM reboot (command → booted)", vm.reboot_seconds)
    assert get(vm, installed.port, timeout=120).strip() == "kv 1.0"
    assert "Hello from ctr2svc" in get(vm, HELLO_PORT, timeout=120)
    assert vm.ssh(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    assert get(vm, installed.port, "/cgi-bin/get?answer").strip() == "42"


def test_stop_is_clean_and_uses_the_stop_signal(vm: vmhost.VM, installed: Packages, timings: Timings) -> None:
    """[6] systemctl stop: the image's STOPSIGNAL reaches the entrypoint, all gone, no leftovers."""
    pid = main_pid(vm)
    count_stops = f"journalctl -b -u {UNIT} --no-pager -o cat | grep -cFx 'stopping on {STOP_SIGNAL}' || true"
    stops_before = int(vm.ssh(count_stops).stdout.strip())
    start = time.monotonic()
    vm.ssh(f"systemctl stop {UNIT}")
    took = time.monotonic() - start
    timings.record("systemctl stop", took)
    assert took < 30  # the stop timeout: a clean exit, not the SIGKILL that follows it
    assert vm.ssh(f"test -d /proc/{pid} && echo alive || echo gone").stdout.strip() == "gone"
    assert vm.ssh(f"systemctl show -p Result --value {UNIT}").stdout.strip() == "success"
    # journald reads the container's output stream on its own time: the line may land a moment later.
    vm.wait_until(f"test $({count_stops}) -gt {stops_before}", timeout=20)
    assert root_mounts(vm, NAME) == 0
    assert vm.ssh(f"test -e /run/{NAME} && echo left || echo clean").stdout.strip() == "clean"
    unit_cgroup = f"/sys/fs/cgroup/system.slice/{UNIT}"
    assert vm.ssh(f"test -e {unit_cgroup} && echo left || echo clean").stdout.strip() == "clean"
    vm.ssh(f"systemctl start {UNIT}")
    assert get(vm, installed.port).strip() == "kv 1.0"


def test_remove_keeps_data_and_purge_deletes_everything(vm: vmhost.VM, installed: Packages) -> None:
    """[8] apt remove: stopped, disabled, data kept; apt purge: nothing of the package left."""
    pid = main_pid(vm)
    vm.ssh(f"DEBIAN_FRONTEND=noninteractive apt-get remove -y {NAME}", timeout=300)
    assert vm.ssh(f"systemctl is-active {UNIT}", check=False).stdout.strip() != "active"
    assert root_mounts(vm, NAME) == 0
    assert vm.ssh(f"test -d /proc/{pid} && echo alive || echo gone").stdout.strip() == "gone"
    assert NAME not in vm.ssh("ls /etc/systemd/system/multi-user.target.wants/").stdout
    assert vm.ssh(f"cat /var/lib/{NAME}/volumes/data/answer").stdout.strip() == "42"
    assert vm.ssh(f"test -e /var/lib/{NAME}/overlay && echo left || echo gone").stdout.strip() == "gone"
    # The other service is untouched.
    assert "Hello from ctr2svc" in get(vm, HELLO_PORT)
    vm.ssh(f"DEBIAN_FRONTEND=noninteractive apt-get purge -y {NAME} {HELLO}", timeout=300)
    for path in (f"/var/lib/{NAME}", f"/run/{NAME}", f"/usr/libexec/{NAME}", "/opt/containers"):
        assert vm.ssh(f"test -e {path} && echo left || echo gone").stdout.strip() == "gone", path
    assert vm.ssh(f"dpkg -L {NAME}", check=False).returncode != 0
    status = vm.ssh(f"dpkg-query -W -f='${{Status}}' {NAME}", check=False).stdout.strip()
    assert status in ("", "unknown ok not-installed"), status
    leftovers = vm.ssh(f"find / -xdev -name '*{NAME}*' -not -path '/root/*' 2>/dev/null || true").stdout
    assert leftovers.strip() == "", leftovers
    assert vm.ssh(f"systemctl list-unit-files {UNIT} --no-legend", check=False).stdout.strip() == ""


def test_a_container_that_ignores_its_stop_signal_is_killed_on_time(
    vm: vmhost.VM, packages: Packages, timings: Timings
) -> None:
    """[issue 22.2] busybox httpd as PID 1 ignores SIGTERM: `systemctl stop` takes the stop timeout
    (5 s here) by the clock, plus at most 3 s to kill it and clean up; then nothing is left: no mount, no
    runtime directory, no container cgroup."""
    unit = f"{STUBBORN}.service"
    apt_install(vm, packages.stubborn)
    try:
        # Anything that answers (curl without -f): httpd serves / with no index as a 404.
        vm.wait_until("curl -s --max-time 2 -o /dev/null http://127.0.0.1:8090/", timeout=60)
        assert root_mounts(vm, STUBBORN) == 1
        vm.ssh(f"systemctl stop {unit}", timeout=120)
        # systemd's own clock: from the stop job's start (the unit leaves "active") to "inactive", the
        # ssh round trip left out.
        shown = vm.ssh(
            f"systemctl show -p ActiveExitTimestampMonotonic -p InactiveEnterTimestampMonotonic {unit}"
        )
        stamps = dict(line.split("=", 1) for line in shown.stdout.split())
        took = (
            int(stamps["InactiveEnterTimestampMonotonic"]) - int(stamps["ActiveExitTimestampMonotonic"])
        ) / 1e6
        timings.record(f"systemctl stop, SIGTERM ignored, stop timeout {STUBBORN_TIMEOUT} s", took)
        assert STUBBORN_TIMEOUT <= took <= STUBBORN_TIMEOUT + 3, f"the stop took {took:.1f} s"
        said = vm.ssh(f"journalctl -u {unit} --no-pager -o cat").stdout
        assert f"{STUBBORN}: still running after {STUBBORN_TIMEOUT}s; killing it" in said
        assert root_mounts(vm, STUBBORN) == 0
        assert vm.ssh(f"test -e /run/{STUBBORN} && echo left || echo clean").stdout.strip() == "clean"
        cgroup = f"/sys/fs/cgroup/system.slice/{unit}"
        assert vm.ssh(f"test -e {cgroup} && echo left || echo clean").stdout.strip() == "clean"
    finally:
        vm.ssh(f"DEBIAN_FRONTEND=noninteractive apt-get purge -y {STUBBORN}", timeout=300, check=False)
