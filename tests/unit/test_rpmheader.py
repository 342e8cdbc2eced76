"""The rpm header editor on headers made here: parse and write back byte for byte, new signature values
of another length laid out with the alignment and region trailer rpm expects, and file paths read as
rpm reads them. tests/integration/test_rpm.py checks real packages with rpm -K and rpm -V."""

from __future__ import annotations

import struct

from ctr2svc.package import rpmheader as rh


def header(entries: list[tuple[int, int, bytes, int]], region: bool) -> bytes:
    """A header with ENTRIES (tag, type, value, count) laid out in order, as rpm writes one."""
    data = bytearray()
    index = []
    for tag, kind, value, count in entries:
        if kind in rh.ALIGNED:
            data += b"\0" * (-len(data) % rh.FIXED_SIZE[kind])
        index.append((tag, kind, len(data), count))
        data += value
    n = len(entries) + (1 if region else 0)
    if region:
        index.insert(0, (rh.HEADER_SIGNATURES, rh.BIN, len(data), 16))
        data += struct.pack(">iiii", rh.HEADER_SIGNATURES, rh.BIN, -16 * n, 16)
    return (
        rh.MAGIC
        + struct.pack(">II", n, len(data))
        + b"".join(struct.pack(">iiii", *e) for e in index)
        + bytes(data)
    )


def signature_header(rsa: bytes) -> bytes:
    return header(
        [
            (rh.SIG_RSA, rh.BIN, rsa, len(rsa)),
            (rh.SIG_SHA1, rh.STRING, b"a" * 40 + b"\0", 1),
            (1000, rh.INT32, struct.pack(">i", 1234), 1),
            (rh.SIG_MD5, rh.BIN, b"m" * 16, 16),
        ],
        region=True,
    )


def test_round_trip() -> None:
    blob = signature_header(b"r" * 5)
    parsed, end = rh.Header.parse(blob, 0)
    assert end == len(blob)
    assert parsed.serialize() == blob
    parsed.replace({})
    assert parsed.serialize() == blob


def test_replace_with_another_length_realigns_and_moves_the_trailer() -> None:
    parsed, _ = rh.Header.parse(signature_header(b"r" * 5), 0)
    parsed.replace({rh.SIG_RSA: b"s" * 7})
    # The same header as rpm would write it with the longer signature from the start.
    assert parsed.serialize() == signature_header(b"s" * 7)
    size = parsed.find(1000)
    assert size is not None and size.offset % 4 == 0
    assert parsed.int32s(1000) == [1234]


def test_paths() -> None:
    blob = header(
        [
            (rh.DIRINDEXES, rh.INT32, struct.pack(">3i", 0, 1, 1), 3),
            (rh.BASENAMES, rh.STRING_ARRAY, b"etc\0a\0b\0", 3),
            (rh.DIRNAMES, rh.STRING_ARRAY, b"/\0/etc/\0", 2),
        ],
        region=False,
    )
    parsed, _ = rh.Header.parse(blob, 0)
    assert rh._paths(parsed) == ["/etc", "/etc/a", "/etc/b"]
