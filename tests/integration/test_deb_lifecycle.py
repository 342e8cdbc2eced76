"""Registry -> ctr2svc build -> the .deb's contents -> dpkg -i on this machine -> the installed bundle
run with runc exactly as the unit runs it -> upgrade -> remove -> purge.

systemd is not PID 1 on this machine, so the unit's commands are run here by hand, in the unit's order
(`service prepare`, `service start`, `service stop` + `cleanup`); tests/vm runs the same packages under
a real systemd.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.images import service_image
from tests.support.registry import Registry, free_port

from .helpers import deb_listing, dpkg_installed, purge, refuses, sh, wait_for_http

pytestmark = pytest.mark.integration

NAME = "webapp-svc"
IMAGE_DIR = Path("/opt/containers") / NAME
DATA = Path("/var/lib") / NAME
HELPER = Path("/usr/libexec") / NAME / "service"


@dataclass(frozen=True)
class Built:
    port: int
    refs: dict[str, str]
    debs: dict[str, Path]
    digests: dict[str, str]


@pytest.fixture(scope="module")
def built(registry: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    work = tmp_path_factory.mktemp("webapp")
    port = free_port()
    refs, debs, digests = {}, {}, {}
    for version in ("1.0", "2.0"):
        source = service_image(work / "layout", version, port=port, version_text=f"webapp {version}")
        refs[version] = registry.push(source, "itest/webapp", version)
        inspect = sh("skopeo", "inspect", "--tls-verify=false", f"docker://{refs[version]}")
        digests[version] = json.loads(inspect.stdout)["Digest"]
        out = work / f"out-{version}"
        # No --no-tls-verify: a registry on loopback is plain HTTP by default, as with Docker.
        proc = ctr2svc("build", refs[version], "--format", "deb", "-o", out)
        debs[version] = Path(proc.stdout.strip())
    purge(NAME)
    yield Built(port, refs, debs, digests)
    if HELPER.exists():
        sh(HELPER, "stop", check=False)
    purge(NAME)


def test_package_metadata(built: Built) -> None:
    deb = built.debs["1.0"]
    assert deb.name == f"{NAME}_1.0_amd64.deb"
    assert [p.name for p in deb.parent.iterdir()] == [deb.name]
    fields = {
        key: sh("dpkg-deb", "-f", deb, key).stdout.strip()
        for key in (
            "Package",
            "Version",
            "Architecture",
            "Depends",
            "X-Ctr2svc-Image-Digest",
            "X-Ctr2svc-Image",
        )
    }
    assert fields["Package"] == NAME
    assert fields["Version"] == "1.0"
    assert fields["Depends"] == "runc, mount"
    # Pinned to the digest the registry serves, in the metadata and the description.
    assert fields["X-Ctr2svc-Image-Digest"] == built.digests["1.0"]
    assert fields["X-Ctr2svc-Image"] == f"{built.refs['1.0'].rsplit(':', 1)[0]}@{built.digests['1.0']}"
    assert built.digests["1.0"] in sh("dpkg-deb", "-f", deb, "Description").stdout


def test_package_contents_keep_the_image_faithful(built: Built) -> None:
    listing = deb_listing(built.debs["1.0"])
    root = f"opt/containers/{NAME}/1.0/rootfs"
    assert listing[f"{root}/tmp"].mode == "drwxrwxrwt"
    assert listing[f"{root}/usr/bin/suidprobe"].mode == "-rwsr-xr-x"
    assert listing[f"{root}/var/spool/app"].mode == "drwxrws---"
    assert listing[f"{root}/var/run"].link == "../run"
    # A hard link travels as one (bin/busybox sorts first and keeps the content).
    assert listing[f"{root}/bin/sh"].hardlink == f"{root}/bin/busybox"
    # Owners are restored numerically after install (the target has no user 999): the archive is root's.
    assert {e.owner for e in listing.values()} == {"root/root"}
    for path in (
        "lib/systemd/system/webapp-svc.service",
        "usr/libexec/webapp-svc/service",
        f"opt/containers/{NAME}/1.0/config.json",
        f"opt/containers/{NAME}/1.0/ownership.sh",
    ):
        assert path in listing, path
    # Nothing of the runtime state is shipped.
    assert not any(p.startswith(("var/lib", "run/")) for p in listing)


def test_second_build_uses_the_cache(built: Built, ctr2svc: Cli, tmp_path: Path) -> None:
    proc = ctr2svc("--debug", "build", built.refs["1.0"], "-o", tmp_path)
    assert "using cached image" in proc.stderr
    assert " copy " not in proc.stderr  # no skopeo copy: nothing downloaded again
    assert Path(proc.stdout.strip()).name == built.debs["1.0"].name


SERVICE_LOG = Path(f"/tmp/{NAME}-journal.log")


def start_service() -> None:
    # What the unit does: ExecStartPre, then ExecStart. Like the journal, a file (not a pipe) takes the
    # container's output: runc --detach hands its stdio to the container, a pipe would never close.
    sh(HELPER, "prepare")
    with SERVICE_LOG.open("ab") as log:
        subprocess.run([str(HELPER), "start"], stdout=log, stderr=log, check=True, timeout=60)


def stop_service() -> str:
    return sh(HELPER, "stop").stderr


def test_install_run_upgrade_remove_purge(built: Built) -> None:
    url = f"http://127.0.0.1:{built.port}"
    sh("dpkg", "-i", built.debs["1.0"])
    assert dpkg_installed(NAME)

    rootfs = IMAGE_DIR / "1.0" / "rootfs"
    owned = (rootfs / "home/app/owned.txt").stat()
    assert (owned.st_uid, owned.st_gid, stat.S_IMODE(owned.st_mode)) == (999, 999, 0o640)
    spool = (rootfs / "var/spool/app").stat()
    assert (spool.st_uid, stat.S_IMODE(spool.st_mode)) == (999, 0o2770)
    assert stat.S_IMODE((rootfs / "usr/bin/suidprobe").stat().st_mode) == 0o4755
    assert stat.S_IMODE((rootfs / "tmp").stat().st_mode) == 0o1777
    assert (rootfs / "bin/sh").stat().st_ino == (rootfs / "bin/busybox").stat().st_ino
    assert sh("dpkg", "-V", NAME).stdout == ""  # installed files match the package's checksums
    volume = DATA / "volumes/data"
    assert volume.is_dir()

    if shutil.which("systemd-analyze"):
        verify = sh("systemd-analyze", "verify", f"/lib/systemd/system/{NAME}.service", check=False)
        problems = [line for line in verify.stderr.splitlines() if NAME in line or "Unknown" in line]
        assert verify.returncode == 0 and not problems, verify.stderr

    start_service()
    try:
        assert wait_for_http(f"{url}/").strip() == "webapp 1.0"
        # The entrypoint ran as root, chowned its data dir, then dropped to the image's user.
        assert wait_for_http(f"{url}/cgi-bin/whoami").strip() == "999:999"
        assert (volume / ".entrypoint-ran").exists()
        assert wait_for_http(f"{url}/cgi-bin/put?color=blue").strip() != ""
        assert (volume / "color").read_text().strip() == "blue"
        assert (volume / "color").stat().st_uid == 999
        env = wait_for_http(f"{url}/cgi-bin/env")
        assert "APP_VERSION=webapp 1.0" in env
        # Processes run inside a mount namespace whose root is the overlay, never the installed tree.
        assert not (rootfs / "data/color").exists()
    finally:
        stopped = stop_service()
    assert "killing it" not in stopped, stopped  # it stopped on SIGTERM, within the timeout
    assert refuses(f"{url}/")
    assert not os.path.ismount(f"/run/{NAME}/rootfs")

    # Upgrade: the new version unpacks beside the old one, which dpkg then removes; data stays.
    sh("dpkg", "-i", built.debs["2.0"])
    assert (IMAGE_DIR / "2.0").is_dir() and not (IMAGE_DIR / "1.0").exists()
    start_service()
    try:
        assert wait_for_http(f"{url}/").strip() == "webapp 2.0"
        assert wait_for_http(f"{url}/cgi-bin/get?color").strip() == "blue"
    finally:
        stop_service()

    # Downgrade works the same way.
    sh("dpkg", "-i", built.debs["1.0"])
    start_service()
    try:
        assert wait_for_http(f"{url}/").strip() == "webapp 1.0"
        assert wait_for_http(f"{url}/cgi-bin/get?color").strip() == "blue"
    finally:
        stop_service()

    # Enabled by deb-systemd-helper, which works with no systemd running.
    wants = Path(f"/etc/systemd/system/multi-user.target.wants/{NAME}.service")
    assert wants.is_symlink()

    # Remove keeps the data, purge deletes it; nothing of the package is left behind.
    sh("dpkg", "--remove", NAME)
    assert (volume / "color").read_text().strip() == "blue"
    assert not IMAGE_DIR.exists() and not HELPER.exists()
    assert not wants.is_symlink()  # disabled
    sh("dpkg", "--purge", NAME)
    # Nor any record of deb-systemd-helper's.
    left = [str(p) for d in ("/etc/systemd", "/var/lib/systemd") for p in Path(d).rglob(f"*{NAME}*")]
    assert left == []
    assert not DATA.exists()
    assert not Path(f"/run/{NAME}").exists()
    assert sh("dpkg-query", "-W", NAME, check=False).returncode != 0


def test_crash_leftovers_do_not_block_the_next_start(built: Built) -> None:
    url = f"http://127.0.0.1:{built.port}"
    sh("dpkg", "-i", built.debs["1.0"])
    try:
        start_service()
        pid = int(Path(f"/run/{NAME}/pid").read_text())
        # A crash: the container dies, its runc state and the overlay mount stay behind.
        os.kill(pid, 9)
        assert re.search(r"stopped|^$", sh(HELPER, "status").stdout.strip() or "")
        assert os.path.ismount(f"/run/{NAME}/rootfs")
        start_service()
        assert wait_for_http(f"{url}/").strip() == "webapp 1.0"
    finally:
        stop_service()
        purge(NAME)
