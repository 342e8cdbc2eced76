"""Give a built .deb its hard links back: nfpm writes every name of a hard-linked file as a full copy.

After nfpm, before the package is published, `relink_deb` rewrites the .deb's data.tar so that each
later name of a hard-linked file is a tar hard-link entry (type "1") naming the first one in the
archive, and sets Installed-Size the way dpkg-gencontrol counts it (below). Everything else stays as
nfpm wrote it: the other tar members' bytes and order, control.tar's other members, md5sums (dpkg
lists every name of a hard link, with the file's digest) and the ar members' headers but for their
sizes. The compressors are deterministic (gzip with no name and time 0; xz with liblzma's preset 6,
one thread; zstd's level 3, one thread, as `--compression zstd` asks of nfpm), so the same input still
gives the same bytes.

A signed .deb (a `_gpg*` member) is left as nfpm wrote it: its signature covers the payload. rpm and
apk packages keep their copies too; their install scripts link the names again (ownership.sh).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import lzma
import math
import shutil
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ctr2svc.errors import PackageError
from ctr2svc.run import find_tool, run

AR_MAGIC = b"!<arch>\n"
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


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def relink_tar(source: Path, dest: Path | None, groups: Iterable[Sequence[str]]) -> int:
    """Copy the tar SOURCE to DEST (None: only count) with hard links for GROUPS (the package paths of
    each file's names); returns the Installed-Size of the result in KiB, counted as dpkg-gencontrol
    does: each regular file (a hard-linked one once) and symlink ceil(size / 1024), any other entry 1.

    The first name of a group met in the archive keeps the content; the others become hard-link
    entries naming it (dpkg and tar need the target to come first). Every other member is copied
    byte for byte, and so is what follows the last one (the end-of-archive blocks)."""
    group_of = {path: number for number, names in enumerate(groups) for path in names}
    first: dict[int, tarfile.TarInfo] = {}
    kib = 0
    with contextlib.ExitStack() as stack:
        archive = stack.enter_context(tarfile.open(source, "r:"))
        raw = stack.enter_context(source.open("rb"))
        out = stack.enter_context(dest.open("wb")) if dest is not None else None
        end = 0
        for member in archive:
            end = member.offset_data + (_blocks(member.size) if member.isreg() else 0)
            number = group_of.get(package_path(member.name))
            if member.isreg() and number is not None and number in first:
                target = first[number]
                if target.size != member.size:
                    raise PackageError(
                        f"{member.name} and {target.name} are not one file ({member.size} and "
                        f"{target.size} bytes): cannot make them a hard link"
                    )
                if out is not None:
                    out.write(_link_header(member, target.name))
                continue
            if member.isreg() and number is not None:
                first[number] = member
            if member.isreg():
                kib += math.ceil(member.size / 1024)
            elif member.issym():
                kib += math.ceil(len(member.linkname.encode()) / 1024)
            elif not member.islnk():
                kib += 1
            if out is not None:
                raw.seek(member.offset)
                _copy(raw, out, end - member.offset)
        if out is not None:
            raw.seek(end)
            shutil.copyfileobj(raw, out)
    return kib


def _link_header(member: tarfile.TarInfo, target: str) -> bytes:
    """A GNU tar hard-link entry for MEMBER's name naming TARGET, nfpm's tar format (GNU), with the
    member's own mode, owner and time."""
    link = tarfile.TarInfo(member.name)
    link.type = tarfile.LNKTYPE
    link.linkname = target
    link.size = 0
    link.mode = member.mode
    link.uid, link.gid = member.uid, member.gid
    link.uname, link.gname = member.uname, member.gname
    link.mtime = member.mtime
    return link.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def set_installed_size(control_tar: bytes, kib: int) -> bytes:
    """control.tar (uncompressed) with Installed-Size: KIB in ./control; every other member and the
    control member's header fields (but its size and checksum) as they were."""
    out = io.BytesIO()
    end = 0
    with tarfile.open(fileobj=io.BytesIO(control_tar), mode="r:") as archive:
        for member in archive:
            end = member.offset_data + _blocks(member.size)
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
            out.write(data + b"\0" * (_blocks(len(data)) - len(data)))
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


def relink_deb(deb: Path, groups: Sequence[Sequence[str]], work: Path) -> bool:
    """Rewrite DEB in place: hard links for GROUPS, dpkg's Installed-Size. WORK is scratch space.
    Returns False, leaving DEB as it is, when it is signed or already right."""
    groups = [g for g in groups if len(g) > 1]
    work.mkdir(parents=True, exist_ok=True)
    members = read_ar(deb, work)
    names = [m.name for m in members]
    data = members[-1]
    try:
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
        write_ar([members[0], ArMember(control.header, control.name, new_control), new_data], rewritten)
        rewritten.replace(deb)
        return True
    finally:
        for member in members:
            if isinstance(member.data, Path):
                member.data.unlink(missing_ok=True)
        for leftover in [*work.glob("plain-*"), *work.glob("packed-*")]:
            leftover.unlink()
