"""debdata.py on a small tree made here: the image's entries inserted among nfpm's after their parent
directories, hard links as links naming the first name, md5sums for every name, Installed-Size as
dpkg-gencontrol counts it (a hard-linked file once), and the same bytes from the same input."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from ctr2svc.errors import PackageError
from ctr2svc.image.bundle import scan
from ctr2svc.package import debdata

ROOT = "opt/containers/x/1.0/rootfs"
EPOCH = 1735689600


def _nfpm_tar(names: list[str]) -> bytes:
    """A data.tar as nfpm writes one: "./" names, directories with "/", sorted, two end blocks."""
    out = io.BytesIO()
    for name in names:
        info = tarfile.TarInfo(f"./{name}")
        data = b"" if name.endswith("/") else f"{name}\n".encode()
        info.type = tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
        info.size = len(data)
        out.write(info.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512))
    return out.getvalue() + b"\0" * 1024


NFPM = ["etc/", "etc/x/", "etc/x/env", "opt/", "opt/containers/", "opt/containers/x/",
        "opt/containers/x/1.0/", "opt/containers/x/1.0/config.json", "usr/", "usr/bin/x"]  # fmt: skip


def _tree(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(b"b" * 3000)
    os.link(root / "bin" / "busybox", root / "bin" / "sh")
    (root / "bin" / "cat").symlink_to("busybox")
    os.utime(root / "bin" / "busybox", (EPOCH + 999, EPOCH + 999))


def _written(tmp_path: Path, nfpm: list[str]) -> tuple[bytes, int, debdata.Written]:
    root = tmp_path / "rootfs"
    _tree(root)
    found = scan(root)
    out = io.BytesIO()
    done = debdata.Written()
    kib = debdata.merge(
        _nfpm_tar(nfpm), ROOT, out, lambda: debdata.write_rootfs(found, root, ROOT, EPOCH, out, done)
    )
    return out.getvalue(), kib, done


def test_the_image_goes_where_its_path_sorts(tmp_path: Path) -> None:
    data, kib, done = _written(tmp_path, NFPM)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        members = archive.getmembers()
    names = [m.name for m in members]
    assert names.index("./opt/containers/x/1.0/config.json") < names.index(f"./{ROOT}")
    assert names.index(f"./{ROOT}/bin/busybox") < names.index(f"./{ROOT}/bin/sh") < names.index("./usr")
    by_name = {m.name: m for m in members}
    sh = by_name[f"./{ROOT}/bin/sh"]
    assert sh.islnk() and sh.linkname == f"./{ROOT}/bin/busybox"
    cat = by_name[f"./{ROOT}/bin/cat"]
    assert cat.issym() and cat.linkname == "busybox" and cat.mode == 0o777 and cat.mtime == EPOCH
    busybox = by_name[f"./{ROOT}/bin/busybox"]
    assert busybox.size == 3000 and busybox.mtime == EPOCH and busybox.uname == "root"
    # dpkg-gencontrol: nfpm's 7 directories + 3 small files, then the root and bin/ (1 each), busybox
    # once (3 KiB), the symlink's 7-byte target (1 KiB).
    assert kib == 7 + 3 and done.kib == 2 + 3 + 1
    digest = hashlib.md5(b"b" * 3000).hexdigest()  # noqa: S324 - dpkg's md5sums
    assert done.md5sums == [f"{digest}  {ROOT}/bin/busybox", f"{digest}  {ROOT}/bin/sh"]
    assert data.endswith(b"\0" * 1024)
    assert _written(tmp_path / "again", NFPM)[0] == data


def test_a_directory_of_nfpm_after_the_image_is_refused(tmp_path: Path) -> None:
    out_of_order = [*NFPM[:3], "usr/", "opt/containers/x/1.0/"]
    with pytest.raises(PackageError, match="after what it holds"):
        _written(tmp_path, out_of_order)


def test_nfpm_packing_the_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="the image's to write"):
        _written(tmp_path, [*NFPM[:7], f"{ROOT}/"])
