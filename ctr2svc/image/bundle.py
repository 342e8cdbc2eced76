"""Unpack an image with umoci into a bundle, and take stock of its root filesystem.

The scan records what a package cannot carry by itself: numeric owners (package formats store owner
*names* resolved on the target, and the target has no user 999), hard links (nfpm stores copies) and
special files (device nodes and FIFOs, which nfpm would open and block on).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ctr2svc import log
from ctr2svc.errors import Ctr2svcError, ImageError, ToolError, ToolFailed, UsageError
from ctr2svc.run import find_tool, last_words, run


class Kind(StrEnum):
    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"
    # A second (or later) name of a file already seen; `target` is the first name.
    HARDLINK = "hardlink"


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the rootfs, "" for the rootfs itself
    kind: Kind
    mode: int  # permission bits with setuid/setgid/sticky
    uid: int
    gid: int
    mtime: int
    target: str | None = None


@dataclass
class RootfsScan:
    entries: list[Entry] = field(default_factory=list)
    # Paths (and their kind) that are not packaged: device nodes, FIFOs, sockets.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # Bytes in regular files, what a packer has to read.
    file_bytes: int = 0
    # A layer's own changes to the layers below it, in the form overlayfs reads (shared layers only):
    # deleted paths (whiteouts, 0/0 character devices) and directories that hide what is below.
    whiteouts: list[str] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": [[e.path, str(e.kind), e.mode, e.uid, e.gid, e.mtime, e.target] for e in self.entries],
            "skipped": self.skipped,
            "file_bytes": self.file_bytes,
            "whiteouts": self.whiteouts,
            "opaque": self.opaque,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RootfsScan:
        return cls(
            [Entry(p, Kind(k), m, u, g, t, target) for p, k, m, u, g, t, target in doc["entries"]],
            [(p, what) for p, what in doc["skipped"]],
            int(doc["file_bytes"]),
            list(doc["whiteouts"]),
            list(doc["opaque"]),
        )

    def find(self, path: str) -> Entry | None:
        wanted = path.strip("/")
        for entry in self.entries:
            if entry.path == wanted:
                return entry
        return None

    @property
    def foreign_owned(self) -> list[Entry]:
        """Entries the package cannot own as they are: anything not root:root."""
        return [e for e in self.entries if (e.uid, e.gid) != (0, 0) and e.kind is not Kind.HARDLINK]

    @property
    def hardlinks(self) -> list[Entry]:
        return [e for e in self.entries if e.kind is Kind.HARDLINK]


@dataclass(frozen=True)
class Bundle:
    path: Path
    config: dict[str, Any]
    # The root when it is not path/rootfs: shared layers' read-only view of the image.
    root: Path | None = None

    @property
    def rootfs(self) -> Path:
        return self.root or self.path / "rootfs"


class _UnpackProgress(log.Progress):
    def __init__(self, layers: int) -> None:
        super().__init__("unpacking")
        self.layers = layers
        self.done = 0

    def on_line(self, line: str) -> None:
        # umoci --log=info names each layer as it starts.
        if "unpack layer:" in line:
            self.done += 1
            self.note(f"layer {self.done}/{self.layers or '?'}")


def require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError(
            "ctr2svc build must run as root: unpacking an image keeps its files' owners",
            hint="run it as root (for example with sudo)",
        )


def unpack(umoci_ref: str, dest: Path, layers: int = 0, *, user: str | None = None) -> Bundle:
    """Unpack the cached image into dest (which must not exist yet): rootfs/ and config.json.

    USER is --user: given, the image's own User need not exist in its /etc/passwd (it is replaced).
    umoci's failures become errors that name the image's fault (exit 3) or umoci's (exit 4).
    """
    require_root()
    umoci = find_tool("umoci", "unpack container images")
    # `umoci unpack` is `raw unpack` + `raw runtime-config` + an mtree of the whole tree (for `umoci
    # repack`), which costs a second read of every file and which a package has no use for.
    dest.mkdir()
    try:
        with _UnpackProgress(layers) as progress:
            run(
                [umoci, "--log", "info", "raw", "unpack", "--image", umoci_ref, dest / "rootfs"],
                what="unpack the image",
                timeout=3600,
                on_line=progress.on_line,
                # umoci makes the directories a layer implies but does not list (the root, often)
                # with mode 0755 less the umask: 0755, as Docker has them, whatever the builder's.
                umask=0o022,
            )
    except ToolFailed as exc:
        raise _unpack_error(exc, umoci_ref, dest) from exc
    return Bundle(dest, runtime_config(umoci_ref, dest / "rootfs", dest / "config.json", user=user))


def runtime_config(umoci_ref: str, rootfs: Path, dest: Path, *, user: str | None) -> dict[str, Any]:
    """umoci's runtime config for the image, its User looked up in ROOTFS's /etc/passwd."""
    with tempfile.TemporaryDirectory(prefix=".users-", dir=dest.parent) as users:
        # umoci reads ROOTFS/etc/passwd and /etc/group as paths of this host: an image whose
        # /etc/passwd links to /etc/shadow would have it read the build host's. It gets the image's
        # own files, found as the container will find them, in a root of their own.
        for name in ("passwd", "group"):
            content = image_file(rootfs, f"etc/{name}")
            if content is not None:
                (Path(users) / "etc").mkdir(exist_ok=True)
                (Path(users) / "etc" / name).write_bytes(content)
        return _runtime_config(umoci_ref, Path(users), dest, user=user)


def _runtime_config(umoci_ref: str, rootfs: Path, dest: Path, *, user: str | None) -> dict[str, Any]:
    umoci = find_tool("umoci", "unpack container images")
    config_cmd: list[str | Path] = [umoci, "raw", "runtime-config", "--image", umoci_ref]
    try:
        run(
            [*config_cmd, "--rootfs", rootfs, dest],
            what="generate the runtime config",
            timeout=600,
        )
    except ToolFailed as exc:
        problem = _user_error(exc)
        if problem is None:
            raise _unpack_error(exc, umoci_ref, dest.parent) from exc
        if user is None:
            raise problem from exc
        # --user replaces the process user: generate the rest without resolving the image's.
        log.debug(f"{problem.brief}; --user {user} replaces it")
        try:
            run([*config_cmd, dest], what="generate the runtime config", timeout=600)
        except ToolFailed as again:
            raise _unpack_error(again, umoci_ref, dest.parent) from again
    try:
        config: dict[str, Any] = json.loads(dest.read_text())
    except (OSError, ValueError) as exc:
        raise ToolError(
            f"umoci wrote no usable runtime config at {dest}: {exc}",
            hint="run with --debug to see umoci's commands",
        ) from exc
    return config


# Linux's limit on symbolic links followed in one lookup.
_MAX_LINKS = 40
# More than any passwd or group file; a bigger "file" is not one, and is not read whole.
_MAX_READ = 16 << 20


def image_path(rootfs: Path, rel: str) -> Path | None:
    """Where REL is in ROOTFS as the container sees it: symbolic links followed *inside* ROOTFS (an
    absolute target names a path of the image, ".." stops at its root), never out of it. None when
    a part of it is missing, not a directory, or the links go round."""
    parts = deque(p for p in rel.split("/") if p not in ("", "."))
    done: list[str] = []
    links = 0
    while parts:
        part = parts.popleft()
        if part == "..":
            if done:
                done.pop()
            continue
        here = rootfs.joinpath(*done, part)
        try:
            st = here.lstat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            target = str(here.readlink())
            if links > _MAX_LINKS:
                return None
            if target.startswith("/"):
                done = []
            parts.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
            continue
        if parts and not stat.S_ISDIR(st.st_mode):
            return None
        done.append(part)
    return rootfs.joinpath(*done)


def image_file(rootfs: Path, rel: str) -> bytes | None:
    """The content of the image's regular file REL (see image_path), or None."""
    path = image_path(rootfs, rel)
    try:
        # Never opened unless it is a file: a device node of the image would be one of this host.
        if path is None or not stat.S_ISREG(path.lstat().st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return handle.read(_MAX_READ)


_USER_SPEC = re.compile(
    r"cannot parse user spec: '(?P<spec>[^']*)': unable to find (?P<kind>user|group) (?P<name>\S+)"
)


def _user_error(exc: ToolFailed) -> ImageError | None:
    """The image's User names someone its own /etc/passwd or /etc/group does not list."""
    match = _USER_SPEC.search(exc.stderr)
    if match is None:
        return None
    spec, kind, name = match["spec"], match["kind"], match["name"].rstrip(":")
    if kind == "user":
        return ImageError(
            f'the image\'s User "{spec}" is not in its /etc/passwd, so it cannot run as that user',
            hint="pass --user UID[:GID] with a number",
            details=exc.details,
        )
    return ImageError(
        f'the image\'s User "{spec}" names the group "{name}", which is not in its /etc/group, so it '
        "cannot run as that group",
        hint="pass --user UID:GID with numbers",
        details=exc.details,
    )


_CORRUPT = (
    "archive/tar",
    "invalid tar header",
    "gzip:",
    "flate:",
    "zstd",
    "unexpected eof",
    "invalid checksum",
    "digest mismatch",
    "verified reader",
)


def _unpack_error(exc: ToolFailed, umoci_ref: str, dest: Path) -> Ctr2svcError:
    """umoci's failure in ctr2svc's words."""
    text = exc.stderr.lower()
    message = last_words(exc.stderr, 1)
    if "no space left on device" in text:
        return ToolError(
            f"no space left on the device holding {dest.parent} while unpacking the image",
            hint="free some space there, or point --cache-dir (or CTR2SVC_CACHE_DIR) at a larger disk",
            details=exc.details,
        )
    if ("mediatype" in text or "media type" in text) and "zstd" in text:
        return ImageError(
            "the image's layers are zstd-compressed, which umoci (what unpacks a flat build) cannot read",
            hint="build it with --layers shared, or push it again with gzip layers "
            "(skopeo copy --dest-compress-format gzip)",
            details=exc.details,
        )
    if "mediatype" in text or "media type" in text:
        return ImageError(
            f"the image is not a container image umoci can unpack: {message}",
            hint="pick a container image, not another kind of OCI artifact (a Helm chart, a signature...)",
            details=exc.details,
        )
    if any(s in text for s in _CORRUPT):
        damaged = _damaged_cached_blob(exc.stderr, umoci_ref)
        if damaged is not None:
            return ImageError(
                f"a layer in the image cache was damaged since it was pulled ({damaged}); it is now removed",
                hint="build again: the layer will be downloaded again",
                details=exc.details,
            )
        return ImageError(
            f"a layer of the image is corrupt: it is not a valid compressed tar archive ({message})",
            hint="the image itself is broken: rebuild it, or push or export it again",
            details=exc.details,
        )
    return ToolError(
        f"umoci could not unpack the image: {message}",
        hint="run with --debug to see umoci's full output",
        details=exc.details,
    )


def _damaged_cached_blob(stderr: str, umoci_ref: str) -> str | None:
    """The layer umoci was unpacking when it failed, when its bytes no longer match its digest: it
    changed in the cache after skopeo verified it. It is removed, so the next build pulls it again."""
    layers = re.findall(r"unpack layer: (sha256:[0-9a-f]{64})", stderr)
    if not layers:
        return None
    digest: str = layers[-1]
    blob = Path(umoci_ref.rsplit(":", 1)[0]) / "blobs" / "sha256" / digest.split(":", 1)[1]
    try:
        actual = hashlib.sha256()
        with blob.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                actual.update(chunk)
        if "sha256:" + actual.hexdigest() == digest:
            return None
        blob.unlink()
    except OSError:
        return None
    return digest


_SPECIAL = {
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}

OPAQUE_XATTR = "trusted.overlay.opaque"


def scan(rootfs: Path, *, layer: bool = False) -> RootfsScan:
    """Walk the rootfs once; remove special files from it (they are reported, not packaged).

    layer: rootfs is one layer in overlayfs' form, kept in the cache: its 0/0 character devices are
    whiteouts and its opaque directories are noted; nothing is removed.
    """
    result = RootfsScan()
    seen_inodes: dict[tuple[int, int], str] = {}
    root_st = rootfs.lstat()
    result.entries.append(
        Entry(
            "", Kind.DIR, stat.S_IMODE(root_st.st_mode), root_st.st_uid, root_st.st_gid, int(root_st.st_mtime)
        )
    )
    for dirpath, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        base = Path(dirpath)
        for name in [*sorted(dirnames), *sorted(filenames)]:
            full = base / name
            rel = str(full.relative_to(rootfs))
            _check_name(rel)
            st = full.lstat()
            mode = stat.S_IMODE(st.st_mode)
            fmt = stat.S_IFMT(st.st_mode)

            def add(kind: Kind, target: str | None = None) -> None:
                result.entries.append(
                    Entry(rel, kind, mode, st.st_uid, st.st_gid, int(st.st_mtime), target)  # noqa: B023
                )

            if fmt == stat.S_IFDIR:
                add(Kind.DIR)
                if layer and _opaque(full):
                    result.opaque.append(rel)
            elif fmt == stat.S_IFLNK:
                add(Kind.SYMLINK, str(full.readlink()))
            elif fmt == stat.S_IFREG:
                inode = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and inode in seen_inodes:
                    add(Kind.HARDLINK, seen_inodes[inode])
                else:
                    seen_inodes[inode] = rel
                    result.file_bytes += st.st_size
                    add(Kind.FILE)
            elif layer and fmt == stat.S_IFCHR and st.st_rdev == 0:
                result.whiteouts.append(rel)
            else:
                result.skipped.append((rel, _SPECIAL.get(fmt, "special file")))
                if not layer:
                    full.unlink()
    if not layer:
        warn_skipped(result.skipped)
    return result


def warn_skipped(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        # /dev is a tmpfs runc fills at start, so device nodes there are never seen by the service.
        outside_dev = [p for p, _ in skipped if not p.startswith("dev/")]
        log.warn(
            f"not packaging {len(skipped)} special file(s) (device nodes, FIFOs, sockets)"
            + (f", e.g. /{outside_dev[0]}" if outside_dev else " under /dev, which runc provides at run time")
        )


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _check_name(rel: str) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ImageError(
            f"the image has a file name that is not UTF-8: {rel.encode('utf-8', 'surrogateescape')!r}",
            hint="package formats cannot carry it; rebuild the image without it",
        ) from exc
    if "\n" in rel:
        raise ImageError(
            f"the image has a file name with a newline: {rel!r}",
            hint="package file lists cannot carry it; rebuild the image without it",
        )
