"""imagelint: lintian's rules on small trees made here, and its ELF reader on this host's own programs.
tests/integration/test_lint_realistic.py holds the predictions to lintian's own output on realistic
images (no tag without its override, no override unused)."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from ctr2svc.image.bundle import scan
from ctr2svc.package import debian, filekinds, imagelint

WHERE = "opt/containers/x-svc/1/rootfs"


def tags(root: Path, *, depends: bool = True, package: str = "x-svc", epoch: int = 2_000_000_000) -> set[str]:
    return imagelint.raised(root, scan(root), WHERE, package, depends=depends, epoch=epoch)


def put(root: Path, rel: str, data: bytes | str = b"", mode: int = 0o644) -> Path:
    """A file of mode MODE, its new parent directories 0755 (whatever the umask)."""
    path = root / rel
    mkdir(path.parent)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def mkdir(path: Path, mode: int = 0o755) -> Path:
    if not path.exists():
        mkdir(path.parent)
        path.mkdir()
        path.chmod(mode)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "rootfs"
    path.mkdir()
    path.chmod(0o755)
    return path


def test_plain_files_raise_nothing(root: Path) -> None:
    put(root, "etc/motd", "hello\n")
    put(root, "usr/bin/tool", "#!/bin/sh\necho hi\n", 0o755)
    assert tags(root) == set()


NOT_READABLE = "executable-is-not-world-readable"
PYTHON3 = "python3-script-but-no-python3-dep"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (0o644, set()),
        (0o600, {"non-standard-file-perm"}),
        (0o755, set()),
        (0o750, {"non-standard-executable-perm", NOT_READABLE}),
        (0o4755, {"elevated-privileges"}),
        (0o4750, {"elevated-privileges", "non-standard-setuid-executable-perm", NOT_READABLE}),
        (0o2755, {"elevated-privileges"}),
    ],
)
def test_file_modes(root: Path, mode: int, expected: set[str]) -> None:
    # A script when executable (an executable that is neither ELF nor script is a tag of its own).
    put(root, "data", "#!/bin/sh\n" if mode & 0o111 else "x\n", mode)
    assert tags(root) == expected


def test_directory_modes_and_names(root: Path) -> None:
    mkdir(root / "tmp", 0o1777)
    mkdir(root / "app/__pycache__")
    mkdir(root / "src/.git")
    put(root, "src/.gitignore", "*.o\n")
    put(root, "app/mod.pyc", b"\x00\x01")
    assert tags(root) == {
        "non-standard-dir-perm",
        "package-installs-python-pycache-dir",
        "package-contains-vcs-control-dir",
        "package-contains-vcs-control-file",
        "package-installs-python-bytecode",
    }


def test_hard_links_across_directories(root: Path) -> None:
    first = put(root, "bin/a", "x\n")
    os.link(first, root / "bin/b")
    assert tags(root) == set()
    os.link(first, mkdir(root / "lib") / "c")
    assert tags(root) == {"package-contains-hardlink"}


@pytest.mark.parametrize(
    ("line", "mode", "expected"),
    [
        ("#!/bin/sh", 0o755, set()),
        ("#!/usr/bin/env perl", 0o755, {"incorrect-path-for-interpreter"}),
        ("#!/bin/sh", 0o644, {"script-not-executable"}),
        ("#!/usr/bin/python3", 0o755, {PYTHON3}),
        ("#!/usr/bin/env python3", 0o755, {PYTHON3}),
        ("#!/usr/local/bin/python3", 0o755, {"wrong-path-for-interpreter", PYTHON3}),
        ("#!/usr/local/bin/python", 0o755, {"interpreter-in-usr-local"}),
        # Interpreters lintian's own tables decide about: every tag they could get (UNPREDICTABLE).
        ("#!/usr/bin/python3.11", 0o755, set(imagelint.UNKNOWN_INTERPRETER_TAGS)),
        ("#!/usr/bin/ruby3.1", 0o755, {*imagelint.UNKNOWN_INTERPRETER_TAGS, "ruby-script-but-no-ruby-dep"}),
        ("#!/usr/bin/node", 0o755, {"missing-dep-for-interpreter"}),
        ("#!/usr/bin/bash", 0o755, {"wrong-path-for-interpreter"}),
        ("#!sh", 0o755, {"interpreter-not-absolute", "wrong-path-for-interpreter"}),
        ("#!", 0o755, {"script-without-interpreter"}),
        ("#!/usr/bin/fish", 0o755, set(imagelint.UNKNOWN_INTERPRETER_TAGS)),
    ],
)
def test_scripts(root: Path, line: str, mode: int, expected: set[str]) -> None:
    put(root, "bin/tool", f"{line}\necho hi\n", mode)
    assert tags(root) == expected


def test_a_script_outside_bin_that_is_not_executable_is_not_one(root: Path) -> None:
    put(root, "lib/helper.py", "#!python\nprint(1)\n")
    assert tags(root) == set()


def test_contents_encoding_and_gzip(root: Path) -> None:
    put(root, "bin/backup", "#!/bin/sh\nls /var/lib/dpkg/info\nsensible-editor x\n", 0o755)
    put(root, "share/latin1.txt", "caf\xe9\n".encode("latin-1"))
    put(root, "share/utf8.txt", "café\n")
    put(root, "share/broken.gz", gzip.compress(b"data", mtime=1)[:-4])
    put(root, "share/new.gz", gzip.compress(b"data", mtime=2_100_000_000))
    assert tags(root) == {
        "uses-dpkg-database-directly",
        "missing-depends-on-sensible-utils",
        "national-encoding",
        "broken-gz",
        "package-contains-timestamped-gzip",
    }


def test_executable_data(root: Path) -> None:
    put(root, "bin/blob", b"\x01\x02data", 0o755)
    put(root, "lib/tool.jar", b"PK\x03\x04", 0o755)
    assert tags(root) == {"executable-not-elf-or-script"}


UNIT = """[Unit]
Description=x
After=network.target syslog.target

[Service]
ExecStart=/usr/sbin/x \\
  --flag
User=nobody

[Install]
WantedBy=multi-user.target \\
  custom.target
"""


def test_systemd_units(root: Path) -> None:
    put(root, "lib/systemd/system/x.service", UNIT)
    links = mkdir(root / "etc/systemd/system/multi-user.target.wants")
    (links / "x.service").symlink_to("/lib/systemd/system/x.service")
    (links / "masked.service").symlink_to("/dev/null")
    assert tags(root) == {
        "systemd-service-file-refers-to-obsolete-target",
        "systemd-service-file-refers-to-unusual-wantedby-target",
        "systemd-service-file-uses-nobody-or-nogroup",
        "service-file-is-not-a-file",
    }
    # A relative link to the unit in the image is a file to lintian.
    (links / "x.service").unlink()
    (links / "x.service").symlink_to("../../../../lib/systemd/system/x.service")
    assert "service-file-is-not-a-file" not in tags(root)


def elf_of(path: str) -> filekinds.Elf:
    found = shutil.which(path) or path
    if not Path(found).exists():
        pytest.skip(f"{path} is not on this host")
    elf = filekinds.read_elf(Path(found).resolve())
    assert elf is not None
    return elf


def libc() -> Path:
    for pattern in ("/lib/*/libc.so.6", "/usr/lib/*/libc.so.6", "/lib64/libc.so.6", "/usr/lib64/libc.so.6"):
        for path in Path("/").glob(pattern.lstrip("/")):
            return path
    pytest.skip("no glibc on this host")


def test_elf_of_a_dynamic_program() -> None:
    elf = elf_of("ls")
    assert elf.kind == "pie executable" and elf.interp and elf.relro and not elf.unstripped
    assert "libc.so.6" in elf.needed and not elf.soname


def test_elf_of_the_c_library() -> None:
    elf = filekinds.read_elf(libc())
    assert elf is not None and elf.kind == "shared object" and elf.soname and elf.interp


def test_elf_of_a_static_program() -> None:
    if sys.platform != "linux" or not Path("/sbin/ldconfig").exists():
        pytest.skip("no ldconfig")
    elf = elf_of("/sbin/ldconfig")  # static-pie: file(1) says "pie executable"
    assert elf.kind == "pie executable" and not elf.needed and not elf.interp


def test_elf_rules(root: Path) -> None:
    program = shutil.which("ls")
    if program is None:
        pytest.skip("no ls")
    shutil.copy(program, root / "ls")
    (root / "ls").chmod(0o755)
    found = tags(root)
    assert "missing-dependency-on-libc" in found
    assert "undeclared-elf-prerequisites" not in found
    assert "undeclared-elf-prerequisites" in tags(root, depends=False)
    assert "missing-dependency-on-libc" not in tags(root, depends=False)
    shutil.copy(libc(), root / "libc.so.6")
    (root / "libc.so.6").chmod(0o755)
    # The C library has an interpreter (it runs): executable, it is not "shared-library-is-executable".
    assert "shared-library-is-executable" not in tags(root)


def test_embedded_library_whenever_there_are_programs(root: Path) -> None:
    """lintian looks for libraries' messages in programs with a table of its own, which ctr2svc does
    not copy: an image with programs gets the override, one without none."""
    put(root, "etc/motd", "hello\n")
    assert "embedded-library" not in tags(root)
    program = shutil.which("ls")
    if program is None:
        pytest.skip("no ls")
    shutil.copy(program, root / "ls")
    assert "embedded-library" in tags(root)
    assert "embedded-library" in imagelint.UNPREDICTABLE


def test_not_elf() -> None:
    assert filekinds.parse_elf(b"\x7fELF\x02\x01" + b"\0" * 10) is None
    assert filekinds.parse_elf(b"#!/bin/sh\n") is None


def test_every_tag_has_its_reason() -> None:
    """Each tag imagelint can raise has an override with a reason in debian.IMAGE_FILE_TAGS, and
    each there can be raised."""
    source = Path(imagelint.__file__).read_text()
    raisable = set(re.findall(r'tags\.add\("([^"]+)"\)', source))
    raisable |= {tag for _, tag in filekinds.INTERPRETERS.values() if tag}
    raisable |= set(imagelint.UNPREDICTABLE)
    raisable |= {"missing-dependency-on-libc", "package-contains-hardlink", "service-file-is-not-a-file"}
    raisable |= {"missing-depends-on-sensible-utils"}
    overridable = {tag for _, group in debian.IMAGE_FILE_TAGS for tag in group}
    assert raisable - overridable == set()
    assert overridable - raisable == set()
