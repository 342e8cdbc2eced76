"""Package repositories: add built packages, keep a few versions, (re)generate signed indexes.

The field's own tools do the work: `apt-ftparchive` writes the apt index (a flat repository, used as
`deb [signed-by=KEY] URL ./`), `createrepo_c` the dnf/yum metadata, `gpg` the signatures (InRelease and
Release.gpg; repodata/repomd.xml.asc), and dpkg and rpm decide which version is the newest. Old versions
are pruned per package name beyond --keep, so a downgrade stays possible.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import shutil
import tarfile
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path

from ctr2svc import log
from ctr2svc.errors import PackageError, ToolFailed, UsageError
from ctr2svc.model import PackageFormat
from ctr2svc.package import publish
from ctr2svc.run import find_tool, run

DEFAULT_KEEP = 3
SUFFIX = {".deb": PackageFormat.DEB, ".rpm": PackageFormat.RPM, ".apk": PackageFormat.APK}


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


@dataclass(frozen=True)
class RepoResult:
    added: list[Path]
    pruned: list[Path]
    index: list[Path]


def read_package(path: Path) -> PackageFile:
    fmt = SUFFIX.get(path.suffix)
    if fmt is None or not path.is_file():
        raise UsageError(
            f"{path} is not a .deb, .rpm or .apk file", hint="pass packages that ctr2svc build wrote"
        )
    if fmt is PackageFormat.APK:
        info = _apk_control(path)[1]
        arch = info.get("arch", ["noarch"])[0]
        return PackageFile(path, fmt, info["pkgname"][0], info["pkgver"][0], arch)
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
    repo: Path,
    packages: Sequence[Path],
    *,
    keep: int = DEFAULT_KEEP,
    signing: Signing | None,
    apk_key: ApkKey | None = None,
) -> RepoResult:
    """Copy PACKAGES into REPO (deb/ and rpm/ below it), prune, and regenerate the indexes."""
    if keep < 1:
        raise UsageError(f"--keep {keep} would empty the repository", hint="keep at least 1 version")
    files = [read_package(p) for p in packages]
    tools = {
        PackageFormat.DEB: ("apt-ftparchive", "apt-utils"),
        PackageFormat.RPM: ("createrepo_c", "createrepo-c"),
    }
    for fmt in {f.format for f in files} & set(tools):
        tool, package = tools[fmt]
        find_tool(tool, f"index {fmt} repositories (apt-get install {package})")
    if apk_key is not None and any(f.format is PackageFormat.APK for f in files):
        find_tool("openssl", "sign apk indexes (apt-get install openssl)")
    if signing is not None:
        find_tool("gpg", "sign repository indexes (apt-get install gnupg)")
    added: list[Path] = []
    pruned: list[Path] = []
    index: list[Path] = []
    for fmt in sorted({f.format for f in files}):
        directory = repo / str(fmt)
        directory.mkdir(parents=True, exist_ok=True)
        if fmt is PackageFormat.APK:
            # Alpine's layout: one directory (and index) per architecture.
            for incoming in (f for f in files if f.format is fmt):
                (directory / incoming.arch).mkdir(exist_ok=True)
                added.append(publish(incoming.path, directory / incoming.arch))
            for arch_dir in sorted(d for d in directory.iterdir() if d.is_dir()):
                pruned += _prune(arch_dir, fmt, keep)
            index += _index_apk(directory, apk_key)
            continue
        for incoming in (f for f in files if f.format is fmt):
            added.append(publish(incoming.path, directory))
        pruned += _prune(directory, fmt, keep)
        writer = _index_deb if fmt is PackageFormat.DEB else _index_rpm
        index += writer(directory, signing)
    return RepoResult(added, pruned, index)


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
            raise PackageError(f"not an apk package (corrupt gzip stream: {exc})", hint="rebuild it") from exc
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
    raise PackageError(f"{path.name} has no .PKGINFO", hint="pass .apk files that ctr2svc build wrote")


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


def _index_apk(directory: Path, apk_key: ApkKey | None) -> list[Path]:
    """directory/<arch>/APKINDEX.tar.gz for the .apk files in directory/<arch>/."""
    written = []
    for arch_dir in sorted(d for d in directory.iterdir() if d.is_dir()):
        records = "\n".join(_apk_record(p) for p in sorted(arch_dir.glob("*.apk")))
        index = _tar_gz([("DESCRIPTION", b"ctr2svc"), ("APKINDEX", records.encode())])
        if apk_key is not None:
            # The signature stream is a tar without its end blocks, so that apk reads on into the index.
            signature = run(
                ["openssl", "dgst", "-sha1", "-sign", apk_key.private_key],
                what="sign the apk index",
                input=index,
            ).stdout
            index = _tar_gz([(f".SIGN.RSA.{apk_key.name}", signature)], end=False) + index
        final = arch_dir / "APKINDEX.tar.gz"
        temp = arch_dir / ".APKINDEX.tar.gz.new"
        temp.write_bytes(index)
        temp.replace(final)
        written.append(final)
    return written
