"""Hard links in a .deb: an image's hard-linked files travel as tar hard-link entries (not copies),
Installed-Size counts each file once as dpkg-gencontrol would, `dpkg -i` gives one inode for all the
names, `dpkg -V` is quiet, a purge leaves nothing, and two builds are the same bytes.

The test image has busybox with bin/sh hard-linked to it (as Debian's busybox-static has it) and a
3 MB file with two more names, one sorting before it in the archive; shared layers get the same
treatment in their layer packages. examples/hello (busybox applets as symlinks) is checked for its
Installed-Size too.

The .apk carries them as hard-link entries as well (its size, datahash and signature made again): the
real apk-tools 2.14 installs the signed package with the key trusted, one inode for all the names.

An image with several hard-link sets whose names sort apart, other files between their members (perl's
`usr/bin/perl` and `perl5.36.0`, three names in three directories, busybox's `bin/sh`), is installed
from each format by the real installer (rpm into a root of its own, dnf with --installroot, dpkg on
this host, apk-tools 2.14): every installed file has the image's content (sha256) and the image's
links, and `rpm -V`, `dpkg -V` and `apk audit` find nothing. rpm's installer links every regular file
it meets between a set's first member and the one carrying the content to that set (issue 22).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli, require
from tests.support.apk import read_apk, verify_apk, verify_signature
from tests.support.images import build_image, install_busybox, put_file, unpack

from .helpers import dpkg, lintian, purge, sh
from .test_shared_formats import apk_tool, make_root, stub_packages  # noqa: F401 - apk_tool: a fixture

pytestmark = pytest.mark.integration

NAME = "hardlinks-svc"
ROOTFS = Path("/opt/containers") / NAME / "1.0" / "rootfs"
BIG = 3 * 1024 * 1024 + 17
# The big file's names: the first in the image, then two hard links ("a-" sorts first in the archive).
BIG_NAMES = ("srv/data/z-big.bin", "srv/data/a-big.bin", "usr/share/big.bin")


def _populate(root: Path) -> None:
    install_busybox(root, symlinks=("cat",), hardlinks=("sh",))
    block = hashlib.sha256(b"ctr2svc").digest()
    first = put_file(root, BIG_NAMES[0], (block * (BIG // len(block) + 1))[:BIG])
    for name in BIG_NAMES[1:]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.link(first, root / name)


@dataclass(frozen=True)
class Built:
    source: str
    deb: Path


@pytest.fixture(scope="module")
def built(ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    work = tmp_path_factory.mktemp("hardlinks")
    source = build_image(work / "layout", "1.0", _populate, entrypoint=["/bin/sh", "-c", "sleep 1000"])
    proc = ctr2svc("build", source, "-q", "--format", "deb", "--name", NAME, "-o", work / "out")
    purge(NAME)
    yield Built(source, Path(proc.stdout.strip()))
    purge(NAME)


def members(deb: Path) -> list[tarfile.TarInfo]:
    data = sh_bytes("dpkg-deb", "--fsys-tarfile", deb)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        return archive.getmembers()


def sh_bytes(*args: str | Path) -> bytes:
    return subprocess.run([str(a) for a in args], capture_output=True, check=True, timeout=300).stdout


def field(deb: Path, name: str) -> str:
    return sh("dpkg-deb", "-f", deb, name).stdout.strip()


def listed_size(entries: list[tarfile.TarInfo]) -> int:
    """dpkg-gencontrol's Installed-Size over the archive: files and symlinks ceil(size / 1024), each
    hard-linked file once (its other names are link entries), other entries 1."""
    total = 0
    for m in entries:
        if m.isreg():
            total += math.ceil(m.size / 1024)
        elif m.issym():
            total += math.ceil(len(m.linkname.encode()) / 1024)
        elif not m.islnk():
            total += 1
    return total


def test_hard_links_are_link_entries(built: Built) -> None:
    entries = {m.name.removeprefix("./"): m for m in members(built.deb)}
    root = str(ROOTFS).lstrip("/")
    sh_entry, busybox = entries[f"{root}/bin/sh"], entries[f"{root}/bin/busybox"]
    # Whichever name the archive has first keeps the content; the other names it.
    linked = [e for e in (sh_entry, busybox) if e.islnk()]
    assert len(linked) == 1, (sh_entry.type, busybox.type)
    assert entries[linked[0].linkname.removeprefix("./")].isreg()
    big = [entries[f"{root}/{name}"] for name in BIG_NAMES]
    assert [e.isreg() for e in big] == [False, True, False]  # a-big.bin comes first
    assert big[0].linkname == big[2].linkname == f"./{root}/{BIG_NAMES[1]}"
    assert big[1].size == BIG
    # Owners by name, as every other entry (ownership.sh gives numeric owners on install).
    assert {(e.uname, e.gname) for e in entries.values()} == {("root", "root")}


def test_installed_size_counts_each_file_once(built: Built) -> None:
    entries = members(built.deb)
    size = int(field(built.deb, "Installed-Size"))
    assert size == listed_size(entries)
    # The copies nfpm wrote counted the big file three times.
    assert math.ceil(BIG / 1024) < size < 2 * math.ceil(BIG / 1024)


def test_the_example_image_installed_size(ctr2svc: Cli, tmp_path: Path) -> None:
    proc = ctr2svc("build", "oci:examples/hello:1.0", "-q", "--format", "deb", "-o", tmp_path)
    deb = Path(proc.stdout.strip())
    assert int(field(deb, "Installed-Size")) == listed_size(members(deb))


def test_two_builds_are_the_same_bytes(built: Built, ctr2svc: Cli, tmp_path: Path) -> None:
    proc = ctr2svc("build", built.source, "-q", "--format", "deb", "--name", NAME, "-o", tmp_path)
    again = Path(proc.stdout.strip())
    assert sh("cmp", built.deb, again, check=False).returncode == 0


@pytest.mark.parametrize("compression", ["gzip", "xz", "none"])
def test_every_compression(built: Built, ctr2svc: Cli, tmp_path: Path, compression: str) -> None:
    args = ("build", built.source, "-q", "--name", NAME, "--compression", compression)
    first = Path(ctr2svc(*args, "-o", tmp_path / "a").stdout.strip())
    second = Path(ctr2svc(*args, "-o", tmp_path / "b").stdout.strip())
    assert sh("cmp", first, second, check=False).returncode == 0
    assert sum(m.islnk() for m in members(first)) == 3
    assert int(field(first, "Installed-Size")) == listed_size(members(first))


def test_install_gives_one_inode(built: Built) -> None:
    dpkg("-i", built.deb)
    try:
        inodes = {name: os.lstat(ROOTFS / name) for name in BIG_NAMES}
        assert len({s.st_ino for s in inodes.values()}) == 1
        assert all(s.st_nlink == 3 and s.st_size == BIG for s in inodes.values())
        sh_stat, busybox = os.lstat(ROOTFS / "bin/sh"), os.lstat(ROOTFS / "bin/busybox")
        assert sh_stat.st_ino == busybox.st_ino and stat.S_IMODE(busybox.st_mode) == 0o755
        verify = sh("dpkg", "-V", NAME, check=False)
        assert verify.returncode == 0 and verify.stdout == "", verify.stdout + verify.stderr
        # dpkg's Installed-Size rule over what dpkg installed, from the files themselves.
        seen: set[int] = set()
        total = 0
        for line in sh("dpkg", "-L", NAME).stdout.splitlines():
            if line == "/.":
                continue
            st = os.lstat(line)
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                total += math.ceil(st.st_size / 1024) if st.st_ino not in seen else 0
                if st.st_nlink > 1:
                    seen.add(st.st_ino)
            else:
                total += 1
        assert total == int(field(built.deb, "Installed-Size"))
    finally:
        purge(NAME)
    assert not ROOTFS.parent.parent.exists(), sorted(ROOTFS.parent.parent.rglob("*"))


def test_layer_packages_carry_hard_links(built: Built, ctr2svc: Cli, tmp_path: Path) -> None:
    ctr2svc("build", built.source, "-q", "--name", NAME, "--layers", "shared", "-o", tmp_path)
    layers = [deb for deb in tmp_path.glob("*.deb") if field(deb, "X-Ctr2svc-Layer")]
    assert len(layers) == 1, sorted(tmp_path.iterdir())
    entries = members(layers[0])
    assert sum(m.islnk() for m in entries) == 3
    assert int(field(layers[0], "Installed-Size")) == listed_size(entries)


def test_apk_carries_hard_links(built: Built, ctr2svc: Cli, apk_tool: Path, tmp_path: Path) -> None:  # noqa: F811
    sh("openssl", "genrsa", "-out", tmp_path / "ops.rsa", "2048")
    sh("openssl", "rsa", "-in", tmp_path / "ops.rsa", "-pubout", "-out", tmp_path / "ops.rsa.pub")
    args = ("build", built.source, "-q", "-f", "apk", "--name", NAME, "--sign-key-file", tmp_path / "ops.rsa")
    apk_file = Path(ctr2svc(*args, "--sign-key-name", "ops.rsa.pub", "-o", tmp_path / "a").stdout.strip())
    again = Path(ctr2svc(*args, "--sign-key-name", "ops.rsa.pub", "-o", tmp_path / "b").stdout.strip())
    assert sh("cmp", apk_file, again, check=False).returncode == 0
    assert verify_apk(apk_file) == []
    assert verify_signature(apk_file, tmp_path / "ops.rsa.pub", key_name="ops.rsa.pub")
    package = read_apk(apk_file)
    assert sum(m.type == "hardlink" for m in package.members) == 3
    assert int(package.value("size") or 0) == sum(m.size for m in package.members if m.type == "file")

    root = make_root(tmp_path / "root")
    (root / "etc/apk/keys").mkdir(parents=True)
    (root / "etc/apk/keys/ops.rsa.pub").write_bytes((tmp_path / "ops.rsa.pub").read_bytes())
    apk = [str(apk_tool), "--root", str(root)]
    stubs = stub_packages("apk", tmp_path / "stubs", ("runc", "openrc"))
    sh(*apk, "--initdb", "add", "--allow-untrusted", *stubs)
    proc = sh(*apk, "add", apk_file)  # no --allow-untrusted: the signature is checked
    assert "ERROR" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    rootfs = root / f"opt/containers/{NAME}/1.0-r0/rootfs"
    inodes = {os.lstat(rootfs / name).st_ino for name in BIG_NAMES}
    assert len(inodes) == 1 and os.lstat(rootfs / BIG_NAMES[0]).st_nlink == 3
    assert os.lstat(rootfs / "bin/sh").st_ino == os.lstat(rootfs / "bin/busybox").st_ino
    # apk audit compares every file with its recorded checksum: the hard links are not in question.
    audit = sh(*apk, "audit", "--system").stdout
    assert not any(name in audit for name in (*BIG_NAMES, "bin/sh", "bin/busybox")), audit
    sh(*apk, "del", NAME)
    assert not (root / f"opt/containers/{NAME}").exists()


def test_lintian_is_clean_with_hard_links(built: Built, ctr2svc: Cli, tmp_path: Path) -> None:
    """A hard link across directories is the image's choice: the package's override says so."""
    args = ("build", built.source, "-q", "--name", NAME, "--maintainer", "Ops <ops@example.com>")
    deb = Path(ctr2svc(*args, "-o", tmp_path / "out").stdout.strip())
    tags, output = lintian(deb)
    assert tags == [], output
    assert "package-contains-hardlink" in sh("lintian", "--show-overrides", deb, check=False).stdout


# Hard-link sets whose names sort apart, and files that sort between their members.
SETS_NAME = "linksets-svc"
LINK_SETS = (
    ("usr/bin/perl", "usr/bin/perl5.36.0"),
    ("usr/bin/a1", "usr/lib/zz/a2", "usr/share/a3"),
)
BETWEEN = ("usr/bin/b", "usr/bin/perl5", "usr/bin/perlbug", "usr/lib/aa", "usr/lib/zz/a1", "usr/share/a2")


def _populate_sets(root: Path) -> None:
    install_busybox(root, symlinks=("cat",), hardlinks=("sh",))
    for number, name in enumerate([names[0] for names in LINK_SETS] + list(BETWEEN)):
        # Each file its own content and size: a name given another file's shows in sha256 and size.
        put_file(root, name, hashlib.sha256(name.encode()).digest() * (100 + number), mode=0o755)
    for first, *others in LINK_SETS:
        for name in others:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            os.link(root / first, root / name)


def tree_files(root: Path) -> dict[str, tuple[str, str]]:
    """Each regular file under ROOT: its sha256 and the first name (sorted) of its inode, which says
    which names are one file whatever the inode numbers."""
    files: dict[str, tuple[str, str]] = {}
    first: dict[int, str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        name = str(path.relative_to(root))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        files[name] = (digest, first.setdefault(path.lstat().st_ino, name))
    return files


@dataclass(frozen=True)
class LinkSets:
    source: str
    files: dict[str, tuple[str, str]]  # the image's, as tree_files() gives them


@pytest.fixture(scope="module")
def link_sets(ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory) -> LinkSets:
    work = tmp_path_factory.mktemp("link-sets")
    source = build_image(work / "layout", "1.0", _populate_sets, entrypoint=["/bin/sh", "-c", "sleep 1000"])
    files = tree_files(unpack(source, work / "bundle") / "rootfs")
    # The image is what the test means: the sets interleave with other files, each set is one file.
    assert files["usr/bin/perl5.36.0"][1] == "usr/bin/perl" and files["usr/bin/perl5"][1] == "usr/bin/perl5"
    assert files["usr/share/a3"][1] == "usr/bin/a1" and files["bin/sh"][1] == "bin/busybox"
    return LinkSets(source, files)


def build_sets(ctr2svc: Cli, link_sets: LinkSets, fmt: str, out: Path) -> Path:
    proc = ctr2svc("build", link_sets.source, "-q", "-f", fmt, "--name", SETS_NAME, "-o", out)
    return Path(proc.stdout.strip())


def rpm_root(path: Path) -> Path:
    """An empty rpm root where the scriptlets run: busybox-static's applets and /dev/null."""
    root = make_root(path)
    (root / "dev").mkdir()
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return root


def test_rpm_installs_interleaved_link_sets(link_sets: LinkSets, ctr2svc: Cli, tmp_path: Path) -> None:
    require(shutil.which("rpm") is not None, "rpm is not installed (apt-get install rpm)")
    rpm = build_sets(ctr2svc, link_sets, "rpm", tmp_path / "out")
    root = rpm_root(tmp_path / "root")
    sh("rpm", "--root", root, "--initdb")
    # --nodeps: runc is a dependency the bare root cannot satisfy.
    out = sh("rpm", "--root", root, "--nodeps", "-i", rpm)
    assert "scriptlet failed" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert tree_files(root / f"opt/containers/{SETS_NAME}/1.0-1/rootfs") == link_sets.files
    verify = sh("rpm", "--root", root, "-V", "--nodeps", SETS_NAME, check=False)
    assert (verify.returncode, verify.stdout) == (0, ""), verify.stdout + verify.stderr


def test_dnf_installs_interleaved_link_sets(link_sets: LinkSets, ctr2svc: Cli, tmp_path: Path) -> None:
    require(shutil.which("dnf") is not None, "dnf is not installed (apt-get install dnf)")
    rpm = build_sets(ctr2svc, link_sets, "rpm", tmp_path / "out")
    stubs = stub_packages("rpm", tmp_path / "stubs", ("runc",))
    root = rpm_root(tmp_path / "root")
    conf = tmp_path / "dnf.conf"
    conf.write_text("[main]\ngpgcheck=0\ninstall_weak_deps=False\n")
    (tmp_path / "repos").mkdir()
    proc = sh(
        "dnf", "-y", "--noplugins", "--installroot", root, "--config", conf,
        "--setopt", f"reposdir={tmp_path / 'repos'}", "--setopt", f"cachedir={tmp_path / 'cache'}",
        "--releasever", "1", "install", rpm, *stubs,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and "scriptlet" not in proc.stderr, proc.stdout + proc.stderr
    assert tree_files(root / f"opt/containers/{SETS_NAME}/1.0-1/rootfs") == link_sets.files
    verify = sh("rpm", "--root", root, "-V", SETS_NAME, check=False)
    assert (verify.returncode, verify.stdout) == (0, ""), verify.stdout + verify.stderr


def test_dpkg_installs_interleaved_link_sets(link_sets: LinkSets, ctr2svc: Cli, tmp_path: Path) -> None:
    deb = build_sets(ctr2svc, link_sets, "deb", tmp_path / "out")
    purge(SETS_NAME)
    dpkg("-i", deb)
    try:
        assert tree_files(Path(f"/opt/containers/{SETS_NAME}/1.0/rootfs")) == link_sets.files
        verify = sh("dpkg", "-V", SETS_NAME, check=False)
        assert (verify.returncode, verify.stdout) == (0, ""), verify.stdout + verify.stderr
    finally:
        purge(SETS_NAME)


def test_apk_installs_interleaved_link_sets(
    link_sets: LinkSets,
    ctr2svc: Cli,
    apk_tool: Path,  # noqa: F811 - a fixture
    tmp_path: Path,
) -> None:
    apk_file = build_sets(ctr2svc, link_sets, "apk", tmp_path / "out")
    root = make_root(tmp_path / "root")
    apk = [str(apk_tool), "--root", str(root)]
    stubs = stub_packages("apk", tmp_path / "stubs", ("runc", "openrc"))
    sh(*apk, "--initdb", "add", "--allow-untrusted", *stubs)
    proc = sh(*apk, "add", "--allow-untrusted", apk_file)
    assert "ERROR" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert tree_files(root / f"opt/containers/{SETS_NAME}/1.0-r0/rootfs") == link_sets.files
    audit = sh(*apk, "audit", "--system").stdout
    assert not any(name in audit for name in link_sets.files), audit
