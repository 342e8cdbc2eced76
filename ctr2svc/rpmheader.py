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

import hashlib
import os
import struct
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ctr2svc.errors import PackageError
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


def relax_owner_verify(
    rpm: Path, paths: Collection[str], *, key_file: Path | None = None, epoch: int = 0
) -> int:
    """Clear the user and group verify flags of PATHS (as installed) in RPM; sign again with
    KEY_FILE (its passphrase in $NFPM_PASSPHRASE) if given. Returns how many files changed."""
    wanted = set(paths)
    if not wanted:
        return 0
    blob = rpm.read_bytes()
    signature, end = Header.parse(blob, LEAD_SIZE)
    main_start = end + (-end % 8)
    main, main_end = Header.parse(blob, main_start)
    flags = main.find(FILEVERIFYFLAGS)
    if flags is None:
        raise PackageError(f"nfpm wrote {rpm.name} without per-file verify flags")
    changed = 0
    for i, path in enumerate(_paths(main)):
        if path in wanted:
            at = flags.offset + 4 * i
            (value,) = struct.unpack_from(">i", main.data, at)
            struct.pack_into(">i", main.data, at, value & ~(VERIFY_USER | VERIFY_GROUP))
            changed += 1
    if not changed:
        return 0
    header = main.serialize()
    payload = blob[main_end:]
    values = {
        SIG_SHA1: hashlib.sha1(header).hexdigest().encode() + b"\0",  # noqa: S324 - rpm's digest
        SIG_SHA256: hashlib.sha256(header).hexdigest().encode() + b"\0",
        SIG_MD5: hashlib.md5(header + payload).digest(),  # noqa: S324 - rpm's digest
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
    tmp = rpm.with_name(rpm.name + ".verify")
    tmp.write_bytes(blob[:LEAD_SIZE] + sig + b"\0" * (-len(sig) % 8) + header + payload)
    tmp.replace(rpm)
    return changed


def _sign(data: bytes, key_file: Path, epoch: int) -> bytes:
    """A binary OpenPGP signature of DATA by the secret key in KEY_FILE, made at EPOCH."""
    gpg = find_tool("gpg", "sign the rpm again after setting its verify flags (apt-get install gnupg)")
    passphrase = os.environ.get("NFPM_PASSPHRASE", "").encode()
    base = [gpg, "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase-fd", "0"]
    with tempfile.TemporaryDirectory(prefix="ctr2svc-gpg-") as home:
        env = {"GNUPGHOME": home}
        run([*base, "--import", key_file], input=passphrase + b"\n", env=env, what="read the signing key")
        (Path(home) / "data").write_bytes(data)
        proc = run(
            [
                *base,
                "--faked-system-time",
                f"{epoch}!",
                # A key made after the image (the signing time) is still good for it.
                "--ignore-time-conflict",
                "--ignore-valid-from",
                "--digest-algo",
                "SHA256",
                "--detach-sign",
                "--output",
                "-",
                Path(home) / "data",
            ],
            input=passphrase + b"\n",
            env=env,
            what="sign the rpm",
        )
        # The agent gpg started for this home would outlive it.
        run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], check=False, what="stop gpg-agent")
        return proc.stdout
