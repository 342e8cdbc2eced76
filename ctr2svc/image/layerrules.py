"""The rules a layer's tar is read by: one set for both ways an image is unpacked.

With --layers shared, ctr2svc unpacks each layer itself (layerstore.py); flat, umoci unpacks the
image after ctr2svc has read every layer with the same rules (layertar.check_image). So an image is
refused, or accepted with the same root, whichever way it is built.

The rules are those of the layers Docker and buildah write, where every path is a real path of the
image. A layer is refused (ImageError, exit 3, naming the layer and the member) when it:

- is not exactly one tar archive (corrupt, cut short, bytes after its end: tar readers differ on what
  such bytes hold) or does not match its diff_id;
- names a path with `..`, a member of a type no package can hold (anything but files, directories,
  links, devices and fifos), or a path twice (a directory excepted: its last entry wins);
- writes, deletes or hard-links through a symbolic link, whether the link comes from this layer or a
  lower one (overlayfs and umoci would disagree on where the write lands, and it can lead outside the
  image), or under a path that is not a directory;
- hard-links to anything but a regular file it wrote before the link (Docker's overlay2 refuses links
  into other layers too);
- deletes a path it creates itself, a path in a directory no lower layer has (overlayfs would show
  such a whiteout as a name that cannot be opened), or makes the image's root opaque.

Absolute names are inside the image, as Docker reads them ("/etc/motd" is "etc/motd").

Each layer of a shared build is unpacked alone: what it needs of the layers below it (a directory
where it writes without naming one, the directory of a deletion) is kept as Needs and checked when
the image's layers are stacked (layerstore.Stack), in the order a flat build checks them.
"""

from __future__ import annotations

import os
import posixpath
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from ctr2svc.errors import ImageError
from ctr2svc.image.bundle import Kind, RootfsScan

WHITEOUT_PREFIX = ".wh."

OPAQUE_MARKER = ".wh..wh..opq"

# aufs' own names (.wh..wh.plnk, .wh..wh.aufs): no layer format since Docker 1.10 has them.
AUFS_PREFIX = ".wh..wh."

NAME_MAX = 255

PATH_MAX = 4096

# Room left for the directory a layer is unpacked or installed in: a longer path could be unpacked
# in one place and not in another.
REL_MAX = 3072

# (uid_t)-1 means "leave the owner as it is" to chown(2): no file can be owned by it.
ID_MAX = 2**32 - 2

# Numbers in pax headers as Go's archive/tar (umoci) reads them; Python's reader takes more
# ("1e30", " 5", "1_0"), and reads a size it cannot parse as 0: the two would disagree.
_PAX_INTEGER = re.compile(r"[0-9]+")

_PAX_TIME = re.compile(r"-?[0-9]+(\.[0-9]+)?")

HINT = "the image is malformed: rebuild it with a standard tool (docker, buildah)"

BROKEN = "the image itself is broken: rebuild it, or push or export it again"

# Every type a package can hold or ctr2svc leaves out with a warning (devices, fifos). Contiguous
# files ('7'), GNU sparse files ('S') and the rest are refused: umoci cannot unpack them either.
_TYPES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.LNKTYPE: "hard link",
    tarfile.SYMTYPE: "symbolic link",
    tarfile.DIRTYPE: "directory",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "fifo",
}


class Node(StrEnum):
    """What a path is, in one layer or in the image so far."""

    DIR = "directory"
    # A directory made for the members below it, which the layer does not name itself.
    IMPLICIT = "implicit directory"
    FILE = "file"  # a regular file, or a hard link to one
    SYMLINK = "symbolic link"
    SPECIAL = "device or fifo"
    WHITEOUT = "deleted path"


DIRS = (Node.DIR, Node.IMPLICIT)


def _a(node: Node) -> str:
    """The node with its article, for messages: a file, a directory (named or not), a symbolic link."""
    return "a directory" if node in DIRS else f"a {node}"


class Want(StrEnum):
    """What a layer needs to find at a path in the layers below it."""

    DIRECTORY = "directory"  # where it deletes a path
    NO_FILE = "directory or nothing"  # where it writes into a directory it does not name
    # Where it has a device or fifo: no package holds those, so what lies below would show through.
    NOTHING = "nothing"


@dataclass(frozen=True)
class Need:
    """What a layer needs of the layers below it at PATH; MEMBER is the layer's member that needs it,
    for the message."""

    path: str
    member: str
    want: Want

    def to_json(self) -> list[str]:
        return [self.path, self.member, str(self.want)]

    @classmethod
    def from_json(cls, doc: Sequence[str]) -> Need:
        path, member, want = doc
        return cls(path, member, Want(want))


@dataclass(frozen=True)
class Member:
    """A member as the rules read it. ACTION: root, dir, file, hardlink, symlink, special, whiteout,
    opaque. TARGET: a hard link's first name, a whiteout's deleted path, an opaque directory."""

    rel: str
    action: str
    target: str = ""


def refusal(label: str, problem: str, hint: str = HINT) -> ImageError:
    return ImageError(f"layer {label} {problem}", hint=hint)


def shown_name(text: str) -> str:
    """A member name as a message shows it: one line, not too long, escapes visible."""
    shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    shown = shown.replace("\n", "\\n").replace("\r", "\\r").replace("\0", "\\0")
    return shown if len(shown) <= 200 else shown[:200] + "..."


def prefixes(rel: str) -> Iterator[str]:
    """The directories above REL, top first ("a", "a/b" for "a/b/c")."""
    start = 0
    while (cut := rel.find("/", start)) != -1:
        yield rel[:cut]
        start = cut + 1


class LayerCheck:
    """One layer's rules, member by member, with what the layer holds so far (`own`).

    BELOW is the image under this layer when it is known (flat builds, merged bottom layers): its
    Needs are checked at once. Without it they are kept in `needs` for layerstore.Stack.
    """

    def __init__(self, label: str, below: View | None) -> None:
        self.label = label
        self.below = below
        self.own: dict[str, Node] = {"": Node.DIR}
        self.opaque: set[str] = set()
        self.whiteouts: dict[str, str] = {}  # deleted path -> its member
        self.needs: list[Need] = []
        # Whiteouts that delete nothing: in a directory the layer itself made opaque.
        self.moot: list[str] = []

    def refuse(self, problem: str) -> ImageError:
        return refusal(self.label, problem)

    def name(self, raw: str, what: str = "a path") -> str:
        if "\0" in raw:
            raise self.refuse(f"has {what} with a NUL byte: '{shown_name(raw)}'")
        if ".." in raw.split("/"):
            raise self.refuse(f"has {what} with '..', which may lead outside the image: '{shown_name(raw)}'")
        rel = posixpath.normpath("/" + raw).lstrip("/")
        rel = "" if rel == "." else rel
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            raise self.refuse(
                f"has a name that is not UTF-8: '{shown_name(raw)}'",
            ) from None
        if "\n" in rel:
            raise self.refuse(f"has a name with a newline: '{shown_name(raw)}'")
        if any(len(part.encode()) > NAME_MAX for part in rel.split("/")):
            raise self.refuse(f"has a name longer than {NAME_MAX} bytes: '{shown_name(raw)}'")
        if len(rel.encode()) > REL_MAX:
            raise self.refuse(f"has a path longer than {REL_MAX} bytes: '{shown_name(raw)}'")
        return rel

    def _header(self, info: tarfile.TarInfo, rel: str) -> None:
        """Owners, times and pax numbers every reader takes the same way, and the system can set."""
        for key, value in info.pax_headers.items():
            pattern = _PAX_INTEGER if key in ("size", "uid", "gid") else _PAX_TIME
            if key in ("size", "uid", "gid", "mtime", "atime", "ctime") and not pattern.fullmatch(value):
                raise self.refuse(f"has /{shown_name(rel)} with a malformed pax {key} '{shown_name(value)}'")
        for what, number in (("uid", info.uid), ("gid", info.gid)):
            if not 0 <= number <= ID_MAX:
                raise self.refuse(f"has /{shown_name(rel)} owned by {what} {number}, which no system has")
        if not -(2**62) <= info.mtime < 2**62:
            raise self.refuse(f"has /{shown_name(rel)} with a time out of range ({info.mtime})")

    def add(self, info: tarfile.TarInfo) -> Member:
        """Check one member against the layer so far, note it, and say what it is."""
        rel = self.name(info.name)
        kind = _TYPES.get(info.type)
        if kind is None:
            raise self.refuse(
                f"has /{shown_name(rel)} of tar type {info.type.decode('latin-1')!r}, which no package can "
                "hold"
            )
        self._header(info, rel)
        if not rel:
            if kind != "directory":
                raise self.refuse(f"has a {kind} as the image's root directory")
            return Member("", "root")
        if any(part.startswith(WHITEOUT_PREFIX) for part in rel.split("/")[:-1]):
            raise self.refuse(f"has /{shown_name(rel)} inside a whiteout name")
        base = posixpath.basename(rel)
        if base.startswith(WHITEOUT_PREFIX):
            return self._whiteout(rel, base)
        self._parents(rel)
        existing = self.own.get(rel)
        node = {
            "directory": Node.DIR,
            "symbolic link": Node.SYMLINK,
            "character device": Node.SPECIAL,
            "block device": Node.SPECIAL,
            "fifo": Node.SPECIAL,
        }.get(kind, Node.FILE)
        if existing is Node.WHITEOUT:
            if node is Node.DIR:
                # Deleted, then made again: a new directory that hides what was below.
                self.opaque.add(rel)
            if node is not Node.SPECIAL:
                # A device or fifo is not unpacked: the whiteout stays, and deletes what is below.
                del self.whiteouts[rel]
        elif existing is not None and not (node is Node.DIR and existing in DIRS):
            raise self.refuse(f"has /{shown_name(rel)} twice ({_a(existing)} and a {kind})")
        elif node is Node.SPECIAL and not self._hidden(rel):
            self._need(Need(rel, rel, Want.NOTHING))
        target = ""
        if kind == "hard link":
            target = self._hardlink(rel, info.linkname)
        elif kind == "symbolic link" and (
            not 0 < len(os.fsencode(info.linkname)) < PATH_MAX or "\0" in info.linkname
        ):
            raise self.refuse(
                f"has the symbolic link /{shown_name(rel)} with an empty, too long or NUL target"
            )
        self.own[rel] = node
        action = {"directory": "dir", "file": "file", "hard link": "hardlink", "symbolic link": "symlink"}
        return Member(rel, action.get(kind, "special"), target)

    def _parents(self, rel: str) -> None:
        """REL's directories must be directories of the layer, or be made as such (0755 root, as
        Docker does): never a symbolic link, never a file."""
        for prefix in prefixes(rel):
            node = self.own.get(prefix)
            if node in DIRS:
                continue
            if node is Node.SYMLINK:
                raise self.refuse(
                    f"writes /{shown_name(rel)} through the symbolic link /{shown_name(prefix)}"
                )
            if node is Node.WHITEOUT:
                # Deleted, then written into: a new directory.
                del self.whiteouts[prefix]
                self.opaque.add(prefix)
            elif node is not None:
                shown = shown_name(prefix)
                raise self.refuse(f"has /{shown} twice ({_a(node)} and the directory of /{shown_name(rel)})")
            elif not self._hidden(prefix):
                self._need(Need(prefix, rel, Want.NO_FILE))
            self.own[prefix] = Node.IMPLICIT

    def _hidden(self, rel: str) -> bool:
        """Whether what lower layers have at REL is hidden by a directory this layer made opaque."""
        return any(prefix in self.opaque for prefix in prefixes(rel))

    def _need(self, need: Need) -> None:
        if self.below is None:
            self.needs.append(need)
        else:
            self.below.require(need, self.label)

    def _whiteout(self, rel: str, base: str) -> Member:
        parent = posixpath.dirname(rel)
        if base == OPAQUE_MARKER:
            if not parent:
                raise self.refuse("makes the image's root opaque (hides every layer below it)")
            self._parents(rel)
            self.opaque.add(parent)
            return Member(rel, "opaque", parent)
        name = base[len(WHITEOUT_PREFIX) :]
        if base.startswith(AUFS_PREFIX) or name in ("", ".", ".."):
            raise self.refuse(f"has a malformed whiteout '{shown_name(rel)}'")
        target = posixpath.join(parent, name)
        self._parents(rel)
        existing = self.own.get(target)
        if existing is not None and existing is not Node.WHITEOUT:
            raise self.refuse(f"both creates and deletes /{shown_name(target)}")
        self.own[target] = Node.WHITEOUT
        self.whiteouts[target] = rel
        return Member(rel, "whiteout", target)

    def _hardlink(self, rel: str, linkname: str) -> str:
        target = self.name(linkname, "a hard link target")
        why = None
        for prefix in prefixes(target):
            node = self.own.get(prefix)
            if node is Node.SYMLINK:
                why = f"it goes through the symbolic link /{shown_name(prefix)}"
                break
            if node not in DIRS:
                why = "it has none before this link"
                break
        node = self.own.get(target)
        if why is not None:
            pass
        elif target == rel:
            why = "a link to itself"
        elif node is None or node is Node.WHITEOUT:
            why = "it has none before this link"
        elif node is not Node.FILE:
            why = _a(node)
        if why is not None:
            link = f"hard-links /{shown_name(rel)} to /{shown_name(target)}"
            raise self.refuse(f"{link}, which is not a file of the same layer ({why})")
        return target

    def finish(self) -> None:
        """The layer's last member is read: what it deletes must be in a directory below it."""
        for target, member in self.whiteouts.items():
            parent = posixpath.dirname(target)
            if parent in self.opaque or self._hidden(parent):
                self.moot.append(target)
            elif parent:
                self._need(Need(parent, member, Want.DIRECTORY))


class View:
    """The image's root as the layers so far make it (bottom first): each path's Node, deletions and
    opaque directories carried out."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"": Node.DIR}
        self.children: dict[str, set[str]] = {}

    def require(self, need: Need, label: str) -> None:
        node = self.nodes.get(need.path)
        if need.want is Want.NOTHING:
            if node is None or node is Node.SPECIAL:
                return
        elif node in DIRS or (node is None and need.want is Want.NO_FILE):
            return
        path, member = shown_name(need.path), shown_name(need.member)
        if node is None:
            problem = f"has the whiteout /{member} in /{path}, a directory no layer below it has"
        elif need.want is Want.NOTHING:
            problem = f"has a device or fifo at /{path}, where a layer below it has {_a(node)}"
        elif node is Node.SYMLINK:
            problem = f"writes /{member} through the symbolic link /{path}"
        else:
            problem = f"writes /{member} under /{path}, which a layer below it has as {_a(node)}"
        raise refusal(label, problem)

    def _set(self, rel: str, node: Node) -> None:
        if rel not in self.nodes and rel:
            parent, _, name = rel.rpartition("/")
            self.children.setdefault(parent, set()).add(name)
        self.nodes[rel] = node

    def _delete(self, rel: str, *, keep_root: bool = False) -> None:
        """REL and everything below it (only what is below it with KEEP_ROOT)."""
        if rel not in self.nodes:
            return
        stack = [rel]
        while stack:
            path = stack.pop()
            for name in self.children.pop(path, ()):
                stack.append(f"{path}/{name}" if path else name)
            if path != rel or not keep_root:
                del self.nodes[path]
        if not keep_root and rel:
            parent, _, name = rel.rpartition("/")
            self.children.get(parent, set()).discard(name)

    def _put(self, rel: str, node: Node) -> None:
        if node in DIRS:
            if self.nodes.get(rel) not in DIRS:
                self._delete(rel)
            self._set(rel, Node.DIR)
        else:
            self._delete(rel)
            self._set(rel, node)

    def apply(self, layer: LayerCheck) -> None:
        """Put a checked layer on top."""
        for rel in layer.opaque:
            self._delete(rel, keep_root=True)
        for rel in layer.whiteouts:
            self._delete(rel)
        for rel, node in layer.own.items():
            if node is not Node.WHITEOUT:
                self._put(rel, node)

    def apply_scan(self, scan: RootfsScan) -> None:
        """Put an unpacked layer on top, as its scan describes it."""
        for rel in scan.opaque:
            self._delete(rel, keep_root=True)
        for rel in scan.whiteouts:
            self._delete(rel)
        kinds = {Kind.DIR: Node.DIR, Kind.SYMLINK: Node.SYMLINK}
        for entry in scan.entries:
            self._put(entry.path, kinds.get(entry.kind, Node.FILE))
        for rel, _ in scan.skipped:
            self._put(rel, Node.SPECIAL)
