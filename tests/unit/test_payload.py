"""payload.py on small .debs made here: hard links made real, Installed-Size as dpkg-gencontrol counts
it, everything else as it was, the same bytes from the same input."""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from ctr2svc.errors import PackageError
from ctr2svc.image.bundle import Entry, Kind, RootfsScan
from ctr2svc.package import payload
from ctr2svc.package.finish import hardlink_groups
from tests.support.apk import verify_apk

BIG = bytes(range(256)) * 20  # 5120 bytes: 5 KiB
ROOT = "opt/x/rootfs"
GROUPS = [(f"{ROOT}/bin/busybox", f"{ROOT}/bin/sh", f"{ROOT}/bin/ash")]


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 1735689600
    info.uname = info.gname = "root"
    info.linkname = link
    return info, data


def data_tar() -> bytes:
    """As nfpm writes it: GNU format, "./" names, sorted; the second names of busybox are copies."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in [
            _member("./opt/", tarfile.DIRTYPE),
            _member("./opt/x/", tarfile.DIRTYPE),
            _member(f"./{ROOT}/", tarfile.DIRTYPE),
            _member(f"./{ROOT}/bin/", tarfile.DIRTYPE),
            _member(f"./{ROOT}/bin/ash", data=BIG),
            _member(f"./{ROOT}/bin/busybox", data=BIG),
            _member(f"./{ROOT}/bin/cat", tarfile.SYMTYPE, link="busybox"),
            _member(f"./{ROOT}/bin/sh", data=BIG),
            _member(f"./{ROOT}/etc/passwd", data=b"root:x:0:0::/:/bin/sh\n"),
            _member(f"./{ROOT}/{'long-name-' * 12}", data=BIG),
        ]:
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


CONTROL = b"Package: x\nVersion: 1.0\nArchitecture: amd64\nInstalled-Size: 20\nDescription: x\n y\n"


def control_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, data in (("./control", CONTROL), ("./md5sums", b"0  opt/x\n")):
            info, _ = _member(name, data=data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def ar_header(name: str, size: int) -> bytes:
    return f"{name:<16}{1735689600:<12}{0:<6}{0:<6}{0o100644:<8o}{size:<10}`\n".encode()


def zstd(data: bytes, *args: str) -> bytes:
    return subprocess.run(["zstd", "-q", "-c", *args], input=data, capture_output=True, check=True).stdout


def make_deb(path: Path, compression: str = "gz", *, signed: bool = False) -> Path:
    plain = data_tar()
    data = {
        "gz": gzip.compress(plain, mtime=0),
        "xz": lzma.compress(plain),
        "zst": zstd(plain) if compression == "zst" else b"",
        "tar": plain,
    }[compression]
    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", gzip.compress(control_tar(), mtime=0)),
        (f"data.tar.{compression}" if compression != "tar" else "data.tar", data),
    ]
    if signed:
        members.append(("_gpgorigin", b"-----BEGIN PGP SIGNATURE-----\n"))
    with path.open("wb") as out:
        out.write(b"!<arch>\n")
        for name, body in members:
            out.write(ar_header(name, len(body)) + body + (b"\n" if len(body) % 2 else b""))
    return path


def read_members(deb: Path, tmp: Path) -> dict[str, bytes]:
    tmp.mkdir(parents=True, exist_ok=True)
    members = payload.read_ar(deb, tmp)
    return {m.name: m.data if isinstance(m.data, bytes) else m.data.read_bytes() for m in members}


def unpacked_data(deb: Path, tmp: Path) -> bytes:
    for name, body in read_members(deb, tmp).items():
        if name.startswith("data.tar"):
            suffix = name.rsplit(".", 1)[-1]
            if suffix == "zst":
                return zstd(body, "-d")
            if suffix == "gz":
                return gzip.decompress(body)
            if suffix == "xz":
                return lzma.decompress(body)
            return body
    raise AssertionError("no data.tar")


ZSTD = pytest.param("zst", marks=pytest.mark.skipif(shutil.which("zstd") is None, reason="no zstd"))


@pytest.mark.parametrize("compression", ["gz", "xz", ZSTD, "tar"])
def test_second_names_become_hard_links(compression: str, tmp_path: Path) -> None:
    deb = make_deb(tmp_path / "x.deb", compression)
    assert payload.relink_deb(deb, GROUPS, tmp_path / "work")
    with tarfile.open(fileobj=io.BytesIO(unpacked_data(deb, tmp_path)), mode="r:") as archive:
        members = {m.name: m for m in archive.getmembers()}
        names = [m.name for m in archive.getmembers()]
    # The first name in the archive (ash) keeps the content, the others name it; the order stays.
    with tarfile.open(fileobj=io.BytesIO(data_tar())) as original:
        assert names == original.getnames()
    assert members[f"./{ROOT}/bin/ash"].isreg() and members[f"./{ROOT}/bin/ash"].size == len(BIG)
    for name in ("busybox", "sh"):
        link = members[f"./{ROOT}/bin/{name}"]
        assert link.islnk() and link.linkname == f"./{ROOT}/bin/ash"
        assert (link.mode, link.uname, link.gname, link.mtime) == (0o644, "root", "root", 1735689600)
    # A file of the same size outside the group stays a file.
    assert members[f"./{ROOT}/{'long-name-' * 12}"].isreg()


def test_other_members_keep_their_bytes(tmp_path: Path) -> None:
    deb = make_deb(tmp_path / "x.deb", "tar")
    before = data_tar()
    payload.relink_deb(deb, GROUPS, tmp_path / "work")
    after = unpacked_data(deb, tmp_path)
    # The archive is what it was less two copies of BIG (header + 10 blocks each) plus two link headers.
    assert len(before) - len(after) == 2 * (512 * 10)
    with tarfile.open(fileobj=io.BytesIO(before)) as old, tarfile.open(fileobj=io.BytesIO(after)) as new:
        pairs = list(zip(old.getmembers(), new.getmembers(), strict=True))
    for a, b in pairs:
        if b.islnk():
            continue
        end_a = a.offset_data + payload.blocks(a.size)
        end_b = b.offset_data + payload.blocks(b.size)
        assert before[a.offset : end_a] == after[b.offset : end_b], a.name


def test_installed_size_counts_a_hard_linked_file_once(tmp_path: Path) -> None:
    deb = make_deb(tmp_path / "x.deb")
    payload.relink_deb(deb, GROUPS, tmp_path / "work")
    control = gzip.decompress(read_members(deb, tmp_path)["control.tar.gz"])
    # dpkg-gencontrol: 4 directories 1 each, busybox 5, the symlink 1, passwd 1, the long name 5.
    assert payload.installed_size(control) == 4 + 5 + 1 + 1 + 5
    with tarfile.open(fileobj=io.BytesIO(control)) as archive:
        handle = archive.extractfile("./control")
        assert handle is not None
        text = handle.read().decode()
        assert text == CONTROL.decode().replace("Installed-Size: 20", "Installed-Size: 16")
        handle = archive.extractfile("./md5sums")
        assert handle is not None and handle.read() == b"0  opt/x\n"


def test_without_hard_links_only_installed_size_changes(tmp_path: Path) -> None:
    deb = make_deb(tmp_path / "x.deb")
    data_before = read_members(deb, tmp_path)["data.tar.gz"]
    assert payload.relink_deb(deb, [], tmp_path / "work")
    members = read_members(deb, tmp_path)
    assert members["data.tar.gz"] == data_before
    assert payload.installed_size(gzip.decompress(members["control.tar.gz"])) == 4 + 5 * 3 + 1 + 1 + 5
    # Run again: already right, left alone.
    assert not payload.relink_deb(deb, [], tmp_path / "work")


def test_the_ar_headers_keep_their_fields(tmp_path: Path) -> None:
    deb = make_deb(tmp_path / "x.deb")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    before = payload.read_ar(deb, tmp_path / "a")
    payload.relink_deb(deb, GROUPS, tmp_path / "work")
    after = payload.read_ar(deb, tmp_path / "b")
    assert [m.name for m in after] == ["debian-binary", "control.tar.gz", "data.tar.gz"]
    for old, new in zip(before, after, strict=True):
        assert old.header[:48] == new.header[:48] and old.header[58:] == new.header[58:]
    # No scratch files left behind.
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.parametrize("compression", ["gz", "xz", ZSTD])
def test_the_same_input_gives_the_same_bytes(compression: str, tmp_path: Path) -> None:
    first = make_deb(tmp_path / "1.deb", compression)
    second = tmp_path / "2.deb"
    shutil.copyfile(first, second)
    payload.relink_deb(first, GROUPS, tmp_path / "w1")
    payload.relink_deb(second, GROUPS, tmp_path / "w2")
    assert first.read_bytes() == second.read_bytes()


def test_a_signed_deb_is_left_alone(tmp_path: Path) -> None:
    deb = make_deb(tmp_path / "x.deb", signed=True)
    before = deb.read_bytes()
    assert not payload.relink_deb(deb, GROUPS, tmp_path / "work")
    assert deb.read_bytes() == before
    assert list((tmp_path / "work").iterdir()) == []


def test_names_that_are_not_one_file_are_refused(tmp_path: Path) -> None:
    deb = make_deb(tmp_path / "x.deb")
    with pytest.raises(PackageError, match="not one file"):
        payload.relink_deb(deb, [(f"{ROOT}/bin/busybox", f"{ROOT}/etc/passwd")], tmp_path / "work")


@pytest.mark.parametrize("apk", [False, True], ids=["deb", "apk"])
def test_interleaved_groups_each_link_to_their_own_first_member(apk: bool, tmp_path: Path) -> None:
    """Two hard-link sets whose members alternate with each other and with another file in the
    archive (nfpm's sorted order): each later name links to the first of its own set, whose content
    stays; the other file stays a file with its content."""
    one, two, other = b"1" * 700, b"2" * 700, b"3" * 700  # one size: only the names tell them apart
    out = io.BytesIO()
    order = [("x/a1", one), ("x/b1", two), ("x/c", other), ("y/a2", one), ("y/b2", two), ("z/a3", one)]
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT if apk else tarfile.GNU_FORMAT) as tar:
        for name, data in order:
            info, _ = _member(name if apk else f"./{name}", data=data)
            tar.addfile(info, io.BytesIO(data))
    source, dest = tmp_path / "in.tar", tmp_path / "out.tar"
    source.write_bytes(out.getvalue())
    payload.relink_tar(source, dest, [("y/a2", "x/a1", "z/a3"), ("y/b2", "x/b1")], apk=apk)
    prefix = "" if apk else "./"
    with tarfile.open(dest) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        contents = {n: (tar.extractfile(m) or io.BytesIO()).read() for n, m in members.items() if m.isreg()}
    assert list(members) == [name for name, _ in order]
    assert contents == {"x/a1": one, "x/b1": two, "x/c": other}
    links = {n: m.linkname for n, m in members.items() if m.islnk()}
    assert links == {"y/a2": f"{prefix}x/a1", "z/a3": f"{prefix}x/a1", "y/b2": f"{prefix}x/b1"}


def test_hardlink_groups_follow_tree_contents() -> None:
    scan = RootfsScan(
        [
            Entry("", Kind.DIR, 0o755, 0, 0, 0),
            Entry("bin/busybox", Kind.FILE, 0o755, 0, 0, 0),
            Entry("bin/sh", Kind.HARDLINK, 0o755, 0, 0, 0, "bin/busybox"),
            Entry("usr/bin/[", Kind.HARDLINK, 0o755, 0, 0, 0, "bin/busybox"),
            Entry("etc/passwd", Kind.FILE, 0o644, 0, 0, 0),
            Entry("lib/a", Kind.FILE, 0o644, 0, 0, 0),
            Entry("lib/b", Kind.HARDLINK, 0o644, 0, 0, 0, "lib/a"),
        ]
    )
    assert hardlink_groups(scan, f"/{ROOT}") == [
        (f"{ROOT}/bin/busybox", f"{ROOT}/bin/sh", f"{ROOT}/usr/bin/["),
        (f"{ROOT}/lib/a", f"{ROOT}/lib/b"),
    ]


# .apk: gzip streams (signature, control, data), as nfpm writes them.

PKGINFO = b"pkgname = x\npkgver = 1.0-r0\narch = x86_64\nsize = 20502\npkgdesc = x\ndatahash = 00\n"


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()  # noqa: S324 - apk's checksum


def apk_data_tar(*, symlinks: bool = True, symlink_sha1: str | None = sha1(b"")) -> bytes:
    """As nfpm writes it: PAX, a checksum record on every file; a symlink's is the SHA1 of nothing."""
    out = io.BytesIO()
    links = [
        _member(f"{ROOT}/bin/cat", tarfile.SYMTYPE, link="busybox"),
        _member(f"{ROOT}/bin/{'long-link-' * 12}", tarfile.SYMTYPE, link=f"/{ROOT}/{'long-target-' * 12}"),
    ]
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in [
            _member(f"{ROOT}/bin", tarfile.DIRTYPE),
            _member(f"{ROOT}/bin/ash", data=BIG),
            _member(f"{ROOT}/bin/busybox", data=BIG),
            *(links if symlinks else []),
            _member(f"{ROOT}/bin/sh", data=BIG),
            _member(f"{ROOT}/etc/passwd", data=b"root:x:0:0::/:/bin/sh\n"),
        ]:
            info.name = info.name.removeprefix("./")
            checksum = symlink_sha1 if info.issym() else sha1(data)
            info.pax_headers = {"APK-TOOLS.checksum.SHA1": checksum} if checksum is not None else {}
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def cut_tar(name: str, data: bytes) -> bytes:
    """A tar with no end-of-archive blocks, as apk's control and signature streams are."""
    info, _ = _member(name, data=data)
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)


def make_apk(path: Path, key: Path | None = None, data_tar: bytes | None = None) -> Path:
    data = gzip.compress(apk_data_tar() if data_tar is None else data_tar, mtime=0)
    info = PKGINFO.replace(b"datahash = 00", f"datahash = {hashlib.sha256(data).hexdigest()}".encode())
    control = gzip.compress(cut_tar(".PKGINFO", info), mtime=0)
    parts = [control, data]
    if key is not None:
        signature = openssl("dgst", "-sha1", "-sign", str(key), input=control)
        parts.insert(0, gzip.compress(cut_tar(".SIGN.RSA.ops.rsa.pub", signature), mtime=0))
    path.write_bytes(b"".join(parts))
    return path


def openssl(*args: str, input: bytes = b"") -> bytes:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, check=True).stdout


@pytest.fixture
def key(tmp_path: Path) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    openssl("genrsa", "-out", str(tmp_path / "ops.rsa"), "2048")
    return tmp_path / "ops.rsa"


def apk_streams(apk: Path) -> list[bytes]:
    return [plain for _, plain in payload.gzip_streams(apk.read_bytes())]


def test_apk_second_names_become_hard_links(tmp_path: Path) -> None:
    apk = make_apk(tmp_path / "x.apk")
    assert payload.finish_apk(apk, GROUPS, tmp_path / "work", None)
    compressed = [raw for raw, _ in payload.gzip_streams(apk.read_bytes())]
    control, data = apk_streams(apk)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = {m.name: m for m in archive.getmembers()}
    assert members[f"{ROOT}/bin/ash"].isreg()
    for name in ("busybox", "sh"):
        link = members[f"{ROOT}/bin/{name}"]
        # apk reads a link's target from PAX's linkpath (it ignores GNU's long names).
        assert (
            link.islnk()
            and link.linkname == f"{ROOT}/bin/ash"
            and link.pax_headers["linkpath"] == link.linkname
        )
    # .PKGINFO: size counts the file once, datahash is the new data stream's; the control stream is
    # still a tar without end-of-archive blocks.
    with tarfile.open(fileobj=io.BytesIO(control)) as archive:
        handle = archive.extractfile(".PKGINFO")
        assert handle is not None
        info = handle.read().decode()
    assert "size = 5142\n" in info  # 5120 + 22
    assert f"datahash = {hashlib.sha256(compressed[1]).hexdigest()}\n" in info
    assert len(control) % 512 == 0 and control[-512:] != b"\0" * 512


def test_apk_signed_again(tmp_path: Path, key: Path) -> None:
    apk = make_apk(tmp_path / "x.apk", key)
    assert payload.finish_apk(apk, GROUPS, tmp_path / "work", key)
    signature_stream, control_raw = (raw for raw, _ in payload.gzip_streams(apk.read_bytes())[:2])
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(signature_stream))) as archive:
        member = archive.getmembers()[0]
        handle = archive.extractfile(member)
        assert member.name == ".SIGN.RSA.ops.rsa.pub" and handle is not None
        signature = handle.read()
    public = tmp_path / "ops.rsa.pub"
    openssl("rsa", "-in", str(key), "-pubout", "-out", str(public))
    (tmp_path / "sig").write_bytes(signature)
    proc = subprocess.run(
        ["openssl", "dgst", "-sha1", "-verify", str(public), "-signature", str(tmp_path / "sig")],
        input=control_raw,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The same input, the same bytes (RSA PKCS #1 v1.5 signatures are deterministic).
    again = make_apk(tmp_path / "y.apk", key)
    payload.finish_apk(again, GROUPS, tmp_path / "work2", key)
    assert again.read_bytes() == apk.read_bytes()


def test_a_signed_apk_needs_its_key(tmp_path: Path, key: Path) -> None:
    apk = make_apk(tmp_path / "x.apk", key)
    with pytest.raises(PackageError, match="no key"):
        payload.finish_apk(apk, GROUPS, tmp_path / "work", None)


def test_an_apk_that_is_right_is_left_alone(tmp_path: Path) -> None:
    apk = make_apk(tmp_path / "x.apk", data_tar=apk_data_tar(symlinks=False))
    before = apk.read_bytes()
    assert not payload.finish_apk(apk, [], tmp_path / "work", None)
    assert apk.read_bytes() == before


def data_members(apk: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(apk_streams(apk)[-1])) as archive:
        return {m.name: m for m in archive.getmembers()}


@pytest.mark.parametrize("written", [sha1(b""), None], ids=["sha1-of-nothing", "no-checksum"])
def test_apk_symlinks_get_the_checksum_of_their_target(written: str | None, tmp_path: Path) -> None:
    """apk-tools' checksum of a symlink is the SHA1 of its target (`apk audit` compares it with
    readlink()); nfpm writes the SHA1 of nothing."""
    apk = make_apk(tmp_path / "x.apk", data_tar=apk_data_tar(symlink_sha1=written))
    assert payload.finish_apk(apk, [], tmp_path / "work", None)
    members = data_members(apk)
    links = [m for m in members.values() if m.issym()]
    assert len(links) == 2
    for link in links:
        assert link.pax_headers["APK-TOOLS.checksum.SHA1"] == sha1(link.linkname.encode()), link.name
    assert members[f"{ROOT}/bin/cat"].linkname == "busybox"
    # Every other member as it was; .PKGINFO's datahash is the new stream's.
    with tarfile.open(fileobj=io.BytesIO(apk_data_tar(symlink_sha1=written))) as original:
        before = {m.name: m for m in original.getmembers()}
    assert list(members) == list(before)
    for name, member in members.items():
        old = before[name]
        if not member.issym():
            assert (member.get_info(), member.pax_headers) == (old.get_info(), old.pax_headers)
    assert verify_apk(apk) == []
    assert payload.finish_apk(apk, [], tmp_path / "work", None) is False  # right now: left alone


def test_apk_symlink_checksum_replaced_in_place(tmp_path: Path) -> None:
    """The record is the same length: the data stream differs only in the checksums' hex digits."""
    apk = make_apk(tmp_path / "x.apk")
    payload.finish_apk(apk, [], tmp_path / "work", None)
    before, after = apk_data_tar(), apk_streams(apk)[-1]
    assert len(before) == len(after)
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert changed and all(chr(after[i]) in "0123456789abcdef" for i in changed)
