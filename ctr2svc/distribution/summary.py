"""What builds made, for scripts and for people: `build --json`, one JSON object per package (docs/json.md
is its schema), and the table of a many-image run (`build -c`, `update`), one Outcome per image and
format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctr2svc.distribution.record import BuildResult
from ctr2svc.image.layers import PACKAGE_PREFIX
from ctr2svc.model import PackageFormat

# Bumped when a field changes meaning or goes away; new fields do not bump it.
SCHEMA_VERSION = 1

INSTALLERS = {
    PackageFormat.DEB: "apt install",
    PackageFormat.RPM: "dnf install",
    PackageFormat.APK: "apk add --allow-untrusted",
}

# The fields of a package's summary besides schema_version and format: null when no package was made.
PACKAGE_FIELDS = (
    "package",
    "name",
    "version",
    "size",
    "sha256",
    "pinned",
    "digest",
    "service",
    "data_dir",
    "install",
    "up_to_date",
    "layers",
)

# Marks the layer packages of a local install as installed for the service only, so that the package
# manager's autoremove takes them away once no service needs them (a repository install does that
# itself). apk has no such mark: `apk del` of the service leaves local layer files in its world.
MARK_AUTO = {
    PackageFormat.DEB: "apt-mark auto",
    PackageFormat.RPM: "dnf mark remove",
}


def local_path(path: Path) -> str:
    return str(path) if path.is_absolute() else f"./{path}"


def install_command(fmt: PackageFormat, result: BuildResult) -> str:
    """The command that installs the package (and its layer packages) on a host of its kind, run from
    the current directory."""
    command = f"{INSTALLERS[fmt]} {' '.join(local_path(p) for p in result.files)}"
    if result.layer_files and fmt in MARK_AUTO:
        names = sorted({layer_name(Path(p)) for p in result.layer_files})
        command += f" && {MARK_AUTO[fmt]} {' '.join(names)}"
    return command


def layer_name(path: Path) -> str:
    """A layer package's name from its file name (ctr2svc-layer-HEX12, then version and arch)."""
    return path.name[: len(PACKAGE_PREFIX) + 12]


def package(fmt: PackageFormat, result: BuildResult) -> dict[str, Any]:
    """The summary of one built (or up-to-date) package: what `build --json` prints."""
    return {
        "schema_version": SCHEMA_VERSION,
        "package": str(result.path),
        "format": str(fmt),
        "name": result.name,
        "version": result.version,
        "size": result.path.stat().st_size,
        "sha256": result.sha256,
        "pinned": result.pinned,
        "digest": result.digest,
        "service": result.service,
        "data_dir": result.data_dir,
        "install": install_command(fmt, result),
        "up_to_date": result.up_to_date,
        "layers": [
            {
                "package": p,
                "name": layer_name(Path(p)),
                "size": Path(p).stat().st_size,
                "built": layer_name(Path(p)) in result.built_layers,
            }
            for p in result.layer_files
        ],
    }


def outcome(done: Outcome) -> dict[str, Any]:
    """One element of `build -c --json`'s list: the image and its result, then the package's summary."""
    entry: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "image": done.image,
        "format": str(done.format),
        "status": done.status,
        "error": done.detail if done.status == "failed" else None,
    }
    if done.result is not None:
        entry.update(package(done.format, done.result))
    else:
        entry.update(dict.fromkeys(PACKAGE_FIELDS))
    return entry


def dumps(data: object) -> str:
    return json.dumps(data, indent=2)


@dataclass
class Outcome:
    image: str
    format: PackageFormat
    status: str  # built, unchanged, failed
    detail: str  # package file, digest or the error
    result: BuildResult | None = None


def table(outcomes: list[Outcome]) -> str:
    rows = [("IMAGE", "FORMAT", "RESULT", "DETAIL")] + [
        (o.image, str(o.format), o.status, o.detail) for o in outcomes
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row)) for row in rows
    )
