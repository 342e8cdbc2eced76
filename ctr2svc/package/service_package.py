"""Lay out the package contents and pack them with nfpm, writing the result atomically.

nfpm is given one explicit entry per file, directory and symlink: a `tree` entry would apply a umask
(`/tmp` 1777 would ship as 1775) and give every file the same owner. Regular files are staged as
hard links under numbered names, so no image file name is ever read as a glob pattern.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ctr2svc import log, metadata
from ctr2svc.errors import PackageError, ToolFailed, UsageError
from ctr2svc.image.bundle import Kind, RootfsScan
from ctr2svc.image.layers import INSTALL_DIR, PACKAGE_VERSION
from ctr2svc.image.layerstore import Extracted
from ctr2svc.model import InitSystem, PackageFormat, ServiceSpec
from ctr2svc.package import debian, imagelint, payload, rpmheader
from ctr2svc.package.naming import created_time, format_arch, nfpm_arch, parse_version
from ctr2svc.run import find_tool, run
from ctr2svc.service import seccomp, units
from ctr2svc.service.runtime_config import capabilities


@dataclass(frozen=True)
class PackageInputs:
    spec: ServiceSpec
    rootfs: Path
    scan: RootfsScan
    config_json: dict[str, Any]
    generated: list[units.GeneratedFile]
    scripts: dict[str, str]
    compression: str
    sign_key_file: Path | None = None
    sign_key_name: str | None = None


def _mtime(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _year(seconds: int) -> int:
    return datetime.fromtimestamp(seconds, tz=UTC).year


# The latest time every format can store: rpm headers and cpio (and apk's and deb's tar headers, whose
# ustar limit 8^11-1 is later) keep a file's time in 32 unsigned bits, i.e. up to 2106-02-07.
MAX_EPOCH = 2**32 - 1


def source_date_epoch() -> int | None:
    text = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):
        raise UsageError(
            f"SOURCE_DATE_EPOCH={text[:30]!r} is not a number of seconds",
            hint="set it to a Unix time such as 1700000000, or unset it",
        )
    if int(text) > MAX_EPOCH:
        raise UsageError(
            f"SOURCE_DATE_EPOCH={text[:30]} is later than the packages can store (at most {MAX_EPOCH}, "
            "in 2106: rpm and cpio keep times in 32 bits)",
            hint="set it to a Unix time such as 1700000000, or unset it",
        )
    return int(text)


def build_epoch(spec: ServiceSpec) -> int:
    """The time every timestamp in the package is clamped to, so that the same image digest, options
    and ctr2svc give the same bytes: $SOURCE_DATE_EPOCH (reproducible-builds.org) if set, else the
    image's creation time, else 0."""
    given = source_date_epoch()
    if given is not None:
        return given
    created = created_time(spec.image.config.created)
    # An image made before 1970 or after 2106 (Go's zero time, a clock gone wrong) is clamped to what
    # the formats can store.
    return min(MAX_EPOCH, max(0, int(created.timestamp()))) if created is not None else 0


# What each format accepts for the payload; the first is the default.
COMPRESSIONS = {
    PackageFormat.DEB: ("zstd", "gzip", "xz", "none"),
    PackageFormat.RPM: ("zstd", "gzip", "xz"),
    PackageFormat.APK: ("gzip",),  # apk packages are gzip streams by definition
}


def filename(spec: ServiceSpec) -> str:
    """The file name each format's tools and repositories expect."""
    version = parse_version(spec.format, spec.version).in_file_name
    if spec.format is PackageFormat.RPM:
        return f"{spec.name}-{version}.{format_arch(spec.format, spec.arch)}.rpm"
    if spec.format is PackageFormat.APK:
        # Alpine's convention: the architecture is the repository directory's name, not the file's.
        return f"{spec.name}-{version}.apk"
    return f"{spec.name}_{version}_{spec.arch}.deb"


def tree_contents(
    scan: RootfsScan, source: Path, dest: str, files_dir: Path, epoch: int
) -> list[dict[str, Any]]:
    """nfpm's entries for a tree of image files: SOURCE (scanned as SCAN) installed at DEST."""
    contents: list[dict[str, Any]] = []
    staged: dict[str, Path] = {}
    for number, entry in enumerate(scan.entries):
        dst = f"{dest}/{entry.path}" if entry.path else dest
        info = {"mode": entry.mode, "mtime": _mtime(min(entry.mtime, epoch))}
        if entry.kind is Kind.DIR:
            contents.append({"dst": dst, "type": "dir", "file_info": info})
        elif entry.kind is Kind.SYMLINK:
            # With no mode nfpm stats the link's *target* on the build host: "/run" would make var/run a
            # directory with this host's mode and mtime. A link's own mode is always 0777 on Linux.
            info["mode"] = 0o777
            contents.append({"src": entry.target, "dst": dst, "type": "symlink", "file_info": info})
        else:
            # A hard link's second name is given to nfpm as a copy of the first (nfpm cannot write a
            # hard link): finish() makes it one in the package nfpm wrote.
            first = staged.get(entry.target) if entry.kind is Kind.HARDLINK and entry.target else None
            if first is None:
                first = files_dir / str(number)
                os.link(source / entry.path, first)
                staged[entry.path] = first
            contents.append({"src": str(first), "dst": dst, "type": "file", "file_info": info})
    return contents


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


def nfpm_config(inputs: PackageInputs, staging: Path) -> dict[str, Any]:
    spec = inputs.spec
    layout = spec.layout
    files_dir = staging / "files"
    files_dir.mkdir(parents=True)
    contents: list[dict[str, Any]] = []
    epoch = build_epoch(spec)

    def directory(dst: str, mode: int = 0o755) -> None:
        contents.append({"dst": dst, "type": "dir", "file_info": {"mode": mode, "mtime": _mtime(epoch)}})

    def staged_file(data: bytes | str, name: str) -> Path:
        path = staging / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        # nfpm takes some timestamps from the file itself (apk's scripts).
        os.utime(path, (epoch, epoch))
        return path

    for parent in (
        layout.prefix,
        f"{layout.prefix}/{spec.name}",
        layout.image_dir,
        str(Path(layout.helper).parent),
    ):
        directory(parent)

    if not spec.layers:
        contents.extend(tree_contents(inputs.scan, inputs.rootfs, layout.rootfs, files_dir, epoch))

    config_path = staged_file(json.dumps(inputs.config_json, indent=2) + "\n", "config.json")
    contents.append(
        {
            "src": str(config_path),
            "dst": f"{layout.image_dir}/config.json",
            "file_info": {"mode": 0o644, "mtime": _mtime(epoch)},
        }
    )
    image_json = staged_file(json.dumps(image_metadata(spec), indent=2) + "\n", "image.json")
    contents.append(
        {
            "src": str(image_json),
            "dst": f"{layout.image_dir}/image.json",
            "file_info": {"mode": 0o644, "mtime": _mtime(epoch)},
        }
    )
    directory(layout.config_dir)
    for number, generated in enumerate(inputs.generated):
        path = staged_file(generated.content, f"generated-{number}")
        item: dict[str, Any] = {
            "src": str(path),
            "dst": generated.dest,
            "file_info": {"mode": generated.mode, "mtime": _mtime(epoch)},
        }
        if generated.config:
            item["type"] = "config|noreplace"
        contents.append(item)

    fmt = spec.format
    if fmt is PackageFormat.DEB:
        for number, doc in enumerate(
            debian_files(spec, inputs.scan, inputs.rootfs, epoch, inputs.compression)
        ):
            path = staged_file(doc.data, f"doc-{number}")
            contents.append(
                {"src": str(path), "dst": doc.dest, "file_info": {"mode": 0o644, "mtime": _mtime(epoch)}}
            )
    scripts = {key: str(staged_file(text, f"script-{key}")) for key, text in inputs.scripts.items()}
    # nfpm keeps the scripts only apk knows in its apk section.
    apk_scripts = {key: scripts.pop(key) for key in ("preupgrade", "postupgrade") if key in scripts}
    init = "an OpenRC" if spec.init is InitSystem.OPENRC else "a systemd"
    if fmt is PackageFormat.APK:
        # .PKGINFO is one "key = value" per line: apk's description has to be a single line.
        description = f"{spec.description}, from {spec.image.pinned}"
    elif fmt is PackageFormat.DEB:
        # Lines within lintian's 80 columns: the image's name wrapped, its digest on a line of its own.
        name = spec.image.pinned.rsplit("@", 1)[0]
        runs = f"The container image {name}, run as {init} service with {spec.runtime}, pinned to the digest:"
        description = debian.description(spec.description, runs, spec.image.digest)
    else:
        # rpmlint's 79 columns, as the .deb's: the image's name wrapped, its digest on a line of its
        # own. The Summary is the first line already: the description does not repeat it.
        name = spec.image.pinned.rsplit("@", 1)[0]
        runs = f"The container image {name}, run as {init} service with {spec.runtime}, pinned to the digest:"
        description = "\n".join([*debian.wrap(runs), spec.image.digest])
    version = parse_version(fmt, spec.version)
    config: dict[str, Any] = {
        "name": spec.name,
        # For what nfpm makes itself (parent directories, the deb's ar members, rpm's build time).
        "mtime": _mtime(epoch),
        # nfpm translates Go's architecture names for deb; the other formats get theirs verbatim.
        "arch": nfpm_arch(spec.arch) if fmt is PackageFormat.DEB else format_arch(fmt, spec.arch),
        "platform": "linux",
        "version": version.version,
        # Our versions are already valid for the format; nfpm must not reinterpret them as semver.
        "version_schema": "none",
        "section": "admin",
        "priority": "optional",
        # nfpm expands ${VAR} in these three with the build's environment: "$" is escaped for it.
        "maintainer": metadata.nfpm_text(spec.maintainer),
        "description": metadata.nfpm_text(description),
        "depends": [
            spec.runtime,
            *(["openrc"] if spec.init is InitSystem.OPENRC else []),
            *(layer.package for layer in spec.layers),
            # What the service helper runs besides runc and the Essential packages: mount(8) is
            # Priority: required in Debian but not Essential. (awk is de facto essential: lintian's
            # needlessly-depends-on-awk.)
            *(["mount"] if fmt is PackageFormat.DEB else []),
            *spec.network_depends,
            # Compose applications: the services this one needs, tini for `init: true`.
            *spec.package_depends,
        ],
        "contents": contents,
        "scripts": scripts,
    }
    if version.release:
        config["release"] = version.release
    if version.epoch is not None:
        config["epoch"] = str(version.epoch)
    if fmt is PackageFormat.DEB:
        config["deb"] = {
            "compression": nfpm_compression(inputs.compression),
            "fields": {
                "X-Ctr2svc-Image": spec.image.pinned,
                "X-Ctr2svc-Image-Digest": spec.image.digest,
            },
        }
    elif fmt is PackageFormat.RPM:
        from ctr2svc import __version__

        reference, digest = spec.image.pinned.rsplit("@", 1)
        runs = f"run as {init} service by ctr2svc {__version__}"
        change = f"The container image {reference}, pinned to {digest}, {runs}."
        config["rpm"] = rpm_section(
            spec.description, "System Environment/Daemons", spec.maintainer, inputs.compression
        )
        config["changelog"] = str(
            staged_file(rpm_changelog(version.full, [change], spec.maintainer, epoch), "changelog.yaml")
        )
    else:
        config["apk"] = {"scripts": apk_scripts}
    if spec.homepage:
        config["homepage"] = metadata.nfpm_text(spec.homepage)
    if inputs.sign_key_file is not None:
        _sign(config, fmt, inputs.sign_key_file, inputs.sign_key_name or f"{spec.name}.rsa.pub")
    if spec.license:
        config["license"] = spec.license
    elif fmt in (PackageFormat.RPM, PackageFormat.APK):
        # RPM wants a License tag and .PKGINFO a license line (`apk info -L`, abuild's is mandatory);
        # SPDX's word for "the image does not say" is honest about it, as the .deb's copyright file.
        config["license"] = "NOASSERTION"
    return config


def debian_files(
    spec: ServiceSpec, scan: RootfsScan, root: Path, epoch: int, compression: str
) -> list[debian.DocFile]:
    """A service .deb's copyright file, changelog and lintian overrides (ROOT: the image's files)."""
    from ctr2svc import __version__

    name, layout = spec.name, spec.layout
    version = parse_version(spec.format, spec.version)
    reference, digest = spec.image.pinned.rsplit("@", 1)
    init = "an OpenRC" if spec.init is InitSystem.OPENRC else "a systemd"
    runs = f"run as {init} service by ctr2svc {__version__}"
    change = f"The container image {reference}, pinned to {digest}, {runs}."
    rules = [debian.OPT_RULE]
    if not spec.layers:
        # A service package always has a Depends (runc).
        tags = imagelint.raised(root, scan, layout.rootfs.lstrip("/"), name, depends=True, epoch=epoch)
        rules += debian.image_rules(layout.rootfs, tags)
    rules += [
        ("/etc/NAME/env is where the admin puts passwords: root-only on purpose",
         f"non-standard-file-perm 0600 != 0644 [{layout.config_dir.lstrip('/')}/env]"),
        ("ctr2svc's own control fields (the pinned image, its digest), read by ctr2svc repo and update",
         "unknown-field X-Ctr2svc-*"),
    ]  # fmt: skip
    if spec.init is InitSystem.OPENRC:
        script = layout.init_script.lstrip("/")
        rules += [
            ("an OpenRC runscript: openrc-run is its interpreter (from openrc, a dependency)",
             f"unusual-interpreter /sbin/openrc-run [{script}]"),
            ("openrc-run provides the functions; /lib/lsb/init-functions is for sysvinit scripts",
             f"init.d-script-does-not-source-init-functions [{script}]"),
            ("built for OpenRC hosts (--init openrc); the systemd variant is a package of its own",
             f"missing-systemd-service-for-init.d-script {name} [{script}]"),
        ]  # fmt: skip
        rules += [
            ("openrc-run implements restart itself, which lintian's scan for the word cannot see",
             f"init.d-script-does-not-implement-required-option restart [{script}]"),
            ("an OpenRC runscript has no force-reload: a command is an sh function, and no function "
             "can be named so (rc-service NAME restart does it)",
             f"init.d-script-does-not-implement-required-option force-reload [{script}]"),
        ]  # fmt: skip
    else:
        rules.append(
            ("postrm: systemctl reset-failed, so that a removed unit leaves no failed state behind "
             "(deb-systemd-helper and deb-systemd-invoke have no such action)",
             "maintainer-script-calls-systemctl [postrm:*]")
        )  # fmt: skip
    if compression == "zstd":
        rules.append(debian.ZSTD_RULE)
    return [
        debian.DocFile(
            f"/usr/share/doc/{name}/copyright",
            debian.copyright_file(
                name, spec.image.pinned, spec.license, f"the image was made in {_year(epoch)}"
            ).encode(),
        ),
        debian.DocFile(
            debian.changelog_path(name, native=version.release is None),
            debian.changelog(name, version.full, [change], spec.maintainer, epoch),
        ),
        debian.overrides(name, rules),
    ]


def _sign(config: dict[str, Any], fmt: PackageFormat, key_file: Path, apk_key_name: str) -> None:
    """nfpm's signature section for FMT (it reads the key's passphrase from $NFPM_PASSPHRASE)."""
    key = str(key_file.absolute())
    if fmt is PackageFormat.DEB:
        # dpkg-sig/debsigs "origin" style: a _gpgorigin member over debian-binary, control and data.
        config["deb"]["signature"] = {"key_file": key, "method": "debsign", "type": "origin"}
    elif fmt is PackageFormat.RPM:
        config["rpm"]["signature"] = {"key_file": key}
    else:
        config["apk"]["signature"] = {"key_file": key, "key_name": apk_key_name}


def image_metadata(spec: ServiceSpec) -> dict[str, Any]:
    from ctr2svc import __version__

    image = spec.image
    return {
        "reference": str(image.reference),
        "pinned": image.pinned,
        "digest": image.digest,
        "index_digest": image.index_digest,
        "platform": image.config.platform,
        "created": image.config.created,
        "exposed_ports": list(image.config.exposed_ports),
        "volumes": {v.container_path: v.host_path for v in spec.volumes},
        "user": {"uid": spec.uid, "gid": spec.gid, "override": spec.user},
        "security": {
            "privileged": spec.security.privileged,
            "capabilities": capabilities(spec),
            "cap_add": list(spec.security.cap_add),
            "cap_drop": list(spec.security.cap_drop),
            "pids_limit": spec.security.pids_limit,
            # Which allow-list, and which version of it: the filter is fixed at build time.
            "seccomp": "none"
            if spec.security.privileged
            else f"Docker's default from {seccomp.load().source}",
        },
        "layers": [
            {"id": x.id, "package": x.package, "diff_ids": list(x.diff_ids), "size": x.size}
            for x in spec.layers
        ],
        "generator": f"ctr2svc {__version__}",
    }


def nfpm_compression(name: str) -> str:
    """nfpm's spelling: zstd at zstd's own default level 3, where nfpm's plain "zstd" means its slower
    "better" level (bench/README.md: about twice the time for a package 6% smaller)."""
    return "zstd:3" if name == "zstd" else name


def pack(inputs: PackageInputs, staging: Path, output_dir: Path) -> Path:
    """Build the package in staging and move it into output_dir in one rename."""
    spec = inputs.spec
    if spec.format is PackageFormat.DEB and debian.local_maintainer(spec.maintainer):
        log.warn(f"the maintainer {spec.maintainer!r} is not a real address: {debian.LOCAL_ADDRESS_HINT}")
    config = nfpm_config(inputs, staging)
    built = staging / filename(inputs.spec)
    total = inputs.scan.file_bytes if not inputs.spec.layers else 0
    run_nfpm(config, inputs.spec.format, staging, built, build_epoch(inputs.spec), total)
    # With shared layers the image's files are in the layer packages.
    finish(
        built,
        spec.format,
        None if spec.layers else inputs.scan,
        spec.layout.rootfs,
        staging,
        inputs.sign_key_file,
        build_epoch(spec),
    )
    return publish(built, output_dir, move=True)


def run_nfpm(
    config: dict[str, Any], fmt: PackageFormat, staging: Path, built: Path, epoch: int, total: int = 0
) -> None:
    nfpm = find_tool("nfpm", "build packages")
    config_path = staging / "nfpm.yaml"
    # JSON is YAML: no YAML writer needed, and no value is ever misread as another YAML type.
    config_path.write_text(json.dumps(config, indent=1))
    try:
        # A progress line for the one large package of a flat build; layer packages are packed in
        # worker threads, several at once, and the step line says what they are.
        with log.Progress("packing", total=total) if total else contextlib.nullcontext() as progress:
            run(
                [nfpm, "package", "-f", config_path, "-p", str(fmt), "-t", built],
                what="build the package",
                timeout=7200,
                env={metadata.NFPM_DOLLAR_VAR: "$", "SOURCE_DATE_EPOCH": str(epoch)},
                on_start=progress.watch_reads if progress is not None else None,
            )
    except ToolFailed as exc:
        raise PackageError(
            f"nfpm could not build the package: {exc.brief.split(': ', 1)[-1]}",
            hint="run with --debug for nfpm's full output",
            details=exc.details,
        ) from exc


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
    stamp = _mtime(epoch)
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
        _sign(config, fmt, layer.sign_key_file, layer.sign_key_name or "ctr2svc.rsa.pub")
    return config


def rpm_section(summary: str, group: str, packager: str, compression: str) -> dict[str, Any]:
    """nfpm's rpm section: the Summary capitalised and within rpmlint's 79 columns, and a fixed build
    host (nfpm's default is this machine's name, which would make the package differ by machine;
    openSUSE's reproducible builds use the same word)."""
    summary = metadata.one_line(summary, debian.SYNOPSIS_LIMIT)
    return {
        "compression": nfpm_compression(compression),
        "summary": summary[:1].upper() + summary[1:],
        "group": group,
        "packager": packager,
        "buildhost": "reproducible",
    }


def rpm_changelog(version: str, changes: list[str], packager: str, epoch: int) -> str:
    """A one-entry %changelog as nfpm reads it (goreleaser/chglog's YAML; JSON is YAML), dated EPOCH:
    rpm shows it as "* DATE PACKAGER - VERSION" and one "- CHANGE" each."""
    notes = [
        "\n  ".join(textwrap.wrap(c, debian.LINE_LIMIT - 2, break_long_words=False, break_on_hyphens=False))
        for c in changes
    ]
    entry = {
        "semver": version,
        "date": _mtime(epoch),
        "packager": packager,
        "changes": [{"note": note} for note in notes],
    }
    return json.dumps([entry], indent=1) + "\n"


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
                f"its newest file dates from {_year(epoch)}",
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


def publish(built: Path, output_dir: Path, *, move: bool = False) -> Path:
    """Put `built` into output_dir atomically: readers see the old file or the whole new one.

    move=True lets a file from our own scratch space be renamed rather than copied when it can be.
    """
    final = output_dir / built.name
    if move:
        try:
            # Same filesystem (the cache beside the output): one rename, no copy of a large file.
            built.replace(final)
            log.debug(f"wrote {final}")
            return final
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise PackageError(
                    f"cannot write {final}: {exc.strerror}",
                    hint="check the permissions of the output directory",
                ) from exc
    partial = output_dir / f".{built.name}.partial-{os.getpid()}"
    try:
        shutil.copyfile(built, partial)
        partial.replace(final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise PackageError(
            f"cannot write {final}: {exc.strerror}",
            hint="check free space and permissions of the output directory",
        ) from exc
    log.debug(f"wrote {final}")
    return final
