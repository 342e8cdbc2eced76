"""The Alpine .apk: its streams and fields checked by a reader of our own (apk-tools is not reachable
from here), then its files put in place as apk would and its scripts and OpenRC init script run for
real with Debian's openrc (openrc-run, supervise-daemon) and runc: install, answer, respawn, upgrade,
stop with the image's STOPSIGNAL, deinstall.

What this cannot show: apk-tools itself (its database, owner lookup, file replacement). The files are
extracted as root, which is what apk does for owners the target has no user for; ownership.sh then puts
the image's owners back, as the package's scripts do on Alpine.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli, require
from tests.support import openrc
from tests.support.apk import Apk, read_apk, verify_apk
from tests.support.images import service_image, web_image
from tests.support.registry import Registry, free_port

from .helpers import leftovers, refuses, wait_for_http

pytestmark = pytest.mark.integration

NAME = "kvapk-svc"
INIT = Path("/etc/init.d") / NAME
LOG = Path("/var/log") / f"{NAME}.log"
DATA = Path("/var/lib") / NAME


@dataclass(frozen=True)
class Built:
    port: int
    apks: dict[str, Path]


@pytest.fixture(scope="module")
def built(registry: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("apk")
    port = free_port()
    apks = {}
    for version in ("1.0", "2.0"):
        source = service_image(
            work / "layout", version, port=port, version_text=f"kv {version}", stop_signal="SIGINT"
        )
        ref = registry.push(source, "itest/kvapk", version)
        proc = ctr2svc("build", ref, "--format", "apk", "--name", NAME, "-o", work / version)
        apks[version] = Path(proc.stdout.strip())
    return Built(port, apks)


def test_structure_and_fields(built: Built) -> None:
    path = built.apks["1.0"]
    assert path.name == f"{NAME}-1.0-r0.apk"
    assert verify_apk(path) == []
    apk = read_apk(path)
    assert apk.value("pkgname") == NAME
    assert apk.value("pkgver") == "1.0-r0"
    assert apk.value("arch") == "x86_64"
    assert {"runc", "openrc"} <= set(apk.pkginfo.get("depend", []))
    assert sorted(apk.scripts) == [".post-deinstall", ".post-install", ".post-upgrade", ".pre-deinstall"]
    init = apk.member(f"etc/init.d/{NAME}")
    assert init.mode & 0o777 == 0o755
    assert init.data is not None and init.data.startswith(b"#!/sbin/openrc-run\n")
    rootfs = f"opt/containers/{NAME}/1.0-r0/rootfs"
    assert apk.member(f"{rootfs}/tmp").mode & 0o7777 == 0o1777
    assert apk.member(f"{rootfs}/usr/bin/suidprobe").mode & 0o7777 == 0o4755
    assert apk.member(f"{rootfs}/var/run").type == "symlink"
    # OpenRC only: a systemd unit beside an init.d script would be the wrong integration.
    assert not [m for m in apk.members if "systemd" in m.name]


def install_files(apk: Apk) -> None:
    """What apk does with the data stream: every member in place under /."""
    with tarfile.open(fileobj=io.BytesIO(apk.data_stream), mode="r:gz") as tar:
        tar.extractall("/", filter="fully_trusted")  # noqa: S202 - our own package, extracted as apk would


def remove_files(apk: Apk) -> None:
    """What apk does on deinstall: the package's files, then its directories if they are empty."""
    for member in sorted(apk.members, key=lambda m: m.name, reverse=True):
        path = Path("/") / member.name
        if member.type == "dir":
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        elif path.is_symlink() or path.exists():
            path.unlink()


@pytest.fixture
def rc() -> Iterator[openrc.OpenRC]:
    missing = openrc.missing_requirements()
    require(not missing, f"OpenRC tools missing: {', '.join(missing)} (apt-get install openrc)")
    with openrc.OpenRC() as instance:
        yield instance
    subprocess.run(["runc", "--root", f"/run/{NAME}/runc", "delete", "--force", NAME], check=False)
    subprocess.run(["umount", "-l", f"/run/{NAME}/rootfs"], check=False, capture_output=True)
    subprocess.run(["rc-update", "-a", "del", NAME], check=False, capture_output=True)
    for path in (Path("/opt/containers") / NAME, Path(f"/usr/libexec/{NAME}"), DATA, Path(f"/run/{NAME}")):
        shutil.rmtree(path, ignore_errors=True)
    INIT.unlink(missing_ok=True)
    LOG.unlink(missing_ok=True)


def runlevels() -> list[str]:
    """The runlevels the service is in, as rc-update shows them."""
    shown = subprocess.run(["rc-update", "show", "-v"], capture_output=True, text=True, check=True).stdout
    for line in shown.splitlines():
        service, _, levels = line.partition("|")
        if service.strip() == NAME:
            return levels.split()
    return []


def script(rc: openrc.OpenRC, apk: Apk, name: str, *args: str) -> None:
    body = apk.scripts[name]
    rc.sh(f"sh -s {' '.join(args)} <<'CTR2SVC_SCRIPT'\n{body}\nCTR2SVC_SCRIPT", timeout=180)


def test_openrc_service_lifecycle(built: Built, rc: openrc.OpenRC) -> None:
    url = f"http://127.0.0.1:{built.port}"
    v1, v2 = read_apk(built.apks["1.0"]), read_apk(built.apks["2.0"])
    install_files(v1)
    script(rc, v1, ".post-install", "1.0-r0")
    # post-install restored the image's owners, made the data dirs, added the service to the default
    # runlevel and started it under supervise-daemon.
    assert (Path("/opt/containers") / NAME / "1.0-r0/rootfs/home/app/owned.txt").stat().st_uid == 999
    assert runlevels() == ["default"]
    assert rc.status(NAME) == "started"
    assert wait_for_http(f"{url}/").strip() == "kv 1.0"
    assert wait_for_http(f"{url}/cgi-bin/put?answer=42").strip() == "ok"
    assert (DATA / "volumes/data/answer").stat().st_uid == 999
    assert wait_for_http(f"{url}/cgi-bin/whoami").strip() == "999:999"
    assert "kv 1.0 serving on port" in LOG.read_text()

    # A crash: supervise-daemon runs the helper again, whose prepare clears runc's leftover state.
    child = rc.started_child(NAME)
    subprocess.run(["kill", "-9", str(child)], check=True)
    deadline = time.monotonic() + 30
    while rc.child_pid(NAME) in (None, child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rc.child_pid(NAME) not in (None, child)
    assert wait_for_http(f"{url}/cgi-bin/get?answer", deadline=30).strip() == "42"

    # Upgrade: apk swaps the files, then post-upgrade restarts the running service on the new image.
    install_files(v2)
    shutil.rmtree(Path("/opt/containers") / NAME / "1.0-r0")
    script(rc, v2, ".post-upgrade", "2.0-r0", "1.0-r0")
    assert wait_for_http(f"{url}/", deadline=30).strip() == "kv 2.0"
    assert wait_for_http(f"{url}/cgi-bin/get?answer").strip() == "42"

    # Deinstall: stopped with the image's STOPSIGNAL, out of the runlevel, runtime state gone, data kept.
    script(rc, v2, ".pre-deinstall", "2.0-r0")
    assert rc.status(NAME) == "stopped"
    assert "stopping on SIGINT" in LOG.read_text()
    assert refuses(f"{url}/")
    assert runlevels() == []
    assert subprocess.run(["mountpoint", "-q", f"/run/{NAME}/rootfs"], check=False).returncode != 0
    remove_files(v2)
    script(rc, v2, ".post-deinstall", "2.0-r0")
    assert not INIT.exists() and not (Path("/opt/containers") / NAME).exists()
    assert not Path(f"/run/{NAME}").exists()
    assert (DATA / "volumes/data/answer").read_text() == "42"


def test_deb_for_an_openrc_host(registry: Registry, ctr2svc: Cli, tmp_path: Path) -> None:
    """--init openrc with a .deb: the init script instead of the unit, and a dependency on openrc."""
    source = service_image(tmp_path / "layout", "1.0", port=free_port(), version_text="kv")
    ref = registry.push(source, "itest/kvdeb-openrc", "1.0")
    deb = Path(ctr2svc("build", ref, "--init", "openrc", "-o", tmp_path / "out").stdout.strip())
    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True).stdout
    assert (
        listing.rstrip().endswith("./etc/init.d/kvdeb-openrc-svc")
        or "./etc/init.d/kvdeb-openrc-svc\n" in listing
    )
    assert "systemd" not in listing
    depends = subprocess.run(["dpkg-deb", "-f", deb, "Depends"], capture_output=True, text=True).stdout
    assert {d.strip() for d in depends.split(",")} == {"runc", "openrc", "mount"}
    postinst = subprocess.run(["dpkg-deb", "-I", deb, "postinst"], capture_output=True, text=True).stdout
    # As dh_installinit does: update-rc.d enables (rc-update add, on an OpenRC host), invoke-rc.d starts.
    assert "update-rc.d kvdeb-openrc-svc defaults >/dev/null" in postinst and "systemctl" not in postinst
    assert 'invoke-rc.d kvdeb-openrc-svc "$action"' in postinst
    # Debian policy: the init script is a conffile.
    conffiles = subprocess.run(["dpkg-deb", "-I", deb, "conffiles"], capture_output=True, text=True).stdout
    assert "/etc/init.d/kvdeb-openrc-svc" in conffiles.splitlines()


def test_openrc_private_network(registry: Registry, ctr2svc: Cli, tmp_path: Path) -> None:
    """--network private under OpenRC (the same helper as under systemd): supervise-daemon's `run` gets
    the network prepare sets up, the published port answers, a respawn after kill -9 sets it up again,
    and the stop leaves no link, rule or namespace."""
    missing = openrc.missing_requirements()
    require(not missing, f"OpenRC tools missing: {', '.join(missing)} (apt-get install openrc)")
    require(
        any(Path(d, "netavark").exists() for d in ("/usr/lib/podman", "/usr/libexec/podman")),
        "netavark is not installed (apt install netavark aardvark-dns)",
    )
    name, port = "netapk-svc", free_port()
    ref = registry.push(web_image(tmp_path / "layout", "1.0", "private under openrc"), "itest/netapk", "1.0")
    built = ctr2svc(
        "build", ref, "--format", "apk", "--name", name, "--network", "private", "-p", f"{port}:80",
        "-o", tmp_path / "out",
    )  # fmt: skip
    apk = read_apk(Path(built.stdout.strip()))
    assert {"netavark", "aardvark-dns", "iptables", "iproute2"} <= set(apk.pkginfo.get("depend", []))
    url = f"http://127.0.0.1:{port}/"
    with openrc.OpenRC() as rc:
        try:
            install_files(apk)
            script(rc, apk, ".post-install", "1.0-r0")
            assert rc.status(name) == "started"
            assert wait_for_http(url).strip() == "private under openrc"
            # The namespace is in OpenRC's mount namespace (where `ip netns add` ran), the veth on the host.
            assert f"ctr2svc-{name}" in rc.sh("ip netns list").stdout
            assert any(x.startswith("link ") for x in leftovers())
            # Its own port 9090 is not published.
            assert refuses("http://127.0.0.1:9090/")

            child = rc.started_child(name)
            subprocess.run(["kill", "-9", str(child)], check=True)
            deadline = time.monotonic() + 30
            while rc.child_pid(name) in (None, child) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert rc.child_pid(name) not in (None, child)
            assert wait_for_http(url, deadline=30).strip() == "private under openrc"

            script(rc, apk, ".pre-deinstall", "1.0-r0")
            assert rc.status(name) == "stopped"
            assert refuses(url)
            assert f"ctr2svc-{name}" not in rc.sh("ip netns list").stdout
            assert leftovers() == []
        finally:
            rc.run(name, "stop", check=False)
            remove_files(apk)
            subprocess.run(["rc-update", "-a", "del", name], check=False, capture_output=True)
            for path in (Path(f"/var/lib/{name}"), Path(f"/run/{name}"), Path(f"/usr/libexec/{name}")):
                shutil.rmtree(path, ignore_errors=True)
