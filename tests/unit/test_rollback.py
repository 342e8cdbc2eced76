"""Which packages arm upgrades that roll back (.deb and .rpm for systemd, .apk and .deb for OpenRC, a
service that stays up), and what they carry for it: a preinst (%pre, apk's pre-upgrade) with the
helper's snapshot part, and /etc/NAME/rollback."""

from __future__ import annotations

import dataclasses

import pytest

from ctr2svc import runtime
from ctr2svc.model import InitSystem, PackageFormat, ServiceSpec
from ctr2svc.service import rollback, units
from tests.unit.conftest import make_spec
from tests.unit.test_templates import for_format, sample_scan

VARIANTS = {
    "deb": (PackageFormat.DEB, InitSystem.SYSTEMD, "9.0.0", True),
    "rpm": (PackageFormat.RPM, InitSystem.SYSTEMD, "9.0.0-1", True),
    "deb-openrc": (PackageFormat.DEB, InitSystem.OPENRC, "9.0.0", True),
    "apk": (PackageFormat.APK, InitSystem.OPENRC, "9.0.0-r0", True),
}


def variant(name: str) -> ServiceSpec:
    fmt, init, version, _ = VARIANTS[name]
    return for_format(make_spec(), fmt, init, version)


@pytest.mark.parametrize("name", VARIANTS)
def test_which_packages_roll_back(name: str) -> None:
    spec = variant(name)
    armed = VARIANTS[name][3]
    assert rollback.applies(spec) is armed
    scripts = units.package_scripts(spec)
    files = {f.dest: f for f in units.service_files(spec, sample_scan())}
    # apk runs its pre-upgrade on upgrades only (nfpm's apk section), as the postinst's work is its
    # post-upgrade's.
    before, after = (
        ("preupgrade", "postupgrade") if spec.format is PackageFormat.APK else ("preinstall", "postinstall")
    )
    assert (before in scripts) is armed
    assert ("/etc/valkey-svc/rollback" in files) is armed
    if armed:
        assert runtime.snapshot_part() in scripts[before]
        assert "upgrade-restart" in scripts[after]
        assert files["/etc/valkey-svc/rollback"].config
    if spec.init is InitSystem.OPENRC:
        # The init script reads what a rollback writes, and stays the package's file.
        init = files["/etc/init.d/valkey-svc"].content
        assert f". {rollback.openrc_file(spec.layout)}\n" in init


def test_a_oneshot_service_does_not_roll_back() -> None:
    spec = dataclasses.replace(variant("deb"), oneshot=True)
    assert not rollback.applies(spec)
    assert "preinstall" not in units.package_scripts(spec)


def test_where_the_state_lives() -> None:
    layout = make_spec().layout
    assert rollback.state_dir(layout) == "/var/lib/ctr2svc/rollback/valkey-svc"
    # Beside the versioned image directories (hard links need their file system), hidden from `ls`.
    assert rollback.previous_dir(layout) == "/opt/containers/valkey-svc/.rollback"
