"""What nfpm cannot write, written into the package it built: hard links as hard links in every format
(payload.py for .deb and .apk, rpmheader.py for .rpm), the .apk's symlink checksums, and
%verify(not user group) on the rpm's files whose owner the ownership script sets.
"""

from __future__ import annotations

from pathlib import Path

from ctr2svc import log
from ctr2svc.image.bundle import Kind, RootfsScan
from ctr2svc.model import PackageFormat
from ctr2svc.package import payload, rpmheader


def hardlink_groups(scan: RootfsScan, dest: str) -> list[tuple[str, ...]]:
    """The names (package paths) of each file tree_contents() gives nfpm more than once: the first
    name, then its hard links."""
    groups: dict[str, list[str]] = {}
    for entry in scan.entries:
        if entry.kind is Kind.HARDLINK and entry.target in groups:
            groups[entry.target].append(entry.path)
        elif entry.kind in (Kind.FILE, Kind.HARDLINK):
            groups[entry.path] = [entry.path]
    return [
        tuple(payload.package_path(f"{dest}/{path}") for path in names)
        for names in groups.values()
        if len(names) > 1
    ]


def finish(
    built: Path,
    fmt: PackageFormat,
    scan: RootfsScan | None,
    rootfs: str,
    staging: Path,
    key_file: Path | None,
    epoch: int,
) -> None:
    """What nfpm cannot write, written into the package it built: hard links as hard links in every
    format (payload.py for .deb and .apk, rpmheader.py for .rpm), the .apk's symlink checksums, and
    %verify(not user group) on the rpm's files whose owner the ownership script sets. ROOTFS is where
    SCAN's files are installed. KEY_FILE signs again what was changed of a signed package."""
    if fmt is PackageFormat.RPM:
        if scan is not None:
            finish_rpm(built, scan, rootfs, key_file, epoch)
        return
    groups = hardlink_groups(scan, rootfs) if scan is not None else []
    if fmt is PackageFormat.DEB and payload.relink_deb(built, groups, staging / "relink", key_file, epoch):
        log.debug(f"{built.name}: Installed-Size counted again, {len(groups)} hard-linked files linked")
    elif fmt is PackageFormat.APK and payload.finish_apk(built, groups, staging / "relink", key_file):
        log.debug(f"{built.name}: {len(groups)} hard-linked files linked, symlink checksums written")


def finish_rpm(built: Path, scan: RootfsScan, rootfs: str, key_file: Path | None, epoch: int) -> None:
    def installed(rel: str) -> str:
        return f"{rootfs}/{rel}" if rel else rootfs

    owners = [installed(e.path) for e in scan.entries if (e.uid, e.gid) != (0, 0)]
    links = [(installed(e.path), installed(e.target)) for e in scan.hardlinks if e.target]
    if rpmheader.finish(built, owner_paths=owners, links=links, key_file=key_file, epoch=epoch):
        log.debug(f"{built.name}: verify flags and {len(links)} hard links written")
