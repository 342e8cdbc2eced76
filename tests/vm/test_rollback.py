"""Upgrades that roll back, with their data (issue 26), under the VM's systemd and apt.

One image in four versions, a database's pattern on busybox: 1.0 writes its data file on first start
and serves it over HTTP from its volume; 2.0 "migrates" that file, then exits 1 (never ready); 3.0
serves the data as it finds it. The tests run in order on one installed service:

1. 1.0 → 2.0: apt fails, dpkg leaves 2.0 half-configured, 1.0 answers with the data as it was before
   the upgrade, 2.0's data is kept beside it, the journal says what happened;
2. → 3.0 (fixed): installs, no rollback, the rollback state and the rollback's unit are gone;
3. no room for the snapshot: the upgrade is refused in the preinst, 3.0 never stopped;
4. `rollback off`: the same failed upgrade leaves the service down (the outage without a rollback).

The outage (the longest time the service did not answer, polled every 0.1 s in the guest) and the
time apt took are printed in the e2e timings.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.images import ROLLBACK_VERSIONS, rollback_image
from tests.support.registry import Registry
from tests.vm import vmhost
from tests.vm.conftest import Timings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

NAME = "rb-svc"
RPM_NAME = "rbrpm-svc"
UNIT = f"{NAME}.service"
PORT = 8097
DATA = f"/var/lib/{NAME}/volumes/data"


@dataclass(frozen=True)
class Packages:
    debs: dict[str, str]  # version -> path in the guest
    rpms: dict[str, str]


@pytest.fixture(scope="module")
def packages(
    vm: vmhost.VM, registry: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory
) -> Packages:
    work = tmp_path_factory.mktemp("rollback")
    built: dict[str, dict[str, str]] = {"deb": {}, "rpm": {}}
    for version in ROLLBACK_VERSIONS:
        source = rollback_image(work / "layout", version, PORT)
        ref = registry.push(source, "e2e/rollback", version)
        for fmt, name in (("deb", NAME), ("rpm", RPM_NAME)):
            out = ctr2svc(
                "build", ref, "--format", fmt, "--name", name, "--version", version,
                "--ready-port", str(PORT), "--stop-timeout", "5", "-o", work / fmt / version,
            ).stdout.strip()  # fmt: skip
            vm.copy_to(Path(out), f"/root/{Path(out).name}")
            built[fmt][version] = f"/root/{Path(out).name}"
    return Packages(built["deb"], built["rpm"])


def apt(vm: vmhost.VM, deb: str, *, check: bool = True) -> tuple[int, str, float]:
    """apt-get install DEB: its status, its output, its duration (s, by the guest's clock)."""
    command = (
        "s=$(date +%s.%N); DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades "
        f"{deb} >/root/apt.out 2>&1; rc=$?; e=$(date +%s.%N); echo $rc $s $e"
    )
    rc, start, end = vm.ssh(command, timeout=600).stdout.split()
    output = vm.ssh("cat /root/apt.out").stdout
    if check:
        assert rc == "0", output
    return int(rc), output, float(end) - float(start)


def get(vm: vmhost.VM) -> str:
    return vm.ssh(f"curl -fsS --max-time 5 http://127.0.0.1:{PORT}/", check=False).stdout.strip()


@pytest.fixture
def poller(vm: vmhost.VM) -> Iterator[PollLog]:
    """The service polled every 0.1 s in the guest while a test runs; the log of the answers."""
    vm.ssh("rm -f /root/poll.log")
    loop = (
        f"while :; do if curl -fsS --max-time 1 -o /dev/null http://127.0.0.1:{PORT}/; "
        "then r=ok; else r=down; fi; echo $(date +%s.%N) $r >>/root/poll.log; sleep 0.1; done"
    )
    vm.ssh(f"systemd-run --unit=rb-poller --quiet sh -c '{loop}'")
    log = PollLog(vm)
    yield log
    vm.ssh("systemctl stop rb-poller", check=False)


class PollLog:
    def __init__(self, vm: vmhost.VM) -> None:
        self.vm = vm

    def outage(self) -> float:
        """The longest time, in seconds, from the last answer before a failure to the next answer (the
        end of the log if none came)."""
        samples = [line.split() for line in self.vm.ssh("cat /root/poll.log").stdout.splitlines()]
        longest = 0.0
        last_ok: float | None = None
        down_since: float | None = None
        for stamp, result in samples:
            t = float(stamp)
            if result == "ok":
                if down_since is not None and last_ok is not None:
                    longest = max(longest, t - last_ok)
                down_since = None
                last_ok = t
            elif down_since is None:
                down_since = t
        if down_since is not None and last_ok is not None:
            longest = max(longest, float(samples[-1][0]) - last_ok)
        return longest

    def answered_after(self, since: float) -> float:
        """Seconds from SINCE (the guest's clock) to the first answer after it."""
        for line in self.vm.ssh("cat /root/poll.log").stdout.splitlines():
            stamp, result = line.split()
            if result == "ok" and float(stamp) > since:
                return float(stamp) - since
        raise AssertionError(f"no answer after {since}")


def logged_at(vm: vmhost.VM, text: str) -> float:
    """When the journal of the unit got the entry holding TEXT (the guest's clock)."""
    found = vm.ssh(f"journalctl -u {UNIT} -o short-unix --no-pager | grep -F '{text}'").stdout
    return float(found.split()[0])


def status(vm: vmhost.VM) -> str:
    return vm.ssh(f"dpkg-query -W -f '${{Status}} ${{Version}}' {NAME}").stdout.strip()


def main_pid(vm: vmhost.VM) -> str:
    return vm.ssh(f"systemctl show -p MainPID --value {UNIT}").stdout.strip()


def test_a_failed_upgrade_rolls_back_with_its_data(
    vm: vmhost.VM, packages: Packages, poller: PollLog, timings: Timings
) -> None:
    apt(vm, packages.debs["1.0"])
    vm.wait_until(f"curl -fsS http://127.0.0.1:{PORT}/ | grep -q 'written by 1.0'", timeout=60)
    vm.ssh(f"echo 'one more line' >>{DATA}/index.html")

    rc, output, took = apt(vm, packages.debs["2.0"], check=False)
    assert rc != 0, output
    assert f"{NAME}: version 2.0 did not become ready and was rolled back" in output, output
    assert "Errors were encountered while processing" in output, output
    # 1.0 answers with the data as it was before the upgrade, under the rollback's unit.
    assert get(vm) == "written by 1.0\none more line"
    assert status(vm) == "install ok half-configured 2.0"
    assert vm.ssh(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    assert vm.ssh(f"head -n 1 /etc/systemd/system/{UNIT}").stdout.startswith(
        "# Written by ctr2svc's rollback"
    )
    # 2.0's data, kept for inspection.
    assert vm.ssh(f"cat /var/lib/{NAME}.failed-2.0/volumes/data/index.html").stdout == "migrated by 2.0\n"
    journal = vm.ssh(f"journalctl -u {UNIT} --no-pager -o cat").stdout
    assert "upgrading from 1.0 to 2.0: /var/lib/rb-svc kept for a rollback (copy" in journal, journal
    assert "2.0: cannot start" in journal, journal
    assert "version 2.0 is not ready: the restart failed (" in journal, journal
    assert f"rolled back to 1.0: /var/lib/{NAME} is as it was before the upgrade (copy" in journal
    outage = poller.outage()
    rollback = poller.answered_after(logged_at(vm, "version 2.0 is not ready"))
    timings.record("rollback: apt install of a failing 2.0, rolled back to 1.0", took)
    timings.record("rollback: outage of the failed upgrade with the rollback", outage)
    timings.record("rollback: 2.0 found not ready → 1.0 answering again", rollback)
    # A configure retried by hand fails again at once, and leaves 1.0 running.
    pid = main_pid(vm)
    again = vm.ssh("dpkg --configure -a", check=False)
    assert again.returncode != 0 and "did not become ready and was rolled back to 1.0" in again.stderr
    assert main_pid(vm) == pid


def test_a_fixed_version_installs_and_cleans_up(
    vm: vmhost.VM, packages: Packages, poller: PollLog, timings: Timings
) -> None:
    _, _, took = apt(vm, packages.debs["3.0"])
    assert status(vm) == "install ok installed 3.0"
    assert get(vm) == "written by 1.0\none more line"
    root = vm.ssh(f"awk '$5 == \"/run/{NAME}/rootfs\"' /proc/self/mountinfo").stdout
    assert f"/opt/containers/{NAME}/3.0/rootfs" in root, root
    left = vm.ssh(
        f"ls -d /etc/systemd/system/{UNIT} /var/lib/ctr2svc/rollback/{NAME} /opt/containers/{NAME}/.rollback "
        f"/opt/containers/{NAME}/1.0 2>/dev/null",
        check=False,
    ).stdout
    assert left == ""
    assert vm.ssh(f"ls /opt/containers/{NAME}").stdout.split() == ["3.0"]
    journal = vm.ssh(f"journalctl -u {UNIT} --no-pager -o cat").stdout
    assert "version 3.0 is ready (" in journal and "the rollback snapshot is removed" in journal
    # The failed version's data stays until the admin deletes it (or a purge).
    assert vm.ssh(f"test -d /var/lib/{NAME}.failed-2.0", check=False).returncode == 0
    timings.record("rollback: apt install of a healthy 3.0 (snapshot, restart, ready)", took)
    timings.record("rollback: outage of the healthy upgrade", poller.outage())


def test_no_room_for_the_snapshot_refuses_the_upgrade(vm: vmhost.VM, packages: Packages) -> None:
    pid = main_pid(vm)
    vm.ssh(
        f"head -c 2097152 /dev/urandom >{DATA}/blob && mkdir -p /var/lib/ctr2svc/rollback "
        "&& mount -t tmpfs -o size=1m tmpfs /var/lib/ctr2svc/rollback"
    )
    try:
        rc, output, _ = apt(vm, packages.debs["2.0"], check=False)
    finally:
        vm.ssh("umount /var/lib/ctr2svc/rollback")
    assert rc != 0
    assert f"{NAME}: upgrade to 2.0 refused, 3.0 keeps running: no room for the snapshot" in output, output
    assert status(vm) == "install ok installed 3.0"
    assert main_pid(vm) == pid
    assert get(vm) == "written by 1.0\none more line"
    assert vm.ssh(f"ls /opt/containers/{NAME}").stdout.split() == ["3.0"]
    vm.ssh(f"rm {DATA}/blob")


def test_without_rollback_the_failed_upgrade_stays_down(
    vm: vmhost.VM, packages: Packages, poller: PollLog, timings: Timings
) -> None:
    """What the rollback saves: with `rollback off` apt succeeds, 2.0 fails to start and the service
    is down until the admin installs a working version, on the data 2.0 rewrote."""
    vm.ssh(f"echo 'rollback off' >/etc/{NAME}/rollback")
    rc, output, _ = apt(vm, packages.debs["2.0"], check=False)
    assert rc == 0, output
    assert f"{NAME}: restart failed" in output, output
    assert get(vm) == ""
    _, _, took = apt(vm, packages.debs["3.0"])
    assert get(vm) == "migrated by 2.0"
    timings.record(
        "rollback off: outage of the failed upgrade until 3.0 is installed at once", poller.outage()
    )
    timings.record("rollback off: apt install of 3.0 after it", took)

    # A purge takes the failed versions' data too, and leaves nothing of the rollback behind.
    vm.ssh(f"apt-get purge -y {NAME}", timeout=300)
    left = vm.ssh(
        f"ls -d /var/lib/{NAME}* /opt/containers/{NAME} /var/lib/ctr2svc/rollback/{NAME} "
        f"/etc/systemd/system/{UNIT} 2>/dev/null",
        check=False,
    ).stdout
    assert left == ""


def test_rpm_a_failed_upgrade_rolls_back_and_a_fixed_one_installs(vm: vmhost.VM, packages: Packages) -> None:
    """The same with rpm -U: the new %pre snapshots, the new %post rolls back and fails, which rpm
    reports as a warning (it erases the old package's files after it: the previous version runs from its
    kept hard links)."""
    unit = f"{RPM_NAME}.service"
    vm.ssh(f"rpm -i --nodeps {packages.rpms['1.0']} && systemctl enable --now {unit}", timeout=300)
    vm.wait_until(f"curl -fsS http://127.0.0.1:{PORT}/ | grep -q 'written by 1.0'", timeout=60)
    upgrade = vm.ssh(f"rpm -U --nodeps {packages.rpms['2.0']}", check=False, timeout=600)
    output = upgrade.stdout + upgrade.stderr
    # rpm takes a failed %post for a warning: it exits 0, the reason and the warning are its output.
    assert upgrade.returncode == 0, output
    assert f"{RPM_NAME}: version 2.0-1 did not become ready and was rolled back" in output, output
    assert f"warning: %post({RPM_NAME}-2.0-1.x86_64) scriptlet failed, exit status 1" in output, output
    assert get(vm) == "written by 1.0"
    assert vm.ssh(f"rpm -q --qf '%{{VERSION}}' {RPM_NAME}").stdout == "2.0"
    assert vm.ssh(f"ls /opt/containers/{RPM_NAME}").stdout.split() == ["2.0-1"]  # 1.0-1's erased
    failed = vm.ssh(f"cat /var/lib/{RPM_NAME}.failed-2.0-1/volumes/data/index.html").stdout
    assert failed == "migrated by 2.0\n"

    vm.ssh(f"rpm -U --nodeps {packages.rpms['3.0']}", timeout=600)
    assert get(vm) == "written by 1.0"
    left = vm.ssh(
        f"ls -d /etc/systemd/system/{unit} /var/lib/ctr2svc/rollback/{RPM_NAME} "
        f"/opt/containers/{RPM_NAME}/.rollback 2>/dev/null",
        check=False,
    ).stdout
    assert left == ""
    vm.ssh(f"rpm -e --nodeps {RPM_NAME} && rm -rf /var/lib/{RPM_NAME} /var/lib/{RPM_NAME}.failed-2.0-1")
    assert vm.ssh(f"ls -d /opt/containers/{RPM_NAME} 2>/dev/null", check=False).stdout == ""
