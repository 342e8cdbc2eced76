"""A shared layer's package (`ctr2svc-layer-<12 hex>`, one fixed version): the layer's files as the layer
cache unpacked them, with the install scripts that make its whiteouts and opaque directories again.
The same layer gives the same package, whatever service is built on it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctr2svc import metadata
from ctr2svc.image.bundle import Kind
from ctr2svc.image.layers import INSTALL_DIR, PACKAGE_VERSION
from ctr2svc.image.layerstore import Extracted
from ctr2svc.model import PackageFormat
from ctr2svc.package import debian, imagelint
from ctr2svc.package.finish import finish
from ctr2svc.package.naming import format_arch, nfpm_arch, parse_version
from ctr2svc.package.nfpm import (
    mtime,
    nfpm_compression,
    rpm_changelog,
    rpm_section,
    run_nfpm,
    signing,
    tree_contents,
    year,
)
from ctr2svc.service import units


@dataclass(frozen=True)
class LayerPackage:
    """What a layer package is made of: one unpacked unit and the format options of its services."""

    extracted: Extracted
    format: PackageFormat
    arch: str  # Debian's spelling
    compression: str
    maintainer: str
    sign_key_file: Path | None = None
    sign_key_name: str = ""


def layer_filename(layer: LayerPackage) -> str:
    unit = layer.extracted.unit
    version = parse_version(layer.format, PACKAGE_VERSION)
    name = unit.package
    if layer.format is PackageFormat.RPM:
        return f"{name}-{version.in_file_name}.{format_arch(layer.format, layer.arch)}.rpm"
    if layer.format is PackageFormat.APK:
        return f"{name}-{version.in_file_name}.apk"
    return f"{name}_{version.in_file_name}_{layer.arch}.deb"


def layer_epoch(extracted: Extracted) -> int:
    """A layer package's timestamps: its newest file's, so that the same layer gives the same bytes
    whichever image, machine or day it is built from (a repository refuses two different files of
    one name and version)."""
    return max([0, *(e.mtime for e in extracted.scan.entries)])


def layer_config(layer: LayerPackage, staging: Path) -> dict[str, Any]:
    extracted, fmt = layer.extracted, layer.format
    unit = extracted.unit
    scan = extracted.scan
    base = unit.install_dir
    epoch = layer_epoch(extracted)
    stamp = mtime(epoch)
    files_dir = staging / "files"
    files_dir.mkdir(parents=True)
    contents: list[dict[str, Any]] = [
        {"dst": d, "type": "dir", "file_info": {"mode": 0o755, "mtime": stamp}}
        for d in (str(Path(INSTALL_DIR).parent), INSTALL_DIR, base)
    ]
    contents.extend(tree_contents(scan, extracted.root, f"{base}/rootfs", files_dir, epoch))
    batches, chmods, hardlinks = units.ownership_plan(scan)
    generated = {
        "id": unit.id + "\n",
        "layer.json": json.dumps(
            {
                "id": unit.id,
                "diff_ids": [x.diff_id for x in unit.layers],
                "files": len(scan.entries),
                "bytes": scan.file_bytes,
                "whiteouts": len(scan.whiteouts),
                "opaque": len(scan.opaque),
            },
            indent=2,
        )
        + "\n",
        "setup.sh": units.render(
            "layer/setup.sh.j2",
            id=unit.id,
            rootfs=f"{base}/rootfs",
            chown_batches=batches,
            chmods=chmods,
            hardlinks=hardlinks,
            whiteouts=scan.whiteouts,
            opaque=scan.opaque,
        ),
    }
    for name, text in generated.items():
        path = staging / name
        path.write_text(text)
        os.utime(path, (epoch, epoch))
        mode = 0o755 if name.endswith(".sh") else 0o644
        contents.append(
            {"src": str(path), "dst": f"{base}/{name}", "file_info": {"mode": mode, "mtime": stamp}}
        )
    scripts = {}
    templates = dict(units.LAYER_SCRIPTS)
    owned_dirs = [e for e in scan.foreign_owned if e.kind is Kind.DIR]
    if fmt is PackageFormat.APK and owned_dirs:
        templates["preinstall"] = "layer/preinst"
    if fmt is PackageFormat.DEB:
        # dpkg keeps a removed package that has a postrm as "rc" until a purge, which autoremove never
        # runs; dpkg removes a layer's files itself once prerm has taken its whiteouts away.
        del templates["postremove"]
    for key, template in templates.items():
        path = staging / f"script-{key}"
        text = units.render(
            f"{template}.j2", format=str(fmt), base=base, id=unit.id, rootfs=f"{base}/rootfs", dirs=owned_dirs
        )
        path.write_text(text)
        os.utime(path, (epoch, epoch))
        scripts[key] = str(path)
    what = f"{len(unit.layers)} bottom layers merged" if unit.merged else "container image layer"
    size = f"{len(scan.entries)} files, {scan.file_bytes / 1e6:.1f} MB"
    summary = f"{what} {unit.id[:19]} ({size}), shared by ctr2svc services"
    version = parse_version(fmt, PACKAGE_VERSION)
    synopsis = f"{what} {unit.id[:19]} ({size})"
    shared_by = "Shared by the ctr2svc services whose images have it."
    # apk's description is one line; rpm's Summary is the synopsis, its description the rest.
    description = summary if fmt is PackageFormat.APK else f"{shared_by}\n{unit.id}"
    if fmt is PackageFormat.DEB:
        description = debian.description(synopsis, shared_by, unit.id)
        # setup.sh names the image's var/lib/dpkg files it gives owners or deletes.
        mentions_dpkg = "/var/lib/dpkg" in generated["setup.sh"]
        for number, doc in enumerate(layer_debian_files(layer, version.full, epoch, mentions_dpkg)):
            path = staging / f"doc-{number}"
            path.write_bytes(doc.data)
            os.utime(path, (epoch, epoch))
            contents.append({"src": str(path), "dst": doc.dest, "file_info": {"mode": 0o644, "mtime": stamp}})
    config: dict[str, Any] = {
        "name": unit.package,
        "mtime": stamp,
        "arch": nfpm_arch(layer.arch) if fmt is PackageFormat.DEB else format_arch(fmt, layer.arch),
        "platform": "linux",
        "version": version.version,
        "version_schema": "none",
        "section": "admin",
        "priority": "optional",
        "maintainer": metadata.nfpm_text(layer.maintainer),
        "description": description,
        # setfattr marks the layer's opaque directories at install.
        "depends": ["attr"] if scan.opaque else [],
        "contents": contents,
        "scripts": scripts,
        "license": "NOASSERTION",
    }
    if version.release:
        config["release"] = version.release
    if fmt is PackageFormat.DEB:
        config["deb"] = {
            "compression": nfpm_compression(layer.compression),
            "fields": {"X-Ctr2svc-Layer": unit.id},
        }
    elif fmt is PackageFormat.RPM:
        config["rpm"] = rpm_section(synopsis, "System Environment/Base", layer.maintainer, layer.compression)
        change = f"The container image layer {unit.id}, for ctr2svc services."
        changelog = staging / "changelog.yaml"
        changelog.write_text(rpm_changelog(version.full, [change], layer.maintainer, epoch))
        config["changelog"] = str(changelog)
    else:
        config["apk"] = {}
    if layer.sign_key_file is not None:
        signing(config, fmt, layer.sign_key_file, layer.sign_key_name or "ctr2svc.rsa.pub")
    return config


DPKG_TAG = "uses-dpkg-database-directly"


def layer_debian_files(
    layer: LayerPackage, version: str, epoch: int, setup_mentions_dpkg: bool
) -> list[debian.DocFile]:
    """A layer .deb's copyright file, changelog and lintian overrides: nothing of the image or service
    it was built for, so that it stays the same file from any build."""
    extracted = layer.extracted
    unit = extracted.unit
    name = unit.package
    what = f"{len(unit.layers)} bottom layers merged" if unit.merged else "The container image layer"
    change = f"{what} {unit.id}, for ctr2svc services."
    rootfs = f"{unit.install_dir}/rootfs"
    # A layer package depends on attr only when it has opaque directories (layer_config).
    tags = imagelint.raised(
        extracted.root,
        extracted.scan,
        rootfs.lstrip("/"),
        name,
        depends=bool(extracted.scan.opaque),
        epoch=epoch,
    )
    dpkg = DPKG_TAG in tags or setup_mentions_dpkg
    rules = [
        debian.OPT_RULE,
        # One pattern for the image's files and setup.sh: with two, one of them is often unused while
        # the tag is emitted, which lintian warns about (mismatched-override).
        *debian.image_rules(rootfs, tags, (DPKG_TAG,)),
        *(
            [
                (
                    "the image's files use their own dpkg database, and setup.sh remakes its files "
                    "(owners, whiteouts), never the host's",
                    f"{DPKG_TAG} *[{unit.install_dir.lstrip('/')}/*]",
                )
            ]
            if dpkg
            else []
        ),
        (
            "ctr2svc's own control field (the layer's digest), read by ctr2svc repo",
            "unknown-field X-Ctr2svc-Layer",
        ),
        *([debian.ZSTD_RULE] if layer.compression == "zstd" else []),
    ]
    return [
        debian.DocFile(
            f"/usr/share/doc/{name}/copyright",
            debian.copyright_file(
                name,
                f"the container image layer {unit.id}",
                None,
                f"its newest file dates from {year(epoch)}",
                debian.LAYER_LICENSE_UNKNOWN,
            ).encode(),
        ),
        debian.DocFile(
            debian.changelog_path(name, native=True),
            debian.changelog(name, version, [change], layer.maintainer, epoch),
        ),
        debian.overrides(name, rules),
    ]


def pack_layer(layer: LayerPackage, staging: Path) -> Path:
    """Build a layer package in staging (the caller caches and publishes it)."""
    config = layer_config(layer, staging)
    built = staging / layer_filename(layer)
    run_nfpm(config, layer.format, staging, built, layer_epoch(layer.extracted))
    extracted = layer.extracted
    rootfs = f"{extracted.unit.install_dir}/rootfs"
    finish(built, layer.format, extracted.scan, rootfs, staging, layer.sign_key_file, layer_epoch(extracted))
    return built
