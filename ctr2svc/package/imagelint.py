"""Which of lintian's tags a container image's files raise in the .deb that ships them.

A .deb overrides the tags that are wrong for an image's files (debian.IMAGE_FILE_TAGS), scoped to the
image's tree. An override lintian finds no use for is a tag of its own (`unused-override`, seen by
everyone who runs `lintian -I`), so the package carries only those for the tags its image raises.
They are judged here from what lintian itself looks at: each file's mode, name and kind (the scan), its
first bytes (`#!` or ELF), an ELF's headers (its type, program headers, dynamic section and section
table: file(1)'s "pie executable", "not stripped", readelf's NEEDED, SONAME, RUNPATH; filekinds.py),
the text of the image's systemd units, and for a few tags the content of its programs and scripts
(the messages of libraries lintian looks for, dpkg's database, sensible-utils).

The rules are lintian 2.116's (Debian 12), as their checks state them, for names that lie under
/opt/containers (lintian's exceptions anchored at /usr or /etc never apply there). Where a rule rests
on what this module does not model (the interpreters lintian knows beyond the common ones, what
file(1) calls text), a file counts as raising every tag the rule could give it: an unused override
is an `I:`, a tag left without one an `E:` or `W:`. tests/integration/test_lint_realistic.py holds
the predictions to lintian's output on five realistic images: no tag without its override, no
override unused.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import re
import shlex
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ctr2svc.image.bundle import Entry, Kind, RootfsScan
from ctr2svc.package.filekinds import INTERPRETERS, Elf, Script, parse_elf, read_script, versioned

# The bytes read from each file to tell a script from an ELF file from anything else.
HEAD = 256
# Larger files with no NUL in their first bytes are not read for national-encoding.
TEXT_LIMIT = 64 << 20
# A script whose interpreter is none of filekinds.INTERPRETERS: whether lintian knows it (and then wants
# it at a path or a dependency for it) or calls it unusual depends on lintian's own tables, which
# ctr2svc does not copy. So it gets all three; the ones lintian finds no use for are
# `I: unused-override` lines (UNPREDICTABLE below), never an error or a warning on a package.
UNKNOWN_INTERPRETER_TAGS = (
    "unusual-interpreter",
    "wrong-path-for-interpreter",
    "missing-dep-for-interpreter",
)
# Tags that rest on lintian's data tables (the interpreters it knows, the messages of the libraries it
# looks for in programs): overridden whenever their kind of file is there, used or not.
UNPREDICTABLE = frozenset({*UNKNOWN_INTERPRETER_TAGS, "embedded-library"})


# lintian's Files/Contents check, on programs' strings and scripts' text.
SENSIBLE = re.compile(rb"(?<!-)(?:select-editor|sensible-(?:browser|editor|pager))\b")
# lintian's data/files/vcs-control-files, each name possibly compressed.
VCS_FILES = re.compile(
    r"/\.(?:arch-inventory|hgtags|(?:cvs|git|hg)_?ignore|git_?(?:modules|attributes)|hg_archival\.txt)"
    r"(?:\.(?:gz|Z|bz2|xz|lzma|zst))?$"
)
VCS_DIRS = re.compile(r"/(?:CVS|\.svn|\.bzr|\.git|\.hg|\.arch-ids|\{arch\})$")
WANTED_BY = {
    "default.target",
    "graphical.target",
    "multi-user.target",
    "network-online.target",
    "sleep.target",
    "sysinit.target",
}


@dataclass
class Findings:
    """What the walk over the image's files found, tag by tag."""

    tags: set[str] = field(default_factory=set)
    needs_libc: bool = False


def raised(root: Path, scan: RootfsScan, where: str, package: str, *, depends: bool, epoch: int) -> set[str]:
    """The tags lintian raises on SCAN's files (read from ROOT) when a .deb named PACKAGE installs
    them at WHERE (a package path, "opt/containers/..."): DEPENDS says whether the package has a
    Depends field, EPOCH is its changelog's date."""
    found = Findings()
    by_path = {entry.path: entry for entry in scan.entries}
    for entry in scan.entries:
        name = f"{where}/{entry.path}" if entry.path else where
        # (Whatever the kind of entry: links too.)
        if re.search(r"\.py[co]$", name) and "/__pycache__/" not in name and entry.kind is not Kind.DIR:
            found.tags.add("package-installs-python-bytecode")
        if entry.kind is Kind.DIR:
            _directory(found, entry.mode, name)
        elif entry.kind is Kind.SYMLINK:
            _service_link(found, entry.path, entry.target or "", by_path, name)
        elif entry.kind is Kind.FILE:
            _file(found, root / entry.path, entry.mode, name, package, depends, epoch)
        elif entry.kind is Kind.HARDLINK and posixpath.dirname(entry.path) != posixpath.dirname(
            entry.target or ""
        ):
            # lintian's package-contains-hardlink: a later name outside the first one's directory.
            found.tags.add("package-contains-hardlink")
    # Prerequisites.pm's installable(): the package depends on no libc6. (Its libstdc++ twin is an
    # experimental tag, which lintian does not show.)
    if depends and found.needs_libc:
        found.tags.add("missing-dependency-on-libc")
    return found.tags


def _directory(found: Findings, mode: int, name: str) -> None:
    if mode != 0o755:
        found.tags.add("non-standard-dir-perm")
    if f"/{name}".endswith("/__pycache__") or "/__pycache__/" in name:
        found.tags.add("package-installs-python-pycache-dir")
    if VCS_DIRS.search(name):
        found.tags.add("package-contains-vcs-control-dir")


def _service_link(found: Findings, path: str, target: str, by_path: dict[str, Entry], name: str) -> None:
    """A unit that is a symlink is "not a file" unless it resolves to one inside the package (lintian
    resolves an absolute target against the package's root, where the image's /lib is not), or is
    masked (/dev/null)."""
    if not re.search(r"/systemd/system/.*\.service$", name) or target == "/dev/null":
        return
    resolved = (
        None
        if target.startswith("/")
        else posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    )
    entry = by_path.get(resolved) if resolved and not resolved.startswith("..") else None
    if entry is None or entry.kind is not Kind.FILE:
        found.tags.add("service-file-is-not-a-file")


def _file(found: Findings, path: Path, mode: int, name: str, package: str, depends: bool, epoch: int) -> None:
    executable = bool(mode & 0o111)
    _permissions(found, mode, executable, package)
    if VCS_FILES.search(name):
        found.tags.add("package-contains-vcs-control-file")
    if re.search(r"/systemd/system/.*\.service$", name):
        _unit(found, path)
    try:
        with path.open("rb") as f:
            head = f.read(HEAD)
            gzipped = head[:2] == b"\x1f\x8b"
            # Whole files only where a rule reads them: programs, scripts, what may be text (up to
            # a size no text file in an image reaches).
            program = head[:4] == b"\x7fELF" or head[:2] == b"#!"
            size = os.fstat(f.fileno()).st_size
            text = b"\0" not in head and size <= TEXT_LIMIT
            # Read again from the start, by its size: one copy of a large program in memory (head +
            # the rest, or read() to the end, which joins its pieces, hold two or three), so that a
            # build's peak memory is about the image's largest program, once.
            whole = f.read(size) if (program or text) and f.seek(0) == 0 else b""
    except OSError:
        return
    if name.endswith(".gz") or gzipped:
        _gzip(found, path, head, name, epoch)
    elf = parse_elf(whole) if head[:4] == b"\x7fELF" and whole else None
    script = read_script(head) if elf is None else None
    if elf is not None:
        _elf(found, elf, executable, name, package, depends)
    elif script is not None:
        _script(found, script, executable, name)
    elif executable and head[:4] != b"\x7fELF" and not re.search(r"\.(?:exe|jar)$", name):
        found.tags.add("executable-not-elf-or-script")
    if elf is not None:
        # lintian looks in every program for the messages of libraries it knows (its own table, not
        # copied here): overridden for every image with programs (UNPREDICTABLE).
        found.tags.add("embedded-library")
    if elf is not None or script is not None:
        _contents(found, whole)
    elif whole and not gzipped:
        _encoding(found, whole)


def _permissions(found: Findings, mode: int, executable: bool, package: str) -> None:
    """lintian's files/permissions, for names outside /usr, /etc and /var."""
    if executable and mode & 0o444 != 0o444:
        found.tags.add("executable-is-not-world-readable")
    special = mode & 0o6000
    if special:
        if mode & ~0o6000 != 0o755 and mode != 0o2755:
            found.tags.add("non-standard-setuid-executable-perm")
        if "-suid" not in package:
            found.tags.add("elevated-privileges")
    elif executable and mode != 0o755:
        found.tags.add("non-standard-executable-perm")
    elif not executable and mode != 0o644:
        found.tags.add("non-standard-file-perm")


def _elf(found: Findings, elf: Elf, executable: bool, name: str, package: str, depends: bool) -> None:
    """lintian's binaries/* and libraries/shared checks."""
    golang = package.startswith("golang-")
    if elf.unstripped and not re.search(r"\.(?:k?o|gox)$", name) and not package.endswith("-dbg"):
        found.tags.add("unstripped-binary-or-object")
    for entry in elf.search_path:
        if re.match(r"\$\{?ORIGIN\}?", entry):
            continue
        clean = os.path.normpath(entry) if entry else ""
        if clean.startswith(("/usr/lib/ghc/",)) or clean == "/usr/lib/ghc":
            continue
        if clean.startswith("/"):
            found.tags.add("custom-library-search-path")
        elif clean:
            found.tags.add("relative-library-search-path")
    if elf.soname and executable and not elf.interp:
        found.tags.add("shared-library-is-executable")

    if not elf.linked:
        return
    libc = any(n.startswith("libc.so.") for n in elf.needed)
    found.needs_libc |= libc
    if (
        elf.kind == "executable"
        and not elf.needed
        and not re.search(r"[.-]static$", name)
        and not package.endswith("-static")
        and not golang
    ):
        found.tags.add("statically-linked-binary")
    if elf.shared and not elf.needed and not re.search(r"\.(?:[ce]32|e64)$", name):
        found.tags.add("shared-library-lacks-prerequisites")
    if elf.needed and not depends:
        found.tags.add("undeclared-elf-prerequisites")
    if elf.shared and elf.needed and not libc and not re.search(r"/libc\b", name):
        found.tags.add("library-not-linked-against-libc")
    if (
        not elf.shared
        and elf.needed
        and not libc
        and not any(n.startswith("libstdc++.so.") for n in elf.needed)
    ):
        found.tags.add("program-not-linked-against-libc")
    if elf.needed and not golang:
        if not elf.relro:
            found.tags.add("hardening-no-relro")
        if elf.kind == "executable":
            found.tags.add("hardening-no-pie")


def _script(found: Findings, script: Script, executable: bool, name: str) -> None:
    """lintian's scripts check on an installed script (Scripts.pm, visit_installed_files)."""
    interpreter = script.interpreter
    absolute = interpreter.startswith("/") or script.env
    if name.endswith(".in") and re.fullmatch(r"(\@|<<)[A-Z_]+(\@|>>)", interpreter):
        return
    # Not executable, not in a bin/ directory, no absolute path: probably not a script.
    if not re.search(r"bin/|etc/init\.d/", name) and not executable and not absolute:
        return
    if not interpreter:
        found.tags.add("script-without-interpreter")
        return
    if not absolute:
        found.tags.add("interpreter-not-absolute")
    if not executable and not re.search(r"\.(?:in|erb|ex)$", name):
        found.tags.add("script-not-executable")
    basename = posixpath.basename(interpreter)
    known = INTERPRETERS.get(basename)
    dependency = versioned(basename)
    if known is not None:
        folder, dependency = known
        if f"{folder}/{basename}" != interpreter and not script.env:
            found.tags.add("wrong-path-for-interpreter")
    elif dependency is not None:
        found.tags.update(UNKNOWN_INTERPRETER_TAGS)
    elif interpreter.startswith("/usr/local/"):
        found.tags.add("interpreter-in-usr-local")
    elif interpreter == "/bin/env":
        found.tags.add("script-uses-bin-env")
    elif interpreter == "nodejs":
        found.tags.add("script-uses-deprecated-nodejs-location")
        dependency = "missing-dep-for-interpreter"
    elif basename.startswith("php"):
        found.tags.add("php-script-with-unusual-interpreter")
        dependency = "php-script-but-no-php-cli-dep"
    else:
        found.tags.update(UNKNOWN_INTERPRETER_TAGS)
    if dependency and executable:
        found.tags.add(dependency)
    if script.env and interpreter == "perl":
        found.tags.add("incorrect-path-for-interpreter")


def _contents(found: Findings, data: bytes) -> None:
    """lintian's files/contents: programs (their strings) and scripts that name dpkg's database or
    sensible-utils' commands. (Each tag needs one file: the search stops once it has it.)"""
    if "uses-dpkg-database-directly" not in found.tags and data.find(b"/var/lib/dpkg") >= 0:
        found.tags.add("uses-dpkg-database-directly")
    sensible = "missing-depends-on-sensible-utils"
    if (
        sensible not in found.tags
        and (b"sensible-" in data or b"select-editor" in data)
        and SENSIBLE.search(data)
    ):
        found.tags.add(sensible)


def _encoding(found: Findings, data: bytes) -> None:
    """lintian's files/encoding: a file that file(1) calls "... text" (no NUL; no CR, escape or
    overstrike; some line end, none after more than 300 characters) and that is not UTF-8."""
    if "national-encoding" in found.tags or b"\0" in data:
        return
    try:
        data.decode("utf-8")
        return
    except UnicodeDecodeError:
        pass
    if any(c in data for c in (b"\r", b"\x1b", b"\x08")) or b"\n" not in data:
        return
    if max(len(line) for line in data.split(b"\n")) <= 300:
        found.tags.add("national-encoding")


def _gzip(found: Findings, path: Path, head: bytes, name: str, epoch: int) -> None:
    """lintian's files/compressed/gz: a .gz that `gzip --test` refuses, and a gzip header dated
    after the package's changelog."""
    if name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
        except (OSError, EOFError, zlib.error):
            found.tags.add("broken-gz")
    if head[:2] == b"\x1f\x8b" and len(head) >= 8:
        stamp = struct.unpack_from("<I", head, 4)[0]
        if stamp > epoch:
            found.tags.add("package-contains-timestamped-gzip")


def _unit(found: Findings, path: Path) -> None:
    """lintian's systemd check on a service file (check_systemd_service_file)."""
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return
    values: dict[tuple[str, str], list[str]] = {}
    section = None
    continued = ""
    for raw in text.split("\n"):
        line = continued + raw
        continued = ""
        if line.endswith("\\"):
            continued = line[:-1] + " "
            continue
        line = line.rstrip()
        if not line or line[0] in "#;":
            continue
        header = re.fullmatch(r"\[([^\]]+)\]", line)
        if header:
            section = header.group(1)
            continue
        pair = re.match(r"^(.*)\s*=\s*(.*)$", line)
        if section is None or pair is None:
            continue
        key = (section, pair.group(1))
        try:
            words = shlex.split(pair.group(2))
        except ValueError:
            words = pair.group(2).split()
        values[key] = [*values.get(key, []), *words] if pair.group(2) else []

    def get(section: str, key: str) -> list[str]:
        return values.get((section, key), [])

    if any(v in ("syslog.target", "dbus.target") for v in get("Unit", "After")):
        found.tags.add("systemd-service-file-refers-to-obsolete-target")
    if get("Unit", "BindTo"):
        found.tags.add("systemd-service-file-refers-to-obsolete-bindto")
    for command in ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost"):
        if any(v.startswith("/etc/init.d/") for v in get("Service", command)):
            found.tags.add("systemd-service-file-wraps-init-script")
    if any(not alias.endswith(".service") for alias in get("Install", "Alias")):
        found.tags.add("systemd-service-alias-without-extension")
    if any(target not in WANTED_BY for target in get("Install", "WantedBy")):
        found.tags.add("systemd-service-file-refers-to-unusual-wantedby-target")
    if any(mode.strip() == "none" for mode in get("Service", "KillMode")):
        found.tags.add("kill-mode-none")
    if "nobody" in get("Service", "User") or "nogroup" in get("Service", "Group"):
        found.tags.add("systemd-service-file-uses-nobody-or-nogroup")
    for stream in ("StandardError", "StandardOutput"):
        if any(v in ("syslog", "syslog-console") for v in get("Service", stream)):
            found.tags.add("systemd-service-file-uses-deprecated-syslog-facility")
    shutdown = "shutdown.target"
    if (
        get("Unit", "DefaultDependencies")
        and shutdown not in get("Unit", "Before")
        and shutdown in get("Unit", "Conflicts")
    ):
        found.tags.add("systemd-service-file-shutdown-problems")
