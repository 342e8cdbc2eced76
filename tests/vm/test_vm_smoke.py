"""The VM harness works: systemd as PID 1, cgroup v2, runc runs a container, reboot comes back."""

import functools
import http.server
import statistics
import threading
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


def test_apt_installs_a_local_deb(vm: vmhost.VM) -> None:
    script = r"""
set -eu
d=$(mktemp -d /tmp/deb.XXXXXX)
mkdir -p "$d/pkg/DEBIAN" "$d/pkg/usr/share/c2s-smoke"
echo hi > "$d/pkg/usr/share/c2s-smoke/hi"
printf '%s\n' 'Package: c2s-smoke' 'Version: 1.0' 'Architecture: all' \
    'Maintainer: test <test@example.invalid>' 'Depends: runc' 'Description: harness smoke test' \
    > "$d/pkg/DEBIAN/control"
dpkg-deb --root-owner-group -b "$d/pkg" "$d/c2s-smoke.deb" >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y "$d/c2s-smoke.deb"
dpkg-query -W -f '${Status}\n' c2s-smoke
apt-get remove -y c2s-smoke >/dev/null
rm -rf "$d"
"""
    out = vm.ssh(script, timeout=300).stdout
    assert "install ok installed" in out, out


def test_copy_to(vm: vmhost.VM, tmp_path: Path) -> None:
    src = tmp_path / "payload.txt"
    src.write_text("payload\n")
    vm.copy_to(src, "/tmp/payload.txt")
    assert vm.ssh("cat /tmp/payload.txt").stdout == "payload\n"


def test_network_reaches_host_only(vm: vmhost.VM, tmp_path: Path) -> None:
    routes = vm.ssh("ip -4 route show").stdout
    assert "default" not in routes, routes
    # An outside address is unreachable at once (no default route, no DNS).
    out = vm.ssh("curl -sS --max-time 10 http://151.101.2.132/ 2>&1; echo rc=$?", check=False).stdout
    assert "rc=0" not in out, out
    # The host's loopback services are reachable as 10.0.2.2.
    (tmp_path / "hello.txt").write_text("hello from the host\n")
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = server.server_address[1]
            got = vm.ssh(f"curl -fsS --max-time 30 http://10.0.2.2:{port}/hello.txt").stdout
        finally:
            server.shutdown()
            thread.join(timeout=10)
    assert got == "hello from the host\n"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


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


def test_ssh_latency(vm: vmhost.VM) -> None:
    """ssh through the control master, the cost of every command the e2e tests send. (reboot() is
    proved by the product's own reboot tests: services come back on the same disk.)"""
    samples = []
    for _ in range(20):
        t0 = time.monotonic()
        vm.ssh("true")
        samples.append(time.monotonic() - t0)
    assert vm.system_state == "running", vm.failed_units
    build = vmhost.image_build_seconds(vm.image_dir)
    print(
        f"\nVM timings: image build {build}s; boot {vm.boot_seconds:.1f}s; "
        f"ssh command mean {statistics.mean(samples) * 1000:.0f} ms "
        f"(median {statistics.median(samples) * 1000:.0f} ms)"
    )
