"""Service-profile features that need a real systemd (and, for crun, the unified cgroup hierarchy that
this machine lacks): --runtime crun, --ready-port, and a health check that restarts an unhealthy
service, on the Debian 12 test VM.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.images import service_image
from tests.support.registry import Registry, free_port
from tests.vm import vmhost

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

NAME = "kvcrun-svc"
UNIT = f"{NAME}.service"


def main_pid(vm: vmhost.VM) -> int:
    return int(vm.ssh(f"systemctl show -p MainPID --value {UNIT}").stdout.strip())


def test_crun_ready_port_and_health_check(
    vm: vmhost.VM, registry: Registry, ctr2svc: Cli, tmp_path: Path
) -> None:
    port = free_port()
    source = service_image(tmp_path / "layout", "1.0", port=port, version_text="kvcrun 1.0")
    ref = registry.push(source, "e2e/kvcrun", "1.0")
    flags = ("--runtime", "crun", "--ready-port", str(port))
    health = ("--health-cmd", "! test -e /data/sick", "--health-interval", "2", "--health-retries", "2")
    deb = Path(ctr2svc("build", ref, "--name", NAME, *flags, *health, "-o", tmp_path / "out").stdout.strip())
    vm.copy_to(deb, f"/root/{deb.name}")

    vm.ssh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y /root/{deb.name}", timeout=600)
    try:
        # --ready-port: once `apt install` (which starts the unit) returns, the port answers at once.
        assert vm.ssh(f"curl -fsS --max-time 2 http://127.0.0.1:{port}/").stdout.strip() == "kvcrun 1.0"
        pid = main_pid(vm)
        # crun ran it: its state dir, not runc's, and the container is in the unit's cgroup.
        listed = vm.ssh(f"crun --root /run/{NAME}/runc list").stdout.splitlines()
        assert [line.split()[:3] for line in listed[1:]] == [[NAME, str(pid), "running"]], listed
        assert vm.ssh(f"cat /proc/{pid}/cgroup").stdout.strip() == f"0::/system.slice/{UNIT}/{NAME}"
        assert vm.ssh(f"systemctl is-active {NAME}-health.timer").stdout.strip() == "active"
        assert "CapBnd:\t00000000a80425fb" in vm.ssh(f"cat /proc/{pid}/status").stdout

        # Unhealthy: two failed checks in a row restart the service.
        vm.ssh(f"touch /var/lib/{NAME}/volumes/data/sick")
        vm.wait_until(f"test $(systemctl show -p MainPID --value {UNIT}) -ne {pid}", timeout=90)
        vm.ssh(f"rm /var/lib/{NAME}/volumes/data/sick")
        journal = vm.ssh(f"journalctl --no-pager -o cat -t {NAME}").stdout
        assert "unhealthy after 2 failed health checks in a row" in journal, journal
        vm.wait_until(f"curl -fsS --max-time 2 http://127.0.0.1:{port}/", timeout=60)
        assert vm.ssh(f"systemctl is-active {UNIT}").stdout.strip() == "active"
        # Healthy again: no restart in a window of three check intervals (a check that failed before
        # the file went would otherwise restart it, and a restart replaces a stop job).
        stable = f"systemctl show -p MainPID --value {UNIT}"
        vm.wait_until(f'a=$({stable}); sleep 6; test "$a" = "$({stable})"', timeout=120)
        # The restarted service still stops cleanly, with its stop signal rather than SIGKILL.
        vm.ssh(f"systemctl stop {UNIT}")
        result = vm.ssh(f"systemctl show -p Result --value {UNIT}").stdout.strip()
        assert result == "success", vm.ssh(f"journalctl -u {UNIT} --no-pager -n 30").stdout
    finally:
        vm.ssh(f"DEBIAN_FRONTEND=noninteractive apt-get purge -y {NAME}", timeout=300, check=False)
    # Stopping the service stops its health timer (PartOf=), and a check that was due while the
    # package was removed did not restart it or leave it failed.
    assert vm.ssh(f"systemctl is-active {NAME}-health.timer", check=False).stdout.strip() != "active"
    for unit in (UNIT, f"{NAME}-health.service"):
        state = vm.ssh(f"systemctl is-failed {unit}", check=False).stdout.strip()
        assert state != "failed", vm.ssh(f"journalctl -u {unit} --no-pager -n 40", check=False).stdout


SANDBOX_NAME = "kvsandbox-svc"
PRIVILEGED_NAME = "kvpriv-svc"


def exposure(vm: vmhost.VM, unit: str) -> float:
    """systemd-analyze security's overall exposure of UNIT (0 best, 10 worst), from the running systemd."""
    out = vm.ssh(f"systemd-analyze security --no-pager {unit}", check=False).stdout
    line = next(x for x in out.splitlines() if x.startswith("→ Overall exposure level"))
    return float(line.split(":")[1].split()[0])


def test_sandboxed_unit(vm: vmhost.VM, registry: Registry, ctr2svc: Cli, tmp_path: Path) -> None:
    """The unit's confinement (ctr2svc/service/sandbox.py) under the real systemd: the service runs and
    stops as before, the container's processes carry the unit's bounding set and a second system call filter,
    and systemd-analyze scores it better than the same image built --privileged, which has none."""
    port, priv_port = free_port(), free_port()
    debs = []
    for name, p, flags in ((SANDBOX_NAME, port, ()), (PRIVILEGED_NAME, priv_port, ("--privileged",))):
        source = service_image(tmp_path / name, "1.0", port=p, version_text=name)
        ref = registry.push(source, f"e2e/{name}", "1.0")
        out = tmp_path / f"out-{name}"
        debs.append(Path(ctr2svc("build", ref, "--name", name, *flags, "-o", out).stdout.strip()))
    for deb in debs:
        vm.copy_to(deb, f"/root/{deb.name}")
    unit = f"{SANDBOX_NAME}.service"
    vm.ssh(
        f"DEBIAN_FRONTEND=noninteractive apt-get install -y /root/{debs[0].name} /root/{debs[1].name}",
        timeout=900,
    )
    try:
        for p, text in ((port, SANDBOX_NAME), (priv_port, PRIVILEGED_NAME)):
            vm.wait_until(f"curl -fsS --max-time 2 http://127.0.0.1:{p}/", timeout=120)
            assert vm.ssh(f"curl -fsS --max-time 2 http://127.0.0.1:{p}/").stdout.strip() == text
        # Writes through the volume, as the entrypoint's chown and the app user need.
        assert vm.ssh(f"curl -fsS 'http://127.0.0.1:{port}/cgi-bin/put?k=v'", check=False).returncode == 0
        assert (
            vm.ssh(f"curl -fsS --max-time 2 http://127.0.0.1:{port}/cgi-bin/whoami").stdout.strip()
            == "999:999"
        )

        shown = vm.ssh(
            f"systemctl show -p CapabilityBoundingSet -p NoNewPrivileges -p RestrictRealtime {unit}"
        ).stdout
        assert "cap_sys_module" not in shown and "cap_sys_admin" in shown, shown
        assert "NoNewPrivileges=yes" in shown and "RestrictRealtime=yes" in shown
        pid = int(vm.ssh(f"systemctl show -p MainPID --value {unit}").stdout.strip())
        status = dict(
            line.split(":\t", 1)
            for line in vm.ssh(f"cat /proc/{pid}/status").stdout.splitlines()
            if ":\t" in line
        )
        # The unit's filter and the container's own, stacked; Docker's bounding set inside.
        assert status["Seccomp"].strip() == "2" and int(status["Seccomp_filters"]) >= 2, status
        assert int(status["CapBnd"], 16) == 0xA80425FB
        # --privileged: no filter at all, from the unit or the container (Docker's --privileged).
        priv_pid = vm.ssh(f"systemctl show -p MainPID --value {PRIVILEGED_NAME}.service").stdout.strip()
        assert "Seccomp:\t0" in vm.ssh(f"cat /proc/{priv_pid}/status").stdout

        sandboxed, privileged = exposure(vm, unit), exposure(vm, f"{PRIVILEGED_NAME}.service")
        print(f"systemd-analyze security: {sandboxed} sandboxed, {privileged} privileged (no sandbox)")
        assert sandboxed <= 8.0 < privileged, (sandboxed, privileged)

        # Restart and stop as before: NRestarts 0, a clean stop with the image's signal.
        vm.ssh(f"systemctl restart {unit}", timeout=180)
        vm.wait_until(f"curl -fsS --max-time 2 http://127.0.0.1:{port}/", timeout=120)
        vm.ssh(f"systemctl stop {unit}", timeout=180)
        final = vm.ssh(f"systemctl show -p Result -p NRestarts {unit}").stdout
        assert "Result=success" in final and "NRestarts=0" in final, vm.ssh(
            f"journalctl -u {unit} --no-pager -n 40"
        ).stdout
    finally:
        vm.ssh(
            f"DEBIAN_FRONTEND=noninteractive apt-get purge -y {SANDBOX_NAME} {PRIVILEGED_NAME}",
            timeout=300,
            check=False,
        )
