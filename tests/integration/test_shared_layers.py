"""--layers shared on this host: an image's layers become packages, installed with dpkg and mounted as
overlayfs lower layers by the service helper, run with runc as the unit runs it.

What is checked is what the issue asks: deletions and opaque directories of later layers are honoured
in the running container, owners, setuid bits and hard links inside each layer are the image's, two
images on one base share its package, a rebuild after a top-layer change packs only that layer, tall
images are merged below the lower-layer limit, and the same layer gives the same bytes from any cache.
systemd is not PID 1 here: tests/vm runs the same packages from a repository under a real systemd.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support import images as im

from .helpers import deb_listing, dpkg_installed, purge, sh

pytestmark = pytest.mark.integration

LAYERS = Path("/opt/containers/layers")


def _base(root: Path) -> None:
    im.install_busybox(root, symlinks=["ls", "cat", "stat", "id", "sleep", "test", "readlink"])
    im.put_file(root, "etc/passwd", im.ETC_PASSWD)
    im.put_file(root, "etc/group", im.ETC_GROUP)
    im.put_file(root, "etc/gone", "deleted by the next layer\n")
    im.put_file(root, "etc/replaced", "a file here, a directory above\n")
    im.put_dir(root, "srv/hidden")
    im.put_file(root, "srv/hidden/old1", "hidden by an opaque directory above\n")
    im.put_file(root, "srv/hidden/old2", "hidden by an opaque directory above\n")
    im.put_dir(root, "data", uid=im.APP_UID, gid=im.APP_GID, mode=0o750)
    im.put_file(root, "data/owned", "x\n", uid=im.APP_UID, gid=im.APP_GID, mode=0o640)
    im.put_file(root, "usr/bin/su-ish", "#!/bin/sh\n", mode=0o4755)
    im.put_file(root, "usr/share/first", "one file, two names\n")
    os.link(root / "usr/share/first", root / "usr/share/second")


def _middle(root: Path) -> None:
    (root / "etc/gone").unlink()
    (root / "etc/replaced").unlink()
    im.put_file(root, "etc/replaced/inner", "a directory now\n")


def _opaque_tar(path: Path) -> Path:
    """A layer umoci would never write: srv/hidden made opaque, with one new file."""
    with tarfile.open(path, "w") as tar:
        for name, data in (("srv/hidden/.wh..wh..opq", b""), ("srv/hidden/new", b"only this\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return path


def _top(text: str) -> Callable[[Path], None]:
    def populate(root: Path) -> None:
        im.put_file(root, "app/version", f"{text}\n")

    return populate


def _image(
    layout: Path, tag: str, steps: list[im.LayerStep], base: str | None = None, volumes: tuple[str, ...] = ()
) -> str:
    # SIGKILL: sleep as PID 1 ignores SIGTERM, and the stop is not what is tested here.
    return im.layered_image(
        layout,
        tag,
        steps,
        entrypoint=["/bin/sleep"],
        cmd=["3600"],
        stop_signal="SIGKILL",
        base=base,
        volumes=volumes,
    )


def _build(cli: Cli, ref: str, out: Path, *extra: str) -> dict[str, object]:
    proc = cli("build", ref, "--layers", "shared", "-o", out, "--json", *extra)
    summary: dict[str, object] = json.loads(proc.stdout)
    return summary


def _layers(summary: dict[str, object]) -> list[dict[str, object]]:
    layers = summary["layers"]
    assert isinstance(layers, list)
    return layers


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def installed() -> Iterator[list[str]]:
    """Package names the test installs; purged (with their layers) afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        helper = Path("/usr/libexec") / name / "service"
        if helper.exists():
            sh(helper, "stop", check=False)
        purge(name)
    layers = sh("dpkg-query", "-W", "-f", "${Package}\n", "ctr2svc-layer-*", check=False).stdout.split()
    if layers:
        sh("dpkg", "--purge", *layers, check=False)


def _install(summary: dict[str, object]) -> None:
    files = [str(summary["package"]), *(str(x["package"]) for x in _layers(summary))]
    sh("dpkg", "-i", *files)


def _run(name: str) -> Callable[..., str]:
    helper = Path("/usr/libexec") / name / "service"
    sh(helper, "prepare")
    # The container keeps its output: a pipe here would never reach EOF.
    subprocess.run([str(helper), "start"], check=True, timeout=60, stdout=subprocess.DEVNULL)

    def inside(*argv: str) -> str:
        return sh("runc", "--root", f"/run/{name}/runc", "exec", name, *argv).stdout

    return inside


def test_later_layers_delete_replace_and_hide_in_the_running_container(
    ctr2svc: Cli, tmp_path: Path, installed: list[str]
) -> None:
    ref = _image(
        tmp_path / "layout",
        "1",
        [_base, _middle, _opaque_tar(tmp_path / "opaque.tar"), _top("v1")],
    )
    summary = _build(ctr2svc, ref, tmp_path / "out", "--name", "layered-svc")
    layers = _layers(summary)
    assert len(layers) == 4 and all(x["built"] for x in layers)
    service_files = deb_listing(Path(str(summary["package"])))
    # The service package holds no image files: they are in the layer packages.
    assert not any("/rootfs/" in path for path in service_files)
    control = sh("dpkg-deb", "-f", str(summary["package"]), "Depends").stdout
    assert all(str(x["name"]) in control for x in layers)

    def inspected() -> list[dict[str, object]]:
        shown: list[dict[str, object]] = json.loads(ctr2svc("inspect", ref, "--json").stdout)["layers"]
        return shown

    # inspect: the four layers, their sizes, built (in the layer cache) and not installed yet.
    before = inspected()
    assert [x["package"] for x in before] == [x["name"] for x in layers]
    assert all(x["built"] and x["unpacked"] is not None and not x["installed"] for x in before)
    installed.append("layered-svc")
    _install(summary)
    assert all(x["installed"] for x in inspected())
    base, middle, opaque, _ = (LAYERS / str(x["name"]).removeprefix("ctr2svc-layer-") for x in layers)
    # What the packages cannot carry is there, in overlayfs' form.
    gone = (middle / "rootfs/etc/gone").lstat()
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(opaque / "rootfs/srv/hidden", "trusted.overlay.opaque") == b"y"
    assert (base / "rootfs/data/owned").stat().st_uid == im.APP_UID
    assert (base / "rootfs/usr/bin/su-ish").stat().st_mode & 0o7777 == 0o4755
    assert (base / "rootfs/usr/share/first").stat().st_ino == (base / "rootfs/usr/share/second").stat().st_ino

    inside = _run("layered-svc")
    assert "gone" not in inside("ls", "/etc").split()
    assert inside("ls", "/etc/replaced").split() == ["inner"]
    assert inside("ls", "-A", "/srv/hidden").split() == ["new"]
    assert inside("cat", "/app/version").strip() == "v1"
    stats = inside("stat", "-c", "%u:%g %a %i", "/data/owned", "/usr/bin/su-ish", "/usr/share/first",
                   "/usr/share/second").splitlines()  # fmt: skip
    assert stats[0].split()[:2] == [f"{im.APP_UID}:{im.APP_GID}", "640"]
    assert stats[1].split()[:2] == ["0:0", "4755"]
    assert stats[2].split()[2] == stats[3].split()[2], "the hard link is one file in the container"

    sh(Path("/usr/libexec/layered-svc/service"), "stop")
    layer_names = [str(x["name"]) for x in layers]
    sh("dpkg", "--purge", "layered-svc", *layer_names)
    assert not any(dpkg_installed(n) for n in layer_names)
    left = [d for d in (base, middle, opaque) if d.exists()]
    assert not left, f"whiteouts or layer directories were left behind: {left}"


def test_two_images_share_their_base_and_a_rebuild_packs_only_the_new_layer(
    ctr2svc: Cli, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    out = tmp_path / "out"
    # Both FROM one base image: the same base layer, byte for byte.
    _image(layout, "base", [_base])
    first = _build(ctr2svc, _image(layout, "a", [_top("a")], "base"), out, "--name", "share-a")
    second = _build(ctr2svc, _image(layout, "b", [_top("b")], "base"), out, "--name", "share-b")
    base_a, top_a = _layers(first)
    base_b, top_b = _layers(second)
    assert base_a["package"] == base_b["package"], "one package for the shared base"
    assert base_b["built"] is False and top_b["built"] is True
    assert top_a["name"] != top_b["name"]

    # The same image with only its top layer changed: one layer package is built, the service's.
    again = _build(ctr2svc, _image(layout, "a", [_top("a, changed")], "base"), out, "--name", "share-a")
    base_again, top_again = _layers(again)
    assert (base_again["built"], top_again["built"]) == (False, True)
    assert base_again["package"] == base_a["package"]
    # The install line names every file the service needs, and marks the layers as dependencies.
    install = str(again["install"])
    assert install.startswith("apt install ") and str(top_again["package"]) in install
    assert f"apt-mark auto {base_again['name']} {top_again['name']}" in install or (
        f"apt-mark auto {top_again['name']} {base_again['name']}" in install
    )


def test_the_same_layer_gives_the_same_bytes_from_any_cache(tmp_path: Path) -> None:
    ref = _image(tmp_path / "layout", "1", [_base, _top("x")])
    paths = []
    for n in (1, 2):
        summary = _build(Cli(tmp_path / f"cache{n}"), ref, tmp_path / f"out{n}", "--name", f"repro{n}-svc")
        paths.append([Path(str(x["package"])) for x in _layers(summary)])
    # A repository refuses two different files of one name and version: a layer package built by
    # another image, machine or day must be the same file.
    for one, two in zip(*paths, strict=True):
        assert one.name == two.name and _sha256(one) == _sha256(two)


def test_tall_images_merge_their_bottom_layers(
    tmp_path: Path, installed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTR2SVC_MAX_LAYERS", "3")

    def layer(n: int) -> Callable[[Path], None]:
        def populate(root: Path) -> None:
            im.put_file(root, f"layer{n}", f"{n}\n")
            if n == 2:
                (root / "etc/gone").unlink()

        return populate

    ref = _image(
        tmp_path / "layout", "1", [_base, layer(2), layer(3), layer(4), layer(5)], volumes=("/data",)
    )
    summary = _build(Cli(tmp_path / "cache"), ref, tmp_path / "out", "--name", "tall-svc")
    layers = _layers(summary)
    # Five layers, at most three lower layers: the bottom three become one package.
    assert len(layers) == 3
    merged = Path(str(layers[0]["package"]))
    listing = deb_listing(merged)
    short = str(layers[0]["name"]).removeprefix("ctr2svc-layer-")
    root = f"opt/containers/layers/{short}/rootfs"
    assert f"{root}/layer2" in listing and f"{root}/layer3" in listing and f"{root}/layer4" not in listing
    # Merged, the deletion is carried out: no file, no whiteout.
    assert f"{root}/etc/gone" not in listing

    installed.append("tall-svc")
    _install(summary)
    info = json.loads((LAYERS / short / "layer.json").read_text())
    assert len(info["diff_ids"]) == 3
    inside = _run("tall-svc")
    assert [inside("cat", f"/layer{n}").strip() for n in (2, 3, 4, 5)] == ["2", "3", "4", "5"]
    assert "gone" not in inside("ls", "/etc").split()
    # A new volume is seeded from the mounted layers, owners and all, as from a flat root.
    seeded = Path("/var/lib/tall-svc/volumes/data")
    assert (seeded / "owned").read_text() == "x\n" and seeded.stat().st_uid == im.APP_UID


def _bad_layer(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w") as tar:
        tar.addfile(member, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    ("member", "words"),
    [
        (tarfile.TarInfo("../escape"), "with '..', which may lead outside the image"),
        (tarfile.TarInfo("usr/share/elsewhere"), "hard-links /usr/share/elsewhere to /usr/share/first"),
    ],
    ids=["dot-dot", "hardlink-to-a-lower-layer"],
)
def test_a_malformed_layer_is_refused_and_nothing_is_written(
    ctr2svc: Cli, tmp_path: Path, member: tarfile.TarInfo, words: str
) -> None:
    if words.startswith("hard-links"):
        member.type, member.linkname = tarfile.LNKTYPE, "usr/share/first"
    layer = _bad_layer(tmp_path / "bad.tar", member)
    ref = _image(tmp_path / "layout", "1", [_base, layer])
    out = tmp_path / "out"
    proc = ctr2svc("build", ref, "--layers", "shared", "-o", out, check=False)
    assert proc.returncode == 3, proc.stderr
    assert words in proc.stderr and "hint:" in proc.stderr
    assert len(proc.stderr.strip().splitlines()[-1]) < 400
    assert not out.exists() or not any(out.iterdir())


def test_update_publishes_layers_once_and_prunes_them_with_the_last_package_needing_them(
    ctr2svc: Cli, tmp_path: Path
) -> None:
    base = _image(tmp_path / "base", "base", [_base])
    for tag in ("one", "two"):
        # FROM one base: its blobs, byte for byte, in each image's layout.
        sh("skopeo", "copy", "--quiet", base, f"oci:{tmp_path / tag}:base")
    repo = tmp_path / "repo"
    project = tmp_path / "ctr2svc.toml"
    entries = "".join(
        f'[[image]]\nref = "oci:{tmp_path / tag}:1.0"\nname = "{tag}-svc"\n' for tag in ("one", "two")
    )
    project.write_text(f'output = "dist"\n[repo]\npath = "{repo}"\nkeep = 1\n\n{entries}')

    def published() -> set[str]:
        return {p.name for p in (repo / "deb").glob("*.deb")}

    def built(tag: str, text: str) -> None:
        _image(tmp_path / tag, "1.0", [_top(text)], "base")

    built("one", "one 1")
    built("two", "two 1")
    ctr2svc("update", "-c", project)
    first = published()
    # Shared by default in a project: two services, one base layer package, one top layer each.
    layer_files = sorted(n for n in first if n.startswith("ctr2svc-layer-"))
    assert len(layer_files) == 3 and {"one-svc_1.0_amd64.deb", "two-svc_1.0_amd64.deb"} <= first
    index = (repo / "deb" / "Packages").read_text()
    assert index.count("Package: ctr2svc-layer-") == 3

    # Only image one's top layer changes: one new service package, one new layer package; the old
    # top layer goes with the old package (keep = 1), the base stays.
    built("one", "one 2")
    out = ctr2svc("update", "-c", project).stdout.split()
    second = published()
    new = second - first
    assert len(new) == 2 and "one-svc_1.0-1_amd64.deb" in new, sorted(new)
    gone = first - second
    assert len(gone) == 2 and "one-svc_1.0_amd64.deb" in gone, sorted(gone)
    assert len([n for n in second if n.startswith("ctr2svc-layer-")]) == 3
    assert any(Path(p).name == "one-svc_1.0-1_amd64.deb" for p in out)

    # --rebuild: every image again as the next release; no layer package is new.
    ctr2svc("update", "-c", project, "--rebuild")
    third = published()
    assert third - second == {"one-svc_1.0-2_amd64.deb", "two-svc_1.0-1_amd64.deb"}
    assert {n for n in third if n.startswith("ctr2svc-layer-")} == {
        n for n in second if n.startswith("ctr2svc-layer-")
    }


def test_a_flat_package_upgrades_to_a_shared_one_and_keeps_its_data(
    ctr2svc: Cli, tmp_path: Path, installed: list[str]
) -> None:
    """A fleet that used flat packages gets shared ones from its next update (the project default):
    the upgrade must switch the root to the layers and keep the data."""
    name = "switch-svc"
    installed.append(name)
    layout = tmp_path / "layout"
    flat = im.layered_image(layout, "1.0", [_base, _top("flat")], entrypoint=["/bin/sleep"], cmd=["3600"],
                            stop_signal="SIGKILL", volumes=["/data"])  # fmt: skip
    proc = ctr2svc("build", flat, "--name", name, "-o", tmp_path / "flat")
    sh("dpkg", "-i", proc.stdout.strip())
    inside = _run(name)
    assert inside("cat", "/app/version").strip() == "flat"
    (Path("/var/lib") / name / "volumes/data/kept").write_text("data\n")

    shared = im.layered_image(layout, "1.1", [_base, _top("shared")], entrypoint=["/bin/sleep"],
                              cmd=["3600"], stop_signal="SIGKILL", volumes=["/data"])  # fmt: skip
    summary = _build(ctr2svc, shared, tmp_path / "shared", "--name", name)
    sh(Path("/usr/libexec") / name / "service", "stop")
    _install(summary)
    assert not (Path("/opt/containers") / name / "1.0").exists(), "the flat root went with the old version"
    inside = _run(name)
    assert inside("cat", "/app/version").strip() == "shared"
    assert inside("cat", "/data/kept").strip() == "data"
    assert inside("cat", "/data/owned").strip() == "x", "the volume was seeded from the image before"


def test_a_layer_repeated_in_the_stack_mounts_once(
    ctr2svc: Cli, tmp_path: Path, installed: list[str]
) -> None:
    """The same layer twice (old builders wrote an identical empty layer for many steps): overlayfs
    refuses a directory twice among its lower layers, so the stack keeps its highest copy."""
    again = tmp_path / "again.tar"
    with tarfile.open(again, "w") as tar:
        info = tarfile.TarInfo("srv/again")
        info.size, info.mtime = 5, 1_700_000_000
        tar.addfile(info, io.BytesIO(b"again"))
    ref = _image(tmp_path / "layout", "1", [_base, again, _top("between"), again])
    summary = _build(ctr2svc, ref, tmp_path / "out", "--name", "again-svc")
    names = [str(x["name"]) for x in _layers(summary)]
    assert len(names) == 3 and len(set(names)) == 3
    installed.append("again-svc")
    _install(summary)
    inside = _run("again-svc")
    assert inside("cat", "/srv/again") == "again"
    assert inside("cat", "/app/version").strip() == "between"
