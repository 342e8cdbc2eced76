"""Lay out the package contents and pack them with nfpm, writing the result atomically.

nfpm is given one explicit entry per file, directory and symlink: a `tree` entry would apply a umask
(`/tmp` 1777 would ship as 1775) and give every file the same owner. Regular files are staged as
hard links under numbered names, so no image file name is ever read as a glob pattern.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ctr2svc import log
from ctr2svc.bundle import Kind, RootfsScan
from ctr2svc.errors import PackageError, ToolFailed
from ctr2svc.model import PackageFormat, ServiceSpec
from ctr2svc.naming import nfpm_arch
from ctr2svc.run import find_tool, run
from ctr2svc.units import GeneratedFile


@dataclass(frozen=True)
class PackageInputs:
    spec: ServiceSpec
    rootfs: Path
    scan: RootfsScan
    config_json: dict[str, Any]
    generated: list[GeneratedFile]
    scripts: dict[str, str]
    compression: str


def _mtime(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def filename(spec: ServiceSpec, fmt: PackageFormat) -> str:
    # Debian file names leave the epoch out.
    version = spec.version.split(":", 1)[-1]
    return f"{spec.name}_{version}_{spec.arch}.{fmt}"


def nfpm_config(inputs: PackageInputs, staging: Path) -> dict[str, Any]:
    spec = inputs.spec
    layout = spec.layout
    files_dir = staging / "files"
    files_dir.mkdir(parents=True)
    contents: list[dict[str, Any]] = []
    staged: dict[str, Path] = {}

    def directory(dst: str, mode: int = 0o755, mtime: int | None = None) -> None:
        info: dict[str, Any] = {"mode": mode}
        if mtime is not None:
            info["mtime"] = _mtime(mtime)
        contents.append({"dst": dst, "type": "dir", "file_info": info})

    def staged_file(data: bytes | str, name: str) -> Path:
        path = staging / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path

    for parent in (
        layout.prefix,
        f"{layout.prefix}/{spec.name}",
        layout.image_dir,
        str(Path(layout.helper).parent),
    ):
        directory(parent)

    for number, entry in enumerate(inputs.scan.entries):
        dst = f"{layout.rootfs}/{entry.path}" if entry.path else layout.rootfs
        info = {"mode": entry.mode, "mtime": _mtime(entry.mtime)}
        if entry.kind is Kind.DIR:
            contents.append({"dst": dst, "type": "dir", "file_info": info})
        elif entry.kind is Kind.SYMLINK:
            contents.append({"src": entry.target, "dst": dst, "type": "symlink"})
        else:
            # A hard link's second name ships as a copy; ownership.sh links it again on install.
            source = staged[entry.target] if entry.kind is Kind.HARDLINK and entry.target else None
            if source is None:
                source = files_dir / str(number)
                os.link(inputs.rootfs / entry.path, source)
                staged[entry.path] = source
            contents.append({"src": str(source), "dst": dst, "type": "file", "file_info": info})

    config_path = staged_file(json.dumps(inputs.config_json, indent=2) + "\n", "config.json")
    contents.append(
        {"src": str(config_path), "dst": f"{layout.image_dir}/config.json", "file_info": {"mode": 0o644}}
    )
    metadata = staged_file(json.dumps(image_metadata(spec), indent=2) + "\n", "image.json")
    contents.append(
        {"src": str(metadata), "dst": f"{layout.image_dir}/image.json", "file_info": {"mode": 0o644}}
    )
    for number, generated in enumerate(inputs.generated):
        path = staged_file(generated.content, f"generated-{number}")
        contents.append({"src": str(path), "dst": generated.dest, "file_info": {"mode": generated.mode}})

    scripts = {
        key: str(staged_file(inputs.scripts[name], f"script-{name}"))
        for key, name in (("postinstall", "postinst"), ("preremove", "prerm"), ("postremove", "postrm"))
        if name in inputs.scripts
    }
    description = (
        f"{spec.description}\nContainer image {spec.image.pinned}, run as a systemd service with runc."
    )
    config: dict[str, Any] = {
        "name": spec.name,
        "arch": nfpm_arch(spec.arch),
        "platform": "linux",
        "version": spec.version,
        # Our versions are already valid for the format; nfpm must not reinterpret them as semver.
        "version_schema": "none",
        "section": "admin",
        "priority": "optional",
        "maintainer": spec.maintainer,
        "description": description,
        "depends": ["runc"],
        "contents": contents,
        "scripts": scripts,
        "deb": {
            "compression": inputs.compression,
            "fields": {
                "X-Ctr2svc-Image": spec.image.pinned,
                "X-Ctr2svc-Image-Digest": spec.image.digest,
            },
        },
    }
    if spec.homepage:
        config["homepage"] = spec.homepage
    if spec.license:
        config["license"] = spec.license
    return config


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
        "generator": f"ctr2svc {__version__}",
    }


def pack(inputs: PackageInputs, fmt: PackageFormat, staging: Path, output_dir: Path) -> Path:
    """Build the package in staging and move it into output_dir in one rename."""
    nfpm = find_tool("nfpm", "build packages")
    config = nfpm_config(inputs, staging)
    config_path = staging / "nfpm.yaml"
    # JSON is YAML: no YAML writer needed, and no value is ever misread as another YAML type.
    config_path.write_text(json.dumps(config, indent=1))
    built = staging / filename(inputs.spec, fmt)
    try:
        run(
            [nfpm, "package", "-f", config_path, "-p", str(fmt), "-t", built],
            what="build the package",
            timeout=7200,
        )
    except ToolFailed as exc:
        raise PackageError(
            f"nfpm could not build the package: {exc.brief.split(': ', 1)[-1]}",
            hint="run with --debug for nfpm's full output",
            details=exc.details,
        ) from exc
    return publish(built, output_dir)


def publish(built: Path, output_dir: Path) -> Path:
    final = output_dir / built.name
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
