"""Upgrades that roll back: which packages arm one, and where its state lives (docs/service.md).

The work is the helper's (ctr2svc/runtime/rollback.sh), which the package's preinst also carries: it
runs before the new helper is unpacked.
"""

from __future__ import annotations

from ctr2svc.model import InitSystem, Layout, PackageFormat, ServiceSpec

# Host-wide, beside the private networks' address book (/var/lib/ctr2svc), on /var/lib's file system:
# a snapshot of /var/lib/NAME there can be a btrfs snapshot or a reflink copy, and is put back by a rename.
STATE_ROOT = "/var/lib/ctr2svc/rollback"


def state_dir(layout: Layout) -> str:
    """The upgrade's state and the data's snapshot."""
    return f"{STATE_ROOT}/{layout.name}"


def previous_dir(layout: Layout) -> str:
    """The previous version's helper, unit and image, kept beside the image directories: the image as
    hard links, which need the same file system."""
    return f"{layout.prefix}/{layout.name}/.rollback"


def applies(spec: ServiceSpec) -> bool:
    """Where upgrades roll back: .debs and .rpms for systemd (dpkg's preinst and postinst, rpm's %pre
    and %post), and .apks and .debs for OpenRC (apk's pre-upgrade and post-upgrade), for a service that stays
    running (a oneshot unit has no readiness to wait for)."""
    if spec.oneshot:
        return False
    if spec.init is InitSystem.SYSTEMD:
        return spec.format in (PackageFormat.DEB, PackageFormat.RPM)
    return spec.format in (PackageFormat.APK, PackageFormat.DEB)


def openrc_file(layout: Layout) -> str:
    """Under OpenRC, what a rollback writes for the init script to read: the kept version's files (the
    init script itself stays the package's)."""
    return f"{state_dir(layout)}/openrc"


def kept_path(spec: ServiceSpec) -> str:
    """The file a rollback keeps beside the previous version's helper and image: its unit, or its
    OpenRC init script."""
    return spec.layout.init_script if spec.init is InitSystem.OPENRC else spec.layout.unit_path
