"""Package repositories: add built packages, keep a few versions, (re)generate signed indexes.

The field's own tools do the work: `apt-ftparchive` writes the apt index (a flat repository, used as
`deb [signed-by=KEY] URL ./`), `createrepo_c` the dnf/yum metadata, `gpg` the signatures (InRelease and
Release.gpg; repodata/repomd.xml.asc), and dpkg and rpm decide which version is the newest. Old versions
are pruned per package name (and architecture) beyond --keep, so a downgrade stays possible.

What a repository promises its hosts, and so what `add` keeps to:
- every input is checked (a readable package of the format its name says, whole) before the
  repository is touched;
- a package already published is never replaced by different bytes under the same name, version and
  architecture: hosts that have the old one would never get the new one (the same bytes are a no-op);
- the new state (packages, pruning, indexes, signatures) is made in REPO/.ctr2svc-staging and moved into
  place only once all of it worked: a failing index tool or gpg leaves the repository as it was;
- one writer at a time: an exclusive flock on REPO/.ctr2svc.lock; a second one waits for it.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import filecmp
import gzip
import hashlib
import io
import os
import re
import shutil
import tarfile
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cmp_to_key
from pathlib import Path

from ctr2svc import log
from ctr2svc.errors import Ctr2svcError, PackageError, ToolError, ToolFailed, UsageError
from ctr2svc.image.layers import PACKAGE_PREFIX
from ctr2svc.model import PackageFormat
from ctr2svc.run import find_tool, run

DEFAULT_KEEP = 3
SUFFIX = {".deb": PackageFormat.DEB, ".rpm": PackageFormat.RPM, ".apk": PackageFormat.APK}
LOCK_FILE = ".ctr2svc.lock"
STAGING = ".ctr2svc-staging"
DEB_INDEX = ("Packages", "Packages.gz", "Release", "InRelease", "Release.gpg")
INDEX_TOOLS = {
    PackageFormat.DEB: ("apt-ftparchive", "apt-utils"),
    PackageFormat.RPM: ("createrepo_c", "createrepo-c"),
}
# What the formats' tools accept in names, versions and architectures. Anything else in a package is
# refused: these strings become paths (the apk architecture) and reach `rpm --eval` (the versions).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._-]*$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+~^_:-]*$")
_ARCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Signing:
    """The gpg key that signs the indexes: an id, fingerprint or e-mail in the (given) keyring."""

    key: str
    gnupghome: Path | None = None


@dataclass(frozen=True)
class ApkKey:
    """The RSA key that signs an apk index; hosts trust it as /etc/apk/keys/NAME."""

    private_key: Path
    name: str


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


@dataclass(frozen=True)
class RepoResult:
    added: list[Path]
    pruned: list[Path]
    index: list[Path]  # index files written (none when there was nothing to do)
    unchanged: list[Path] = field(default_factory=list)  # inputs the repository already had, byte for byte


# --- reading and checking packages -------------------------------------------------------------------


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
        ("version", package.version, _VERSION),
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
            info = _apk_control(path)[1]
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


def compare(fmt: PackageFormat, a: str, b: str) -> int:
    """-1, 0 or 1, as dpkg or rpm order the two versions."""
    if a == b:
        return 0
    if fmt is PackageFormat.DEB:
        lower = run(["dpkg", "--compare-versions", a, "lt", b], what="compare versions", check=False)
        return -1 if lower.returncode == 0 else 1
    # Only versions of the formats' grammar get here (read_package and the build check them): no quote
    # can be in them. apk's order is close to rpm's for the versions ctr2svc writes (digits, _rc/_git
    # suffixes, -rN).
    for version in (a, b):
        if not _VERSION.match(version):
            raise UsageError(
                f"{version!r} is not a package version", hint="use digits, letters and . + ~ _ -"
            )
    out = run(["rpm", "--eval", f"%{{lua:print(rpm.vercmp('{a}', '{b}'))}}"], what="compare versions").stdout
    return int(out.decode().strip())


def newest_first(fmt: PackageFormat, packages: Sequence[PackageFile]) -> list[PackageFile]:
    def newer(x: PackageFile, y: PackageFile) -> int:
        return compare(fmt, y.version, x.version)

    return sorted(packages, key=cmp_to_key(newer))


# --- the lock ----------------------------------------------------------------------------------------

_held: dict[Path, int] = {}  # repository -> how many nested `locked` hold it in this process


def _unwritable(path: Path, exc: OSError) -> Ctr2svcError:
    if exc.errno == errno.ENOSPC:
        return PackageError(f"cannot write {path}: no space left on the device", hint="free space there")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return UsageError(
            f"the repository directory is not writable: {path}: {exc.strerror}",
            hint="pass a repository directory you can write, or fix its permissions or mount",
        )
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return UsageError(
            f"{path} is in the way: {exc.strerror}", hint="the repository must be a directory of directories"
        )
    return PackageError(f"cannot write {path}: {exc.strerror}", hint="check the repository directory")


@contextlib.contextmanager
def locked(repo: Path) -> Iterator[None]:
    """Hold REPO's lock (flock on REPO/.ctr2svc.lock) for the duration; nested use in one process is fine.

    A repository this call had to create, and that holds nothing but the lock afterwards, is removed.
    """
    key = repo.absolute()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    if repo.exists() and not repo.is_dir():
        raise UsageError(
            f"{repo} is not a directory", hint="pass the repository's directory (it is created if missing)"
        )
    created = not repo.exists()
    lock = repo / LOCK_FILE
    said = False
    while True:
        try:
            repo.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _unwritable(repo, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not said:
                log.info(f"waiting for another ctr2svc that is writing to {repo} (it holds {lock})")
                said = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        # The file locked must still be the lock file: a repository removed by a failed first run is not.
        try:
            if lock.stat().st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    if said:
        log.info(f"… {repo} is free, going on")
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        if created:
            with contextlib.suppress(OSError):
                if [p.name for p in repo.iterdir()] == [LOCK_FILE]:
                    lock.unlink()
                    repo.rmdir()
        os.close(fd)


# --- adding ------------------------------------------------------------------------------------------


def _directory(repo: Path, package: PackageFile) -> Path:
    """Where the package lives: REPO/deb, REPO/rpm, or Alpine's layout, REPO/apk/ARCH."""
    if package.format is PackageFormat.APK:
        return repo / "apk" / package.arch
    return repo / str(package.format)


def _published_name(package: PackageFile) -> str:
    """A new package's file name in the repository: as given, but NAME-VERSION.apk for apk, the name
    apk-tools downloads a package by (its index has the P: and V: fields, no file name)."""
    if package.format is PackageFormat.APK:
        return f"{package.name}-{package.version}.apk"
    return package.path.name


def _scan(repo: Path, fmt: PackageFormat) -> list[PackageFile]:
    base = repo / str(fmt)
    found = base.glob(f"*/*.{fmt}") if fmt is PackageFormat.APK else base.glob(f"*.{fmt}")
    return [
        read_package(p, verify=False, in_repo=True)
        for p in sorted(found)
        if not p.name.startswith(".") and p.is_file()
    ]


def newest_versions(repo: Path, fmt: PackageFormat) -> dict[str, str]:
    """Package name -> the newest version REPO has of it in FMT (any architecture)."""
    by_name: dict[str, list[PackageFile]] = defaultdict(list)
    for package in _scan(repo, fmt):
        by_name[package.name].append(package)
    return {name: newest_first(fmt, versions)[0].identity[1] for name, versions in by_name.items()}


def _clash(new: PackageFile, old: PackageFile, *, in_repo: bool) -> UsageError:
    if new.identity == old.identity:
        problem = f"{new.path} and {old.path} are both {new.describe()} but their contents differ"
        why = (
            "; the repository keeps the one it has (hosts that have it would never get the other)"
            if in_repo
            else ""
        )
    else:
        problem = (
            f"{new.path} ({new.describe()}) would replace {old.path} ({old.describe()}), a different package"
        )
        why = ""
    bump = (
        f"give the new one a higher version: ctr2svc build --version {_next(new)}, "
        "or rebuild it with ctr2svc update"
    )
    return UsageError(problem + why, hint=bump)


def _next(package: PackageFile) -> str:
    version = package.identity[1]
    upstream, dash, release = version.rpartition("-")
    if package.format is PackageFormat.APK and release.startswith("r") and release[1:].isdigit():
        return f"{upstream}-r{int(release[1:]) + 1}"
    if dash and release.isdigit():
        return f"{upstream}-{int(release) + 1}"
    return f"{version}-1"


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and filecmp.cmp(a, b, shallow=False)


def check_signing(signing: Signing) -> None:
    """Refuse a key gpg does not have before anything is written (a key that cannot sign, e.g. one
    behind a passphrase, fails later, and leaves the repository as it was)."""
    find_tool("gpg", "sign repository indexes (apt-get install gnupg)")
    if signing.gnupghome is not None and not signing.gnupghome.is_dir():
        raise UsageError(
            f"--gnupghome {signing.gnupghome} is not a directory", hint="pass the gpg home that holds the key"
        )
    env = {"GNUPGHOME": str(signing.gnupghome)} if signing.gnupghome else None
    proc = run(
        ["gpg", "--batch", "--list-secret-keys", "--", signing.key], what="find the key", env=env, check=False
    )
    if proc.returncode != 0:
        where = f" in {signing.gnupghome}" if signing.gnupghome else " in the default keyring"
        raise UsageError(
            f"gpg has no secret key {signing.key!r}{where}",
            hint="check the key id with gpg --list-secret-keys (and --gnupghome)",
            details=proc.stderr.decode(errors="replace"),
        )


def check_apk_key(apk_key: ApkKey) -> None:
    find_tool("openssl", "sign apk indexes (apt-get install openssl)")
    proc = run(
        ["openssl", "pkey", "-in", apk_key.private_key, "-noout"], what="read the apk key", check=False
    )
    if proc.returncode != 0:
        raise UsageError(
            f"--apk-key {apk_key.private_key} is not a PEM private key",
            hint="pass the RSA key made with openssl genrsa",
            details=proc.stderr.decode(errors="replace"),
        )


def add(
    repo: Path,
    packages: Sequence[Path],
    *,
    keep: int = DEFAULT_KEEP,
    signing: Signing | None,
    apk_key: ApkKey | None = None,
    on_clash: Callable[[Path, UsageError], None] | None = None,
) -> RepoResult:
    """Copy PACKAGES into REPO (deb/, rpm/, apk/ARCH/ below it), prune, and regenerate the indexes.

    Every package and key is checked before the repository is touched; a package that clashes with
    one in the repository (or another one given) is an error, or, with ON_CLASH, reported to it and
    left out while the others are published.
    """
    if keep < 1:
        raise UsageError(f"--keep {keep} would empty the repository", hint="keep at least 1 version")
    if repo.exists() and not repo.is_dir():
        raise UsageError(
            f"{repo} is not a directory", hint="pass the repository's directory (it is created if missing)"
        )
    files = [read_package(p) for p in packages]
    formats = sorted({f.format for f in files})
    for fmt in set(formats) & set(INDEX_TOOLS):
        tool, package = INDEX_TOOLS[fmt]
        find_tool(tool, f"index {fmt} repositories (apt-get install {package})")
    if apk_key is not None and PackageFormat.APK in formats:
        check_apk_key(apk_key)
    if signing is not None and set(formats) & set(INDEX_TOOLS):
        check_signing(signing)
    for directory in {repo / str(fmt) for fmt in formats} | {_directory(repo, f) for f in files}:
        if directory.exists() and not directory.is_dir():
            raise UsageError(f"{directory} is not a directory", hint="move it out of the repository")
    with locked(repo):
        return _add_locked(repo, files, keep, signing, apk_key, on_clash)


def _add_locked(
    repo: Path,
    files: list[PackageFile],
    keep: int,
    signing: Signing | None,
    apk_key: ApkKey | None,
    on_clash: Callable[[Path, UsageError], None] | None,
) -> RepoResult:
    existing = [p for fmt in sorted({f.format for f in files}) for p in _scan(repo, fmt)]
    accepted: list[PackageFile] = []
    unchanged: list[Path] = []
    for new in files:
        target = _directory(repo, new) / _published_name(new)
        problem = None
        for other, in_repo in [(o, False) for o in accepted] + [(o, True) for o in existing]:
            if other.format is not new.format:
                continue
            same_place = (
                _directory(repo, other) / (other.path.name if in_repo else _published_name(other))
            ) == target
            if other.identity != new.identity and not same_place:
                continue
            if new.is_layer and other.is_layer and new.identity == other.identity:
                # A layer package's name is its content's digest: another build of the same layer
                # (signed at another time, say) adds nothing. The one published stays.
                if in_repo:
                    log.info(f"{new.path} is already in the repository as {other.path}")
                    unchanged.append(new.path)
                break
            if _same_bytes(new.path, other.path):
                if in_repo:
                    log.info(f"{new.path} is already in the repository as {other.path} (same bytes)")
                    unchanged.append(new.path)
                else:
                    log.info(f"{new.path} was given twice ({other.path}, same bytes)")
                break
            problem = _clash(new, other, in_repo=in_repo)
            break
        else:
            accepted.append(new)
            continue
        if problem is not None:
            if on_clash is None:
                raise problem
            on_clash(new.path, problem)

    # Per directory (deb, rpm, apk/ARCH), per package name and architecture: the newest KEEP stay.
    groups: dict[tuple[Path, str, str], list[PackageFile]] = defaultdict(list)
    for package in existing + accepted:
        groups[(_directory(repo, package), package.name, package.arch)].append(package)
    pruned: list[PackageFile] = []
    for (_, name, _arch), versions in groups.items():
        for old in newest_first(versions[0].format, versions)[keep:]:
            if old in accepted:
                accepted.remove(old)
                log.warn(
                    f"{old.path} is older than the {keep} newest versions of {name} that the repository "
                    "keeps; not added (raise --keep to keep it)"
                )
            else:
                pruned.append(old)
    # Layer packages go with the last package that needs them.
    kept = [p for p in existing + accepted if p not in pruned]
    needed = {(_directory(repo, p), d) for p in kept if not p.is_layer for d in p.depends}
    for layer in [p for p in kept if p.is_layer]:
        if (_directory(repo, layer), layer.name) not in needed:
            if layer in accepted:
                accepted.remove(layer)
                log.warn(f"{layer.path}: no package in the repository needs this layer; not added")
            else:
                pruned.append(layer)
    changed = {_directory(repo, p) for p in accepted + pruned}
    for directory in {_directory(repo, p) for p in files if p in accepted or p.path in unchanged}:
        if _index_missing(directory, directory.relative_to(repo).parts[0], signing, apk_key):
            changed.add(directory)
    if not changed:
        log.info(f"nothing to do: {repo} already has every package given")
        return RepoResult([], [], [], unchanged)
    staging = repo / STAGING
    try:
        shutil.rmtree(staging, ignore_errors=True)  # left by a run that was killed; we hold the lock
        index = _stage_and_commit(
            repo, staging, sorted(changed), existing, accepted, pruned, signing, apk_key
        )
    except OSError as exc:
        raise _unwritable(Path(exc.filename) if exc.filename else repo, exc) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in pruned:
        log.info(f"  pruned {old.path.name}")
    added = [_directory(repo, p) / _published_name(p) for p in accepted]
    return RepoResult(added, [p.path for p in pruned], index, unchanged)


def _index_missing(directory: Path, fmt: str, signing: Signing | None, apk_key: ApkKey | None) -> bool:
    if fmt == "deb":
        wanted = ["Packages", "Release"] + (["InRelease", "Release.gpg"] if signing else [])
    elif fmt == "rpm":
        wanted = ["repodata/repomd.xml"] + (["repodata/repomd.xml.asc"] if signing else [])
    else:
        wanted = ["APKINDEX.tar.gz"]
    return not all((directory / name).is_file() for name in wanted)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _stage_and_commit(
    repo: Path,
    staging: Path,
    changed: list[Path],
    existing: list[PackageFile],
    accepted: list[PackageFile],
    pruned: list[PackageFile],
    signing: Signing | None,
    apk_key: ApkKey | None,
) -> list[Path]:
    """Make each changed directory's new state in STAGING, then move it into place. Until the move,
    nothing in REPO has changed; the move is renames of files already written."""
    staged: dict[Path, Path] = {}
    index: list[Path] = []
    for directory in changed:
        rel = directory.relative_to(repo)
        stage = staging / rel
        stage.mkdir(parents=True)
        for package in existing:
            if _directory(repo, package) == directory and package not in pruned:
                _link_or_copy(package.path, stage / package.path.name)
        for package in accepted:
            if _directory(repo, package) == directory:
                shutil.copyfile(package.path, stage / _published_name(package))
        fmt = rel.parts[0]
        if fmt == "deb":
            index += [directory / p.name for p in _index_deb(stage, signing, staging / "release")]
        elif fmt == "rpm":
            if (directory / "repodata").is_dir():
                shutil.copytree(directory / "repodata", stage / "repodata")
            index += [directory / p.relative_to(stage) for p in _index_rpm(stage, signing)]
        else:
            index += [directory / p.name for p in _index_apk(stage, apk_key)]
        staged[directory] = stage
    # Everything is written and signed: publish. New packages first, then the indexes that name them,
    # then the pruned packages go (hosts reading the old index can still fetch what it names).
    for directory, stage in staged.items():
        directory.mkdir(parents=True, exist_ok=True)
        for package in accepted:
            if _directory(repo, package) == directory:
                name = _published_name(package)
                (stage / name).replace(directory / name)
                log.debug(f"wrote {directory / name}")
    for directory, stage in staged.items():
        fmt = directory.relative_to(repo).parts[0]
        if fmt == "deb":
            for name in DEB_INDEX:
                _replace_or_remove(stage / name, directory / name)
        elif fmt == "rpm":
            _swap_repodata(stage / "repodata", directory / "repodata")
        else:
            _replace_or_remove(stage / "APKINDEX.tar.gz", directory / "APKINDEX.tar.gz")
    for old in pruned:
        old.path.unlink(missing_ok=True)
    return index


def _replace_or_remove(new: Path, final: Path) -> None:
    if new.exists():
        new.replace(final)
    else:
        final.unlink(missing_ok=True)


def _swap_repodata(new: Path, final: Path) -> None:
    """createrepo_c's files have content-hashed names: move the new ones in, then repomd.xml (and its
    signature) that names them, then drop the files no longer named."""
    final.mkdir(exist_ok=True)
    names = {p.name for p in new.iterdir()}
    tops = ("repomd.xml", "repomd.xml.asc")
    for item in sorted(new.iterdir()):
        if item.name not in tops and item.is_file():
            item.replace(final / item.name)
    for name in tops:
        _replace_or_remove(new / name, final / name)
    for item in final.iterdir():
        if item.name not in names and item.is_file():
            item.unlink()


def _gpg(signing: Signing, *args: str | Path) -> None:
    env = {"GNUPGHOME": str(signing.gnupghome)} if signing.gnupghome else None
    try:
        run(["gpg", "--batch", "--yes", "--local-user", signing.key, *args], what="sign the index", env=env)
    except ToolFailed as exc:
        said = re.search(r"signing failed: (.*)", exc.stderr)
        why = said.group(1).strip() if said else f"gpg exited {exc.returncode}"
        raise PackageError(
            f"gpg could not sign with key {signing.key!r} ({why}); the repository is unchanged",
            hint="check the key with gpg --list-secret-keys (and --gnupghome); a key with a passphrase "
            "needs gpg-agent to hold it unlocked",
            details=exc.details,
        ) from exc


def _index_tool(argv: list[str], what: str, cwd: Path) -> bytes:
    """An index tool's output; its failure says the repository was left alone."""
    try:
        return run(argv, what=what, cwd=cwd).stdout
    except ToolFailed as exc:
        raise ToolError(
            f"{exc.brief}; the repository is unchanged",
            hint=f"ctr2svc --debug repo add ... shows {exc.tool}'s output; check its installation",
            details=exc.details,
        ) from exc


def _index_deb(directory: Path, signing: Signing | None, scratch: Path) -> list[Path]:
    listing = _index_tool(["apt-ftparchive", "packages", "."], "index the apt repository", directory).decode()
    (directory / "Packages").write_text(listing)
    (directory / "Packages.gz").write_bytes(gzip.compress(listing.encode(), mtime=0))
    # apt-ftparchive release hashes what it finds: the Packages files alone, in a directory of their own.
    scratch.mkdir()
    try:
        shutil.copyfile(directory / "Packages", scratch / "Packages")
        shutil.copyfile(directory / "Packages.gz", scratch / "Packages.gz")
        text = _index_tool(
            [
                "apt-ftparchive",
                "-o",
                "APT::FTPArchive::Release::Origin=ctr2svc",
                "-o",
                "APT::FTPArchive::Release::Label=ctr2svc",
                "-o",
                "APT::FTPArchive::Release::Suite=stable",
                "release",
                ".",
            ],
            "write the apt Release file",
            scratch,
        ).decode()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    release = directory / "Release"
    release.write_text(text)
    if signing is not None:
        _gpg(signing, "--clearsign", "--output", directory / "InRelease", release)
        _gpg(signing, "--armor", "--detach-sign", "--output", directory / "Release.gpg", release)
    return [directory / n for n in DEB_INDEX if (directory / n).exists()]


def _index_rpm(directory: Path, signing: Signing | None) -> list[Path]:
    _index_tool(["createrepo_c", "--update", "--quiet", "."], "index the rpm repository", directory)
    repomd = directory / "repodata" / "repomd.xml"
    signature = repomd.with_name("repomd.xml.asc")
    signature.unlink(missing_ok=True)
    if signing is not None:
        _gpg(signing, "--armor", "--detach-sign", "--output", signature, repomd)
    return [p for p in (repomd, signature) if p.exists()]


# --- apk ---------------------------------------------------------------------------------------------
# apk-tools (`apk index`) is not reachable from Debian, so the index is written here: the smallest
# APKINDEX.tar.gz apk reads, one record per package (apk-tools' index format: C: is "Q1" + base64 of
# the SHA1 of the package's control stream), optionally preceded by an RSA signature stream as
# `abuild-sign` writes it.


def _gzip_streams(blob: bytes) -> list[tuple[bytes, bytes]]:
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


def _apk_control(path: Path) -> tuple[bytes, dict[str, list[str]]]:
    """The package's control stream (compressed, as hashed) and its .PKGINFO fields."""
    for compressed, plain in _gzip_streams(path.read_bytes()):
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


def _apk_record(path: Path) -> str:
    control, info = _apk_control(path)
    # SHA1 because apk's index format says so, not as a security choice.
    digest = hashlib.sha1(control, usedforsecurity=False).digest()
    checksum = "Q1" + base64.b64encode(digest).decode()
    one = {k: v[0] for k, v in info.items() if v}
    lines = [
        f"C:{checksum}",
        f"P:{one['pkgname']}",
        f"V:{one['pkgver']}",
        f"A:{one.get('arch', 'noarch')}",
        f"S:{path.stat().st_size}",
        f"I:{one.get('size', '0')}",
        f"T:{one.get('pkgdesc', '')}",
    ]
    for key, field_ in (
        ("url", "U"),
        ("license", "L"),
        ("origin", "o"),
        ("maintainer", "m"),
        ("builddate", "t"),
    ):
        if key in one:
            lines.append(f"{field_}:{one[key]}")
    if info.get("depend"):
        lines.append("D:" + " ".join(info["depend"]))
    return "\n".join(lines) + "\n"


def _tar_gz(members: list[tuple[str, bytes]], *, end: bool = True) -> bytes:
    out = io.BytesIO()
    for name, data in members:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        out.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        out.write(data + b"\0" * (-len(data) % 512))
    if end:
        out.write(b"\0" * 1024)
    return gzip.compress(out.getvalue(), mtime=0)


def _index_apk(arch_dir: Path, apk_key: ApkKey | None) -> list[Path]:
    """arch_dir/APKINDEX.tar.gz for the .apk files in it."""
    records = "\n".join(_apk_record(p) for p in sorted(arch_dir.glob("*.apk")))
    index = _tar_gz([("DESCRIPTION", b"ctr2svc"), ("APKINDEX", records.encode())])
    if apk_key is not None:
        # The signature stream is a tar without its end blocks, so that apk reads on into the index.
        try:
            signature = run(
                ["openssl", "dgst", "-sha1", "-sign", apk_key.private_key],
                what="sign the apk index",
                input=index,
            ).stdout
        except ToolFailed as exc:
            raise ToolError(
                f"{exc.brief}; the repository is unchanged",
                hint=f"check --apk-key {apk_key.private_key} (openssl pkey -in KEY -noout)",
                details=exc.details,
            ) from exc
        index = _tar_gz([(f".SIGN.RSA.{apk_key.name}", signature)], end=False) + index
    final = arch_dir / "APKINDEX.tar.gz"
    final.write_bytes(index)
    return [final]
