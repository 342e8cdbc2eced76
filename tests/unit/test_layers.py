"""ctr2svc.layers: the layer plan, chain IDs, and unpacking one layer tar into overlayfs' form.

Unpacking keeps owners, makes 0/0 character devices and trusted.* xattrs: it needs root, as a build
does (skipped without root locally, failed under CI like the integration tests).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ctr2svc.errors import ImageError, UsageError
from ctr2svc.image import layerrules, layers, layerstore, layertar
from ctr2svc.image.bundle import scan
from ctr2svc.image.layerrules import Node
from tests.conftest import require
from tests.support.images import tar_bytes, tar_member

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


def _digest(blob: Path) -> str:
    return "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()


def _unpack(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], *, apply: bool = False) -> Path:
    require(os.geteuid() == 0, "needs root: layers keep owners and make device nodes")
    raw = _tar(members)
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(raw))
    layer = layers.Layer(_digest(blob), "sha256:" + hashlib.sha256(raw).hexdigest(), GZIP, 1)
    dest = tmp_path / "diff"
    dest.mkdir(exist_ok=True)
    layerstore.unpack_layer(layer, blob, dest, [], below=None, apply=apply)
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
        ([(_info("../../etc/passwd"), b"x")], "which may lead outside the image"),
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
    layer = layers.Layer(_digest(blob), "sha256:" + "f" * 64, GZIP, 1)
    (tmp_path / "diff").mkdir()
    with pytest.raises(ImageError, match="does not match its diff_id"):
        layerstore.unpack_layer(layer, blob, tmp_path / "diff", [], below=None, apply=False)


def test_a_corrupt_layer_is_the_images_fault(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "needs root")
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(b"not a tar at all" * 100)[:40])
    layer = layers.Layer(_digest(blob), "sha256:" + "f" * 64, GZIP, 1)
    (tmp_path / "diff").mkdir()
    with pytest.raises(ImageError, match="layer ffffffffffff"):
        layerstore.unpack_layer(layer, blob, tmp_path / "diff", [], below=None, apply=False)


# --- hostile layers: one verdict and one root, flat or shared ------------------------------------------
#
# Each case is an image's layers (bottom first). It is judged twice: as a flat build does
# (layertar.check_image reads the blobs, one stacked model) and as a shared build does (each layer
# unpacked alone for real, then the units stacked with layerstore.Stack). Both must refuse it with the
# same words, or accept it with the same tree; and neither may touch anything outside its directory.

T = tarfile
# A directory of the build host the layers aim at (one per test process: the layers name it).
SENTINEL = f"/tmp/ctr2svc-unit-sentinel-{os.getpid()}"
M = tar_member


def _with(member: tuple[tarfile.TarInfo, bytes], **fields: object) -> tuple[tarfile.TarInfo, bytes]:
    for key, value in fields.items():
        setattr(member[0], key, value)
    return member


HOSTILE: list[tuple[str, list[list[tuple[tarfile.TarInfo, bytes]]], str | None]] = [
    # Through a symbolic link the layer made itself.
    ("file-through-symlink", [[M("d", T.SYMTYPE, link=SENTINEL), M("d/new", data=b"x")]],
     "writes /d/new through the symbolic link /d"),
    ("dir-through-symlink", [[M("d", T.SYMTYPE, link=SENTINEL), M("d/sub/", T.DIRTYPE)]],
     "writes /d/sub through the symbolic link /d"),
    ("symlink-through-symlink", [[M("d", T.SYMTYPE, link=SENTINEL), M("d/l", T.SYMTYPE, link="x")]],
     "writes /d/l through the symbolic link /d"),
    ("through-relative-symlink", [[M("d", T.SYMTYPE, link="../../../../.." + SENTINEL), M("d/f", data=b"x")]],
     "writes /d/f through the symbolic link /d"),
    ("through-nested-symlink",
     [[M("a/", T.DIRTYPE), M("a/b", T.SYMTYPE, link=SENTINEL), M("a/b/c", data=b"x")]],
     "writes /a/b/c through the symbolic link /a/b"),
    ("hardlink-through-symlink", [[M("d", T.SYMTYPE, link=SENTINEL), M("x", T.LNKTYPE, link="d/secret")]],
     "hard-links /x to /d/secret, which is not a file of the same layer (it goes through the symbolic link"),
    ("hardlink-through-inner-symlink",
     [[M("sub/f", data=b"f"), M("d", T.SYMTYPE, link="sub"), M("x", T.LNKTYPE, link="d/f")]],
     "(it goes through the symbolic link /d)"),
    ("whiteout-through-symlink", [[M("d", T.SYMTYPE, link=SENTINEL), M("d/.wh.secret")]],
     "writes /d/.wh.secret through the symbolic link /d"),
    ("opaque-through-symlink", [[M("d", T.SYMTYPE, link=SENTINEL), M("d/.wh..wh..opq")]],
     "writes /d/.wh..wh..opq through the symbolic link /d"),
    # Through a symbolic link of a lower layer.
    ("file-through-lower-symlink", [[M("d", T.SYMTYPE, link=SENTINEL)], [M("d/x", data=b"x")]],
     "writes /d/x through the symbolic link /d"),
    ("dir-through-lower-symlink", [[M("d", T.SYMTYPE, link=SENTINEL)], [M("d/sub/", T.DIRTYPE)]],
     "writes /d/sub through the symbolic link /d"),
    ("whiteout-through-lower-symlink", [[M("d", T.SYMTYPE, link=SENTINEL)], [M("d/.wh.secret")]],
     "writes /d/.wh.secret through the symbolic link /d"),
    ("opaque-through-lower-symlink", [[M("d", T.SYMTYPE, link=SENTINEL)], [M("d/.wh..wh..opq")]],
     "writes /d/.wh..wh..opq through the symbolic link /d"),
    ("hardlink-through-lower-symlink",
     [[M("d", T.SYMTYPE, link=SENTINEL)], [M("x", T.LNKTYPE, link="d/secret")]],
     "hard-links /x to /d/secret, which is not a file of the same layer"),
    ("opaque-after-write-through-lower-symlink",
     [[M("a/", T.DIRTYPE), M("a/d", T.SYMTYPE, link=SENTINEL)], [M("a/d/x", data=b"x"), M("a/.wh..wh..opq")]],
     "writes /a/d/x through the symbolic link /a/d"),
    ("lower-symlink-replaced-by-a-directory",
     [[M("d", T.SYMTYPE, link=SENTINEL)], [M("d/", T.DIRTYPE), M("d/x", data=b"x")]], None),
    ("lower-symlink-deleted-then-written-below",
     [[M("d", T.SYMTYPE, link=SENTINEL)], [M(".wh.d"), M("d/x", data=b"x")]], None),
    ("lower-symlink-hidden-by-an-opaque-directory",
     [[M("a/", T.DIRTYPE), M("a/d", T.SYMTYPE, link=SENTINEL)], [M("a/.wh..wh..opq"), M("a/d/x", data=b"x")]],
     None),
    # Names.
    ("dot-dot", [[M("a/../../escape", data=b"x")]], "with '..', which may lead outside the image"),
    ("dot-dot-inside", [[M("a/../b", data=b"x")]], "with '..'"),
    ("absolute-name", [[M(SENTINEL + "/secret", data=b"the image's own")]], None),
    ("absolute-dot-names", [[M("/./etc//motd", data=b"hi")]], None),
    ("inside-a-whiteout-name", [[M(".wh.d/x", data=b"x")]], "inside a whiteout name"),
    ("empty-whiteout", [[M("etc/.wh.")]], "malformed whiteout"),
    ("aufs-metadata", [[M(".wh..wh.plnk/", T.DIRTYPE)]], "malformed whiteout"),
    ("newline-name", [[M("a\nb", data=b"x")]], "with a newline"),
    ("name-too-long", [[M("a" * 256, data=b"x")]], "longer than 255 bytes"),
    ("not-utf8-name", [[M(b"caf\xe9".decode("utf-8", "surrogateescape"), data=b"x")]], "not UTF-8"),
    ("nul-in-a-name", [[M("é\0b", data=b"x")]], "has a path with a NUL byte: 'é\\0b'"),
    ("nul-in-a-symlink", [[M("l", T.SYMTYPE, link="é\0x")]], "with an empty, too long or NUL target"),
    ("path-too-long", [[M("/".join(["a" * 200] * 16), data=b"x")]], "has a path longer than 3072 bytes"),
    # Headers every reader must take the same way, and the system must be able to set.
    ("uid-out-of-range", [[M("f", data=b"x", uid=2**33)]], "has /f owned by uid 8589934592"),
    ("uid-minus-one", [[M("f", data=b"x", gid=2**32 - 1)]], "has /f owned by gid 4294967295"),
    ("pax-time-as-a-float", [[_with(M("f", data=b"x"), pax_headers={"mtime": "1e30"})]],
     "has /f with a malformed pax mtime '1e30'"),
    ("pax-size-with-a-space", [[_with(M("f", data=b"x"), pax_headers={"size": " 1"})]],
     "has /f with a malformed pax size ' 1'"),
    ("pax-negative-uid", [[_with(M("f", data=b"x"), pax_headers={"uid": "-2"})]], "malformed pax uid '-2'"),
    ("time-out-of-range", [[M("f", data=b"x", mtime=2**62)]], "has /f with a time out of range"),
    ("negative-time", [[M("f", data=b"x", mtime=-5)]], None),
    ("root-as-a-file", [[M("./", T.REGTYPE, data=b"x")]], "has a file as the image's root directory"),
    ("root-opaque", [[M("f", data=b"x")], [M(".wh..wh..opq")]], "makes the image's root opaque"),
    # Types.
    ("unknown-type", [[M("v", b"V")]], "has /v of tar type 'V', which no package can hold"),
    ("contiguous-file", [[M("c", b"7", data=b"x")]], "of tar type '7'"),
    ("empty-symlink", [[M("l", T.SYMTYPE, link="")]], "with an empty, too long or NUL target"),
    ("fifo-and-devices", [[M("dev/p", T.FIFOTYPE), M("dev/c", T.CHRTYPE), M("dev/b", T.BLKTYPE)]], None),
    # Hard links.
    ("hardlink-within-the-layer",
     [[M("f", data=b"x"), M("g", T.LNKTYPE, link="f"), M("h", T.LNKTYPE, link="/g")]],
     None),
    ("hardlink-to-itself", [[M("x", T.LNKTYPE, link="x")]], "(a link to itself)"),
    ("hardlink-to-a-directory", [[M("dd/", T.DIRTYPE), M("x", T.LNKTYPE, link="dd")]], "(a directory)"),
    ("hardlink-to-the-root", [[M("x", T.LNKTYPE, link="/")]], "(a directory)"),
    ("hardlink-to-a-symlink", [[M("l", T.SYMTYPE, link="/etc/passwd"), M("x", T.LNKTYPE, link="l")]],
     "(a symbolic link)"),
    ("hardlink-to-a-fifo", [[M("p", T.FIFOTYPE), M("x", T.LNKTYPE, link="p")]], "(a device or fifo)"),
    ("hardlink-to-a-missing-file", [[M("x", T.LNKTYPE, link="nothere")]], "(it has none before this link)"),
    ("hardlink-before-its-file", [[M("x", T.LNKTYPE, link="y"), M("y", data=b"y")]],
     "(it has none before this link)"),
    ("hardlink-to-a-host-path",
     [[M("x", T.LNKTYPE, link=SENTINEL + "/secret")]], "(it has none before this link)"),
    ("hardlink-outside",
     [[M("x", T.LNKTYPE, link="../../" + SENTINEL + "/secret")]], "hard link target with '..'"),
    ("hardlink-to-a-lower-layer", [[M("f", data=b"f")], [M("x", T.LNKTYPE, link="f")]],
     "(it has none before this link)"),
    ("hardlink-to-a-deleted-path", [[M("f", data=b"f")], [M(".wh.f"), M("x", T.LNKTYPE, link="f")]],
     "(it has none before this link)"),
    # Twice in one layer.
    ("file-twice", [[M("f", data=b"1"), M("f", data=b"2")]], "has /f twice (a file and a file)"),
    ("symlink-twice", [[M("l", T.SYMTYPE, link="a"), M("l", T.SYMTYPE, link="b")]], "has /l twice"),
    ("file-then-directory",
     [[M("f", data=b"1"), M("f/", T.DIRTYPE)]], "has /f twice (a file and a directory)"),
    ("directory-then-file",
     [[M("d/", T.DIRTYPE), M("d", data=b"1")]], "has /d twice (a directory and a file)"),
    ("file-then-below-it", [[M("f", data=b"1"), M("f/x", data=b"2")]],
     "has /f twice (a file and the directory of /f/x)"),
    ("below-then-file",
     [[M("a/b", data=b"1"), M("a", data=b"2")]], "has /a twice (a directory and a file)"),
    ("directory-twice", [[M("d/", T.DIRTYPE), M("d/", T.DIRTYPE, mode=0o700)]], None),
    ("implicit-then-named-directory", [[M("d/x", data=b"x"), M("d/", T.DIRTYPE)]], None),
    # Deletions.
    ("whiteout-after-the-file", [[M("f", data=b"1"), M(".wh.f")]], "both creates and deletes /f"),
    ("whiteout-of-a-directory-it-wrote-into",
     [[M("d/x", data=b"1"), M(".wh.d")]], "both creates and deletes /d"),
    ("whiteout-then-the-file", [[M("f", data=b"0")], [M(".wh.f"), M("f", data=b"1")]], None),
    ("whiteout-twice", [[M("etc/f", data=b"0")], [M("etc/.wh.f"), M("etc/.wh.f")]], None),
    ("whiteout-in-a-new-directory", [[M("f", data=b"0")], [M("nd/", T.DIRTYPE), M("nd/.wh.x")]],
     "has the whiteout /nd/.wh.x in /nd, a directory no layer below it has"),
    ("whiteout-in-the-bottom-layer", [[M("a/.wh.x")]], "has the whiteout /a/.wh.x in /a"),
    ("whiteout-at-the-bottom-root", [[M(".wh.x"), M("f", data=b"x")]], None),
    ("whiteout-under-a-lower-file", [[M("f", data=b"0")], [M("f/.wh.x")]],
     "writes /f/.wh.x under /f, which a layer below it has as a file"),
    ("whiteout-of-nothing-in-a-lower-directory", [[M("etc/", T.DIRTYPE)], [M("etc/.wh.nothing")]], None),
    ("whiteouts-in-an-opaque-directory",
     [[M("nd/old", data=b"0")],
      [M("nd/.wh.x"), M("nd/.wh..wh..opq"), M("nd/.wh.old"), M("nd/new", data=b"1")]],
     None),
    ("opaque-in-a-new-directory", [[M("f", data=b"0")], [M("nd/", T.DIRTYPE), M("nd/.wh..wh..opq")]], None),
    ("directory-deleted-and-made-again",
     [[M("d/old", data=b"0"), M("d/keep/x", data=b"0")],
      [M(".wh.d"), M("d/", T.DIRTYPE), M("d/new", data=b"1")]],
     None),
    ("directory-deleted-and-written-into",
     [[M("d/old", data=b"0")], [M(".wh.d"), M("d/new", data=b"1")]], None),
    ("file-below-a-lower-file", [[M("f", data=b"0")], [M("f/x", data=b"1")]],
     "writes /f/x under /f, which a layer below it has as a file"),
    ("lower-file-replaced-by-a-directory",
     [[M("f", data=b"0")], [M("f/", T.DIRTYPE), M("f/x", data=b"1")]], None),
    ("lower-directory-replaced-by-a-file", [[M("d/x", data=b"0")], [M("d", data=b"1")]], None),
    # Devices and fifos are not packaged: where a lower layer has a path, it would show through.
    ("fifo-over-a-lower-file", [[M("f", data=b"0")], [M("f", T.FIFOTYPE)]],
     "has a device or fifo at /f, where a layer below it has a file"),
    ("fifo-over-a-lower-fifo", [[M("f", T.FIFOTYPE)], [M("f", T.FIFOTYPE)]], None),
    ("fifo-over-a-deleted-file", [[M("f", data=b"0")], [M(".wh.f"), M("f", T.FIFOTYPE)]], None),
]  # fmt: skip


def _blob_layer(tmp_path: Path, number: int, members: list[tuple[tarfile.TarInfo, bytes]]) -> layers.Layer:
    raw = tar_bytes([*members])
    blob = gzip.compress(raw)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    (tmp_path / "blobs").mkdir(exist_ok=True)
    (tmp_path / "blobs" / digest[7:]).write_bytes(blob)
    return layers.Layer(digest, "sha256:" + hashlib.sha256(raw).hexdigest(), GZIP, len(blob))


def _verdict(run: Callable[[], layerrules.View]) -> tuple[str | None, dict[str, Node]]:
    try:
        view = run()
    except ImageError as exc:
        return exc.brief.split(" ", 2)[2], {}
    return None, view.nodes


@pytest.fixture(scope="module")
def sentinel() -> Iterator[Path]:
    path = Path(SENTINEL)
    path.mkdir()
    (path / "secret").write_text("the build host's\n")
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize(("layer_members", "words"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_layers_get_one_verdict_flat_or_shared(
    tmp_path: Path,
    sentinel: Path,
    layer_members: list[list[tuple[tarfile.TarInfo, bytes]]],
    words: str | None,
) -> None:
    require(os.geteuid() == 0, "needs root: layers keep owners and make device nodes")
    before = sorted(p.name for p in sentinel.iterdir())
    image = [_blob_layer(tmp_path, n, members) for n, members in enumerate(layer_members)]

    def blob(digest: str) -> Path:
        return tmp_path / "blobs" / digest[7:]

    flat = _verdict(lambda: layertar.check_image(image, blob))

    def shared() -> layerrules.View:
        stack = layerstore.Stack()
        for n, layer in enumerate(image):
            dest = tmp_path / f"layer{n}"
            dest.mkdir()
            skipped: list[tuple[str, str]] = []
            check = layerstore.unpack_layer(layer, blob(layer.digest), dest, skipped, below=None, apply=False)
            found = scan(dest, layer=True)
            found.skipped.extend(skipped)
            stack.add(layerstore.Extracted(layers.Unit((layer,)), dest, found, tuple(check.needs)))
        return stack.view

    assert _verdict(shared) == flat
    if words is None:
        assert flat[0] is None
    else:
        assert flat[0] is not None and words in flat[0], flat[0]
    # Nothing of the host was changed, linked or added to.
    assert sorted(p.name for p in sentinel.iterdir()) == before
    assert (sentinel / "secret").stat().st_nlink == 1
    assert (sentinel / "secret").read_text() == "the build host's\n"


def test_gzip_is_read_member_by_member_and_nothing_after_it() -> None:
    """gzip in process (layertar._Gunzip) reads what gzip(1) and Go's reader read, wherever the reads
    cut the stream; trailing bytes, zero padding included, are refused as Go's reader refuses them."""
    whole = gzip.compress(b"hello" * 10) + gzip.compress(b"tail") + gzip.compress(b"")

    def read(data: bytes, chunk: int = 1 << 20, size: int = 10240) -> bytes:
        reader = layertar._Gunzip(io.BytesIO(data))
        reader.CHUNK = chunk
        out = b""
        while part := reader.read(size):
            out += part
        return out

    for chunk in range(1, len(whole) + 2):
        for size in (1, 7, 10240):
            assert read(whole, chunk, size) == b"hello" * 10 + b"tail", (chunk, size)
    damaged = bytearray(gzip.compress(os.urandom(100_000)))
    damaged[-6] ^= 1
    for data, words in [
        (whole[:-25], "cut short"),
        (b"", "cut short"),
        (b"not gzip at all", "it is not gzip"),
        (whole + b"junk", "the data after its gzip stream is not gzip"),
        (whole + b"\0" * 512, "the data after its gzip stream is not gzip"),
        (bytes(damaged), "its checksum does not match its data"),
    ]:
        with pytest.raises(layertar._Corrupt, match=words):
            read(data)


def test_a_layer_unpacked_by_an_older_ctr2svc_is_unpacked_again(tmp_path: Path) -> None:
    """Older versions followed links out of the layer: what they left in the cache (a build host's
    file among the layer's) must not be packaged again."""
    require(os.geteuid() == 0, "needs root: layers keep owners")
    raw = _tar([(_info("etc/motd"), b"hi")])
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(raw))
    layer = layers.Layer(_digest(blob), "sha256:" + hashlib.sha256(raw).hexdigest(), GZIP, 1)
    unit = layers.Unit((layer,))
    store = layerstore.LayerStore(tmp_path / "cache")
    old = store.path(unit)
    (old / "diff/etc").mkdir(parents=True)
    (old / "diff/etc/shadow").write_text("the build host's\n")
    found = scan(old / "diff", layer=True)
    doc = {"id": unit.id, "diff_ids": [unit.id], "scan": found.to_json()}
    (old / "scan.json").write_text(json.dumps(doc))
    assert store.cached(unit) is None
    extracted = store.extract(unit, lambda digest: blob)
    assert sorted(p.name for p in (extracted.root / "etc").iterdir()) == ["motd"]
    assert [p.name for p in store.root.iterdir()] == [unit.hex]
