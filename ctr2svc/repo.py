"""Package repositories: add built packages, keep a few versions, (re)generate signed indexes.

The field's own tools do the work: `apt-ftparchive` writes the apt index (a flat repository, used as
`deb [signed-by=KEY] URL ./`), `createrepo_c` the dnf/yum metadata, `gpg` the signatures (InRelease and
Release.gpg; repodata/repomd.xml.asc), and dpkg and rpm decide which version is the newest. Old versions
are pruned per package name beyond --keep, so a downgrade stays possible.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path

from ctr2svc import log
from ctr2svc.errors import PackageError, ToolFailed, UsageError
from ctr2svc.model import PackageFormat
from ctr2svc.run import find_tool, run

DEFAULT_KEEP = 3
SUFFIX = {".deb": PackageFormat.DEB, ".rpm": PackageFormat.RPM, ".apk": PackageFormat.APK}


@dataclass(frozen=True)
class Signing:
    """The gpg key that signs the indexes: an id, fingerprint or e-mail in the (given) keyring."""

    key: str
    gnupghome: Path | None = None


@dataclass(frozen=True)
class PackageFile:
    path: Path
    format: PackageFormat
    name: str
    version: str  # as the format's tools print it (epoch:version-release)


@dataclass(frozen=True)
class RepoResult:
    added: list[Path]
    pruned: list[Path]
    index: list[Path]


def read_package(path: Path) -> PackageFile:
    fmt = SUFFIX.get(path.suffix)
    if fmt is None or not path.is_file():
        raise UsageError(f"{path} is not a .deb or .rpm file", hint="pass packages that ctr2svc build wrote")
    if fmt is PackageFormat.APK:
        raise UsageError(
            f"{path}: apk repositories are not supported yet (no APKINDEX writer is reachable here)",
            hint="serve the .apk files directly and install them with apk add --allow-untrusted",
        )
    if fmt is PackageFormat.DEB:
        out = run(["dpkg-deb", "-f", path, "Package", "Version"], what=f"read {path.name}").stdout.decode()
        fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        return PackageFile(path, fmt, fields["Package"], fields["Version"])
    out = run(
        ["rpm", "-qp", "--nosignature", "--qf", "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}", path],
        what=f"read {path.name}",
    ).stdout.decode()
    name, version = out.split()
    return PackageFile(path, fmt, name, version)


def compare(fmt: PackageFormat, a: str, b: str) -> int:
    """-1, 0 or 1, as dpkg or rpm order the two versions."""
    if a == b:
        return 0
    if fmt is PackageFormat.DEB:
        lower = run(["dpkg", "--compare-versions", a, "lt", b], what="compare versions", check=False)
        return -1 if lower.returncode == 0 else 1
    # Versions were checked against the format's grammar when built: no quote can be in them. apk's
    # order is close to rpm's for the versions ctr2svc writes (digits, _rc/_git suffixes, -rN).
    out = run(["rpm", "--eval", f"%{{lua:print(rpm.vercmp('{a}', '{b}'))}}"], what="compare versions").stdout
    return int(out.decode().strip())


def newest_first(fmt: PackageFormat, packages: Sequence[PackageFile]) -> list[PackageFile]:
    def newer(x: PackageFile, y: PackageFile) -> int:
        return compare(fmt, y.version, x.version)

    return sorted(packages, key=cmp_to_key(newer))


def add(
    repo: Path, packages: Sequence[Path], *, keep: int = DEFAULT_KEEP, signing: Signing | None
) -> RepoResult:
    """Copy PACKAGES into REPO (deb/ and rpm/ below it), prune, and regenerate the indexes."""
    if keep < 1:
        raise UsageError(f"--keep {keep} would empty the repository", hint="keep at least 1 version")
    files = [read_package(p) for p in packages]
    tools = {
        PackageFormat.DEB: ("apt-ftparchive", "apt-utils"),
        PackageFormat.RPM: ("createrepo_c", "createrepo-c"),
    }
    for fmt in {f.format for f in files}:
        tool, package = tools[fmt]
        find_tool(tool, f"index {fmt} repositories (apt-get install {package})")
    if signing is not None:
        find_tool("gpg", "sign repository indexes (apt-get install gnupg)")
    added: list[Path] = []
    pruned: list[Path] = []
    index: list[Path] = []
    for fmt in sorted({f.format for f in files}):
        directory = repo / str(fmt)
        directory.mkdir(parents=True, exist_ok=True)
        for incoming in (f for f in files if f.format is fmt):
            added.append(_copy_in(incoming.path, directory))
        pruned += _prune(directory, fmt, keep)
        writer = _index_deb if fmt is PackageFormat.DEB else _index_rpm
        index += writer(directory, signing)
    return RepoResult(added, pruned, index)


def _copy_in(path: Path, directory: Path) -> Path:
    final = directory / path.name
    partial = directory / f".{path.name}.partial-{os.getpid()}"
    try:
        shutil.copyfile(path, partial)
        partial.replace(final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise PackageError(
            f"cannot copy {path.name} into {directory}: {exc.strerror}", hint="check space and permissions"
        ) from exc
    return final


def _prune(directory: Path, fmt: PackageFormat, keep: int) -> list[Path]:
    by_name: dict[str, list[PackageFile]] = defaultdict(list)
    for path in sorted(directory.glob(f"*.{fmt}")):
        package = read_package(path)
        by_name[package.name].append(package)
    removed = []
    for versions in by_name.values():
        for old in newest_first(fmt, versions)[keep:]:
            old.path.unlink()
            removed.append(old.path)
            log.info(f"  pruned {old.path.name}")
    return removed


def _gpg(signing: Signing, *args: str | Path) -> None:
    env = {"GNUPGHOME": str(signing.gnupghome)} if signing.gnupghome else None
    try:
        run(["gpg", "--batch", "--yes", "--local-user", signing.key, *args], what="sign the index", env=env)
    except ToolFailed as exc:
        raise PackageError(
            f"gpg could not sign with key {signing.key!r}: {exc.brief.split(': ', 1)[-1]}",
            hint="check the key id with gpg --list-secret-keys (and --gnupghome)",
        ) from exc


@contextlib.contextmanager
def _replacing(*finals: Path) -> Iterator[list[Path]]:
    """Temporary paths for FINALS, renamed into place together once all are written."""
    temps = [f.with_name(f".{f.name}.new") for f in finals]
    try:
        yield temps
        for temp, final in zip(temps, finals, strict=True):
            if temp.exists():
                temp.replace(final)
            else:
                final.unlink(missing_ok=True)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def _index_deb(directory: Path, signing: Signing | None) -> list[Path]:
    names = ("Packages", "Packages.gz", "Release", "InRelease", "Release.gpg")
    finals = [directory / n for n in names]
    with _replacing(*finals) as (packages, packages_gz, release, inrelease, release_gpg):
        listing = run(
            ["apt-ftparchive", "packages", "."], what="index the apt repository", cwd=directory
        ).stdout.decode()
        packages.write_text(listing)
        packages_gz.write_bytes(gzip.compress(listing.encode(), mtime=0))
        # apt-ftparchive release hashes what it finds: the new Packages files under their final names.
        staged = directory / ".release-staging"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        try:
            shutil.copyfile(packages, staged / "Packages")
            shutil.copyfile(packages_gz, staged / "Packages.gz")
            text = run(
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
                what="write the apt Release file",
                cwd=staged,
            ).stdout.decode()
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        release.write_text(text)
        if signing is not None:
            _gpg(signing, "--clearsign", "--output", inrelease, release)
            _gpg(signing, "--armor", "--detach-sign", "--output", release_gpg, release)
    return [f for f in finals if f.exists()]


def _index_rpm(directory: Path, signing: Signing | None) -> list[Path]:
    run(["createrepo_c", "--update", "--quiet", "."], what="index the rpm repository", cwd=directory)
    repomd = directory / "repodata" / "repomd.xml"
    signature = repomd.with_name("repomd.xml.asc")
    signature.unlink(missing_ok=True)
    if signing is not None:
        _gpg(signing, "--armor", "--detach-sign", "--output", signature, repomd)
    return [p for p in (repomd, signature) if p.exists()]
