"""The VM harness works: systemd as PID 1, cgroup v2, runc runs a container, reboot comes back."""

import statistics
import time
from pathlib import Path

import pytest

from tests.vm import vmhost

pytestmark = pytest.mark.e2e


def test_systemd_is_pid1_and_running(vm: vmhost.VM) -> None:
    assert vm.ssh("ps -p 1 -o comm=").stdout.strip() == "systemd"
    state = vm.ssh("systemctl is-system-running", check=False).stdout.strip()
    failed = vm.ssh("systemctl list-units --failed --plain --no-legend", check=False).stdout
    print(f"system state {state}; failed units: {failed.strip() or 'none'}")
    assert state == "running", f"system is {state}; failed units:\n{failed}"
    assert vm.ssh("stat -fc %T /sys/fs/cgroup").stdout.strip() == "cgroup2fs"


def test_runc_runs_a_container(vm: vmhost.VM) -> None:
    assert "runc version" in vm.ssh("runc --version").stdout
    script = r"""
set -eu
b=$(mktemp -d /tmp/bundle.XXXXXX)
mkdir -p "$b/rootfs/bin"
cp /bin/busybox "$b/rootfs/bin/busybox"
ln -s busybox "$b/rootfs/bin/sh"
cd "$b"
runc spec
sed -i -e 's/"terminal": true/"terminal": false/' \
    -e 's/"sh"$/"sh", "-c", "echo hello-from-runc; cat \/proc\/self\/cgroup"/' config.json
runc run "smoke-$$" </dev/null
rm -rf "$b"
"""
    out = vm.ssh(script, timeout=180).stdout
    assert "hello-from-runc" in out
    assert "0::/" in out  # cgroup v2 inside the container too


def test_copy_to(vm: vmhost.VM, tmp_path: Path) -> None:
    src = tmp_path / "payload.txt"
    src.write_text("payload\n")
    vm.copy_to(src, "/tmp/payload.txt")
    assert vm.ssh("cat /tmp/payload.txt").stdout == "payload\n"


def test_no_outside_network(vm: vmhost.VM) -> None:
    routes = vm.ssh("ip -4 route show").stdout
    assert "default" not in routes, routes
    # 10.0.2.2 (the host) is on-link; anything else is unreachable at once.
    out = vm.ssh("curl -sS --max-time 10 http://151.101.2.132/ 2>&1; echo rc=$?", check=False).stdout
    assert "rc=0" not in out, out


def test_error_carries_details(vm: vmhost.VM) -> None:
    with pytest.raises(vmhost.SSHCommandError) as info:
        vm.ssh("echo to-stdout; echo to-stderr >&2; exit 3")
    err = info.value
    assert err.returncode == 3
    text = str(err)
    assert "exit 3" in text
    assert "to-stdout" in text
    assert "to-stderr" in text
    assert "serial console" in text


def test_ssh_latency_and_reboot(vm: vmhost.VM) -> None:
    samples = []
    for _ in range(20):
        t0 = time.monotonic()
        vm.ssh("true")
        samples.append(time.monotonic() - t0)
    old = vm.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    vm.ssh("echo survives > /root/marker")
    vm.reboot()
    new = vm.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    assert new != old
    assert vm.ssh("cat /root/marker").stdout == "survives\n"  # same overlay across reboots
    assert vm.ssh("ps -p 1 -o comm=").stdout.strip() == "systemd"
    assert vm.system_state == "running", vm.failed_units
    build = vmhost.image_build_seconds(vm.image_dir)
    print(
        f"\nVM timings: image build {build}s; boot {vm.boot_seconds:.1f}s; reboot {vm.reboot_seconds:.1f}s; "
        f"ssh command mean {statistics.mean(samples) * 1000:.0f} ms "
        f"(median {statistics.median(samples) * 1000:.0f} ms)"
    )
