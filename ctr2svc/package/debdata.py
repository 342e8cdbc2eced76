"""A flat .deb's image files, written by ctr2svc in one streaming pass instead of by nfpm.

nfpm builds a .deb's data.tar in memory (its peak memory grows with the image) and stores every name of
a hard-linked file as a copy, which payload.relink_deb then had to undo by uncompressing, rewriting and
compressing the whole payload again. So for a flat .deb nfpm packs only the service's own files (unit,
helper, configs, docs: small), and `add_rootfs` writes the package's data.tar once: nfpm's members as
nfpm wrote them, with the image's root inserted where its path sorts among them (after its parent
directories), each file read once from the unpacked root, hashed for md5sums while it is written, hard
links as tar link entries naming the first name, piped through the compressor the package asked for on
another core. Memory stays bounded: no file and no tar is ever held whole.

The image's entries carry what nfpm gave them before (tree_contents): owner root, the image's modes
(0777 for a symlink), files' times clamped to the build's (directories' and symlinks' are the
build's, as nfpm dates them); the tar format is nfpm's (GNU, names with "./").
md5sums gains a line for every name of every file, Installed-Size is counted as dpkg-gencontrol counts
it (payload.relink_tar), and a signed package is signed again over its final members.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import math
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ctr2svc import log
from ctr2svc.errors import PackageError
from ctr2svc.image.bundle import Kind, RootfsScan
from ctr2svc.package import payload
from ctr2svc.run import find_tool, sink

BLOCK = tarfile.BLOCKSIZE
CHUNK = 1 << 20

# The compressor for each data.tar suffix, writing to stdout: the same bytes for the same input on any
# machine. zstd's multi-threaded mode (any -T, one worker or more) gives one output whatever the
# number of workers (zstd 1.5; -T1, -T2 and -T0 compared here): -T0 uses every core. gzip without a
# name or time. xz single-threaded, as its block layout would otherwise depend on the threads.
COMPRESSORS = {
    "zst": ["-3", "-T0", "-q", "-c"],
    "gz": ["-9", "-n", "-c"],
    "xz": ["-6", "-T1", "-c"],
}
TOOLS = {"zst": "zstd", "gz": "gzip", "xz": "xz"}


@dataclass
class Written:
    """What the image's part of data.tar adds to control.tar: Installed-Size and md5sums."""

    kib: int = 0
    md5sums: list[str] = field(default_factory=list)
    done: int = 0  # bytes of files written so far, for the progress line


def _header(name: str, kind: bytes, mode: int, mtime: int, *, size: int = 0, link: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.size = size
    info.linkname = link
    info.uname = info.gname = "root"
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def write_rootfs(
    scan: RootfsScan, source: Path, dest: str, epoch: int, out: IO[bytes], done: Written
) -> None:
    """SCAN's entries (the tree SOURCE) as tar members under DEST ("opt/.../rootfs"), in scan order:
    each directory before what it holds, each hard link after the name it links to."""
    digests: dict[str, str] = {}
    for entry in scan.entries:
        path = f"{dest}/{entry.path}" if entry.path else dest
        name = f"./{path}"
        mtime = min(entry.mtime, epoch)
        if entry.kind is Kind.DIR:
            # Directories and symlinks are dated by the build's time, as nfpm dates them.
            out.write(_header(name, tarfile.DIRTYPE, entry.mode, epoch))
            done.kib += 1
        elif entry.kind is Kind.SYMLINK:
            target = entry.target or ""
            out.write(_header(name, tarfile.SYMTYPE, 0o777, epoch, link=target))
            done.kib += math.ceil(len(target.encode()) / 1024)
        elif entry.kind is Kind.HARDLINK and entry.target in digests:
            first = f"{dest}/{entry.target}"
            out.write(_header(name, tarfile.LNKTYPE, entry.mode, mtime, link=f"./{first}"))
            digests[entry.path] = digests[entry.target]
            done.md5sums.append(f"{digests[entry.path]}  {path}")
        else:
            digest = _write_file(source / entry.path, name, entry.mode, mtime, out, done)
            digests[entry.path] = digest
            done.md5sums.append(f"{digest}  {path}")


def _write_file(file: Path, name: str, mode: int, mtime: int, out: IO[bytes], done: Written) -> str:
    """One regular file's header and content, read in chunks; its md5, computed on the way."""
    md5 = hashlib.md5()  # noqa: S324 - dpkg's md5sums
    with file.open("rb") as source:
        size = os.fstat(source.fileno()).st_size
        out.write(_header(name, tarfile.REGTYPE, mode, mtime, size=size))
        left = size
        while left > 0:
            chunk = source.read(min(left, CHUNK))
            if not chunk:
                raise PackageError(f"{file} became shorter while it was packed")
            md5.update(chunk)
            out.write(chunk)
            left -= len(chunk)
            done.done += len(chunk)
    out.write(b"\0" * (-size % BLOCK))
    done.kib += math.ceil(size / 1024)
    return md5.hexdigest()


def merge(nfpm_tar: bytes, dest: str, out: IO[bytes], write_image: Callable[[], None]) -> int:
    """nfpm's data.tar NFPM_TAR copied to OUT with the image's entries (WRITE_IMAGE) inserted before the
    first member whose path sorts after DEST's; then the end-of-archive blocks. Returns the
    Installed-Size of nfpm's members (relink_tar's count)."""
    kib = 0
    inserted = False
    with tarfile.open(fileobj=io.BytesIO(nfpm_tar), mode="r:") as archive:
        for member in archive:
            path = payload.package_path(member.name)
            if path == dest or path.startswith(f"{dest}/"):
                raise PackageError(f"nfpm packed {member.name}, which is the image's to write")
            if not inserted and path > dest:
                write_image()
                inserted = True
            elif inserted and f"{dest}/".startswith(f"{path}/"):
                raise PackageError(f"nfpm wrote the directory {member.name} after what it holds")
            end = member.offset_data + (payload.blocks(member.size) if member.isreg() else 0)
            out.write(nfpm_tar[member.offset : end])
            kib += payload.member_kib(member)
    if not inserted:
        write_image()
    out.write(b"\0" * (2 * BLOCK))
    return kib


@contextlib.contextmanager
def _compressed(dest: Path, suffix: str) -> Iterator[IO[bytes]]:
    """A stream whose bytes end up in DEST compressed as SUFFIX says, by a compressor running beside
    the writer (on the other core)."""
    if suffix == "tar":
        with dest.open("wb") as plain:
            yield plain
        return
    if suffix not in COMPRESSORS:
        raise PackageError(f"unknown compression for the package member {dest.name}")
    tool = find_tool(TOOLS[suffix], "compress the package's data.tar")
    with sink([tool, *COMPRESSORS[suffix]], stdout=dest, what="compress the package's data.tar") as pipe:
        yield pipe


def add_rootfs(
    deb: Path, scan: RootfsScan, source: Path, dest: str, epoch: int, work: Path, key_file: Path | None
) -> None:
    """Rewrite DEB, which nfpm built without the image's files, with SCAN's tree SOURCE installed at
    DEST in its data.tar, md5sums and Installed-Size; signed again with KEY_FILE (dated EPOCH) when
    nfpm signed it. WORK is scratch space."""
    work.mkdir(parents=True, exist_ok=True)
    members = payload.read_ar(deb, work)
    try:
        names = [m.name for m in members]
        signature = members.pop() if names[-1] == "_gpgorigin" else None
        if [m.name for m in members[:2]] != ["debian-binary", "control.tar.gz"] or len(members) != 3:
            raise PackageError(f"{deb.name}: unexpected ar members {names}")
        control, data = members[1], members[2]
        if not isinstance(data.data, Path) or not isinstance(control.data, bytes):
            raise PackageError(f"{deb.name}: unexpected ar members {names}")
        plain = work / "nfpm-data.tar"
        payload.decompress(data.data, plain)
        nfpm_tar = plain.read_bytes()  # the service's own files: small
        plain.unlink()
        root = dest.strip("/")
        written = Written()
        packed = work / f"packed-{data.name}"
        with (
            log.Progress("packing", total=scan.file_bytes, poll=lambda: written.done),
            _compressed(packed, data.name.rsplit(".", 1)[-1]) as out,
        ):
            kib = merge(nfpm_tar, root, out, lambda: write_rootfs(scan, source, root, epoch, out, written))
        control_tar = _with_md5sums(gzip.decompress(control.data), root, written.md5sums)
        control_tar = payload.set_installed_size(control_tar, kib + written.kib)
        new_control = gzip.compress(control_tar, compresslevel=9, mtime=0)
        kept = [
            members[0],
            payload.ArMember(control.header, control.name, new_control),
            payload.ArMember(data.header, data.name, packed),
        ]
        if signature is not None:
            if key_file is None:
                raise PackageError(f"{deb.name} is signed, and no key to sign it again was given")
            kept.append(payload.signed_origin(kept, signature, key_file, epoch, work))
        rewritten = work / deb.name
        payload.write_ar(kept, rewritten)
        rewritten.replace(deb)
        log.debug(
            f"{deb.name}: {len(scan.entries)} image entries written, Installed-Size {kib + written.kib}"
        )
    finally:
        for member in members:
            if isinstance(member.data, Path):
                member.data.unlink(missing_ok=True)
        for leftover in work.glob("packed-*"):
            leftover.unlink()


def _with_md5sums(control_tar: bytes, dest: str, lines: list[str]) -> bytes:
    """control.tar with LINES (the image's files, under DEST) added to ./md5sums where their paths sort
    among nfpm's lines, as the data.tar has them."""
    with tarfile.open(fileobj=io.BytesIO(control_tar), mode="r:") as archive:
        handle = archive.extractfile("./md5sums")
        if handle is None:
            raise PackageError("nfpm wrote no md5sums")
        have = handle.read().decode().splitlines()
    at = next((n for n, line in enumerate(have) if line.split("  ", 1)[-1] > dest), len(have))
    text = "".join(f"{line}\n" for line in [*have[:at], *lines, *have[at:]])
    return payload.replace_member(control_tar, "./md5sums", text.encode())
