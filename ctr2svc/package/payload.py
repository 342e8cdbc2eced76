"""Give a built package its hard links back: nfpm writes every name of a hard-linked file as a copy.

After nfpm, before the package is published, `relink_deb` rewrites a .deb's data.tar so that each
later name of a hard-linked file is a tar hard-link entry (type "1") naming the first one in the
archive, and sets Installed-Size the way dpkg-gencontrol counts it (see relink_tar). Everything else
stays as nfpm wrote it: the other tar members' bytes and order, control.tar's other members, md5sums
(dpkg lists every name of a hard link, with the file's digest) and the ar members' headers but for
their sizes. The compressors are deterministic (gzip with no name and time 0; xz with liblzma's
preset 6, one thread; zstd's level 3, one thread, as `--compression zstd` asks of nfpm), so the same
input still gives the same bytes. A signed .deb's `_gpgorigin` is made again with the same key
(gpgsign.py), dated at the build's time.

`finish_apk` does the same to an .apk's data stream, gives each symlink the checksum apk-tools expects
(nfpm writes the SHA1 of nothing), then .PKGINFO's size and datahash, and signs the control stream
again when the package is signed. An .rpm is rpmheader.py's.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import io
import lzma
import math
import os
import shutil
import tarfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ctr2svc.errors import PackageError
from ctr2svc.package import gpgsign
from ctr2svc.run import find_tool, run

AR_MAGIC = b"!<arch>\n"
APK_SHA1 = "APK-TOOLS.checksum.SHA1"
AR_HEADER = 60
BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True)
class ArMember:
    header: bytes  # the 60 bytes as written, size field included
    name: str
    data: bytes | Path  # small members in memory, data.tar.* in a file


def package_path(name: str) -> str:
    """A tar member's name as a path in the package: "./opt/x/" -> "opt/x"."""
    return name.removeprefix("./").strip("/")


def read_ar(deb: Path, work: Path) -> list[ArMember]:
    """The members of an ar archive; the data.tar.* member is copied to a file in WORK."""
    members: list[ArMember] = []
    with deb.open("rb") as source:
        if source.read(len(AR_MAGIC)) != AR_MAGIC:
            raise PackageError(f"{deb.name} is not an ar archive")
        while header := source.read(AR_HEADER):
            if len(header) != AR_HEADER or header[58:60] != b"`\n":
                raise PackageError(f"{deb.name}: a damaged ar member header")
            name = header[:16].decode().rstrip().removesuffix("/")
            size = int(header[48:58].decode())
            data: bytes | Path
            if name.startswith("data.tar"):
                data = work / name
                with data.open("wb") as out:
                    _copy(source, out, size)
            else:
                data = source.read(size)
            if size % 2:
                source.read(1)
            members.append(ArMember(header, name, data))
    return members


def write_ar(members: Sequence[ArMember], dest: Path) -> None:
    """The ar archive of MEMBERS, each header as it was but for its size field."""
    with dest.open("wb") as out:
        out.write(AR_MAGIC)
        for member in members:
            size = len(member.data) if isinstance(member.data, bytes) else member.data.stat().st_size
            out.write(member.header[:48] + f"{size:<10}".encode() + member.header[58:])
            if isinstance(member.data, bytes):
                out.write(member.data)
            else:
                with member.data.open("rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
            if size % 2:
                out.write(b"\n")


def _copy(source: IO[bytes], out: IO[bytes], size: int) -> None:
    while size > 0:
        chunk = source.read(min(size, 1 << 20))
        if not chunk:
            raise PackageError("the package ends early")
        out.write(chunk)
        size -= len(chunk)


def blocks(size: int) -> int:
    """SIZE rounded up to whole tar blocks: the room a member's data takes in the archive."""
    return -(-size // BLOCK) * BLOCK


def member_kib(member: tarfile.TarInfo) -> int:
    """MEMBER's part of Installed-Size as dpkg-gencontrol counts it: a file's size and a symlink's
    target in KiB rounded up, a hard link nothing (its file is counted once), anything else 1."""
    if member.isreg():
        return math.ceil(member.size / 1024)
    if member.issym():
        return math.ceil(len(member.linkname.encode()) / 1024)
    return 0 if member.islnk() else 1


def relink_tar(source: Path, dest: Path | None, groups: Iterable[Sequence[str]], *, apk: bool = False) -> int:
    """Copy the tar SOURCE to DEST (None: only count) with hard links for GROUPS (the package paths of
    each file's names); returns the Installed-Size of the result in KiB, counted as dpkg-gencontrol
    does: each regular file (a hard-linked one once) and symlink ceil(size / 1024), any other entry 1.

    The first name of a group met in the archive keeps the content; the others become hard-link
    entries naming it (dpkg and tar need the target to come first), whatever order the archive has.
    APK: each symlink's checksum made right (_apk_symlink). Every other member is copied byte for
    byte, and so is what follows the last one (the end-of-archive blocks)."""
    group_of = {path: number for number, names in enumerate(groups) for path in names}
    first: dict[int, tarfile.TarInfo] = {}
    kib = 0
    with contextlib.ExitStack() as stack:
        archive = stack.enter_context(tarfile.open(source, "r:"))
        raw = stack.enter_context(source.open("rb"))
        out = stack.enter_context(dest.open("wb")) if dest is not None else None
        end = 0
        for member in archive:
            end = member.offset_data + (blocks(member.size) if member.isreg() else 0)
            number = group_of.get(package_path(member.name))
            if member.isreg() and number is not None and number in first:
                target = first[number]
                if target.size != member.size:
                    raise PackageError(
                        f"{member.name} and {target.name} are not one file ({member.size} and "
                        f"{target.size} bytes): cannot make them a hard link"
                    )
                if out is not None:
                    out.write(_link_header(member, target.name, apk=apk))
                continue
            if member.isreg() and number is not None:
                first[number] = member
            kib += member_kib(member)
            if out is not None and apk and member.issym():
                raw.seek(member.offset)
                out.write(_apk_symlink(raw.read(end - member.offset), member))
            elif out is not None:
                raw.seek(member.offset)
                _copy(raw, out, end - member.offset)
        if out is not None:
            raw.seek(end)
            shutil.copyfileobj(raw, out)
    return kib


def _apk_symlink(entry: bytes, member: tarfile.TarInfo) -> bytes:
    """The symlink MEMBER's ENTRY (its PAX header, then its own) with the checksum apk-tools gives a
    symlink: the SHA1 of its target (io.c, apk_fileinfo_get, in apk-tools 2 and 3; abuild-tar writes
    the same), which `apk audit` compares with the link on disk. nfpm writes the SHA1 of nothing. The
    value is replaced in place (the same length: nothing else moves); an entry without one is
    written again with it."""
    want = hashlib.sha1(member.linkname.encode()).hexdigest()  # noqa: S324 - apk's checksum
    have = member.pax_headers.get(APK_SHA1)
    if have == want:
        return entry
    header_end = member.offset_data - member.offset
    if have is not None and len(have) == len(want):
        old, new = f" {APK_SHA1}={have}\n".encode(), f" {APK_SHA1}={want}\n".encode()
        if entry[:header_end].count(old) == 1:
            return entry[:header_end].replace(old, new) + entry[header_end:]
    link = copy.copy(member)
    link.pax_headers = {**member.pax_headers, APK_SHA1: want}
    return link.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _link_header(member: tarfile.TarInfo, target: str, *, apk: bool = False) -> bytes:
    """A hard-link entry for MEMBER's name naming TARGET, with the member's own mode, owner and time,
    in the tar format nfpm wrote: GNU for a .deb; PAX for an .apk, whose reader ignores GNU's long
    link names but reads PAX's linkpath (always given: it never cuts a name short)."""
    link = tarfile.TarInfo(member.name)
    link.type = tarfile.LNKTYPE
    link.linkname = target
    link.size = 0
    link.mode = member.mode
    link.uid, link.gid = member.uid, member.gid
    link.uname, link.gname = member.uname, member.gname
    link.mtime = member.mtime
    if apk:
        link.pax_headers = {"linkpath": target}
        return link.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    return link.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def set_installed_size(control_tar: bytes, kib: int) -> bytes:
    """control.tar (uncompressed) with Installed-Size: KIB in ./control; every other member and the
    control member's header fields (but its size and checksum) as they were."""
    out = io.BytesIO()
    end = 0
    with tarfile.open(fileobj=io.BytesIO(control_tar), mode="r:") as archive:
        for member in archive:
            end = member.offset_data + blocks(member.size)
            if package_path(member.name) != "control":
                out.write(control_tar[member.offset : end])
                continue
            if member.offset_data - member.offset != BLOCK:
                raise PackageError(f"unexpected control.tar member header for {member.name}")
            # Bytes, in place: the other fields keep nfpm's order and encoding.
            lines = control_tar[member.offset_data : member.offset_data + member.size].splitlines(
                keepends=True
            )
            field = f"Installed-Size: {kib}\n".encode()
            found = [n for n, line in enumerate(lines) if line.startswith(b"Installed-Size:")]
            if found:
                lines[found[0]] = field
            else:
                lines.append(field)
            data = b"".join(lines)
            out.write(_resized(control_tar[member.offset : member.offset_data], len(data)))
            out.write(data + b"\0" * (blocks(len(data)) - len(data)))
    out.write(control_tar[end:])
    return out.getvalue()


def _resized(header: bytes, size: int) -> bytes:
    """A one-block tar header with a new size field and its checksum made again."""
    block = bytearray(header)
    block[124:136] = f"{size:011o}\0".encode()
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def installed_size(control_tar: bytes) -> int | None:
    with tarfile.open(fileobj=io.BytesIO(control_tar), mode="r:") as archive:
        for member in archive:
            if package_path(member.name) == "control":
                handle = archive.extractfile(member)
                assert handle is not None
                for line in handle.read().splitlines():
                    if line.startswith(b"Installed-Size:"):
                        return int(line.split(b":", 1)[1])
    return None


def decompress(path: Path, dest: Path) -> None:
    """PATH (data.tar.gz/.xz/.zst/.tar) uncompressed into DEST."""
    suffix = path.name.rsplit(".", 1)[-1]
    if suffix == "zst":
        zstd = find_tool("zstd", "rewrite a zstd-compressed .deb")
        run([zstd, "-d", "-q", "-f", path, "-o", dest], what="uncompress the package's data.tar")
        return
    with _reader(path, suffix) as source, dest.open("wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


def _reader(path: Path, suffix: str) -> io.BufferedIOBase:
    if suffix == "gz":
        return gzip.GzipFile(path, "rb")
    if suffix == "xz":
        return lzma.LZMAFile(path, "rb")
    if suffix == "tar":
        return path.open("rb")
    raise PackageError(f"unknown compression of the package member {path.name}")


def compress(path: Path, dest: Path) -> None:
    """PATH compressed into DEST as DEST's suffix says, the same bytes each time."""
    suffix = dest.name.rsplit(".", 1)[-1]
    if suffix == "zst":
        zstd = find_tool("zstd", "rewrite a zstd-compressed .deb")
        run(
            [zstd, "-3", "-T1", "-q", "-f", "--no-progress", path, "-o", dest],
            what="compress the package's data.tar",
        )
        return
    with path.open("rb") as source, _writer(dest, suffix) as out:
        shutil.copyfileobj(source, out, 1 << 20)


def _writer(dest: Path, suffix: str) -> io.BufferedIOBase:
    if suffix == "gz":
        # No file name and time 0 in the gzip header.
        return gzip.GzipFile(dest, "wb", compresslevel=9, mtime=0)
    if suffix == "xz":
        return lzma.LZMAFile(dest, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=6)
    if suffix == "tar":
        return dest.open("wb")
    raise PackageError(f"unknown compression for the package member {dest.name}")


def relink_deb(
    deb: Path, groups: Sequence[Sequence[str]], work: Path, key_file: Path | None = None, epoch: int = 0
) -> bool:
    """Rewrite DEB in place: hard links for GROUPS, dpkg's Installed-Size. WORK is scratch space.
    A signed DEB (its _gpgorigin member) is signed again with KEY_FILE, dated EPOCH. Returns False,
    leaving DEB as it is, when it is already right, or signed and no key is given."""
    groups = [g for g in groups if len(g) > 1]
    work.mkdir(parents=True, exist_ok=True)
    members = read_ar(deb, work)
    names = [m.name for m in members]
    data = members[-1]
    try:
        signature = members[-1] if names[-1] == "_gpgorigin" else None
        if signature is not None:
            if key_file is None:
                return False
            members = members[:-1]
            names = names[:-1]
            data = members[-1]
        if any(name.startswith("_gpg") for name in names):
            return False
        control = members[1] if len(members) == 3 else None
        if names[0] != "debian-binary" or control is None or control.name != "control.tar.gz":
            raise PackageError(f"{deb.name}: unexpected ar members {names}")
        if not isinstance(data.data, Path) or not isinstance(control.data, bytes):
            raise PackageError(f"{deb.name}: unexpected ar members {names}")
        plain = work / "plain-data.tar"
        decompress(data.data, plain)
        relinked = work / "plain-relinked.tar" if groups else None
        kib = relink_tar(plain, relinked, groups)
        plain.unlink()
        control_tar = gzip.decompress(control.data)
        if relinked is None and installed_size(control_tar) == kib:
            return False
        new_data = data
        if relinked is not None:
            packed = work / f"packed-{data.name}"
            compress(relinked, packed)
            relinked.unlink()
            new_data = ArMember(data.header, data.name, packed)
        new_control = gzip.compress(set_installed_size(control_tar, kib), compresslevel=9, mtime=0)
        rewritten = work / deb.name
        kept = [members[0], ArMember(control.header, control.name, new_control), new_data]
        if signature is not None and key_file is not None:
            kept.append(signed_origin(kept, signature, key_file, epoch, work))
        write_ar(kept, rewritten)
        rewritten.replace(deb)
        return True
    finally:
        for member in members:
            if isinstance(member.data, Path):
                member.data.unlink(missing_ok=True)
        for leftover in [*work.glob("plain-*"), *work.glob("packed-*")]:
            leftover.unlink()


def signed_origin(
    members: Sequence[ArMember], signature: ArMember, key_file: Path, epoch: int, work: Path
) -> ArMember:
    """debsigs' "origin" signature (the _gpgorigin member SIGNATURE, made again with KEY_FILE, dated
    EPOCH) over MEMBERS' contents (debian-binary, control, data) one after the other."""
    signed = work / "plain-signed"
    try:
        with signed.open("wb") as out:
            for member in members:
                if isinstance(member.data, bytes):
                    out.write(member.data)
                else:
                    with member.data.open("rb") as source:
                        shutil.copyfileobj(source, out, 1 << 20)
        return ArMember(
            signature.header, signature.name, gpgsign.detach_sign(signed, key_file, epoch, armor=True)
        )
    finally:
        signed.unlink(missing_ok=True)


def gzip_streams(blob: bytes) -> list[tuple[bytes, bytes]]:
    """(compressed, uncompressed) of each of BLOB's concatenated gzip streams."""
    streams: list[tuple[bytes, bytes]] = []
    while blob:
        stream = zlib.decompressobj(wbits=31)
        plain = stream.decompress(blob) + stream.flush()
        if not stream.eof:
            raise PackageError("the package ends in the middle of a gzip stream")
        used = len(blob) - len(stream.unused_data)
        streams.append((blob[:used], plain))
        blob = stream.unused_data
    return streams


def replace_member(plain: bytes, name: str, data: bytes) -> bytes:
    """The tar PLAIN with member NAME's content replaced by DATA (its one-block header resized);
    every other byte as it was. apk's control and signature tars have no end-of-archive blocks."""
    out = io.BytesIO()
    end = 0
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as archive:
        for member in archive:
            end = member.offset_data + blocks(member.size)
            if member.name != name:
                out.write(plain[member.offset : end])
                continue
            if member.offset_data - member.offset != BLOCK:
                raise PackageError(f"unexpected header for {member.name} in the .apk")
            out.write(_resized(plain[member.offset : member.offset_data], len(data)))
            out.write(data + b"\0" * (blocks(len(data)) - len(data)))
    out.write(plain[end:])
    return out.getvalue()


def _member_data(plain: bytes, prefix: str) -> tuple[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as archive:
        for member in archive:
            if member.name.startswith(prefix):
                handle = archive.extractfile(member)
                assert handle is not None
                return member.name, handle.read()
    raise PackageError(f"no {prefix} in the .apk")


def _pkginfo(text: bytes, size: int, datahash: str) -> bytes:
    lines = text.splitlines(keepends=True)
    for number, line in enumerate(lines):
        if line.startswith(b"size = "):
            lines[number] = f"size = {size}\n".encode()
        elif line.startswith(b"datahash = "):
            lines[number] = f"datahash = {datahash}\n".encode()
    return b"".join(lines)


def _rsa_sha1(data: bytes, key_file: Path) -> bytes:
    """What nfpm signs an .apk's control stream with: RSA (PKCS #1 v1.5) over its SHA-1, the key's
    passphrase from $NFPM_PASSPHRASE as nfpm reads it (none: never a prompt)."""
    openssl = find_tool("openssl", "sign the .apk again")
    passin = "env:NFPM_PASSPHRASE" if "NFPM_PASSPHRASE" in os.environ else "pass:"
    proc = run(
        [openssl, "dgst", "-sha1", "-sign", key_file, "-passin", passin],
        input=data,
        what="sign the .apk's control stream",
    )
    return proc.stdout


def finish_apk(apk: Path, groups: Sequence[Sequence[str]], work: Path, key_file: Path | None) -> bool:
    """Rewrite the .apk APK in place: its data stream with hard links for GROUPS and each symlink's
    checksum over its target (relink_tar), .PKGINFO's size (the bytes of distinct files, as the hard
    links are no longer counted) and datahash, and the signature over the control stream (made again
    with KEY_FILE when the package is signed). Returns False, leaving APK as it is, when its data
    stream is right already."""
    groups = [g for g in groups if len(g) > 1]
    streams = gzip_streams(apk.read_bytes())
    if len(streams) not in (2, 3):
        raise PackageError(f"{apk.name}: {len(streams)} gzip streams, not an apk v2 package")
    signed = len(streams) == 3
    work.mkdir(parents=True, exist_ok=True)
    plain, relinked = work / "plain-data.tar", work / "plain-relinked.tar"
    try:
        plain.write_bytes(streams[-1][1])
        relink_tar(plain, relinked, groups, apk=True)
        new_plain = relinked.read_bytes()
        if new_plain == streams[-1][1]:
            return False
        with tarfile.open(relinked, "r:") as archive:
            size = sum(m.size for m in archive if m.isreg())
        data = gzip.compress(new_plain, compresslevel=9, mtime=0)
    finally:
        plain.unlink(missing_ok=True)
        relinked.unlink(missing_ok=True)
    if signed and key_file is None:
        raise PackageError(f"{apk.name} is signed, and no key to sign it again was given")
    control_plain = streams[-2][1]
    _, info = _member_data(control_plain, ".PKGINFO")
    info = _pkginfo(info, size, hashlib.sha256(data).hexdigest())
    control = gzip.compress(replace_member(control_plain, ".PKGINFO", info), compresslevel=9, mtime=0)
    parts = [control, data]
    if signed:
        assert key_file is not None
        signature_plain = streams[0][1]
        name, _ = _member_data(signature_plain, ".SIGN.")
        signature = _rsa_sha1(control, key_file)
        parts.insert(0, gzip.compress(replace_member(signature_plain, name, signature), 9, mtime=0))
    rewritten = work / apk.name
    rewritten.write_bytes(b"".join(parts))
    rewritten.replace(apk)
    return True
