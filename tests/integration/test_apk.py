"""The Alpine .apk: its streams and fields checked by a reader of our own, then its files put in place
as apk would and its scripts and OpenRC init script run for real with Debian's openrc (openrc-run,
supervise-daemon) and runc: install, answer, the log rotated by the package's logrotate file while
the service runs, upgrade, stop with the image's STOPSIGNAL, deinstall; and a respawn after the
container's init is killed (a new container, started by supervise-daemon). The files are extracted
as root, which is what apk does for owners the target has no user for; ownership.sh then puts the
image's owners back, as the package's scripts do on Alpine.

Then the repository `ctr2svc repo add` writes, read over HTTP by the real apk-tools 2.14 (built from
tests/vendor/apk-tools, as test_shared_formats.py does) installing into a root of its own: the signed
index, dependencies resolved from it, install and upgrade, and what apk refuses. The package installed
by apk-tools 2.14 and 3.0 (both built from tests/vendor/apk-tools) is what `apk audit` expects, its
symlinks included, and `apk info` shows its license.
"""

from __future__ import annotations

import io
import json
import os
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
from tests.support.webserver import serve

from .helpers import leftovers, refuses, sh, wait_for_http
from .test_shared_formats import APK_TOOLS_SOURCE, apk_tool, make_root, stub_packages  # noqa: F401 - apk_tool: a fixture

pytestmark = pytest.mark.integration

NAME = "kvapk-svc"
INIT = Path("/etc/init.d") / NAME
LOG = Path("/var/log") / f"{NAME}.log"
ROTATED = Path("/var/log") / f"{NAME}.log.1"
LOGROTATE = Path("/etc/logrotate.d") / NAME
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
    # Every file's and symlink's checksum among the rest (a symlink's is over its target, as apk's).
    assert verify_apk(path) == []
    apk = read_apk(path)
    assert apk.value("pkgname") == NAME
    assert apk.value("pkgver") == "1.0-r0"
    assert apk.value("arch") == "x86_64"
    # The image has no org.opencontainers.image.licenses label: SPDX's word for it, as the .rpm's.
    assert apk.value("license") == "NOASSERTION"
    assert {"runc", "openrc"} <= set(apk.pkginfo.get("depend", []))
    scripts = [".post-deinstall", ".post-install", ".post-upgrade", ".pre-deinstall", ".pre-upgrade"]
    assert sorted(apk.scripts) == scripts
    init = apk.member(f"etc/init.d/{NAME}")
    assert init.mode & 0o777 == 0o755
    assert init.data is not None and init.data.startswith(b"#!/sbin/openrc-run\n")
    rootfs = f"opt/containers/{NAME}/1.0-r0/rootfs"
    assert apk.member(f"{rootfs}/tmp").mode & 0o7777 == 0o1777
    assert apk.member(f"{rootfs}/usr/bin/suidprobe").mode & 0o7777 == 0o4755
    assert apk.member(f"{rootfs}/var/run").type == "symlink"
    # OpenRC only: a systemd unit beside an init.d script would be the wrong integration.
    assert not [m for m in apk.members if "systemd" in m.name]
    # The init script's log file, rotated by logrotate.
    logrotate = apk.member(f"etc/logrotate.d/{NAME}")
    assert logrotate.mode & 0o777 == 0o644
    assert logrotate.data is not None and f"/var/log/{NAME}.log {{".encode() in logrotate.data


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
    for leftover in (INIT, LOG, ROTATED, LOGROTATE):
        leftover.unlink(missing_ok=True)


def runlevels() -> list[str]:
    """The runlevels the service is in, as rc-update shows them."""
    shown = subprocess.run(["rc-update", "show", "-v"], capture_output=True, text=True, check=True).stdout
    for line in shown.splitlines():
        service, _, levels = line.partition("|")
        if service.strip() == NAME:
            return levels.split()
    return []


def script(rc: openrc.OpenRC, apk: Apk, name: str, *args: str) -> str:
    """Runs the package script NAME as apk would; returns what it printed."""
    body = apk.scripts[name]
    return rc.sh(f"sh -s {' '.join(args)} <<'CTR2SVC_SCRIPT'\n{body}\nCTR2SVC_SCRIPT", timeout=180).stdout


def start_as_printed(rc: openrc.OpenRC, printed: str) -> None:
    """As an Alpine admin does after an install: the commands post-install printed."""
    command = printed.rsplit("to run it now and at boot: ", 1)[-1].strip()
    assert command == f"rc-update add {NAME} default && rc-service {NAME} start", printed
    rc.sh(command, timeout=180)


def test_openrc_service_lifecycle(built: Built, rc: openrc.OpenRC, tmp_path: Path) -> None:
    logrotate = shutil.which("logrotate")
    require(logrotate is not None, "logrotate is not installed (apt-get install logrotate)")
    assert logrotate is not None
    url = f"http://127.0.0.1:{built.port}"
    v1, v2 = read_apk(built.apks["1.0"]), read_apk(built.apks["2.0"])
    install_files(v1)
    printed = script(rc, v1, ".post-install", "1.0-r0")
    # post-install restored the image's owners and made the data dirs; as Alpine's packages do, it left
    # the service out of the runlevels and stopped, and said how to run it.
    assert (Path("/opt/containers") / NAME / "1.0-r0/rootfs/home/app/owned.txt").stat().st_uid == 999
    assert runlevels() == [] and rc.status(NAME) == "stopped"
    start_as_printed(rc, printed)
    assert runlevels() == ["default"]
    assert rc.status(NAME) == "started"
    assert wait_for_http(f"{url}/").strip() == "kv 1.0"
    assert wait_for_http(f"{url}/cgi-bin/put?answer=42").strip() == "ok"
    assert (DATA / "volumes/data/answer").stat().st_uid == 999
    assert wait_for_http(f"{url}/cgi-bin/whoami").strip() == "999:999"
    assert "kv 1.0 serving on port" in LOG.read_text()

    # logrotate with the package's configuration: the log moves to NAME.log.1 (copied, then emptied)
    # and the running container, whose output supervise-daemon opened for appending, goes on writing
    # at the start of the emptied file, with no hole.
    sh(logrotate, "--force", "--state", tmp_path / "logrotate.state", LOGROTATE)
    assert "kv 1.0 serving on port" in ROTATED.read_text()
    assert wait_for_http(f"{url}/").strip() == "kv 1.0"  # httpd -v logs a static file's response
    deadline = time.monotonic() + 10
    while b"response:200" not in LOG.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    after = LOG.read_bytes()
    assert b"response:200" in after and not after.startswith(b"\0") and b"serving" not in after, after

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


def init_pid(rc: openrc.OpenRC, name: str) -> str:
    """The container's init, as runc reports it; empty when there is no container."""
    state = rc.sh(f"runc --root /run/{name}/runc state {name}", check=False).stdout
    return str(json.loads(state)["pid"]) if state.strip() else ""


def crash(rc: openrc.OpenRC, name: str, deadline: float = 30.0) -> tuple[str, str]:
    """Kill the container's init with SIGKILL and wait for supervise-daemon's respawn: (the old init,
    the new one, or empty when none came within DEADLINE seconds)."""
    before = init_pid(rc, name)
    subprocess.run(["kill", "-9", before], check=True)
    end = time.monotonic() + deadline
    now = init_pid(rc, name)
    while now in ("", before) and time.monotonic() < end:
        time.sleep(0.2)
        now = init_pid(rc, name)
    return before, now


def test_respawn_after_kill_runs_a_new_container(built: Built, rc: openrc.OpenRC) -> None:
    """A crash (the container's init killed with SIGKILL): runc exits with it, supervise-daemon runs the
    helper again, and a new container serves, its output in the log.

    A SIGKILL of runc itself leaves its container running as an orphan, which the helper's `run`
    removes before it starts a new one; that path is not run here: this test host's PID 1 reaps no
    orphans, and `runc delete` waits for the killed init's zombie (up to the helper's 10 s bound)."""
    url = f"http://127.0.0.1:{built.port}"
    v1 = read_apk(built.apks["1.0"])
    install_files(v1)
    start_as_printed(rc, script(rc, v1, ".post-install", "1.0-r0"))
    assert wait_for_http(f"{url}/").strip() == "kv 1.0"

    before, now = crash(rc, NAME)
    assert now not in ("", before), LOG.read_text()[-2000:]
    assert wait_for_http(f"{url}/", deadline=30).strip() == "kv 1.0"
    assert LOG.read_text().count("kv 1.0 serving on port") == 2, LOG.read_text()[-2000:]
    script(rc, v1, ".pre-deinstall", "1.0-r0")


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
    assert "/etc/logrotate.d/kvdeb-openrc-svc" in conffiles.splitlines()


def test_openrc_private_network(registry: Registry, ctr2svc: Cli, tmp_path: Path) -> None:
    """--network private under OpenRC (the same helper as under systemd): supervise-daemon's `run` gets
    the network prepare sets up, the published port answers, a respawn after a crash runs a new
    container on it, and the stop leaves no link, rule or namespace."""
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
        "--activation", "start", "-o", tmp_path / "out",
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

            # A crash (its init killed): a new container on the network prepare set up.
            before, now = crash(rc, name)
            assert now not in ("", before)
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


def test_repository_read_by_apk(built: Built, ctr2svc: Cli, apk_tool: Path, tmp_path: Path) -> None:  # noqa: F811
    """`repo add` makes a repository apk-tools itself uses: `apk update` over HTTP checks the index's
    RSA signature with the key in /etc/apk/keys, `apk add` resolves the dependencies from the index and
    downloads each package by the name the index implies, checked against the index's C: checksum,
    and `apk upgrade` moves to the newer version. With another key, or none, apk refuses the index; a
    package swapped for another in the repository is refused."""
    for name in ("ops", "other"):
        sh("openssl", "genrsa", "-out", tmp_path / f"{name}.rsa", "2048")
        sh("openssl", "rsa", "-in", tmp_path / f"{name}.rsa", "-pubout", "-out", tmp_path / f"{name}.rsa.pub")
    # Stand-ins for runc and openrc, as files named runc.apk and openrc.apk: the repository stores
    # every package under the name apk fetches it by.
    stubs = stub_packages("apk", tmp_path / "stubs", ("runc", "openrc"))
    repo = tmp_path / "repo"
    ctr2svc(
        "repo", "add", repo, built.apks["1.0"], built.apks["2.0"], *stubs,
        "--apk-key", tmp_path / "ops.rsa", "--apk-key-name", "ops.rsa.pub",
    )  # fmt: skip
    arch_dir = repo / "apk" / "x86_64"
    assert sorted(p.name for p in arch_dir.glob("*.apk")) == [
        f"{NAME}-1.0-r0.apk",
        f"{NAME}-2.0-r0.apk",
        "openrc-1.0.0.apk",
        "runc-1.0.0.apk",
    ]

    with serve(repo) as url:

        def host(name: str, key: Path | None) -> list[str]:
            """An empty root that trusts KEY as ops.rsa.pub and lists the repository."""
            root = make_root(tmp_path / name)
            (root / "etc/apk/keys").mkdir(parents=True)
            if key is not None:
                shutil.copyfile(key, root / "etc/apk/keys/ops.rsa.pub")
            (root / "etc/apk/repositories").write_text(f"{url}/apk\n")
            apk = [str(apk_tool), "--root", str(root)]
            sh(*apk, "--initdb", "add")
            return apk

        def installed(apk: list[str]) -> list[str]:
            return sorted(sh(*apk, "info", "-v").stdout.split())

        apk = host("good", tmp_path / "ops.rsa.pub")
        assert "OK: 4 distinct packages available" in sh(*apk, "update").stdout
        proc = sh(*apk, "add", f"{NAME}=1.0-r0")
        assert "ERROR" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        assert installed(apk) == [f"{NAME}-1.0-r0", "openrc-1.0.0", "runc-1.0.0"]
        rootfs = Path(apk[2]) / f"opt/containers/{NAME}/1.0-r0/rootfs"
        assert (rootfs / "home/app/owned.txt").stat().st_uid == 999  # post-install ran
        sh(*apk, "add", NAME)  # no longer pinned to 1.0-r0
        proc = sh(*apk, "upgrade")
        assert f"Upgrading {NAME} (1.0-r0 -> 2.0-r0)" in proc.stdout, proc.stdout + proc.stderr
        assert installed(apk) == [f"{NAME}-2.0-r0", "openrc-1.0.0", "runc-1.0.0"]
        new_rootfs = Path(apk[2]) / f"opt/containers/{NAME}/2.0-r0/rootfs"
        assert (new_rootfs / "www/index.html").read_text() == "kv 2.0\n"

        for name, key, says in (
            ("other-key", tmp_path / "other.rsa.pub", "BAD signature"),
            ("no-key", None, "UNTRUSTED signature"),
        ):
            apk = host(name, key)
            update = sh(*apk, "update", check=False)
            assert update.returncode != 0 and says in update.stderr, update.stdout + update.stderr
            assert sh(*apk, "add", NAME, check=False).returncode != 0
            assert installed(apk) == []

        # Another package under 2.0's name: its control data is not what the signed index vouches for.
        (arch_dir / f"{NAME}-2.0-r0.apk").write_bytes(built.apks["1.0"].read_bytes())
        apk = host("swapped", tmp_path / "ops.rsa.pub")
        sh(*apk, "update")
        proc = sh(*apk, "add", NAME, check=False)
        assert proc.returncode != 0 and f"{NAME}-2.0-r0: BAD signature" in proc.stderr, proc.stderr
        assert NAME not in " ".join(installed(apk))


@pytest.fixture(scope="session")
def apk3_tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real apk of Alpine >= 3.23 (apk-tools 3.0.6): $CTR2SVC_APK3, or built from the source in
    tests/vendor/apk-tools with its build.sh (meson and ninja-build besides apk-tools 2's needs)."""
    given = os.environ.get("CTR2SVC_APK3")
    if given:
        require(Path(given).is_file(), f"CTR2SVC_APK3={given} does not exist")
        return Path(given)
    require(
        shutil.which("meson") is not None and shutil.which("ninja") is not None,
        "building apk-tools 3 needs meson and ninja (apt-get install meson ninja-build)",
    )
    prefix = tmp_path_factory.mktemp("apk-tools-3")
    proc = subprocess.run(
        ["bash", str(APK_TOOLS_SOURCE / "build.sh"), "3", str(prefix)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    require(proc.returncode == 0, f"building apk-tools 3 failed:\n{proc.stdout}{proc.stderr}")
    return prefix / "bin/apk"


@pytest.mark.parametrize("tool", ["apk_tool", "apk3_tool"], ids=["apk-tools-2.14", "apk-tools-3.0"])
def test_apk_audit_finds_the_package_intact(
    built: Built, tool: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """apk-tools records each file's checksum from the package and `apk audit` compares it with the
    file on disk, for a symlink the SHA1 of its target: nothing of the package may be reported. And
    the license is in apk's database."""
    apk = [str(request.getfixturevalue(tool)), "--root", str(make_root(tmp_path / "root"))]
    stubs = stub_packages("apk", tmp_path / "stubs", ("runc", "openrc"))
    sh(*apk, "--initdb", "add", "--allow-untrusted", *stubs)
    added = sh(*apk, "add", "--allow-untrusted", built.apks["1.0"])
    said = added.stdout + added.stderr
    assert "ERROR" not in said and "WARNING" not in said, said
    links = [m.name for m in read_apk(built.apks["1.0"]).members if m.type == "symlink"]
    assert f"opt/containers/{NAME}/1.0-r0/rootfs/var/run" in links and len(links) > 5, links
    system = sh(*apk, "audit", "--system")
    assert system.stdout == "", system.stdout
    # The default audit looks at the protected paths (/etc): the test root's own /etc/apk is no
    # package's, the package's files are not reported.
    backup = sh(*apk, "audit").stdout
    assert [line for line in backup.splitlines() if line != "D etc/apk/"] == [], backup
    for args in (("info", "--license"), ("info", "-a")):
        shown = sh(*apk, *args, NAME).stdout
        assert f"{NAME}-1.0-r0 license:\nNOASSERTION\n" in shown, shown
