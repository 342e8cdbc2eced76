"""What nfpm cannot write into an .rpm, written into its header afterwards: `%verify(not user group)`
on the files whose owner the package's post-install script sets.

An rpm records owners by name, and the image's users (uid 999, say) exist on no host: the package
installs those files as root and its ownership script gives them their numeric owners. Without the
flag, `rpm -V` reports every one of them ("U" and "G"), drowning what it is for.

The change is in place (the flags are 32-bit numbers, one per file), so nothing else in the main header
moves. Its digests in the signature header are computed again, and a signed package is signed again
with the same key (gpg, with the build's time as the signature's, so the build stays reproducible).
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import struct
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ctr2svc.errors import PackageError
from ctr2svc.package import gpgsign
from ctr2svc.run import find_tool, run

LEAD_SIZE = 96
MAGIC = b"\x8e\xad\xe8\x01\x00\x00\x00\x00"
INDEX_ENTRY = struct.Struct(">iiii")

# Header tags (rpmtag.h).
HEADER_SIGNATURES = 62
SIG_RSA = 268  # OpenPGP signature of the main header
SIG_SHA1 = 269  # hex SHA-1 of the main header
SIG_SHA256 = 273  # hex SHA-256 of the main header
SIG_PGP = 1002  # OpenPGP signature of the main header and the payload
SIG_MD5 = 1004  # MD5 of the main header and the payload
SIG_SIZE = 1000  # main header and payload, in bytes
SIG_PAYLOADSIZE = 1007  # the uncompressed payload
SIZE = 1009  # installed size
FILESIZES = 1028
FILEINODES = 1096
PAYLOADFORMAT = 1124
PAYLOADCOMPRESSOR = 1125
PAYLOADDIGEST = 5092
PAYLOADDIGESTALGO = 5093
PGPHASHALGO_SHA256 = 8
DIRINDEXES = 1116
BASENAMES = 1117
DIRNAMES = 1118
FILEVERIFYFLAGS = 1045

VERIFY_USER = 1 << 3
VERIFY_GROUP = 1 << 4

# Type numbers: their alignment in the data store and the size of one element.
INT16, INT32, INT64, STRING, BIN, STRING_ARRAY, I18NSTRING = 3, 4, 5, 6, 7, 8, 9
FIXED_SIZE = {0: 0, 1: 1, 2: 1, INT16: 2, INT32: 4, INT64: 8, BIN: 1}
ALIGNED = (INT16, INT32, INT64)


@dataclass
class Entry:
    tag: int
    type: int
    offset: int
    count: int


@dataclass
class Header:
    entries: list[Entry]
    data: bytearray

    @classmethod
    def parse(cls, blob: bytes, start: int) -> tuple[Header, int]:
        if blob[start : start + 8] != MAGIC:
            raise PackageError(f"nfpm wrote an rpm whose header at byte {start} has no header magic")
        count, size = struct.unpack_from(">II", blob, start + 8)
        index = start + 16
        entries = [Entry(*INDEX_ENTRY.unpack_from(blob, index + 16 * i)) for i in range(count)]
        data_start = index + 16 * count
        return cls(entries, bytearray(blob[data_start : data_start + size])), data_start + size

    def find(self, tag: int) -> Entry | None:
        return next((e for e in self.entries if e.tag == tag), None)

    def value(self, entry: Entry) -> bytes:
        return bytes(self.data[entry.offset : entry.offset + self._length(entry)])

    def strings(self, tag: int) -> list[str]:
        entry = self.find(tag)
        if entry is None:
            return []
        return [s.decode() for s in self.value(entry).split(b"\0")[: entry.count]]

    def int32s(self, tag: int) -> list[int]:
        entry = self.find(tag)
        return list(struct.unpack_from(f">{entry.count}i", self.data, entry.offset)) if entry else []

    def _length(self, entry: Entry) -> int:
        if entry.type in FIXED_SIZE:
            return FIXED_SIZE[entry.type] * entry.count
        end = entry.offset
        for _ in range(entry.count if entry.type in (STRING_ARRAY, I18NSTRING) else 1):
            end = self.data.index(b"\0", end) + 1
        return end - entry.offset

    def serialize(self) -> bytes:
        return (
            MAGIC
            + struct.pack(">II", len(self.entries), len(self.data))
            + b"".join(INDEX_ENTRY.pack(e.tag, e.type, e.offset, e.count) for e in self.entries)
            + bytes(self.data)
        )

    def replace(self, values: dict[int, bytes]) -> None:
        """Give the BIN entries named in VALUES new contents, of any length: the data store is laid
        out again in its order, the region trailer (tag 62) last, as rpm writes it."""
        region = self.find(HEADER_SIGNATURES)
        chunks = [
            (entry, values[entry.tag] if entry.tag in values else self.value(entry))
            for entry in sorted(self.entries, key=lambda e: e.offset)
            if entry is not region
        ]
        new = bytearray()
        for entry, value in chunks:
            new += b"\0" * (-len(new) % FIXED_SIZE.get(entry.type, 1) if entry.type in ALIGNED else 0)
            entry.offset = len(new)
            if entry.tag in values:
                entry.count = len(value)
            new += value
        if region is not None:
            region.offset = len(new)
            new += INDEX_ENTRY.pack(HEADER_SIGNATURES, BIN, -16 * len(self.entries), 16)
        self.data = new


def _paths(header: Header) -> list[str]:
    dirs = header.strings(DIRNAMES)
    names = header.strings(BASENAMES)
    return [dirs[i] + name for i, name in zip(header.int32s(DIRINDEXES), names, strict=True)]


def finish(
    rpm: Path,
    *,
    owner_paths: Collection[str] = (),
    links: Collection[tuple[str, str]] = (),
    key_file: Path | None = None,
    epoch: int = 0,
) -> bool:
    """Edit the rpm nfpm wrote, in place: `%verify(not user group)` on OWNER_PATHS, and every
    (path, target) of LINKS a hard link of its target in the payload instead of a copy. A signed
    package is signed again with KEY_FILE (its passphrase in $NFPM_PASSPHRASE). Paths are as
    installed. Returns whether anything changed."""
    if not owner_paths and not links:
        return False
    blob = rpm.read_bytes()
    signature, end = Header.parse(blob, LEAD_SIZE)
    main_start = end + (-end % 8)
    main, main_end = Header.parse(blob, main_start)
    payload = blob[main_end:]
    changed = _relax_verify(main, set(owner_paths), rpm.name)
    if links:
        relinked = _link(main, signature, payload, links)
        if relinked is not None:
            payload, changed = relinked, True
    if not changed:
        return False
    header = main.serialize()
    values = {
        SIG_SHA1: hashlib.sha1(header).hexdigest().encode() + b"\0",  # noqa: S324 - rpm's digest
        SIG_SHA256: hashlib.sha256(header).hexdigest().encode() + b"\0",
        SIG_MD5: hashlib.md5(header + payload).digest(),  # noqa: S324 - rpm's digest
        SIG_SIZE: struct.pack(">i", len(header) + len(payload)),
    }
    for tag, value in values.items():
        entry = signature.find(tag)
        if entry is not None:
            signature.data[entry.offset : entry.offset + len(value)] = value
    if signature.find(SIG_RSA) or signature.find(SIG_PGP):
        if key_file is None:
            raise PackageError(f"{rpm.name} is signed but no key was given to sign it again")
        signature.replace(
            {SIG_RSA: _sign(header, key_file, epoch), SIG_PGP: _sign(header + payload, key_file, epoch)}
        )
    sig = signature.serialize()
    tmp = rpm.with_name(rpm.name + ".edit")
    tmp.write_bytes(blob[:LEAD_SIZE] + sig + b"\0" * (-len(sig) % 8) + header + payload)
    tmp.replace(rpm)
    return True


def _relax_verify(main: Header, wanted: set[str], name: str) -> bool:
    if not wanted:
        return False
    flags = main.find(FILEVERIFYFLAGS)
    if flags is None:
        raise PackageError(f"nfpm wrote {name} without per-file verify flags")
    changed = False
    for i, path in enumerate(_paths(main)):
        if path in wanted:
            at = flags.offset + 4 * i
            (value,) = struct.unpack_from(">i", main.data, at)
            struct.pack_into(">i", main.data, at, value & ~(VERIFY_USER | VERIFY_GROUP))
            changed = True
    return changed


def _set_int32(header: Header, tag: int, index: int, value: int) -> None:
    entry = header.find(tag)
    if entry is not None:
        struct.pack_into(">i", header.data, entry.offset + 4 * index, value)


def _link(
    main: Header, signature: Header, payload: bytes, links: Collection[tuple[str, str]]
) -> bytes | None:
    """The payload with each hard link set stored once, as rpmbuild stores it (rpmfi.c,
    iterWriteArchiveNextFile): every member shares the first one's inode number (in FILEINODES and in
    cpio); the files with one name come first, in the header's order, then each set, its members one
    after the other in the header's order, only the last carrying the content (the others have size
    0). rpm's installer (fsm.c, fsmMkfile) depends on that: it creates the first member it meets,
    links every regular file after it to that one until the content comes, then fills it. A file
    between two members would be linked to them, and get their content. None when the payload is not
    one this can rewrite (then the copies stay, and the ownership script links them on install)."""
    compressor = main.strings(PAYLOADCOMPRESSOR)
    algo = main.int32s(PAYLOADDIGESTALGO)
    if main.strings(PAYLOADFORMAT) != ["cpio"] or not compressor or compressor[0] not in CODECS:
        return None
    if algo and algo[0] != PGPHASHALGO_SHA256:
        return None
    paths = _paths(main)
    index = {path: i for i, path in enumerate(paths)}
    inodes = main.int32s(FILEINODES)
    sizes = main.int32s(FILESIZES)
    sets: dict[int, list[int]] = {}
    for path, target in links:
        if path in index and target in index:
            sets.setdefault(index[target], [index[target]]).append(index[path])
    if not sets:
        return None
    groups = sorted(sorted(members) for members in sets.values())
    member_of = {fx: members for members in groups for fx in members}
    for members in groups:
        for fx in members:
            _set_int32(main, FILEINODES, fx, inodes[members[0]])

    raw = _decompress(compressor[0], payload)
    # Each file's cpio entry in the header's order: its header fields, where its name, its data and
    # the next entry start.
    entries: list[tuple[list[int], int, int, int]] = []
    pos = fx = 0
    while True:
        if raw[pos : pos + 6] != b"070701":
            return None
        fields = [int(raw[pos + 6 + 8 * k : pos + 14 + 8 * k], 16) for k in range(13)]
        name_end = pos + 110 + fields[11]
        data = name_end + (-name_end % 4)
        data_end = data + fields[6]
        after = data_end + (-data_end % 4)
        name = raw[pos + 110 : name_end - 1]
        if name == b"TRAILER!!!":
            break
        if fx >= len(paths) or name.decode(errors="replace")[1:] != paths[fx]:
            return None  # not in the header's order: leave it as nfpm wrote it
        entries.append((fields, pos, data, after))
        pos, fx = after, fx + 1
    if fx != len(paths):
        return None
    out = bytearray()
    for fx, (_, start, _, after) in enumerate(entries):
        if fx not in member_of:
            out += raw[start:after]
    for members in groups:
        for fx in members:
            fields, start, data, after = entries[fx]
            content = fx == members[-1]
            fields[0], fields[4] = inodes[members[0]], len(members)
            fields[6] = fields[6] if content else 0
            out += b"070701" + b"".join(b"%08X" % f for f in fields)
            out += raw[start + 110 : data] + (raw[data:after] if content else b"")
    out += raw[pos:]
    # The installed size counts each file once (rpmbuild's SIZE does).
    total = main.int32s(SIZE)
    if total:
        dropped = sum(sizes[m] for members in groups for m in members[:-1])
        _set_int32(main, SIZE, 0, total[0] - dropped)
    _set_int32(signature, SIG_PAYLOADSIZE, 0, len(out))
    compressed = _compress(compressor[0], bytes(out))
    digest = main.find(PAYLOADDIGEST)
    if digest is not None:
        value = hashlib.sha256(compressed).hexdigest().encode()
        main.data[digest.offset : digest.offset + len(value)] = value
    return compressed


CODECS = ("gzip", "xz", "zstd")


def _decompress(codec: str, data: bytes) -> bytes:
    if codec == "gzip":
        return gzip.decompress(data)
    if codec == "xz":
        return lzma.decompress(data)
    return run(
        [find_tool("zstd", "rewrite the rpm payload"), "-dcq"], input=data, what="read the rpm payload"
    ).stdout


def _compress(codec: str, data: bytes) -> bytes:
    # Deterministic: no name or time in the gzip header, one xz block, zstd's level as nfpm's.
    if codec == "gzip":
        return gzip.compress(data, compresslevel=9, mtime=0)
    if codec == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=6)
    zstd = find_tool("zstd", "rewrite the rpm payload")
    return run([zstd, "-3", "-cq", "--no-check"], input=data, what="compress the rpm payload").stdout


def _sign(data: bytes, key_file: Path, epoch: int) -> bytes:
    with tempfile.TemporaryDirectory(prefix="ctr2svc-rpm-") as work:
        signed = Path(work) / "signed"
        signed.write_bytes(data)
        return gpgsign.detach_sign(signed, key_file, epoch)
