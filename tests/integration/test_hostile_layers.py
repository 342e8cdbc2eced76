"""Hostile layers (issue 22): tars no build tool writes, crafted blob by blob and pushed to the test
registry, each built flat and with --layers shared into caches in use by other builds.

Every case is judged the same way by both: refused with exit 3 and the same one line (the layer and
the member, no traceback, no umoci or Go text), or accepted. Neither reads, links or copies the build
host's file the layers aim at (a sentinel: its content is nowhere in the output or the cache, its
inode is in neither, its link count is unchanged), nothing is left in the output directory, and the
cache builds a good image afterwards.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support import images as im
from tests.support.faults import all_entries
from tests.support.images import RawLayer, tar_bytes, tar_exact
from tests.support.images import tar_member as M
from tests.support.registry import Registry

from .helpers import sh

pytestmark = pytest.mark.integration

T = tarfile
MODES = ("flat", "shared")
SECRET = b"ctr2svc-hostile-sentinel-7c1e5b"

# A layer or two above the busybox bottom layer, given the sentinel directory's path.
Layers = Callable[[str], list[bytes | RawLayer]]


def _one(*members: tuple[tarfile.TarInfo, bytes]) -> list[bytes | RawLayer]:
    return [tar_bytes(list(members))]


def _exact(members: list[tuple[tarfile.TarInfo, bytes]], change: Callable[[bytes, bytes], bytes]) -> RawLayer:
    body, end = tar_exact(members)
    return RawLayer(change(body, end))


def _flipped(data: bytes) -> bytes:
    middle = bytearray(data)
    for i in range(len(middle) // 2, len(middle) // 2 + 16):
        middle[i] ^= 0xFF
    return bytes(middle)


def _pax(member: tuple[tarfile.TarInfo, bytes], **headers: str) -> tuple[tarfile.TarInfo, bytes]:
    member[0].pax_headers = headers
    return member


_FILE = [M("f", data=b"A" * 5000)]
_TAR = tar_bytes(_FILE)

THROUGH_D = (
    "hard-links /x to /d/secret, which is not a file of the same layer (it goes through the symbolic link /d)"
)
CASES: list[tuple[str, Layers, str | None]] = [
    # Issue 22 item 9: a symbolic link to a host directory, then a hard link through it.
    ("hardlink-through-a-symlink-to-the-host",
     lambda s: _one(M("d", T.SYMTYPE, link=s), M("x", T.LNKTYPE, link="d/secret")),
     THROUGH_D),
    ("hardlink-through-a-relative-symlink",
     lambda s: _one(M("d", T.SYMTYPE, link="../../../../.." + s), M("x", T.LNKTYPE, link="d/secret")),
     THROUGH_D),
    ("hardlink-through-a-lower-symlink",
     lambda s: [tar_bytes([M("d", T.SYMTYPE, link=s)]), tar_bytes([M("x", T.LNKTYPE, link="d/secret")])],
     "hard-links /x to /d/secret, which is not a file of the same layer (it has none before this link)"),
    ("hardlink-to-a-host-path", lambda s: _one(M("x", T.LNKTYPE, link=s + "/secret")),
     "which is not a file of the same layer (it has none before this link)"),
    ("hardlink-outside", lambda s: _one(M("x", T.LNKTYPE, link="../../../.." + s + "/secret")),
     "has a hard link target with '..', which may lead outside the image"),
    ("hardlink-to-itself", lambda s: _one(M("x", T.LNKTYPE, link="x")), "hard-links /x to /x"),
    ("hardlink-to-a-directory", lambda s: _one(M("dd/", T.DIRTYPE), M("x", T.LNKTYPE, link="dd")),
     "hard-links /x to /dd, which is not a file of the same layer (a directory)"),
    ("hardlink-before-its-file", lambda s: _one(M("x", T.LNKTYPE, link="y"), M("y", data=b"y")),
     "hard-links /x to /y, which is not a file of the same layer (it has none before this link)"),
    ("hardlink-to-a-symlink",
     lambda s: _one(M("l", T.SYMTYPE, link=s + "/secret"), M("x", T.LNKTYPE, link="l")),
     "hard-links /x to /l, which is not a file of the same layer (a symbolic link)"),
    # Writes and deletions through symbolic links, of this layer or a lower one.
    ("file-through-a-symlink", lambda s: _one(M("d", T.SYMTYPE, link=s), M("d/new", data=b"x")),
     "writes /d/new through the symbolic link /d"),
    ("directory-through-a-symlink", lambda s: _one(M("d", T.SYMTYPE, link=s), M("d/sub/", T.DIRTYPE)),
     "writes /d/sub through the symbolic link /d"),
    ("symlink-through-a-symlink", lambda s: _one(M("d", T.SYMTYPE, link=s), M("d/l", T.SYMTYPE, link="x")),
     "writes /d/l through the symbolic link /d"),
    ("whiteout-through-a-symlink", lambda s: _one(M("d", T.SYMTYPE, link=s), M("d/.wh.secret")),
     "writes /d/.wh.secret through the symbolic link /d"),
    ("opaque-through-a-symlink", lambda s: _one(M("d", T.SYMTYPE, link=s), M("d/.wh..wh..opq")),
     "writes /d/.wh..wh..opq through the symbolic link /d"),
    ("file-through-a-lower-symlink",
     lambda s: [tar_bytes([M("d", T.SYMTYPE, link=s)]), tar_bytes([M("d/x", data=b"x")])],
     "writes /d/x through the symbolic link /d"),
    ("whiteout-through-a-lower-symlink",
     lambda s: [tar_bytes([M("d", T.SYMTYPE, link=s)]), tar_bytes([M("d/.wh.secret")])],
     "writes /d/.wh.secret through the symbolic link /d"),
    ("opaque-through-a-lower-symlink",
     lambda s: [tar_bytes([M("d", T.SYMTYPE, link=s)]), tar_bytes([M("d/.wh..wh..opq")])],
     "writes /d/.wh..wh..opq through the symbolic link /d"),
    # Names.
    ("dot-dot", lambda s: _one(M("a/../../.." + s + "/new", data=b"x")), "with '..', which may lead outside"),
    ("absolute-name-inside-the-image", lambda s: _one(M(s + "/secret", data=b"the image's own\n")), None),
    ("inside-a-whiteout-name",
     lambda s: _one(M(".wh.d/x", data=b"x")), "has /.wh.d/x inside a whiteout name"),
    ("owner-out-of-range", lambda s: _one(M("f", data=b"x", uid=2**33)), "has /f owned by uid 8589934592"),
    ("pax-time-as-a-float", lambda s: [tar_bytes([_pax(M("f", data=b"x"), mtime="1e30")])],
     "has /f with a malformed pax mtime '1e30'"),
    ("nul-in-a-name", lambda s: _one(M("é\0b", data=b"x")), "has a path with a NUL byte"),
    ("root-as-a-file",
     lambda s: _one(M("./", T.REGTYPE, data=b"x")), "has a file as the image's root directory"),
    ("root-opaque", lambda s: _one(M(".wh..wh..opq")), "makes the image's root opaque"),
    # Image defects: links to directories or themselves (above), members twice, types, whiteouts.
    ("file-twice", lambda s: _one(M("f", data=b"1"), M("f", data=b"2")), "has /f twice (a file and a file)"),
    ("file-then-directory", lambda s: _one(M("f", data=b"1"), M("f/", T.DIRTYPE)), "has /f twice"),
    ("whiteout-after-its-file", lambda s: _one(M("f", data=b"1"), M(".wh.f")), "both creates and deletes /f"),
    ("whiteout-in-a-directory-the-layer-creates", lambda s: _one(M("nd/", T.DIRTYPE), M("nd/.wh.x")),
     "has the whiteout /nd/.wh.x in /nd, a directory no layer below it has"),
    ("aufs-whiteout",
     lambda s: _one(M(".wh..wh.plnk/", T.DIRTYPE)), "has a malformed whiteout '.wh..wh.plnk'"),
    ("unknown-member-type",
     lambda s: _one(M("v", b"V")), "has /v of tar type 'V', which no package can hold"),
    ("contiguous-file", lambda s: _one(M("c", b"7", data=b"x")), "has /c of tar type '7'"),
    ("fifo-over-a-lower-file",
     lambda s: [tar_bytes([M("etc/f", data=b"x")]), tar_bytes([M("etc/f", T.FIFOTYPE)])],
     "has a device or fifo at /etc/f, where a layer below it has a file"),
    ("devices-and-fifos-are-left-out", lambda s: _one(M("dev/p", T.FIFOTYPE), M("dev/c", T.CHRTYPE)), None),
    ("directory-twice", lambda s: _one(M("d/", T.DIRTYPE), M("d/", T.DIRTYPE, mode=0o700)), None),
    ("deleted-then-made-again",
     lambda s: [
         tar_bytes([M("d/old", data=b"x")]),
         tar_bytes([M(".wh.d"), M("d/", T.DIRTYPE), M("d/new", data=b"y")]),
     ],
     None),
    ("lower-symlink-replaced-by-a-directory",
     lambda s: [tar_bytes([M("d", T.SYMTYPE, link=s)]), tar_bytes([M("d/", T.DIRTYPE), M("d/x", data=b"x")])],
     None),
    # The stream: cut short, corrupt, bytes outside the archive, not the layer its diff_id says.
    ("cut-short-inside-a-file", lambda s: [_exact(_FILE, lambda body, end: body[:2500])],
     "is cut short: its tar archive ends inside /f"),
    ("cut-short-without-an-end", lambda s: [_exact(_FILE, lambda body, end: body)],
     "is cut short: its tar archive stops after /f without an end marker"),
    ("bytes-after-the-end", lambda s: [_exact(_FILE, lambda body, end: body + end + b"hidden" * 100)],
     "has bytes outside its tar archive after /f"),
    ("member-after-one-zero-block",
     lambda s: [_exact(_FILE, lambda body, end: body + end[:512] + tar_bytes([M("hidden", data=b"h")]))],
     "has bytes outside its tar archive after /f"),
    ("damaged-header", lambda s: [_exact(_FILE, lambda body, end: body + b"X" * 512 + end)],
     "has bytes outside its tar archive after /f"),
    ("corrupt-gzip", lambda s: [RawLayer(_TAR, blob=_flipped(gzip.compress(_TAR + os.urandom(20000))))],
     "is corrupt: it does not decompress (gzip: "),
    ("cut-gzip", lambda s: [RawLayer(_TAR, blob=gzip.compress(_TAR)[:-40])],
     "is corrupt: it does not decompress (gzip: the stream is cut short)"),
    ("gzip-then-zero-padding", lambda s: [RawLayer(_TAR, blob=gzip.compress(_TAR) + b"\0" * 512)],
     "is corrupt: it does not decompress (gzip: the data after its gzip stream is not gzip)"),
    ("corrupt-zstd",
     lambda s: [RawLayer(_TAR, "zstd", blob=_flipped(im.run_bytes(["zstd", "-q", "-c"], _TAR)))],
     "is corrupt: it does not decompress"),
    ("cut-zstd", lambda s: [RawLayer(_TAR, "zstd", blob=im.run_bytes(["zstd", "-q", "-c"], _TAR)[:-20])],
     "is corrupt: it does not decompress"),
    ("diff-id-mismatch", lambda s: [RawLayer(_TAR, diff_id="sha256:" + "1" * 64)],
     "does not match its diff_id: the image's config says sha256:1111"),
    ("not-a-tar", lambda s: [RawLayer(b"not a tar " * 1000)], "is not a valid tar archive"),
    ("empty-layer", lambda s: [RawLayer(b"\0" * 1024)], None),
]  # fmt: skip


# What the flat package of an accepted case holds, and what it does not, given the sentinel's path.
EXPECT: dict[str, Callable[[str], tuple[set[str], set[str]]]] = {
    "absolute-name-inside-the-image": lambda s: ({s.lstrip("/") + "/secret"}, set()),
    "devices-and-fifos-are-left-out": lambda s: ({"dev"}, {"dev/p", "dev/c"}),
    "deleted-then-made-again": lambda s: ({"d/new"}, {"d/old"}),
    "lower-symlink-replaced-by-a-directory": lambda s: ({"d/x"}, set()),
}


@pytest.fixture(scope="module")
def sentinel() -> Iterator[Path]:
    """A directory of the build host the layers aim at, with a file they must not reach."""
    path = Path(f"/tmp/ctr2svc-hostile-{os.getpid()}")
    path.mkdir()
    (path / "secret").write_bytes(SECRET + b"\n")
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One cache per mode for the whole module: a hostile image lands in a cache other builds use."""
    root = tmp_path_factory.mktemp("hostile-caches")
    return {mode: root / mode for mode in MODES}


@pytest.fixture(scope="module")
def good(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    layout = tmp_path_factory.mktemp("hostile-good") / "layout"
    layer = tar_bytes([M("app/", T.DIRTYPE), M("app/ok", data=b"ok\n")])
    return registry.push(im.crafted_image(layout, "1", [im.busybox_layer(), layer]), "hostile/good", "1")


def _build(ctr2svc: Cli, ref: str, mode: str, cache: Path, out: Path) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True)
    return ctr2svc("build", ref, "--layers", mode, "--cache-dir", cache, "-o", out, check=False)


def _refused(proc: subprocess.CompletedProcess[str], out: Path, words: str) -> str:
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for bad in ("Traceback", "internal error", "level=", "umoci", "unpack entry", "archive/tar"):
        assert bad not in proc.stderr, proc.stderr
    assert re.search(r"error: (layer [0-9a-f]{12} |a layer in the image cache)", errors[0]), errors[0]
    assert words in errors[0] and "(hint: " in errors[0], errors[0]
    assert all_entries(out) == [], f"left in the output directory: {all_entries(out)}"
    return errors[0]


def _untouched(sentinel: Path, where: list[Path]) -> None:
    """The sentinel is as it was, and nothing under WHERE is it, links to it or holds its content."""
    st = (sentinel / "secret").stat()
    assert st.st_nlink == 1 and (sentinel / "secret").read_bytes() == SECRET + b"\n"
    assert sorted(p.name for p in sentinel.iterdir()) == ["secret"]
    for top in where:
        for path in top.rglob("*") if top.exists() else []:
            if not path.is_file() or path.is_symlink():
                continue
            found = path.lstat()
            assert (found.st_dev, found.st_ino) != (st.st_dev, st.st_ino), f"{path} is the host's file"
            if found.st_size < 64 << 20:
                assert SECRET not in path.read_bytes(), f"{path} holds the host file's content"
    for package in (p for top in where for p in (top.glob("*.deb") if top.exists() else [])):
        # The package's own files, uncompressed.
        data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(package)], capture_output=True, check=True)
        assert SECRET not in data.stdout, f"{package} holds the host file's content"


def _leftovers(cache: Path) -> list[str]:
    """Half-made entries a refused build could leave in the cache."""
    layers = cache / "layers"
    found = [p.name for p in layers.glob(".*")] if layers.exists() else []
    work = cache / "work"
    found += [p.name for p in work.iterdir()] if work.exists() else []
    return found


def _image_paths(packages: list[Path]) -> set[str]:
    """The image's paths in PACKAGES (flat or layer packages), relative to its root."""
    paths = set()
    for package in packages:
        for line in sh("dpkg-deb", "-c", package).stdout.splitlines():
            name = line.split(" ./", 1)[1].split(" -> ")[0].split(" link to ")[0].rstrip("/")
            if "/rootfs/" in name:
                paths.add(name.split("/rootfs/", 1)[1])
    return paths


@pytest.mark.parametrize(("layers", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_layers_one_verdict_nothing_of_the_host(
    ctr2svc: Cli,
    registry: Registry,
    sentinel: Path,
    caches: dict[str, Path],
    good: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    layers: Layers,
    words: str | None,
) -> None:
    name = request.node.callspec.id
    image = im.crafted_image(tmp_path / "layout", "1", [im.busybox_layer(), *layers(str(sentinel))])
    ref = registry.push(image, f"hostile/{name}", "1")
    verdicts: dict[str, str | set[str]] = {}
    for mode in MODES:
        out = tmp_path / f"out-{mode}"
        proc = _build(ctr2svc, ref, mode, caches[mode], out)
        if words is None:
            assert proc.returncode == 0, proc.stderr
            verdicts[mode] = _image_paths(sorted(out.glob("*.deb")))
        else:
            verdicts[mode] = _refused(proc, out, words)
        _untouched(sentinel, [out, caches[mode]])
        assert _leftovers(caches[mode]) == []
        # The cache is still good for the next build.
        again = _build(ctr2svc, good, mode, caches[mode], tmp_path / f"good-{mode}")
        assert again.returncode == 0, again.stderr
    # The same words from both (flat's layer packages are one: compare what the image holds).
    if words is None:
        flat, shared = verdicts["flat"], verdicts["shared"]
        assert isinstance(flat, set) and isinstance(shared, set)
        # A shared build packages each layer: what a layer above deletes is still in the one below.
        assert flat <= shared, flat ^ shared
        present, absent = EXPECT[name](str(sentinel)) if name in EXPECT else (set(), set())
        assert present <= flat and not absent & flat, flat
        if name == "deleted-then-made-again":
            # Shared, the new d hides the lower layer's d as flat's does: it is opaque.
            (new,) = caches["shared"].glob("layers/*/diff/d/new")
            assert os.getxattr(new.parent, "trusted.overlay.opaque") == b"y"
    else:
        assert verdicts["flat"] == verdicts["shared"]


def _process_user(package: Path, where: Path) -> tuple[int, int, list[str]]:
    """The container's uid, gid and environment in a built service package's config.json."""
    sh("dpkg-deb", "-x", package, where)
    (config,) = where.rglob("config.json")
    process = json.loads(config.read_text())["process"]
    return int(process["user"]["uid"]), int(process["user"]["gid"]), list(process["env"])


def test_the_users_are_the_images_own_not_the_build_hosts(
    ctr2svc: Cli, registry: Registry, caches: dict[str, Path], tmp_path: Path
) -> None:
    """An image whose /etc/passwd and /etc/group link to files of the build host: umoci (the image's
    User) and --user read the image's own files, found as the container finds them, never the host's."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_text("hostonly:x:4242:4242::/host-home:/bin/sh\n")
    (host / "group").write_text("hostonly:x:4242:\n")
    links = tar_bytes(
        [
            M("etc/", T.DIRTYPE),
            M("etc/passwd", T.SYMTYPE, link=str(host / "passwd")),
            M("etc/group", T.SYMTYPE, link=f"../../../../..{host}/group"),
            M("usr/lib/passwd", data=b"app:x:999:998::/data:/bin/sh\n"),
            M("usr/lib/group", data=b"app:x:998:\n"),
        ]
    )
    inside = tar_bytes(
        [
            M("etc/", T.DIRTYPE),
            M("etc/passwd", T.SYMTYPE, link="/usr/lib/passwd"),
            M("etc/group", T.SYMTYPE, link="../usr/lib/group"),
            M("usr/lib/passwd", data=b"app:x:999:998::/data:/bin/sh\n"),
            M("usr/lib/group", data=b"app:x:998:\n"),
        ]
    )
    layout = tmp_path / "layout"
    base = im.busybox_layer()
    hostile = registry.push(im.crafted_image(layout, "image", [base, links], user="hostonly"), "users/a", "1")
    flag = registry.push(im.crafted_image(layout, "flag", [base, links]), "users/b", "1")
    own = registry.push(im.crafted_image(layout, "own", [base, inside], user="app:app"), "users/c", "1")
    for mode in MODES:
        out = tmp_path / f"out-{mode}"
        proc = _build(ctr2svc, hostile, mode, caches[mode], out)
        assert proc.returncode == 3, proc.stderr
        assert 'the image\'s User "hostonly" is not in its /etc/passwd' in proc.stderr
        assert all_entries(out) == []
        proc = ctr2svc(
            "build", flag, "--layers", mode, "--user", "hostonly", "--cache-dir", caches[mode], "-o", out,
            check=False,
        )  # fmt: skip
        assert proc.returncode == 3 and "the image has no user 'hostonly' in /etc/passwd" in proc.stderr
        assert all_entries(out) == []
        # Links inside the image are the image's files, as in the container.
        assert _build(ctr2svc, own, mode, caches[mode], tmp_path / f"own-{mode}").returncode == 0
        (package,) = (tmp_path / f"own-{mode}").glob("c-svc_*.deb")
        uid, gid, env = _process_user(package, tmp_path / f"x-{mode}")
        assert (uid, gid) == (999, 998) and "HOME=/data" in env, (uid, gid, env)


def test_zstd_layers_are_read_shared_and_named_flat(
    ctr2svc: Cli, registry: Registry, caches: dict[str, Path], tmp_path: Path
) -> None:
    """umoci 0.4 cannot unpack zstd layers: flat says so in its own words and points to --layers
    shared, which reads them (before, flat called it "not a container image umoci can unpack")."""
    layer = RawLayer(tar_bytes([M("app/ok", data=b"ok\n")]), "zstd")
    image = im.crafted_image(tmp_path / "layout", "1", [im.busybox_layer(), layer])
    ref = registry.push(image, "zstd/app", "1")
    out = tmp_path / "flat"
    proc = _build(ctr2svc, ref, "flat", caches["flat"], out)
    assert proc.returncode == 3, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "the image's layers are zstd-compressed" in line and "--layers shared" in line, line
    assert "mediatype" not in line and all_entries(out) == []
    shared = _build(ctr2svc, ref, "shared", caches["shared"], tmp_path / "shared")
    assert shared.returncode == 0, shared.stderr
    assert "app/ok" in _image_paths(sorted((tmp_path / "shared").glob("*.deb")))
