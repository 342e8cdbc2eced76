"""A repository's indexes, one format each, and their signatures: apt-ftparchive and gpg for apt (Packages,
Release, InRelease, Release.gpg), createrepo_c and gpg for dnf (repodata/, repomd.xml.asc), and
APKINDEX.tar.gz, written here and signed with the apk key.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ctr2svc.distribution.packages import apk_control
from ctr2svc.errors import PackageError, ToolError, ToolFailed, UsageError
from ctr2svc.model import PackageFormat
from ctr2svc.run import find_tool, run

DEB_INDEX = ("Packages", "Packages.gz", "Release", "InRelease", "Release.gpg")

INDEX_TOOLS = {
    PackageFormat.DEB: ("apt-ftparchive", "apt-utils"),
    PackageFormat.RPM: ("createrepo_c", "createrepo-c"),
}


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


def index_deb(directory: Path, signing: Signing | None, scratch: Path) -> list[Path]:
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


def index_rpm(directory: Path, signing: Signing | None) -> list[Path]:
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


def _apk_record(path: Path) -> str:
    control, info = apk_control(path)
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


def index_apk(arch_dir: Path, apk_key: ApkKey | None) -> list[Path]:
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
