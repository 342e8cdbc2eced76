"""The layer cache: each layer unpacked on its own, in the form overlayfs reads, by the rules of
layerrules.py, and kept by digest (CACHE/layers/HEX) with the packages built from it.

A layer is unpacked as Docker's overlay2 driver keeps it: deleted paths as whiteouts (0/0 character
devices) and "this directory hides what is below" as the trusted.overlay.opaque xattr, so that the
layer is the same whatever layers it sits on. Package formats carry neither, so the layer package
makes them again at install (templates/layer/setup.sh.j2).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ctr2svc import log
from ctr2svc.errors import ImageError, ToolError, ToolFailed
from ctr2svc.image.bundle import OPAQUE_XATTR, RootfsScan, scan
from ctr2svc.image.layerrules import DIRS, LayerCheck, Member, Need, View, prefixes
from ctr2svc.image.layers import Layer, Unit
from ctr2svc.image.layertar import read_layer
from ctr2svc.run import run

# The version of CACHE/layers/HEX/scan.json: an entry of another version is unpacked again.
STORE_FORMAT = 2


@dataclass(frozen=True)
class Extracted:
    """A unit unpacked in the cache: its files under `root`, and what they are."""

    unit: Unit
    root: Path
    scan: RootfsScan
    # What it needs of the units below it (layerrules.Need): checked when the image's units are stacked.
    needs: tuple[Need, ...] = ()


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
            if doc.get("id") != unit.id or doc.get("format") != STORE_FORMAT:
                return None
            needs = tuple(Need.from_json(x) for x in doc["needs"])
            return Extracted(unit, base / "diff", RootfsScan.from_json(doc["scan"]), needs)
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
            # A merged unit is the bottom of every stack it is in: nothing lies below it, and each of
            # its layers is checked against the ones below it in the unit and applied to them.
            view = View() if unit.merged else None
            for index, layer in enumerate(unit.layers):
                check = unpack_layer(
                    layer, blob(layer.digest), temp / "diff", skipped, below=view, apply=index > 0
                )
                if view is not None:
                    view.apply(check)
            result = scan(temp / "diff", layer=True)
            result.skipped.extend(skipped)
            doc = {
                "format": STORE_FORMAT,
                "id": unit.id,
                "diff_ids": [x.diff_id for x in unit.layers],
                "scan": result.to_json(),
                "needs": [] if view is not None else [x.to_json() for x in check.needs],
            }
            (temp / "scan.json").write_text(json.dumps(doc))
            final = self.path(unit)
            if final.exists() and self.cached(unit) is None:
                # Left by an older ctr2svc (or damaged): set aside, then removed.
                stale = self.root / f".{unit.hex}.{os.getpid()}.stale.tmp"
                with contextlib.suppress(FileNotFoundError):
                    final.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
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


def unpack_layer(
    layer: Layer, blob: Path, dest: Path, skipped: list[tuple[str, str]], *, below: View | None, apply: bool
) -> LayerCheck:
    """Unpack one layer's tar into dest, by the rules of layertar; the layer's check, with its Needs.

    apply=False keeps the layer's changes in overlayfs' form (whiteouts, opaque xattrs). apply=True
    carries them out on what dest already holds, as merging the layers of a stack does. BELOW is what
    dest holds when the layer's Needs can be checked now (the bottom layers of a merged unit).
    """
    check = LayerCheck(layer.label, below)
    unpacker = _Unpacker(dest, check, apply, skipped)
    read_layer(layer, blob, unpacker.each, where=dest)
    unpacker.finish()
    return check


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class _Unpacker:
    """Carries out the members LayerCheck let through, in DEST.

    The check already refused every path that goes through a symbolic link or out of the layer; the
    unpacker still looks at each directory with lstat before it goes into it and never follows a link
    (O_NOFOLLOW, follow_symlinks=False), so that a mistake in the rules cannot reach outside DEST.
    """

    def __init__(self, dest: Path, check: LayerCheck, apply: bool, skipped: list[tuple[str, str]]) -> None:
        self.dest = dest
        self.check = check
        self.apply = apply
        self.skipped = skipped
        self.dirs: set[str] = {""}  # seen with lstat to be real directories in dest
        self.dir_times: dict[str, int] = {}
        # Directories the layer does not list: made for it (implied), or a lower layer's whose time
        # adding entries changes (kept). Their times are set at the end, not left at the unpack's
        # time, which would make the layer package differ from build to build.
        self.implied: list[str] = []
        self.kept: dict[str, int] = {"": int(dest.lstat().st_mtime)}
        self.newest = 0

    def refuse(self, problem: str) -> ImageError:
        return self.check.refuse(problem)

    def each(self, archive: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        member = self.check.add(info)
        self.newest = max(self.newest, int(info.mtime))
        if member.action == "root":
            os.chown(self.dest, info.uid, info.gid, follow_symlinks=False)
            self.dest.chmod(info.mode & 0o7777)
            self.dir_times[""] = int(info.mtime)
            return
        self.parents(member.rel)
        if member.action == "whiteout":
            self.whiteout(member.target)
        elif member.action == "opaque":
            if self.apply:
                self.hide_below(member.target)
        else:
            self.write(archive, info, member)

    def parents(self, rel: str) -> None:
        """Make rel's parent directories real directories (new ones 0755 root, as Docker's overlay2
        does)."""
        for prefix in prefixes(rel):
            if prefix in self.dirs:
                continue
            full = self.dest / prefix
            try:
                st = full.lstat()
            except FileNotFoundError:
                self.mkdir(prefix)
                continue
            if stat.S_ISDIR(st.st_mode):
                self.kept.setdefault(prefix, int(st.st_mtime))
                self.dirs.add(prefix)
                continue
            if not self.apply and _is_whiteout(st) and self.check.own.get(prefix) in DIRS:
                # The layer deleted it, then wrote below it: a new (opaque) directory.
                full.unlink()
                self.mkdir(prefix)
                continue
            raise self.refuse(f"writes /{rel} through /{prefix}, which is not a directory")

    def mkdir(self, rel: str) -> None:
        full = self.dest / rel
        full.mkdir()
        # mkdir's mode is subject to the umask.
        full.chmod(0o755)
        self.dirs.add(rel)
        self.implied.append(rel)

    def _lstat(self, rel: str) -> os.stat_result | None:
        try:
            return (self.dest / rel).lstat()
        except FileNotFoundError:
            return None

    def remove(self, rel: str) -> None:
        st = self._lstat(rel)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            # rmtree never follows a link below it.
            shutil.rmtree(self.dest / rel)
            self.dirs = {d for d in self.dirs if d != rel and not d.startswith(rel + "/")}
        else:
            (self.dest / rel).unlink()

    def whiteout(self, target: str) -> None:
        if self.apply:
            self.remove(target)
        elif self._lstat(target) is None:
            os.mknod(self.dest / target, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def hide_below(self, rel: str) -> None:
        """An opaque directory, carried out: what lower layers put in it goes, the layer's own stays."""
        prefix = f"{rel}/" if rel else ""
        for child in (self.dest / rel).iterdir():
            if self.check.own.get(prefix + child.name) is None:
                self.remove(prefix + child.name)

    def write(self, archive: tarfile.TarFile, info: tarfile.TarInfo, member: Member) -> None:
        rel = member.rel
        full = self.dest / rel
        st = self._lstat(rel)
        if member.action == "dir":
            if st is None or not stat.S_ISDIR(st.st_mode):
                self.remove(rel)
                full.mkdir()
            self.dirs.add(rel)
            os.chown(full, info.uid, info.gid, follow_symlinks=False)
            full.chmod(info.mode & 0o7777)
            self.dir_times[rel] = int(info.mtime)
            return
        if member.action == "special":
            kind = "character device" if info.ischr() else "block device" if info.isblk() else "fifo"
            self.skipped.append((rel, kind))
            # Merging, it replaces what lower layers had there, as umoci's unpack does; a layer's own
            # whiteout there stays (the check keeps it as one).
            if self.apply:
                self.remove(rel)
            return
        # What lower layers had there (merging), or the layer's own whiteout of it.
        self.remove(rel)
        if member.action == "symlink":
            full.symlink_to(info.linkname)
            os.chown(full, info.uid, info.gid, follow_symlinks=False)
            os.utime(full, (info.mtime, info.mtime), follow_symlinks=False)
        elif member.action == "hardlink":
            self.hardlink(member.target, rel)
        else:
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                data = archive.extractfile(info)
                assert data is not None
                shutil.copyfileobj(data, out, 1 << 20)
                out.flush()
                os.fchown(fd, info.uid, info.gid)
                # After chown, which clears setuid and setgid bits.
                os.fchmod(fd, info.mode & 0o7777)
                os.utime(fd, (info.mtime, info.mtime))

    def hardlink(self, target: str, rel: str) -> None:
        # The check found TARGET to be a regular file this layer wrote: its directories were made or
        # seen here, and it is still one.
        st = self._lstat(target)
        if any(p not in self.dirs for p in prefixes(target)) or st is None or not stat.S_ISREG(st.st_mode):
            raise self.refuse(f"hard-links /{rel} to /{target}, which is not a file of the same layer")
        os.link(self.dest / target, self.dest / rel, follow_symlinks=False)

    def finish(self) -> None:
        self.check.finish()
        if not self.apply:
            for rel in self.check.moot:
                st = self._lstat(rel)
                if st is not None and _is_whiteout(st):
                    (self.dest / rel).unlink()
            for rel in self.check.opaque:
                st = self._lstat(rel)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    os.setxattr(self.dest / rel, OPAQUE_XATTR, b"y", follow_symlinks=False)
        # Those the layer implies take its newest entry's time (the root too, for a layer on nothing); a
        # lower layer's keep theirs; those it lists, their own.
        unlisted = [(rel, self.newest) for rel in [*self.implied, *([] if self.apply else [""])]]
        for rel, mtime in [*unlisted, *self.kept.items()]:
            st = self._lstat(rel)  # (a later entry may have replaced it)
            if st is not None and stat.S_ISDIR(st.st_mode):
                self.dir_times.setdefault(rel, mtime)
        # Directory times last: adding their entries changed them.
        for rel, mtime in sorted(self.dir_times.items(), reverse=True):
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.dest / rel, (mtime, mtime), follow_symlinks=False)


class Stack:
    """The image's units put together bottom first, each checked against the ones below it: what a
    layer needs there could not be checked when it was unpacked alone."""

    def __init__(self) -> None:
        self.view = View()

    def add(self, extracted: Extracted) -> None:
        for need in extracted.needs:
            self.view.require(need, extracted.unit.short)
        self.view.apply_scan(extracted.scan)


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
