"""ctr2svc.layers: the layer plan, chain IDs, and unpacking one layer tar into overlayfs' form.

Unpacking keeps owners, makes 0/0 character devices and trusted.* xattrs: it needs root, as a build
does (skipped without root locally, failed under CI like the integration tests).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ctr2svc import layers
from ctr2svc.bundle import scan
from ctr2svc.errors import ImageError, UsageError
from tests.conftest import require

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _layer(n: int) -> layers.Layer:
    return layers.Layer(f"sha256:{n:064x}", "sha256:" + hashlib.sha256(str(n).encode()).hexdigest(), GZIP, 1)


def test_chain_id_follows_the_image_spec() -> None:
    # ChainID(L0|L1) = sha256(ChainID(L0) + " " + DiffID(L1)), the OCI image spec's definition.
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert layers.chain_id([a]) == a
    assert layers.chain_id([a, b]) == "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()


def test_plan_keeps_one_package_per_layer_up_to_the_limit() -> None:
    stack = [_layer(n) for n in range(5)]
    assert [u.layers for u in layers.plan(stack, 5)] == [(x,) for x in stack]


def test_plan_merges_the_bottom_layers_past_the_limit() -> None:
    stack = [_layer(n) for n in range(130)]
    units = layers.plan(stack, 100)
    assert len(units) == 100
    assert units[0].layers == tuple(stack[:31]) and units[0].merged
    assert units[0].id == layers.chain_id([x.diff_id for x in stack[:31]])
    assert [u.layers[0] for u in units[1:]] == stack[31:]
    # The name comes from the digest: two images on this base get the same merged package.
    assert units[0].package == "ctr2svc-layer-" + units[0].id[7:19]


def test_a_layer_that_comes_again_is_kept_only_at_its_highest_place() -> None:
    # Overlayfs refuses one directory twice among its lower layers ("conflicting lowerdir path").
    a, b, c = _layer(1), _layer(2), _layer(3)
    assert [u.layers for u in layers.plan([a, b, a, c, a], 10)] == [(b,), (c,), (a,)]


def test_the_layer_limit_can_only_be_lowered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTR2SVC_MAX_LAYERS", "3")
    assert layers.max_layers() == 3
    for bad in ("1", "101", "x"):
        monkeypatch.setenv("CTR2SVC_MAX_LAYERS", bad)
        with pytest.raises(UsageError, match="CTR2SVC_MAX_LAYERS"):
            layers.max_layers()


def test_image_layers_needs_one_diff_id_per_layer() -> None:
    manifest = {"layers": [{"digest": "sha256:" + "1" * 64, "mediaType": GZIP, "size": 3}]}
    good = {"rootfs": {"diff_ids": ["sha256:" + "2" * 64]}}
    assert layers.image_layers(manifest, good)[0].diff_id == "sha256:" + "2" * 64
    bad_configs: list[dict[str, Any]] = [
        {"rootfs": {"diff_ids": []}},
        {"rootfs": {"diff_ids": ["sha256:../../etc"]}},
        {},
    ]
    for bad in bad_configs:
        with pytest.raises(ImageError, match="diff_id"):
            layers.image_layers(manifest, bad)


# --- unpacking ---------------------------------------------------------------------------------------


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 1_600_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def _unpack(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], *, apply: bool = False) -> Path:
    require(os.geteuid() == 0, "needs root: layers keep owners and make device nodes")
    raw = _tar(members)
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(raw))
    layer = layers.Layer("sha256:" + "0" * 64, "sha256:" + hashlib.sha256(raw).hexdigest(), GZIP, 1)
    dest = tmp_path / "diff"
    dest.mkdir(exist_ok=True)
    layers.unpack_layer(layer, blob, dest, [], apply=apply)
    return dest


def test_whiteouts_and_opaque_directories_take_overlayfs_form(tmp_path: Path) -> None:
    dest = _unpack(
        tmp_path,
        [
            (_info("etc/.wh.gone"), b""),
            (_info("srv/", tarfile.DIRTYPE), b""),
            (_info("srv/.wh..wh..opq"), b""),
            (_info("srv/new", uid=999, gid=998, mode=0o4750), b"x"),
        ],
    )
    gone = (dest / "etc/gone").lstat()
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(dest / "srv", "trusted.overlay.opaque") == b"y"
    new = (dest / "srv/new").stat()
    assert (new.st_uid, new.st_gid, stat.S_IMODE(new.st_mode)) == (999, 998, 0o4750)
    found = scan(dest, layer=True)
    assert found.whiteouts == ["etc/gone"] and found.opaque == ["srv"]
    assert not (dest / "etc/.wh.gone").exists() and not (dest / "srv/.wh..wh..opq").exists()


def test_applied_on_a_merged_layer_deletions_are_carried_out(tmp_path: Path) -> None:
    _unpack(tmp_path, [(_info("etc/keep"), b"1"), (_info("etc/gone"), b"2"), (_info("srv/old"), b"3")])
    dest = _unpack(
        tmp_path, [(_info("etc/.wh.gone"), b""), (_info("srv/.wh..wh..opq"), b""), (_info("srv/new"), b"4")],
        apply=True,
    )  # fmt: skip
    assert sorted(p.name for p in (dest / "etc").iterdir()) == ["keep"]
    assert sorted(p.name for p in (dest / "srv").iterdir()) == ["new"]
    assert scan(dest, layer=True).whiteouts == []


def test_absolute_names_are_inside_the_layer(tmp_path: Path) -> None:
    dest = _unpack(tmp_path, [(_info("/etc/motd"), b"hi")])
    assert (dest / "etc/motd").read_bytes() == b"hi"


def test_hard_links_within_the_layer_are_kept(tmp_path: Path) -> None:
    dest = _unpack(
        tmp_path,
        [(_info("bin/busybox"), b"elf"), (_info("bin/sh", tarfile.LNKTYPE, linkname="bin/busybox"), b"")],
    )
    assert (dest / "bin/sh").stat().st_ino == (dest / "bin/busybox").stat().st_ino


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ([(_info("../../etc/passwd"), b"x")], "path outside the image"),
        (
            [(_info("link", tarfile.SYMTYPE, linkname="/etc"), b""), (_info("link/passwd"), b"x")],
            "through the symbolic link /link",
        ),
        ([(_info("a", tarfile.LNKTYPE, linkname="elsewhere"), b"")], "not a file of the same layer"),
        ([(_info("etc/.wh."), b"")], "malformed whiteout"),
    ],
    ids=["dot-dot", "through-a-symlink", "hardlink-outside", "empty-whiteout"],
)
def test_a_layer_cannot_write_outside_itself(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], words: str
) -> None:
    with pytest.raises(ImageError, match=words):
        _unpack(tmp_path, members)
    assert not (tmp_path / "etc" / "passwd").exists()


def test_a_layer_that_does_not_match_its_diff_id_is_refused(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "needs root: layers keep owners")
    raw = _tar([(_info("file"), b"content")])
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(raw))
    layer = layers.Layer("sha256:" + "0" * 64, "sha256:" + "f" * 64, GZIP, 1)
    (tmp_path / "diff").mkdir()
    with pytest.raises(ImageError, match="does not match its diff_id"):
        layers.unpack_layer(layer, blob, tmp_path / "diff", [], apply=False)


def test_a_corrupt_layer_is_the_images_fault(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "needs root")
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(b"not a tar at all" * 100)[:40])
    layer = layers.Layer("sha256:" + "0" * 64, "sha256:" + "f" * 64, GZIP, 1)
    (tmp_path / "diff").mkdir()
    with pytest.raises(ImageError, match="layer ffffffffffff"):
        layers.unpack_layer(layer, blob, tmp_path / "diff", [], apply=False)
