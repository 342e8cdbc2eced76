"""The service's package: the image's root (unless shared layers hold it), the files the service stage
generated, the maintainer scripts, the runtime config and the metadata each format wants, packed by
nfpm (nfpm.py) and finished where nfpm cannot (finish.py); a flat .deb's image files are written by
ctr2svc into what nfpm packed, in one streaming pass (debdata.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctr2svc import log, metadata
from ctr2svc.image.bundle import RootfsScan
from ctr2svc.model import InitSystem, PackageFormat, ServiceSpec
from ctr2svc.package import debdata, debian, imagelint
from ctr2svc.package.finish import finish
from ctr2svc.package.naming import created_time, format_arch, nfpm_arch, parse_version
from ctr2svc.package.nfpm import (
    MAX_EPOCH,
    mtime,
    nfpm_compression,
    publish,
    rpm_changelog,
    rpm_section,
    run_nfpm,
    signing,
    source_date_epoch,
    tree_contents,
    year,
)
from ctr2svc.service import nspawn, seccomp, units
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


def filename(spec: ServiceSpec) -> str:
    """The file name each format's tools and repositories expect."""
    version = parse_version(spec.format, spec.version).in_file_name
    if spec.format is PackageFormat.RPM:
        return f"{spec.name}-{version}.{format_arch(spec.format, spec.arch)}.rpm"
    if spec.format is PackageFormat.APK:
        # Alpine's convention: the architecture is the repository directory's name, not the file's.
        return f"{spec.name}-{version}.apk"
    return f"{spec.name}_{version}_{spec.arch}.deb"


def nfpm_config(inputs: PackageInputs, staging: Path) -> dict[str, Any]:
    spec = inputs.spec
    layout = spec.layout
    files_dir = staging / "files"
    files_dir.mkdir(parents=True)
    contents: list[dict[str, Any]] = []
    epoch = build_epoch(spec)

    def directory(dst: str, mode: int = 0o755) -> None:
        contents.append({"dst": dst, "type": "dir", "file_info": {"mode": mode, "mtime": mtime(epoch)}})

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

    if not spec.layers and spec.format is not PackageFormat.DEB:
        # A .deb's image files are written after nfpm (debdata.py), in one pass and with hard links.
        contents.extend(tree_contents(inputs.scan, inputs.rootfs, layout.rootfs, files_dir, epoch))

    config_path = staged_file(json.dumps(inputs.config_json, indent=2) + "\n", "config.json")
    contents.append(
        {
            "src": str(config_path),
            "dst": f"{layout.image_dir}/config.json",
            "file_info": {"mode": 0o644, "mtime": mtime(epoch)},
        }
    )
    image_json = staged_file(json.dumps(image_metadata(spec), indent=2) + "\n", "image.json")
    contents.append(
        {
            "src": str(image_json),
            "dst": f"{layout.image_dir}/image.json",
            "file_info": {"mode": 0o644, "mtime": mtime(epoch)},
        }
    )
    directory(layout.config_dir)
    for number, generated in enumerate(inputs.generated):
        path = staged_file(generated.content, f"generated-{number}")
        item: dict[str, Any] = {
            "src": str(path),
            "dst": generated.dest,
            "file_info": {"mode": generated.mode, "mtime": mtime(epoch)},
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
                {"src": str(path), "dst": doc.dest, "file_info": {"mode": 0o644, "mtime": mtime(epoch)}}
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
        "mtime": mtime(epoch),
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
            nspawn.package(spec.runtime),
            *(["openrc"] if spec.init is InitSystem.OPENRC else []),
            *(layer.package for layer in spec.layers),
            # What the service helper runs besides runc and the Essential packages: mount(8) is
            # Priority: required in Debian but not Essential. (awk is de facto essential: lintian's
            # needlessly-depends-on-awk.)
            *(["mount"] if fmt is PackageFormat.DEB else []),
            *spec.network_depends,
            *spec.userns_depends,
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
        signing(config, fmt, inputs.sign_key_file, inputs.sign_key_name or f"{spec.name}.rsa.pub")
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
                name, spec.image.pinned, spec.license, f"the image was made in {year(epoch)}"
            ).encode(),
        ),
        debian.DocFile(
            debian.changelog_path(name, native=version.release is None),
            debian.changelog(name, version.full, [change], spec.maintainer, epoch),
        ),
        debian.overrides(name, rules),
    ]


def image_metadata(spec: ServiceSpec) -> dict[str, Any]:
    from ctr2svc import __version__

    image = spec.image
    return {
        "reference": str(image.reference),
        "pinned": image.pinned,
        "digest": image.digest,
        "index_digest": image.index_digest,
        # Who vouched for the image: the signature policy's requirement skopeo enforced on the digest,
        # with the keys it trusts by fingerprint (`ctr2svc inspect PACKAGE` shows it).
        "trust": image.trust,
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
            "seccomp": "systemd-nspawn's own"
            if spec.runtime == "nspawn"
            else "none"
            if spec.security.privileged
            else f"Docker's default from {seccomp.load().source}",
        },
        "layers": [
            {"id": x.id, "package": x.package, "diff_ids": list(x.diff_ids), "size": x.size}
            for x in spec.layers
        ],
        "generator": f"ctr2svc {__version__}",
    }


def pack(inputs: PackageInputs, staging: Path, output_dir: Path) -> Path:
    """Build the package in staging and move it into output_dir in one rename."""
    spec = inputs.spec
    if spec.format is PackageFormat.DEB and debian.local_maintainer(spec.maintainer):
        log.warn(f"the maintainer {spec.maintainer!r} is not a real address: {debian.LOCAL_ADDRESS_HINT}")
    config = nfpm_config(inputs, staging)
    built = staging / filename(inputs.spec)
    epoch = build_epoch(spec)
    streamed = spec.format is PackageFormat.DEB and not spec.layers
    total = inputs.scan.file_bytes if not (spec.layers or streamed) else 0
    run_nfpm(config, spec.format, staging, built, epoch, total)
    if streamed:
        debdata.add_rootfs(
            built,
            inputs.scan,
            inputs.rootfs,
            spec.layout.rootfs,
            epoch,
            staging / "data",
            inputs.sign_key_file,
        )
    else:
        # With shared layers the image's files are in the layer packages.
        scan = None if spec.layers else inputs.scan
        finish(built, spec.format, scan, spec.layout.rootfs, staging, inputs.sign_key_file, epoch)
    return publish(built, output_dir, move=True)
