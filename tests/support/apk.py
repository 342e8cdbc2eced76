"""Read and check Alpine .apk (v2) packages without apk-tools, which no reachable registry offers.

A v2 .apk is concatenated gzip streams: an optional signature stream (a tar with .SIGN.* members and no
end-of-archive blocks), the control stream (a tar with .PKGINFO and the scripts) and the data stream (a
tar of the files, each regular file with a pax record APK-TOOLS.checksum.SHA1 in hex). The signature
signs the control stream's compressed bytes; .PKGINFO's datahash is the sha256 of the data stream's
compressed bytes, which chains the files to the signature.
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# apk-tools' version grammar (src/version.c): digits{.digits}[letter]{_suffix[digits]}[~hash][-r#].
APK_VERSION = re.compile(
    r"[0-9]+(\.[0-9]+)*[a-z]?"
    r"(_(alpha|beta|pre|rc|cvs|svn|git|hg|p)[0-9]*)*"
    r"(~[0-9a-f]+)?"
    r"(-r[0-9]+)?"
)
SCRIPTS = (
    ".pre-install",
    ".post-install",
    ".pre-deinstall",
    ".post-deinstall",
    ".pre-upgrade",
    ".post-upgrade",
)
# .trigger is a control file apk-tools knows besides the scripts above (run on path changes).
CONTROL_FILES = (".PKGINFO", *SCRIPTS, ".trigger")
# apk-tools refuses a package without a name or a version; the others are what abuild and nfpm always
# write and what `apk index`, space accounting and the signature chain (datahash) rely on.
MANDATORY = ("pkgname", "pkgver", "arch", "size", "datahash")
SINGLE_VALUED = ("pkgname", "pkgver", "arch", "size", "datahash", "pkgdesc", "maintainer", "origin")
ARCHES = {
    "noarch",
    "x86_64",
    "x86",
    "aarch64",
    "armhf",
    "armv7",
    "ppc64le",
    "s390x",
    "riscv64",
    "loongarch64",
    "mips64",
}
SHA1_PAX = "APK-TOOLS.checksum.SHA1"
# apk-tools picks the digest by the signature member's name.
SIGNATURE_DIGESTS = {".SIGN.RSA.": "sha1", ".SIGN.RSA256.": "sha256"}

MemberType = Literal["file", "dir", "symlink", "hardlink", "other"]


class ApkFormatError(ValueError):
    pass


@dataclass
class ApkMember:
    name: str
    type: MemberType
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    linkname: str
    size: int
    sha1: str | None
    data: bytes | None = field(default=None, repr=False)


@dataclass
class Apk:
    signature: list[str]
    pkginfo: dict[str, list[str]]
    scripts: dict[str, str]
    members: list[ApkMember]
    control_members: list[ApkMember] = field(default_factory=list, repr=False)
    # The compressed streams as found in the file: signatures and datahash are computed over these.
    signature_stream: bytes | None = field(default=None, repr=False)
    control_stream: bytes = field(default=b"", repr=False)
    data_stream: bytes = field(default=b"", repr=False)
    signatures: dict[str, bytes] = field(default_factory=dict, repr=False)

    def value(self, key: str) -> str | None:
        values = self.pkginfo.get(key)
        return values[0] if values else None

    @property
    def version(self) -> str | None:
        return self.value("pkgver")

    def member(self, name: str) -> ApkMember:
        name = name.lstrip("/")
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)


def split_streams(blob: bytes) -> list[tuple[bytes, bytes]]:
    """(compressed, decompressed) for each gzip stream, in file order."""
    streams = []
    rest = blob
    while rest:
        if rest[:2] != b"\x1f\x8b":
            raise ApkFormatError(f"{len(rest)} bytes after the last gzip stream are not gzip")
        # wbits 31: gzip framing; a decompressobj stops at the stream's end and keeps what follows.
        inflater = zlib.decompressobj(31)
        try:
            plain = inflater.decompress(rest) + inflater.flush()
        except zlib.error as e:
            raise ApkFormatError(f"corrupt gzip stream: {e}") from e
        if not inflater.eof:
            raise ApkFormatError("truncated gzip stream")
        used = len(rest) - len(inflater.unused_data)
        streams.append((rest[:used], plain))
        rest = inflater.unused_data
    return streams


def _member_type(info: tarfile.TarInfo) -> MemberType:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    return "other"


def _read_tar(plain: bytes) -> list[ApkMember]:
    members = []
    # The signature tar has no end-of-archive blocks (abuild-tar --cut); tarfile accepts that.
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as tar:
        for info in tar:
            data = None
            if info.isreg():
                handle = tar.extractfile(info)
                assert handle is not None
                data = handle.read()
            members.append(
                ApkMember(
                    name=info.name,
                    type=_member_type(info),
                    mode=info.mode & 0o7777,
                    uid=info.uid,
                    gid=info.gid,
                    uname=info.uname,
                    gname=info.gname,
                    linkname=info.linkname,
                    size=info.size,
                    sha1=info.pax_headers.get(SHA1_PAX),
                    data=data,
                )
            )
    return members


def parse_pkginfo(text: str) -> dict[str, list[str]]:
    info: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, value = line.partition(" = ")
        if not sep:
            raise ApkFormatError(f".PKGINFO line is not 'key = value': {line!r}")
        info.setdefault(key.strip(), []).append(value)
    return info


def parse_apk(blob: bytes) -> Apk:
    streams = split_streams(blob)
    signature_stream = None
    signatures: dict[str, bytes] = {}
    if streams:
        first = _read_tar(streams[0][1])
        if first and all(m.name.startswith(".SIGN.") for m in first):
            signature_stream = streams.pop(0)[0]
            signatures = {m.name: m.data or b"" for m in first}
    if len(streams) != 2:
        raise ApkFormatError(
            f"expected a control and a data gzip stream after the signature, found {len(streams)} streams"
        )
    control = _read_tar(streams[0][1])
    names = [m.name for m in control]
    if ".PKGINFO" not in names:
        raise ApkFormatError(f"the control stream has no .PKGINFO: {names}")
    by_name = {m.name: m for m in control}
    pkginfo = parse_pkginfo((by_name[".PKGINFO"].data or b"").decode())
    scripts = {m.name: (m.data or b"").decode() for m in control if m.name in SCRIPTS}
    return Apk(
        signature=list(signatures),
        pkginfo=pkginfo,
        scripts=scripts,
        members=_read_tar(streams[1][1]),
        control_members=control,
        signature_stream=signature_stream,
        control_stream=streams[0][0],
        data_stream=streams[1][0],
        signatures=signatures,
    )


def read_apk(path: str | Path) -> Apk:
    return parse_apk(Path(path).read_bytes())


def _check_member_path(member: ApkMember) -> str | None:
    parts = member.name.rstrip("/").split("/")
    if member.name.startswith("/") or ".." in parts:
        return f"{member.name}: path escapes the root"
    return None


def verify_apk(apk_path: str | Path) -> list[str]:
    """Problems apk-tools (or an Alpine user) would have with the package; empty when none found.

    Checked: the stream layout, mandatory and single-valued .PKGINFO fields, pkgver against apk's version
    grammar, arch, datahash against the data stream, size against the sum of regular file sizes (what nfpm
    writes; abuild writes du's block-rounded figure), every regular file's and script's SHA1 pax record
    and every symlink's (over its target, as apk-tools computes it),
    member paths, duplicates, hardlink targets, unknown control files and scripts without a #! line
    (apk-tools execs them directly). Signatures need a key: see verify_signature.
    """
    try:
        apk = read_apk(apk_path)
    except (ApkFormatError, tarfile.TarError, UnicodeDecodeError, EOFError) as e:
        return [f"unreadable: {e}"]
    problems = []
    for key in MANDATORY:
        if not apk.pkginfo.get(key):
            problems.append(f".PKGINFO lacks {key}")
    for key in SINGLE_VALUED:
        if len(apk.pkginfo.get(key, [])) > 1:
            problems.append(f".PKGINFO has {key} {len(apk.pkginfo[key])} times")
    name = apk.value("pkgname")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", name):
        problems.append(f"pkgname {name!r} is not a valid package name")
    version = apk.version
    if version is not None and not APK_VERSION.fullmatch(version):
        problems.append(f"pkgver {version!r} does not match apk's version grammar")
    arch = apk.value("arch")
    if arch is not None and arch not in ARCHES:
        problems.append(f"arch {arch!r} is not an Alpine architecture")
    datahash = apk.value("datahash")
    actual = hashlib.sha256(apk.data_stream).hexdigest()
    if datahash is not None and datahash != actual:
        problems.append(f"datahash {datahash} does not match the data stream's sha256 {actual}")
    files_size = sum(m.size for m in apk.members if m.type == "file")
    size = apk.value("size")
    if size is not None and size != str(files_size):
        problems.append(f"size {size} is not the sum of the file sizes ({files_size})")

    for member in apk.control_members:
        if member.name not in CONTROL_FILES:
            problems.append(f"control stream: unknown member {member.name}")
        elif member.name in SCRIPTS and not (member.data or b"").startswith(b"#!"):
            problems.append(f"{member.name} has no #! line: apk-tools could not execute it")
    seen: set[str] = set()
    for where, members in (("control", apk.control_members), ("data", apk.members)):
        for member in members:
            if where == "data":
                key = member.name.rstrip("/")
                if key in seen:
                    problems.append(f"{member.name}: listed twice")
                seen.add(key)
                bad_path = _check_member_path(member)
                if bad_path:
                    problems.append(bad_path)
                if member.type == "hardlink" and member.linkname.rstrip("/") not in seen:
                    problems.append(
                        f"{member.name}: hardlink to {member.linkname}, not earlier in the archive"
                    )
                if member.type == "other":
                    problems.append(f"{member.name}: unsupported member type")
            if member.type not in ("file", "symlink") or member.name == ".PKGINFO":
                continue
            if member.sha1 is None:
                problems.append(f"{where} {member.name}: no {SHA1_PAX} pax record")
                continue
            # apk-tools' checksum of a symlink is over its target, as `apk audit` reads it with readlink().
            content = (member.data or b"") if member.type == "file" else member.linkname.encode()
            digest = hashlib.sha1(content).hexdigest()  # noqa: S324 (apk's format, not security)
            if member.sha1.lower() != digest:
                what = "content" if member.type == "file" else "link target"
                problems.append(f"{where} {member.name}: SHA1 {member.sha1} but the {what} has {digest}")
    return problems


def verify_signature(apk_path: str | Path, pubkey_pem: str | Path, *, key_name: str | None = None) -> bool:
    """Whether a .SIGN.RSA(256).* member verifies over the control stream with this public key, as
    apk-tools checks it (PKCS#1 v1.5; SHA1 for .SIGN.RSA., SHA256 for .SIGN.RSA256.). key_name, when
    given, must be the member's key name: apk looks the key up as /etc/apk/keys/<key_name>."""
    apk = read_apk(apk_path)
    with tempfile.TemporaryDirectory(prefix="apk-sig-") as tmp:
        control = Path(tmp) / "control.tar.gz"
        control.write_bytes(apk.control_stream)
        for member, signature in apk.signatures.items():
            for prefix, digest in SIGNATURE_DIGESTS.items():
                if not member.startswith(prefix):
                    continue
                if key_name is not None and member[len(prefix) :] != key_name:
                    continue
                sig = Path(tmp) / "sig"
                sig.write_bytes(signature)
                proc = subprocess.run(
                    [
                        "openssl",
                        "dgst",
                        f"-{digest}",
                        "-verify",
                        str(pubkey_pem),
                        "-signature",
                        str(sig),
                        str(control),
                    ],
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
                if proc.returncode == 0:
                    return True
    return False
