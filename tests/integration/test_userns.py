"""User namespaces (--userns auto) on this host, with the real runc and dpkg, the service run as its unit
runs it (prepare, start, stop), beside podman's --userns=auto as the reference: root in the container
is an unprivileged id on the host, the image's files, the data and the writable layer are owned by the
service's range, which survives an upgrade, a reinstall and the admin's switching the mode back and
forth; a root-owned host directory bound into the container cannot be written through; a purge frees
the range. An .apk does the same under OpenRC (Debian's openrc-run and supervise-daemon).
tests/vm/test_userns.py proves the same under systemd.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, require
from tests.support import openrc
from tests.support.apk import read_apk
from tests.support.images import service_image
from tests.support.registry import free_port

from .helpers import dpkg, purge, sh, wait_for_http
from .test_apk import install_files, remove_files, script

pytestmark = pytest.mark.integration

NAME = "userns-svc"
APK = "userns-apk-svc"
OTHERS = ("userns-b-svc", "userns-c-svc")
HELPER = f"/usr/libexec/{NAME}/service"
ETC = Path("/etc") / NAME
DATA = Path("/var/lib") / NAME
BOOK = Path("/var/lib/ctr2svc/userns")
BREAKOUT = Path("/srv/ctr2svc-userns-breakout")
APP = 999  # the test service's user, which its entrypoint drops to
PROBE = (Path(__file__).parents[1] / "conformance/probe.sh").read_text()


@pytest.fixture(scope="module")
def built(
    ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, Path, dict[str, Path]]]:
    work = tmp_path_factory.mktemp("userns")
    port = free_port()
    layout = work / "layout"
    debs = {}
    for version in ("1.0", "2.0"):
        source = service_image(layout, version, port=port, version_text=f"kv {version}")
        out = work / version
        debs[version] = Path(
            ctr2svc("build", source, "--name", NAME, "--userns", "auto", "-o", out).stdout.strip()
        )
    for other in OTHERS:
        debs[other] = Path(
            ctr2svc("build", f"oci:{layout}:1.0", "--name", other, "--userns", "auto", "-o", work / other)
            .stdout.strip()
        )  # fmt: skip
    for name in (NAME, *OTHERS):
        purge(name)
    BREAKOUT.mkdir(mode=0o755, parents=True, exist_ok=True)
    yield port, layout, debs
    if Path(HELPER).exists():
        sh(HELPER, "stop", check=False)
    for name in (NAME, *OTHERS):
        purge(name)
    shutil.rmtree(BREAKOUT, ignore_errors=True)


def restart(log: Path) -> int:
    sh(HELPER, "stop", check=False)
    prepared = sh(HELPER, "prepare", check=False)
    assert prepared.returncode == 0, prepared.stderr
    with log.open("ab") as out:
        subprocess.run([HELPER, "start"], stdout=out, stderr=out, check=True, timeout=60)
    return int(Path(f"/run/{NAME}/pid").read_text())


def range_start(name: str = NAME) -> int:
    start, size = (Path("/var/lib") / name / "userns").read_text().split()
    assert size == "65536"
    assert (BOOK / start).read_text() == f"{name}\n"
    return int(start)


def host_ids(pid: int) -> tuple[set[int], set[int]]:
    """The real, effective, saved and filesystem uids and gids of PID, as the host sees them."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {int(x) for x in fields["Uid"].split()}, {int(x) for x in fields["Gid"].split()}


def owner(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid


def exec_root(*argv: str) -> subprocess.CompletedProcess[str]:
    return sh("runc", "--root", f"/run/{NAME}/runc", "exec", "--user", "0:0", NAME, *argv, check=False)


def probe_ids() -> dict[str, str]:
    """The conformance probe's view of the service's processes, from inside (uid and gid per process)."""
    probe = exec_root("env", "CONFORMANCE_PROBE=1", "sh", "-c", PROBE)
    facts = dict(line.split("\t", 1) for line in probe.stdout.splitlines() if "\t" in line)
    return {k: v for k, v in facts.items() if k.endswith((".Uid", ".Gid")) or k == "exec.id"}


def breaks_out() -> bool:
    """Whether root in the container writes a file into a root-owned host directory bound read-write."""
    (BREAKOUT / "f").unlink(missing_ok=True)
    exec_root("sh", "-c", "echo from the container >/breakout/f")
    return (BREAKOUT / "f").exists()


def test_root_inside_is_not_root_outside(built: tuple[int, Path, dict[str, Path]], tmp_path: Path) -> None:
    port, _, debs = built
    log = tmp_path / "log"
    dpkg("-i", debs["1.0"])
    assert (ETC / "userns").read_text().splitlines()[-1] == "auto"
    start = range_start()
    # The install shifted the image's files into the range: root's are START's, the app user's START+999.
    rootfs = Path(f"/opt/containers/{NAME}/1.0/rootfs")
    assert owner(rootfs) == owner(rootfs / "bin/busybox") == (start, start)
    assert owner(rootfs / "var/spool/app") == (start + APP, start + APP)
    assert (rootfs / "var/spool/app").stat().st_mode & 0o7777 == 0o2770  # set-id bits put back
    assert (rootfs / "usr/bin/suidprobe").stat().st_mode & 0o7777 == 0o4755

    (ETC / "mounts").write_text(f"{BREAKOUT} /breakout rw\n")
    pid = restart(log)
    assert wait_for_http(f"http://127.0.0.1:{port}/cgi-bin/whoami").strip() == f"{APP}:{APP}"
    # Inside: root, and the app user, as the image says. Outside: the range's ids.
    assert exec_root("id", "-u").stdout.strip() == "0"
    assert exec_root("cat", "/proc/self/uid_map").stdout.split() == ["0", str(start), "65536"]
    inside = probe_ids()
    assert inside["exec.id"].startswith("uid=0(root) gid=0(root)")
    assert inside["proc.httpd.Uid"] == f"{APP} {APP} {APP} {APP}"
    assert host_ids(pid) == ({start + APP}, {start + APP})
    # The data, and what the service writes, is the range's; so is the writable layer.
    sh("curl", "-fsS", f"http://127.0.0.1:{port}/cgi-bin/put?k=kept")
    volume = DATA / "volumes/data"
    assert owner(volume) == (start + APP, start)  # the entrypoint's chown app /data
    assert {owner(p) for p in volume.iterdir()} == {(start + APP, start + APP), (start + APP, start)}
    assert owner(DATA / "overlay/upper") == (start, start)
    assert not breaks_out()

    # An upgrade keeps the range and the data; the new image's files are shifted too.
    dpkg("-i", debs["2.0"])
    restart(log)
    assert range_start() == start
    assert owner(Path(f"/opt/containers/{NAME}/2.0/rootfs/www/index.html")) == (start, start)
    assert wait_for_http(f"http://127.0.0.1:{port}/").strip() == "kv 2.0"
    assert wait_for_http(f"http://127.0.0.1:{port}/cgi-bin/get?k").strip() == "kept"

    # The admin switches it off: the host's ids again, the image's files and the volume shifted back.
    (ETC / "userns").write_text("host\n")
    pid = restart(log)
    assert wait_for_http(f"http://127.0.0.1:{port}/cgi-bin/get?k").strip() == "kept"
    assert host_ids(pid) == ({APP}, {APP})
    assert owner(volume) == (APP, 0)
    assert owner(Path(f"/opt/containers/{NAME}/2.0/rootfs/www/index.html")) == (0, 0)
    assert breaks_out()
    assert owner(BREAKOUT / "f") == (0, 0)
    # And on again: the same range, the data still readable.
    (ETC / "userns").write_text("auto\n")
    pid = restart(log)
    # Once it answers, the entrypoint has dropped to the app user.
    assert wait_for_http(f"http://127.0.0.1:{port}/cgi-bin/get?k").strip() == "kept"
    assert host_ids(pid) == ({start + APP}, {start + APP})
    assert owner(volume) == (start + APP, start)
    assert not breaks_out()
    sh(HELPER, "stop")

    # A remove and an install again: the same range (the data directory stays).
    dpkg("--remove", NAME)
    dpkg("-i", debs["2.0"])
    assert range_start() == start
    # Another service gets a range of its own; a purge frees the first, which the next one gets.
    dpkg("-i", debs[OTHERS[0]])
    assert range_start(OTHERS[0]) not in (start,)
    dpkg("--purge", NAME)
    assert not DATA.exists()
    dpkg("-i", debs[OTHERS[1]])
    assert range_start(OTHERS[1]) == start


@pytest.fixture
def podman_auto() -> Iterator[None]:
    """podman with --userns=auto: its ranges come from /etc/subuid's and /etc/subgid's "containers"."""
    require(shutil.which("podman") is not None, "podman is not installed (the reference)")
    saved = {
        path: path.read_text() if path.exists() else None
        for path in map(Path, ("/etc/subuid", "/etc/subgid"))
    }
    for path, text in saved.items():
        if "containers:" not in (text or ""):
            path.write_text((text or "") + "containers:1000000:1000000\n")
    yield
    for path, text in saved.items():
        if text is None:
            path.unlink()
        else:
            path.write_text(text)


def test_podman_userns_auto_is_the_reference(
    built: tuple[int, Path, dict[str, Path]], podman_auto: None
) -> None:
    """What the test above asks of ctr2svc is what podman's --userns=auto gives. (--network none: podman
    4.3 with --network host and --userns=auto fails to mount /sys, which ctr2svc binds instead; and no
    netavark rules appear on the host while other tests look for leftovers.)"""
    _, layout, _ = built
    ulimits = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768")
    script = "id -u; cat /proc/self/uid_map; echo from the container >/breakout/f"

    # Pulled first, run and removed by its ID: nothing of it stays in podman's storage.
    image = sh("podman", "pull", "-q", f"oci:{layout}:1.0").stdout.split()[-1]

    def podman(*flags: str) -> subprocess.CompletedProcess[str]:
        (BREAKOUT / "f").unlink(missing_ok=True)
        argv = ("podman", "run", "--rm", "--network", "none", *ulimits, *flags, "-v", f"{BREAKOUT}:/breakout")
        return sh(*argv, "--entrypoint", "/bin/sh", image, "-c", script, check=False)

    auto = podman("--userns=auto")
    uid, inner, outer, _ = auto.stdout.split()  # id -u, then /proc/self/uid_map's one line
    assert uid == inner == "0" and int(outer) >= 65536
    assert "Permission denied" in auto.stderr and not (BREAKOUT / "f").exists()
    host = podman()
    sh("podman", "rmi", "--force", image, check=False)
    assert host.returncode == 0 and (BREAKOUT / "f").exists()
    assert (BREAKOUT / "f").stat().st_uid == 0


def test_an_apk_under_openrc(ctr2svc: Cli, tmp_path: Path) -> None:
    """The .apk's scripts and its OpenRC script (Debian's openrc-run and supervise-daemon, the service's
    `run` in the foreground): the range allocated at post-install, the container's root the range's
    id; removed, the data (and the range: apk has no purge) stays."""
    missing = openrc.missing_requirements()
    require(not missing, f"OpenRC tools missing: {', '.join(missing)} (apt-get install openrc)")
    port = free_port()
    source = service_image(tmp_path / "layout", "1.0", port=port, version_text="apk 1.0")
    built = ctr2svc(
        "build", source, "--format", "apk", "--name", APK, "--userns", "auto", "-o", tmp_path / "out"
    )
    apk = read_apk(Path(built.stdout.strip()))
    data = Path("/var/lib") / APK
    try:
        with openrc.OpenRC() as rc:
            install_files(apk)
            script(rc, apk, ".post-install", "1.0-r0")
            start = range_start(APK)
            rc.sh(f"rc-service {APK} start", timeout=180)
            assert wait_for_http(f"http://127.0.0.1:{port}/cgi-bin/whoami").strip() == f"{APP}:{APP}"
            state = sh("runc", "--root", f"/run/{APK}/runc", "state", APK).stdout
            pid = int(state.split('"pid": ')[1].split(",")[0])
            assert host_ids(pid) == ({start + APP}, {start + APP})
            script(rc, apk, ".pre-deinstall", "1.0-r0")
            remove_files(apk)
            script(rc, apk, ".post-deinstall", "1.0-r0")
        assert range_start(APK) == start
    finally:
        sh("runc", "--root", f"/run/{APK}/runc", "delete", "--force", APK, check=False)
        sh("umount", "-l", f"/run/{APK}/rootfs", check=False)
        for path in (Path("/opt/containers") / APK, Path(f"/usr/libexec/{APK}"), data, Path(f"/run/{APK}")):
            shutil.rmtree(path, ignore_errors=True)
        for leftover in (
            Path("/etc/init.d") / APK,
            Path("/var/log") / f"{APK}.log",
            Path("/etc/logrotate.d") / APK,
        ):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(Path("/etc") / APK, ignore_errors=True)
