"""Unpack an image with umoci into a bundle, and take stock of its root filesystem.

The scan records what a package cannot carry by itself: numeric owners (package formats store owner
*names* resolved on the target, and the target has no user 999), hard links (nfpm stores copies) and
special files (device nodes and FIFOs, which nfpm would open and block on).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ctr2svc import log
from ctr2svc.errors import ImageError, UsageError
from ctr2svc.run import find_tool, run


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

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"


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


def unpack(umoci_ref: str, dest: Path, layers: int = 0) -> Bundle:
    """Unpack the cached image into dest (which must not exist yet): rootfs/ and config.json."""
    if os.geteuid() != 0:
        raise UsageError(
            "ctr2svc build must run as root: unpacking an image keeps its files' owners",
            hint="run it as root (for example with sudo)",
        )
    umoci = find_tool("umoci", "unpack container images")
    # `umoci unpack` is `raw unpack` + `raw runtime-config` + an mtree of the whole tree (for `umoci
    # repack`), which costs a second read of every file and which a package has no use for.
    dest.mkdir()
    with _UnpackProgress(layers) as progress:
        run(
            [umoci, "--log", "info", "raw", "unpack", "--image", umoci_ref, dest / "rootfs"],
            what="unpack the image",
            timeout=3600,
            on_line=progress.on_line,
        )
    run(
        [
            umoci,
            "raw",
            "runtime-config",
            "--image",
            umoci_ref,
            "--rootfs",
            dest / "rootfs",
            dest / "config.json",
        ],
        what="generate the runtime config",
        timeout=600,
    )
    config = json.loads((dest / "config.json").read_text())
    return Bundle(dest, config)


_SPECIAL = {
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def scan(rootfs: Path) -> RootfsScan:
    """Walk the rootfs once; remove special files from it (they are reported, not packaged)."""
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
            else:
                result.skipped.append((rel, _SPECIAL.get(fmt, "special file")))
                full.unlink()
    if result.skipped:
        # /dev is a tmpfs runc fills at start, so device nodes there are never seen by the service.
        outside_dev = [p for p, _ in result.skipped if not p.startswith("dev/")]
        log.warn(
            f"not packaging {len(result.skipped)} special file(s) (device nodes, FIFOs, sockets)"
            + (f", e.g. /{outside_dev[0]}" if outside_dev else " under /dev, which runc provides at run time")
        )
    return result


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
