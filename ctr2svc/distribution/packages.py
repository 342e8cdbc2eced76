"""A package file as a repository takes it: its format from its first bytes, its name, version,
architecture and dependencies from the format's own tools, whole and signed as far as they can tell.
"""

from __future__ import annotations

import contextlib
import io
import re
import tarfile
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path

from ctr2svc.errors import PackageError, ToolFailed, UsageError
from ctr2svc.image.layers import PACKAGE_PREFIX
from ctr2svc.model import PackageFormat
from ctr2svc.package.naming import TOOL_VERSION, compare
from ctr2svc.run import run

# What the formats' tools accept in names, versions and architectures. Anything else in a package is
# refused: these strings become paths (the apk architecture) and reach `rpm --eval` (the versions).
# (Versions: naming.TOOL_VERSION.)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._-]*$")
_ARCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class PackageFile:
    path: Path
    format: PackageFormat
    name: str
    version: str  # as the format's tools print it (epoch:version-release)
    arch: str = ""
    depends: tuple[str, ...] = ()  # the names of the packages it needs (versions left out)

    @property
    def is_layer(self) -> bool:
        return self.name.startswith(PACKAGE_PREFIX)

    @property
    def identity(self) -> tuple[str, str, str]:
        """What the package managers tell packages apart by (epoch 0 is no epoch)."""
        return self.name, self.version.removeprefix("0:"), self.arch

    def describe(self) -> str:
        name, version, arch = self.identity
        return f"{name} {version} ({arch})"


def _invalid(
    path: Path, fmt: PackageFormat, why: str, *, in_repo: bool, details: str | None = None
) -> UsageError:
    hint = (
        f"remove it from {path.parent} or put back a good copy"
        if in_repo
        else "rebuild it with ctr2svc build, or copy it again"
    )
    return UsageError(f"{path} is not a valid .{fmt} package ({why})", hint=hint, details=details)


def _sniff(head: bytes) -> PackageFormat | None:
    if head.startswith(b"!<arch>\n"):
        return PackageFormat.DEB
    if head.startswith(b"\xed\xab\xee\xdb"):
        return PackageFormat.RPM
    if head.startswith(b"\x1f\x8b"):
        return PackageFormat.APK
    return None


def _check_ar(path: Path, *, in_repo: bool) -> None:
    """A .deb is an ar archive: debian-binary, control.tar.*, data.tar.* (and signatures), each whole."""
    size = path.stat().st_size
    members = []
    with path.open("rb") as f:
        offset = 8
        while offset < size:
            f.seek(offset)
            header = f.read(60)
            if len(header) < 60 or header[58:60] != b"`\n":
                raise _invalid(path, PackageFormat.DEB, "truncated or damaged ar archive", in_repo=in_repo)
            try:
                length = int(header[48:58].decode("ascii").strip())
            except ValueError:
                raise _invalid(path, PackageFormat.DEB, "damaged ar member header", in_repo=in_repo) from None
            name = header[:16].decode("ascii", errors="replace").strip().rstrip("/")
            offset += 60 + length
            if offset > size:
                raise _invalid(
                    path,
                    PackageFormat.DEB,
                    f"truncated: the file ends inside its {name} member",
                    in_repo=in_repo,
                )
            offset += offset % 2
            members.append(name)
    if not members or members[0] != "debian-binary":
        raise _invalid(path, PackageFormat.DEB, "an ar archive, but not a Debian package", in_repo=in_repo)
    for wanted in ("control.tar", "data.tar"):
        if not any(m.startswith(wanted) for m in members):
            raise _invalid(path, PackageFormat.DEB, f"it has no {wanted} member", in_repo=in_repo)


def read_package(path: Path, *, verify: bool = True, in_repo: bool = False) -> PackageFile:
    """Name, version and architecture of PATH, refusing anything that is not a whole package of the
    format its suffix names (verify=False skips the full-length digest check of an .rpm)."""
    fmt = SUFFIX.get(path.suffix)
    if not path.exists():
        raise UsageError(f"{path} does not exist", hint="pass packages that ctr2svc build wrote")
    if fmt is None or not path.is_file():
        raise UsageError(
            f"{path} is not a .deb, .rpm or .apk file", hint="pass packages that ctr2svc build wrote"
        )
    if path.name.startswith("."):
        # Names starting with a dot are the repository's own temporary files, and hidden on web servers.
        raise UsageError(f"{path}: a package's file name cannot start with a dot", hint="rename it")
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint="check its permissions") from exc
    found = _sniff(head)
    if not head:
        raise _invalid(path, fmt, "the file is empty", in_repo=in_repo)
    if found is None:
        raise _invalid(path, fmt, "it is not a package of any kind", in_repo=in_repo)
    if found is not fmt:
        raise UsageError(
            f"{path} is not a valid .{fmt} package (it is a .{found} package named .{fmt})",
            hint=f"rename it to {path.with_suffix('.' + str(found)).name}",
        )
    package = _read(path, fmt, verify=verify, in_repo=in_repo)
    for what, value, rule in (
        ("name", package.name, _NAME),
        ("version", package.version, TOOL_VERSION),
        ("architecture", package.arch, _ARCH),
    ):
        if not rule.match(value):
            raise _invalid(
                path, fmt, f"its {what} {value!r} is not one its package managers accept", in_repo=in_repo
            )
    return package


def _read(given: Path, fmt: PackageFormat, *, verify: bool, in_repo: bool) -> PackageFile:
    path = given  # named as given in messages; tools get the absolute path (a name may start with "-")
    tool_path = given.absolute()
    if fmt is PackageFormat.APK:
        try:
            info = apk_control(path)[1]
        except PackageError as exc:
            raise _invalid(path, fmt, exc.brief, in_repo=in_repo) from exc
        if not info.get("pkgname") or not info.get("pkgver"):
            raise _invalid(path, fmt, "its .PKGINFO has no pkgname or pkgver", in_repo=in_repo)
        arch = info.get("arch", ["noarch"])[0]
        depends = tuple(_dependency_name(d) for d in info.get("depend", []))
        return PackageFile(path, fmt, info["pkgname"][0], info["pkgver"][0], arch, depends)
    if fmt is PackageFormat.DEB:
        _check_ar(path, in_repo=in_repo)
        try:
            out = run(
                ["dpkg-deb", "-f", tool_path, "Package", "Version", "Architecture", "Depends"],
                what=f"read {path.name}",
            ).stdout.decode(errors="replace")
        except ToolFailed as exc:
            raise _invalid(
                path, fmt, "cannot read its control data", in_repo=in_repo, details=exc.details
            ) from exc
        fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        missing = [k for k in ("Package", "Version", "Architecture") if not fields.get(k)]
        if missing:
            raise _invalid(path, fmt, f"its control data has no {missing[0]} field", in_repo=in_repo)
        depends = tuple(_dependency_name(d) for d in fields.get("Depends", "").split(",") if d.strip())
        return PackageFile(path, fmt, fields["Package"], fields["Version"], fields["Architecture"], depends)
    if verify:
        # The header and payload digests, over the whole file: a truncated .rpm still has its header.
        checked = run(["rpm", "-K", "--nosignature", tool_path], what=f"check {path.name}", check=False)
        if checked.returncode != 0:
            raise _invalid(
                path,
                fmt,
                "its digests do not match: truncated or damaged",
                in_repo=in_repo,
                details=(checked.stdout or b"").decode(errors="replace")
                + checked.stderr.decode(errors="replace"),
            )
    try:
        out = run(
            [
                "rpm",
                "-qp",
                "--nosignature",
                "--nodigest",
                "--qf",
                "%{NAME}\\n%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n%{ARCH}\\n[%{REQUIRENAME}\\n]",
                tool_path,
            ],
            what=f"read {path.name}",
        ).stdout.decode(errors="replace")
    except ToolFailed as exc:
        raise _invalid(path, fmt, "cannot read its header", in_repo=in_repo, details=exc.details) from exc
    lines = out.splitlines()
    if len(lines) < 3:
        raise _invalid(path, fmt, "its header has no name, version or architecture", in_repo=in_repo)
    return PackageFile(path, fmt, lines[0], lines[1], lines[2], tuple(lines[3:]))


def _dependency_name(text: str) -> str:
    """The package name of one dependency: "runc (>= 1.1)", "attr=2.5-r0", "foo | bar" (the first)."""
    first = text.split("|")[0].strip()
    for stop in (" ", "(", "=", "<", ">", "~"):
        first = first.split(stop, 1)[0]
    return first


def newest_first(fmt: PackageFormat, packages: Sequence[PackageFile]) -> list[PackageFile]:
    def newer(x: PackageFile, y: PackageFile) -> int:
        return compare(fmt, y.version, x.version)

    return sorted(packages, key=cmp_to_key(newer))


SUFFIX = {".deb": PackageFormat.DEB, ".rpm": PackageFormat.RPM, ".apk": PackageFormat.APK}


def gzip_streams(blob: bytes) -> list[tuple[bytes, bytes]]:
    streams = []
    rest = blob
    while rest:
        inflater = zlib.decompressobj(31)
        try:
            plain = inflater.decompress(rest) + inflater.flush()
        except zlib.error as exc:
            raise PackageError(f"a damaged gzip stream: {exc}", hint="rebuild it") from exc
        if not inflater.eof:
            raise PackageError("truncated: the file ends inside a gzip stream", hint="rebuild it")
        streams.append((rest[: len(rest) - len(inflater.unused_data)], plain))
        rest = inflater.unused_data
    return streams


def apk_control(path: Path) -> tuple[bytes, dict[str, list[str]]]:
    """The package's control stream (compressed, as hashed) and its .PKGINFO fields."""
    for compressed, plain in gzip_streams(path.read_bytes()):
        with contextlib.suppress(tarfile.TarError), tarfile.open(fileobj=io.BytesIO(plain)) as tar:
            member = next((m for m in tar.getmembers() if m.name == ".PKGINFO"), None)
            handle = tar.extractfile(member) if member is not None else None
            if handle is not None:
                fields: dict[str, list[str]] = defaultdict(list)
                for line in handle.read().decode().splitlines():
                    key, sep, value = line.partition(" = ")
                    if sep and not key.startswith("#"):
                        fields[key.strip()].append(value)
                return compressed, fields
    raise PackageError("it has no .PKGINFO", hint="pass .apk files that ctr2svc build wrote")
