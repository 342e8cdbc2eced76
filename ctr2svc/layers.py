"""Shared layers: each image layer unpacked on its own, in the form overlayfs reads, and cached by digest.

A layer is content-addressed and never changes, which is what a package with a fixed version is: the
layer's files become a package (`ctr2svc-layer-<12 hex of its diff_id>`) that every service built on
it shares, and the service mounts its image's layers as overlayfs lower layers at start.

A layer is unpacked as Docker's overlay2 driver keeps it: deleted paths as whiteouts (0/0 character
devices) and "this directory hides what is below" as the trusted.overlay.opaque xattr, so that the
layer is the same whatever layers it sits on. Package formats carry neither, so the layer package
makes them again at install (templates/layer/setup.sh.j2).

The kernel caps the lower layers of one overlay mount (500) and the mount options at a page (4096
bytes). Past MAX_LAYERS (100: about 2 KiB of options on the host) the bottom layers of an image are
merged into one, named by the chain ID of the layers it holds (the OCI image spec's content address
of a stack of layers), so that images sharing that base share the merged layer too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ctr2svc import log
from ctr2svc.bundle import OPAQUE_XATTR, RootfsScan, scan
from ctr2svc.errors import ImageError, ToolError, ToolFailed, UsageError
from ctr2svc.run import find_tool, run, stream

PACKAGE_PREFIX = "ctr2svc-layer-"
# Every layer package has this version: its name already says which content it holds. A future
# change of how a layer is installed raises it, and service packages then ask for the new one.
PACKAGE_VERSION = "1"
INSTALL_DIR = "/opt/containers/layers"
MAX_LAYERS = 100
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

_DECOMPRESSORS = {
    "gzip": ("gzip", "-dc"),
    "zstd": ("zstd", "-dc", "-q"),
}


def max_layers() -> int:
    """MAX_LAYERS, or $CTR2SVC_MAX_LAYERS (at least 2), which tests use to merge small images."""
    text = os.environ.get("CTR2SVC_MAX_LAYERS", "").strip()
    if not text:
        return MAX_LAYERS
    if not text.isdigit() or not 2 <= int(text) <= MAX_LAYERS:
        raise UsageError(
            f"CTR2SVC_MAX_LAYERS={text!r} is not a number from 2 to {MAX_LAYERS}",
            hint="unset it, or set a number of lower layers such as 50",
        )
    return int(text)


@dataclass(frozen=True)
class Layer:
    """One layer as the image's manifest and config name it."""

    digest: str  # of the blob as stored (compressed)
    diff_id: str  # of the uncompressed tar: what the layer *is*
    media_type: str
    size: int  # compressed bytes


def chain_id(diff_ids: Sequence[str]) -> str:
    """The OCI image spec's ChainID of a stack of layers (bottom first)."""
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain


@dataclass(frozen=True)
class Unit:
    """What one layer package holds: one layer, or the bottom layers of a tall image merged."""

    layers: tuple[Layer, ...]

    @property
    def id(self) -> str:
        return self.layers[0].diff_id if len(self.layers) == 1 else chain_id([x.diff_id for x in self.layers])

    @property
    def hex(self) -> str:
        return self.id.split(":", 1)[1]

    @property
    def short(self) -> str:
        return self.hex[:12]

    @property
    def package(self) -> str:
        return PACKAGE_PREFIX + self.short

    @property
    def merged(self) -> bool:
        return len(self.layers) > 1

    @property
    def install_dir(self) -> str:
        return f"{INSTALL_DIR}/{self.short}"


def image_layers(manifest: dict[str, Any], config: dict[str, Any]) -> list[Layer]:
    """The image's layers, bottom first, each with the diff_id its config records."""
    try:
        descriptors = manifest["layers"]
        diff_ids = config["rootfs"]["diff_ids"]
        if len(descriptors) != len(diff_ids):
            raise ValueError
        layers = [
            Layer(str(d["digest"]), str(diff), str(d.get("mediaType", "")), int(d.get("size", 0)))
            for d, diff in zip(descriptors, diff_ids, strict=True)
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ImageError(
            "the image's config does not list one diff_id per layer of its manifest",
            hint="rebuild the image with a standard tool, or build it with --layers flat",
        ) from exc
    for layer in layers:
        algorithm, _, hexpart = layer.diff_id.partition(":")
        if algorithm != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
            raise ImageError(
                f"the image's config lists a diff_id that is not a sha256 digest: {layer.diff_id[:80]!r}",
                hint="rebuild the image with a standard tool, or build it with --layers flat",
            )
    if not layers:
        raise ImageError("the image has no layers", hint="build it with --layers flat")
    return layers


def plan(layers: Sequence[Layer], limit: int | None = None) -> list[Unit]:
    """The image's layer packages, bottom first: one per layer, the bottom ones merged past the limit.

    A layer that comes again higher up the stack (the empty layer of a `RUN` that changed nothing, say)
    is kept only there: overlayfs refuses one directory twice among its lower layers, and the higher
    copy defines every path the lower one does, deletions included, so the root is the same.
    """
    limit = limit or max_layers()
    topmost = {layer.diff_id: index for index, layer in enumerate(layers)}
    layers = [layer for index, layer in enumerate(layers) if topmost[layer.diff_id] == index]
    if len(layers) <= limit:
        return [Unit((layer,)) for layer in layers]
    cut = len(layers) - limit + 1
    return [Unit(tuple(layers[:cut])), *(Unit((layer,)) for layer in layers[cut:])]


@dataclass(frozen=True)
class Extracted:
    """A unit unpacked in the cache: its files under `root`, and what they are."""

    unit: Unit
    root: Path
    scan: RootfsScan


class LayerStore:
    """CACHE/layers/HEX/{diff/, scan.json}: unpacked layers, and the packages built from them."""

    def __init__(self, cache_root: Path) -> None:
        self.root = cache_root / "layers"

    def path(self, unit: Unit) -> Path:
        return self.root / unit.hex

    def cached(self, unit: Unit) -> Extracted | None:
        base = self.path(unit)
        try:
            doc = json.loads((base / "scan.json").read_text())
            if doc.get("id") != unit.id:
                return None
            return Extracted(unit, base / "diff", RootfsScan.from_json(doc["scan"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def extract(self, unit: Unit, blob: Callable[[str], Path]) -> Extracted:
        """The unit unpacked, from the cache or unpacked now (into a temporary name, then renamed, so
        that a killed build leaves no half layer behind and two builds can race)."""
        found = self.cached(unit)
        if found is not None:
            return found
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.root / f".{unit.hex}.{os.getpid()}.tmp"
        shutil.rmtree(temp, ignore_errors=True)
        try:
            (temp / "diff").mkdir(parents=True)
            (temp / "diff").chmod(0o755)  # umask aside: a root directory, as images have it
            skipped: list[tuple[str, str]] = []
            for index, layer in enumerate(unit.layers):
                # A merged unit is the bottom of every stack it is in: later layers apply to it.
                apply = unit.merged and index > 0
                unpack_layer(layer, blob(layer.digest), temp / "diff", skipped, apply=apply)
            result = scan(temp / "diff", layer=True)
            result.skipped.extend(skipped)
            doc = {"id": unit.id, "diff_ids": [x.diff_id for x in unit.layers], "scan": result.to_json()}
            (temp / "scan.json").write_text(json.dumps(doc))
            final = self.path(unit)
            try:
                temp.rename(final)
            except OSError:
                # Another build got there first: theirs is the same content.
                if self.cached(unit) is None:
                    raise
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        extracted = self.cached(unit)
        assert extracted is not None
        return extracted

    def remove_orphans(self) -> None:
        """Temporary layers of builds that were killed before they could clean up."""
        if not self.root.is_dir():
            return
        for stale in self.root.glob(".*.tmp"):
            pid = stale.name.split(".")[2] if stale.name.count(".") >= 3 else ""
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                log.debug(f"removing {stale}, left by a build that did not finish")
                shutil.rmtree(stale, ignore_errors=True)


class _Hashing:
    """A file object that hashes what is read through it: the uncompressed tar must match its diff_id."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
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


@contextlib.contextmanager
def _tar_stream(layer: Layer, blob: Path) -> Iterator[IO[bytes]]:
    kind = _compression(layer, blob)
    if kind is None:
        with blob.open("rb") as handle:
            yield handle
        return
    tool, *args = _DECOMPRESSORS[kind]
    argv = [find_tool(tool, f"unpack {kind} layers"), *args]
    with stream(argv, stdin=blob, what="decompress a layer") as out:
        yield out


def unpack_layer(
    layer: Layer, blob: Path, dest: Path, skipped: list[tuple[str, str]], *, apply: bool
) -> None:
    """Unpack one layer's tar into dest.

    apply=False keeps the layer's changes in overlayfs' form (whiteouts, opaque xattrs). apply=True
    carries them out on what dest already holds, as merging the layers of a stack does.
    """
    short = layer.diff_id[7:19]
    try:
        with _tar_stream(layer, blob) as raw:
            hashing = _Hashing(raw)
            try:
                with tarfile.open(fileobj=hashing, mode="r|") as archive:  # type: ignore[call-overload]
                    _Unpacker(dest, apply, skipped, short).run(archive)
            except (tarfile.TarError, EOFError, OSError, UnicodeError) as exc:
                if isinstance(exc, OSError) and exc.errno == 28:
                    raise ToolError(
                        f"no space left on the device holding {dest} while unpacking layer {short}",
                        hint="free some space there, or point --cache-dir at a larger disk",
                    ) from exc
                raise ImageError(
                    f"layer {short} is not a valid tar archive ({exc})",
                    hint="the image itself is broken: rebuild it, or push or export it again",
                ) from exc
            hashing.drain()
    except ToolFailed as exc:
        raise ImageError(
            f"layer {short} is corrupt: it does not decompress ({exc.brief.split(': ', 1)[-1]})",
            hint="the image itself is broken: rebuild it, or push or export it again",
            details=exc.details,
        ) from exc
    actual = "sha256:" + hashing.digest.hexdigest()
    if actual != layer.diff_id:
        raise ImageError(
            f"layer {short} does not match its diff_id: the image's config says {layer.diff_id}, its "
            f"content is {actual}",
            hint="the image is broken or tampered with: rebuild it, or build with --layers flat",
        )


class _Unpacker:
    def __init__(self, dest: Path, apply: bool, skipped: list[tuple[str, str]], short: str) -> None:
        self.dest = dest
        self.apply = apply
        self.skipped = skipped
        self.short = short
        self.dirs: set[str] = {""}  # checked to be real directories (not links) in dest
        self.dir_times: dict[str, int] = {}
        # Directories the layer does not list: made for it (implied), or a lower layer's whose time
        # adding entries changes (kept). Their times are set at the end, not left at the unpack's
        # time, which would make the layer package differ from build to build.
        self.implied: list[str] = []
        self.kept: dict[str, int] = {}
        self.newest = 0
        self.opaque: list[str] = []

    def refuse(self, problem: str) -> ImageError:
        return ImageError(
            f"layer {self.short} {problem}",
            hint="the image is malformed: rebuild it with a standard tool (docker, buildah)",
        )

    def name(self, raw: str) -> str:
        # As Docker: an absolute name is inside the image ("/etc" is "etc"); ".." never is.
        path = posixpath.normpath("/" + raw).lstrip("/")
        if ".." in raw.split("/"):
            raise self.refuse(f"has a path outside the image: {raw[:100]!r}")
        return "" if path == "." else path

    def parent(self, rel: str) -> None:
        """Make rel's parent directories real directories (new ones 0755 root, as Docker's overlay2
        does), refusing to go through a symbolic link: a layer must not write outside itself."""
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if prefix in self.dirs:
                continue
            full = self.dest / prefix
            try:
                st = full.lstat()
            except FileNotFoundError:
                _new_dir(full)
                self.implied.append(prefix)
                self.dirs.add(prefix)
                continue
            if stat.S_ISDIR(st.st_mode):
                self.kept.setdefault(prefix, int(st.st_mtime))
                self.dirs.add(prefix)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise self.refuse(f"writes /{rel} through the symbolic link /{prefix}")
            self.remove(prefix)
            _new_dir(full)
            self.implied.append(prefix)
            self.dirs.add(prefix)

    def remove(self, rel: str) -> None:
        full = self.dest / rel
        try:
            st = full.lstat()
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(full)
            self.dirs = {d for d in self.dirs if d != rel and not d.startswith(rel + "/")}
        else:
            full.unlink()

    def run(self, archive: tarfile.TarFile) -> None:
        self.kept[""] = int(self.dest.lstat().st_mtime)
        for member in archive:
            self.newest = max(self.newest, int(member.mtime))
            rel = self.name(member.name)
            base = posixpath.basename(rel)
            if base.startswith(WHITEOUT_PREFIX):
                self.whiteout(rel, base)
                continue
            if not rel:
                # The layer's root directory: its owner and mode.
                os.chown(self.dest, member.uid, member.gid)
                self.dest.chmod(member.mode & 0o7777)
                self.dir_times[""] = int(member.mtime)
                continue
            self.parent(rel)
            self.member(archive, member, rel)
        for rel in self.opaque:
            if rel in self.dirs or (self.dest / rel).is_dir():
                os.setxattr(self.dest / rel, OPAQUE_XATTR, b"y", follow_symlinks=False)
        # Those the layer implies take its newest entry's time (the root too, for a layer on
        # nothing); a lower layer's keep theirs.
        unlisted = [(rel, self.newest) for rel in [*self.implied, *([] if self.apply else [""])]]
        for rel, mtime in [*unlisted, *self.kept.items()]:
            if _real_dir(self.dest / rel):  # (a later entry may have replaced it)
                self.dir_times.setdefault(rel, mtime)
        # Directory times last: adding their entries changed them.
        for rel, mtime in sorted(self.dir_times.items(), reverse=True):
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.dest / rel, (mtime, mtime), follow_symlinks=False)

    def whiteout(self, rel: str, base: str) -> None:
        parent = posixpath.dirname(rel)
        if parent:
            self.parent(rel)
        if base == OPAQUE_MARKER:
            if self.apply:
                # Everything below the directory came from lower layers: it goes.
                for child in list((self.dest / parent).iterdir()) if (self.dest / parent).is_dir() else []:
                    self.remove(str(child.relative_to(self.dest)))
            else:
                if not (self.dest / parent).exists():
                    _new_dir(self.dest / parent)
                    self.implied.append(parent)
                    self.dirs.add(parent)
                self.opaque.append(parent)
            return
        target = posixpath.join(parent, base[len(WHITEOUT_PREFIX) :])
        if not base[len(WHITEOUT_PREFIX) :] or base[len(WHITEOUT_PREFIX) :] in (".", ".."):
            raise self.refuse(f"has a malformed whiteout {rel!r}")
        self.remove(target)
        if not self.apply:
            os.mknod(self.dest / target, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def member(self, archive: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> None:
        full = self.dest / rel
        mode = member.mode & 0o7777
        if member.isdir():
            try:
                st = full.lstat()
                if not stat.S_ISDIR(st.st_mode):
                    self.remove(rel)
                    full.mkdir()
            except FileNotFoundError:
                full.mkdir()
            self.dirs.add(rel)
            os.chown(full, member.uid, member.gid)
            full.chmod(mode)
            self.dir_times[rel] = int(member.mtime)
            return
        if member.ischr() or member.isblk() or member.isfifo():
            kind = "character device" if member.ischr() else "block device" if member.isblk() else "fifo"
            self.skipped.append((rel, kind))
            return
        self.remove(rel)
        if member.issym():
            full.symlink_to(member.linkname)
            os.chown(full, member.uid, member.gid, follow_symlinks=False)
            os.utime(full, (member.mtime, member.mtime), follow_symlinks=False)
        elif member.islnk():
            target = self.name(member.linkname)
            source = self.dest / target
            if not target or not source.is_file() or source.is_symlink():
                # Docker's overlay2 refuses these too: the first name lives in another layer.
                raise self.refuse(f"hard-links /{rel} to /{target}, which is not a file of the same layer")
            os.link(source, full)
        elif member.isreg():
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                data = archive.extractfile(member)
                assert data is not None
                shutil.copyfileobj(data, out, 1 << 20)
            os.chown(full, member.uid, member.gid)
            # After chown, which clears setuid and setgid bits.
            full.chmod(mode)
            os.utime(full, (member.mtime, member.mtime))
        else:
            self.skipped.append((rel, "special file"))


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def _new_dir(path: Path) -> None:
    """A new directory of mode 0755, as Docker makes the ones a layer implies: mkdir's own mode is
    cut by the builder's umask (0700 under umask 077), and the layer package would ship that."""
    path.mkdir()
    path.chmod(0o755)


@contextlib.contextmanager
def merged_view(extracted: Sequence[Extracted], where: Path) -> Iterator[Path]:
    """The image's root as the service will see it: its layers mounted read-only as one overlay at
    WHERE (bottom layer first in EXTRACTED). A single layer is its own directory."""
    if len(extracted) == 1:
        yield extracted[0].root
        return
    links = where / "l"
    links.mkdir(parents=True)
    # Short names keep the mount options below a page whatever the cache's path (Docker's "l/" links).
    for number, layer in enumerate(extracted):
        (links / str(number)).symlink_to(layer.root)
    lower = ":".join(str(n) for n in reversed(range(len(extracted))))
    root = where / "rootfs"
    root.mkdir()
    try:
        run(
            ["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}", root],
            what="mount the image's layers",
            cwd=links,
        )
    except ToolFailed as exc:
        raise ToolError(
            f"cannot mount the image's layers as an overlay at {root}: {exc.brief.split(': ', 1)[-1]}",
            hint="shared layers need overlayfs on the cache's file system; use --layers flat",
            details=exc.details,
        ) from exc
    try:
        yield root
    finally:
        run(["umount", root], what="unmount the image's layers", check=False)
