"""A layer's blob read as a tar: decompressed (gzip in process, zstd by the zstd tool), hashed against
its diff_id, and each member judged by the rules of layerrules.py. A flat build reads every layer
this way before umoci unpacks the image (check_image); a shared build unpacks each one as it reads it
(layerstore.py). So an image is refused, or accepted with the same root, whichever way it is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Protocol

from ctr2svc.errors import ImageError, ToolError, ToolFailed
from ctr2svc.image.layerrules import BROKEN, LayerCheck, View, refusal, shown_name
from ctr2svc.image.layers import Layer
from ctr2svc.run import find_tool, stream

# gzip is read in process (zlib); zstd, which Python 3.11 cannot read, by the zstd tool.
ZSTD = ("zstd", "-dc", "-q")
READ_SIZE = 1 << 20


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Reader:
    """A file object over the uncompressed tar that hashes it (it must match its diff_id) and notes
    where its last non-zero byte is (nothing but zeros may follow the archive's end)."""

    def __init__(self, raw: _Readable) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.total = 0
        self.last_nonzero = -1

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        # Only the tail is looked at (rstrip copies what it keeps), unless it is all zeros.
        tail = len(data[-4096:].rstrip(b"\0"))
        kept = len(data) - min(len(data), 4096) + tail if tail else len(data.rstrip(b"\0"))
        if kept:
            self.last_nonzero = self.total + kept - 1
        self.total += len(data)
        return data

    def drain(self) -> None:
        for _chunk in iter(lambda: self.read(1 << 20), b""):
            pass


def _compression(layer: Layer, blob: Path) -> str | None:
    """gzip, zstd or None (a plain tar), by the OCI or Docker media type (…tar+gzip, …tar.gzip)."""
    kind = layer.media_type
    if kind.endswith(("+gzip", ".gzip")):
        return "gzip"
    if kind.endswith(("+zstd", ".zstd")):
        return "zstd"
    if kind.endswith("tar"):
        return None
    # No or an unknown media type: go by the bytes.
    with blob.open("rb") as handle:
        magic = handle.read(4)
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return None


class _Corrupt(Exception):
    """The compressed stream does not decompress; the message is why."""


class _Gunzip:
    """A gzip stream read in process, member after member as gzip(1) and Go's reader (umoci) read
    it, its faults raised as _Corrupt (an OSError would be taken for the file system's). Anything
    after the last member, zero padding included, is refused: Go's reader refuses it, Python's
    gzip module skips zeros."""

    CHUNK = 1 << 20

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.member = zlib.decompressobj(wbits=31)
        self.pending = b""
        self.done = False

    def read(self, size: int = -1) -> bytes:
        want = size if size > 0 else self.CHUNK
        while not self.done:
            data = self.pending or self.raw.read(self.CHUNK)
            self.pending = b""
            if not data:
                if not self.member.eof:
                    raise _Corrupt("gzip: the stream is cut short")
                self.done = True
                break
            if self.member.eof:
                # The next member: it must be one (its magic may straddle two reads).
                if len(data) < 2:
                    data += self.raw.read(self.CHUNK)
                if data[:2] != b"\x1f\x8b":
                    raise _Corrupt("gzip: the data after its gzip stream is not gzip")
                self.member = zlib.decompressobj(wbits=31)
            try:
                out = self.member.decompress(data, want)
            except zlib.error as exc:
                if "header check" in str(exc):
                    raise _Corrupt("gzip: it is not gzip") from exc
                if "check" in str(exc):
                    raise _Corrupt("gzip: its checksum does not match its data") from exc
                raise _Corrupt(f"gzip: damaged data ({exc})") from exc
            # At a member's end, what follows it; else what did not fit in WANT.
            self.pending = self.member.unused_data if self.member.eof else self.member.unconsumed_tail
            if out:
                return out
        return b""


@contextlib.contextmanager
def _tar_stream(layer: Layer, blob: Path) -> Iterator[_Readable]:
    kind = _compression(layer, blob)
    if kind == "zstd":
        argv = [find_tool(ZSTD[0], "unpack zstd layers"), *ZSTD[1:]]
        with stream(argv, stdin=blob, what="decompress a layer") as out:
            yield out
        return
    with blob.open("rb") as handle:
        if kind != "gzip":
            yield handle
            return
        with _Ahead(_Gunzip(handle)) as ahead:
            yield ahead


class _Ahead:
    """Reads RAW in a thread of its own, a few pieces ahead of the reader: zlib lets go of the GIL
    while it inflates, so a gzip layer decompresses on one core while this one hashes and parses
    it (a flat build's check of every layer took the sum of both). What RAW raises is raised to the
    reader where it would have met it; at most DEPTH pieces of READ_SIZE are held."""

    DEPTH = 4

    def __init__(self, raw: _Readable) -> None:
        self.raw = raw
        self.pieces: queue.Queue[bytes | BaseException] = queue.Queue(self.DEPTH)
        self.stopped = threading.Event()
        self.left = b""
        self.done = False
        self.thread = threading.Thread(target=self._fill, name="layer-read", daemon=True)

    def __enter__(self) -> _Ahead:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        # The filler may be waiting for room: make some until it sees the flag.
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self.pieces.get(timeout=0.1)
        self.thread.join()

    def _fill(self) -> None:
        while not self.stopped.is_set():
            try:
                piece: bytes | BaseException = self.raw.read(READ_SIZE)
            except BaseException as exc:  # handed to the reader, raised there
                piece = exc
            while not self.stopped.is_set():
                try:
                    self.pieces.put(piece, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not isinstance(piece, bytes) or not piece:
                return

    def read(self, size: int = -1) -> bytes:
        if not self.left and not self.done:
            piece = self.pieces.get()
            if isinstance(piece, BaseException):
                self.done = True
                raise piece
            self.done = not piece
            self.left = piece
        want = len(self.left) if size < 0 else size
        data, self.left = self.left[:want], self.left[want:]
        return data


def read_layer(
    layer: Layer,
    blob: Path,
    each: Callable[[tarfile.TarFile, tarfile.TarInfo], None],
    where: Path | None = None,
) -> None:
    """Read the layer's tar member by member, calling EACH (which may refuse one by raising).

    Whatever EACH found, the whole blob is read before anything is reported, so that the most basic
    fault is the one named: a stream that does not decompress, then content that is not the layer's
    diff_id, then the first bad member, then bytes outside the archive. WHERE is the directory being
    unpacked into, for the message when it fills up.
    """
    label = layer.label
    problem: ImageError | None = None
    corrupt: str | None = None
    details: str | None = None
    current = ""
    end = -1
    try:
        with _tar_stream(layer, blob) as raw:
            reader = _Reader(raw)
            try:
                # Reads of 1 MiB, not tarfile's 10 KiB: a hundred times fewer calls into zlib and hashlib.
                with tarfile.open(fileobj=reader, mode="r|", bufsize=READ_SIZE) as archive:  # type: ignore[call-overload]
                    for info in archive:
                        current = info.name
                        each(archive, info)
                    end = archive.offset
            except _Corrupt as exc:
                corrupt = str(exc)
            except ImageError as exc:
                problem = exc
            except (tarfile.TarError, EOFError, UnicodeError) as exc:
                problem = _tar_problem(label, exc, current)
            except OSError as exc:
                raise _os_problem(label, exc, current, where) from exc
            if corrupt is None:
                try:
                    reader.drain()
                except _Corrupt as exc:
                    corrupt = str(exc)
    except ToolFailed as exc:
        corrupt, details = exc.brief.split(": ", 1)[-1], exc.details
    if corrupt is not None:
        _check_cached(layer, blob)
        raise ImageError(
            f"layer {label} is corrupt: it does not decompress ({corrupt})", hint=BROKEN, details=details
        )
    actual = "sha256:" + reader.digest.hexdigest()
    if actual != layer.diff_id:
        _check_cached(layer, blob)
        raise ImageError(
            f"layer {label} does not match its diff_id: the image's config says {layer.diff_id}, its "
            f"content is {actual}",
            hint="the image is broken or tampered with: rebuild it, or push or export it again",
        )
    after = f" after /{shown_name(current)}" if current else ""
    if problem is None and reader.last_nonzero >= end:
        problem = refusal(
            label,
            f"has bytes outside its tar archive{after} (from byte {end}): a damaged header, or data "
            "hidden after the archive's end",
            BROKEN,
        )
    if problem is None and reader.total < end + tarfile.BLOCKSIZE:
        problem = refusal(label, f"is cut short: its tar archive stops{after} without an end marker", BROKEN)
    if problem is not None:
        _check_cached(layer, blob)
        raise problem


def _check_cached(layer: Layer, blob: Path) -> None:
    """A layer that fails to read may have changed in the cache after skopeo verified it: then it is
    removed (the next build pulls the image again) and that is the error."""
    if not layer.digest.startswith("sha256:"):
        return
    digest = hashlib.sha256()
    try:
        with blob.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return
    if "sha256:" + digest.hexdigest() == layer.digest:
        return
    with contextlib.suppress(OSError):
        blob.unlink()
    raise ImageError(
        f"a layer in the image cache was damaged since it was pulled ({layer.digest}); it is now removed",
        hint="build again: the layer will be downloaded again",
    )


def _tar_problem(label: str, exc: BaseException, current: str) -> ImageError:
    if isinstance(exc, tarfile.ReadError) and "unexpected end of data" in str(exc) and current:
        return refusal(label, f"is cut short: its tar archive ends inside /{shown_name(current)}", BROKEN)
    return refusal(label, f"is not a valid tar archive ({exc})", BROKEN)


def _os_problem(label: str, exc: OSError, current: str, where: Path | None) -> Exception:
    if exc.errno == 28:
        return ToolError(
            f"no space left on the device holding {where} while unpacking layer {label}",
            hint="free some space there, or point --cache-dir at a larger disk",
        )
    if exc.errno == 36:
        return refusal(label, f"has a path too long to unpack: /{shown_name(current)}")
    return ToolError(
        f"cannot unpack /{shown_name(current)} of layer {label} into {where}: {exc.strerror}",
        hint="shared layers need root and a local file system that keeps owners, devices and "
        "trusted.* attributes; or build with --layers flat",
    )


def check_image(layers: Sequence[Layer], blob: Callable[[str], Path]) -> View:
    """Read every layer of the image, bottom first, by the rules a shared build unpacks them with:
    a flat build hands umoci only what passed. The image's root as they make it."""
    view = View()
    for layer in layers:
        check = LayerCheck(layer.label, view)

        def each(_archive: tarfile.TarFile, info: tarfile.TarInfo, check: LayerCheck = check) -> None:
            check.add(info)

        read_layer(layer, blob(layer.digest), each)
        check.finish()
        view.apply(check)
    return view
