"""The .rpm under a real systemd: its scriptlets' $1 logic driven by the real rpm on the Debian test VM.

No RPM distribution can be reached from here; Debian's rpm (with --nodeps, as runc comes from dpkg)
installs into the VM's own root, where systemd is PID 1, so preset/enable/start, try-restart on upgrade
and stop/disable on erase really happen.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.images import layered_service_image, service_image
from tests.support.registry import Registry, free_port
from tests.vm import vmhost

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

NAME = "kvrpm-svc"
UNIT = f"{NAME}.service"


def get(vm: vmhost.VM, port: int, path: str = "/") -> str:
    return vm.wait_until(f"curl -fsS --max-time 2 http://127.0.0.1:{port}{path}", timeout=60)


def test_rpm_install_upgrade_erase_under_systemd(
    vm: vmhost.VM, registry: Registry, ctr2svc: Cli, tmp_path: Path
) -> None:
    port = free_port()
    rpms = {}
    for version in ("1.0", "2.0"):
        source = service_image(tmp_path / "layout", version, port=port, version_text=f"kvrpm {version}")
        ref = registry.push(source, "e2e/kvrpm", version)
        rpm = Path(
            ctr2svc("build", ref, "--format", "rpm", "--name", NAME, "-o", tmp_path / version).stdout.strip()
        )
        vm.copy_to(rpm, f"/root/{rpm.name}")
        rpms[version] = f"/root/{rpm.name}"

    installed = vm.ssh(f"rpm -ivh --nodeps {rpms['1.0']}").stdout
    # %post, as Fedora's %systemd_post: `systemctl preset` (Debian's presets enable what they do not
    # name; Fedora's would disable it), nothing started, and the command that starts it printed.
    assert vm.ssh(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled"
    assert vm.ssh(f"systemctl is-active {UNIT}", check=False).stdout.strip() == "inactive"
    assert f"to run it now and at boot: systemctl enable --now {UNIT}" in installed, installed
    assert (
        vm.ssh(f"test -e /usr/lib/systemd/system-preset/50-{NAME}.preset || echo none").stdout.strip()
        == "none"
    )
    vm.ssh(f"systemctl enable --now {UNIT}")
    assert get(vm, port).strip() == "kvrpm 1.0"
    assert get(vm, port, "/cgi-bin/put?answer=42").strip() == "ok"
    assert vm.ssh(f"systemd-analyze verify /usr/lib/systemd/system/{UNIT}", check=False).returncode == 0
    pid = int(vm.ssh(f"systemctl show -p MainPID --value {UNIT}").stdout)

    # Upgrade: the new %post restarts it on the new image; the old %preun/%postun (run after it with
    # $1 = 1) must not stop it or take its runtime state away.
    vm.ssh(f"rpm -Uvh --nodeps {rpms['2.0']}")
    assert get(vm, port).strip() == "kvrpm 2.0"
    assert vm.ssh(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    assert int(vm.ssh(f"systemctl show -p MainPID --value {UNIT}").stdout) != pid
    assert get(vm, port, "/cgi-bin/get?answer").strip() == "42"
    assert vm.ssh(f"findmnt -n -o SOURCE /run/{NAME}/rootfs").stdout.strip() == "overlay"

    # A stopped service stays stopped across an upgrade (try-restart), as Fedora's macros do.
    vm.ssh(f"systemctl stop {UNIT} && rpm -Uvh --nodeps --oldpackage {rpms['1.0']}")
    assert vm.ssh(f"systemctl is-active {UNIT}", check=False).stdout.strip() == "inactive"
    vm.ssh(f"systemctl start {UNIT}")
    assert get(vm, port).strip() == "kvrpm 1.0"

    # Erase: stopped, disabled, runtime state gone, data kept.
    vm.ssh(f"rpm -e --nodeps {NAME}")
    assert vm.ssh(f"systemctl is-active {UNIT}", check=False).stdout.strip() != "active"
    assert vm.ssh(f"test -e /run/{NAME} && echo left || echo gone").stdout.strip() == "gone"
    assert vm.ssh(f"test -e /opt/containers/{NAME} && echo left || echo gone").stdout.strip() == "gone"
    assert vm.ssh(f"cat /var/lib/{NAME}/volumes/data/answer").stdout.strip() == "42"
    assert NAME not in vm.ssh("ls /etc/systemd/system/multi-user.target.wants/").stdout
    vm.ssh(f"rm -rf /var/lib/{NAME}")


SHARED = "kvrpm-shared-svc"


def test_shared_layer_rpms_install_upgrade_erase_under_systemd(
    vm: vmhost.VM, registry: Registry, ctr2svc: Cli, tmp_path: Path
) -> None:
    """--layers shared as rpm: the layer packages and the service package in one rpm transaction,
    an upgrade that brings only the new top layer, the old one erased as `dnf autoremove` would,
    and nothing left under /opt/containers after the erase."""
    port = free_port()
    files: dict[str, list[str]] = {}
    for version in ("1.0", "2.0"):
        text = f"shared {version}"
        source = layered_service_image(tmp_path / "layout", version, port=port, version_text=text)
        ref = registry.push(source, "e2e/kvrpm-shared", version)
        # Debian's rule for this one: the package's preset enables it and %post starts it.
        argv = [
            "build",
            ref,
            "--format",
            "rpm",
            "--layers",
            "shared",
            "--name",
            SHARED,
            "--json",
            "--activation",
            "start",
        ]
        summary = json.loads(ctr2svc(*argv, "-o", tmp_path / f"shared-{version}").stdout)
        local = [Path(summary["package"]), *(Path(x["package"]) for x in summary["layers"])]
        for path in local:
            vm.copy_to(path, f"/root/{path.name}")
        files[version] = [f"/root/{p.name}" for p in local]
    old_layers = {Path(p).name for p in files["1.0"][1:]}
    new_layers = {Path(p).name for p in files["2.0"][1:]}
    assert len(old_layers & new_layers) == 1, "the two versions share their bottom layer"

    try:
        vm.ssh(f"rpm -Uvh --nodeps {' '.join(files['1.0'])}")
        assert get(vm, port).strip() == "shared 1.0"
        assert get(vm, port, "/cgi-bin/put?answer=7").strip() == "ok"
        assert get(vm, port, "/cgi-bin/whoami").strip() == "999:999"

        # The upgrade: only the new top layer is new; the service restarts on the new stack.
        fresh = [p for p in files["2.0"] if Path(p).name not in old_layers]
        assert len(fresh) == 2
        vm.ssh(f"rpm -Uvh --nodeps {' '.join(fresh)}")
        assert get(vm, port).strip() == "shared 2.0"
        assert get(vm, port, "/cgi-bin/get?answer").strip() == "7"
        lower = vm.ssh(f"findmnt -n -o OPTIONS /run/{SHARED}/rootfs").stdout
        assert all(f"{name.split('-')[2]}/rootfs" in lower for name in new_layers), lower

        # What dnf autoremove does: the old top layer, which nothing needs any more, goes.
        stale = sorted(n.rsplit("-1-1.", 1)[0] for n in old_layers - new_layers)
        vm.ssh(f"rpm -e --nodeps {' '.join(stale)}")
        assert vm.ssh(f"systemctl is-active {SHARED}.service").stdout.strip() == "active"
        assert get(vm, port).strip() == "shared 2.0"

        installed = vm.ssh("rpm -qa 'ctr2svc-layer-*'").stdout.split()
        vm.ssh(f"rpm -e --nodeps {SHARED} {' '.join(installed)}")
        assert vm.ssh("rpm -qa 'ctr2svc-layer-*'").stdout.strip() == ""
        assert vm.ssh("ls -A /opt/containers 2>/dev/null || true").stdout.strip() == ""
    finally:
        vm.ssh(f"rpm -e --nodeps {SHARED} $(rpm -qa 'ctr2svc-layer-*') 2>/dev/null; rm -rf /var/lib/{SHARED}",
               check=False)  # fmt: skip
