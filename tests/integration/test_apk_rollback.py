"""Upgrades that roll back on OpenRC (issue 26): the .apk installed, upgraded and removed by the real
apk-tools 2.14 (built from tests/vendor/apk-tools, as test_apk.py does), its scripts run by apk itself,
the service run by Debian's OpenRC (openrc-run, supervise-daemon) in the private namespace of
tests/support/openrc.py, where apk works on / with its database on scratch bind mounts.

One image in three versions, as tests/vm/test_rollback.py's: 1.0 writes its data file on first start
and serves it; 2.0 "migrates" that file, then exits 1; 3.0 serves the data as it finds it. In order:

1. 1.0 → 2.0: post-upgrade fails (apk reports it, exits non-zero), 1.0 answers again with the data as
   it was before the upgrade, run by the package's init script from the kept files, which apk audit
   does not report as changed; 2.0's data is kept beside it;
2. → 3.0: installs cleanly, and the rollback's state is gone;
3. → 2.0 again with no room for the snapshot: apk's pre-upgrade fails but apk unpacks all the same
   (apk-tools only marks the script failed), so post-upgrade refuses: 3.0 keeps running, from its kept
   files, across a restart; the removal then leaves no rollback state.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, require
from tests.support import openrc
from tests.support.apk import read_apk
from tests.support.images import ROLLBACK_VERSIONS, rollback_image
from tests.support.registry import Registry, free_port

from .helpers import http_get, refuses, wait_for_http
from .test_shared_formats import apk_tool, stub_packages  # noqa: F401 - apk_tool: a fixture

pytestmark = pytest.mark.integration

NAME = "rbapk-svc"
DATA = Path("/var/lib") / NAME
ROLLBACK_STATE = Path("/var/lib/ctr2svc/rollback") / NAME
KEPT = Path("/opt/containers") / NAME / ".rollback"
# apk's own files, on scratch directories bind-mounted in OpenRC's namespace: the host's stay as they are.
APK_DIRS = ("lib/apk", "etc/apk", "var/cache/apk")


@pytest.fixture(scope="module")
def built(
    registry: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, dict[str, Path]]:
    work = tmp_path_factory.mktemp("apk-rollback")
    port = free_port()
    apks = {}
    for version in ROLLBACK_VERSIONS:
        source = rollback_image(work / "layout", version, port)
        ref = registry.push(source, "itest/apk-rollback", version)
        out = ctr2svc(
            "build", ref, "--format", "apk", "--name", NAME, "--version", version, "--activation", "start",
            "--stop-timeout", "5", "-o", work / version,
        ).stdout.strip()  # fmt: skip
        apks[version] = Path(out)
    return port, apks


@pytest.fixture
def rc(tmp_path: Path) -> Iterator[openrc.OpenRC]:
    missing = openrc.missing_requirements()
    require(not missing, f"OpenRC tools missing: {', '.join(missing)} (apt-get install openrc)")
    made = [Path("/", d) for d in APK_DIRS if not Path("/", d).exists()]
    for path in made:
        path.mkdir(parents=True)
    try:
        with openrc.OpenRC() as instance:
            for d in APK_DIRS:
                scratch = tmp_path / "apk-state" / d
                scratch.mkdir(parents=True)
                instance.sh(f"mount --bind {scratch} /{d}")
            yield instance
            instance.sh(f"rc-service {NAME} stop", check=False)
    finally:
        subprocess.run(["runc", "--root", f"/run/{NAME}/runc", "delete", "--force", NAME], check=False)
        subprocess.run(["umount", "-l", f"/run/{NAME}/rootfs"], check=False, capture_output=True)
        subprocess.run(["rc-update", "-a", "del", NAME], check=False, capture_output=True)
        for path in (Path("/opt/containers") / NAME, Path(f"/usr/libexec/{NAME}"), Path(f"/etc/{NAME}")):
            shutil.rmtree(path, ignore_errors=True)
        for path in (DATA, ROLLBACK_STATE, Path(f"/run/{NAME}"), *DATA.parent.glob(f"{NAME}.failed-*")):
            shutil.rmtree(path, ignore_errors=True)
        for leftover in (f"/etc/init.d/{NAME}", f"/var/log/{NAME}.log", f"/etc/logrotate.d/{NAME}"):
            Path(leftover).unlink(missing_ok=True)
        for path in reversed(made):
            shutil.rmtree(path, ignore_errors=True)


def get(url: str, want: str, deadline: float = 30.0) -> str:
    """The body, polled until it is WANT (a restart in progress answers late, or not at all)."""
    end = time.monotonic() + deadline
    body = ""
    while time.monotonic() < end:
        try:
            body = http_get(url).strip()
        except OSError:
            body = ""
        if body == want:
            break
        time.sleep(0.2)
    return body


def test_a_failed_apk_upgrade_rolls_back_with_its_data(
    built: tuple[int, dict[str, Path]],
    rc: openrc.OpenRC,
    apk_tool: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    port, apks = built
    url = f"http://127.0.0.1:{port}/"
    apk = f"{apk_tool} --root / --no-network"

    def apk_run(*args: str) -> subprocess.CompletedProcess[str]:
        return rc.sh(f"{apk} {' '.join(args)}", check=False, timeout=300)

    def installed() -> list[str]:
        return [p for p in apk_run("info", "-v").stdout.split() if p.startswith(NAME)]

    stubs = " ".join(str(p) for p in stub_packages("apk", tmp_path / "stubs", ("runc", "openrc")))
    added = apk_run("--initdb", "add", "--allow-untrusted", stubs)
    assert added.returncode == 0, added.stdout + added.stderr
    added = apk_run("add", "--allow-untrusted", str(apks["1.0"]))
    assert added.returncode == 0 and "ERROR" not in added.stdout + added.stderr, added.stdout + added.stderr
    assert wait_for_http(url, deadline=30).strip() == "written by 1.0"
    # Short waits: 3.0 is ready once its container has run 2 s.
    Path(f"/etc/{NAME}/rollback").write_text("rollback on\nsteady 2\nready-timeout 60\n")

    # 1. 2.0 rewrites the data and exits: post-upgrade rolls back and fails, and so does apk.
    begun = time.monotonic()
    failed = apk_run("add", "--allow-untrusted", str(apks["2.0"]))
    took = time.monotonic() - begun
    said = failed.stdout + failed.stderr
    assert failed.returncode != 0, said
    assert f"{NAME}-2.0-r0.post-upgrade: script exited with error 1" in said, said
    assert f"{NAME}: version 2.0-r0 is not ready: " in said and "rolling back to 1.0-r0" in said, said
    assert f"{NAME}: version 2.0-r0 did not become ready and was rolled back" in said, said
    assert get(url, "written by 1.0") == "written by 1.0", said
    assert (Path(f"{DATA}.failed-2.0-r0") / "volumes/data/index.html").read_text() == "migrated by 2.0\n"
    assert rc.status(NAME) == "started"
    # 1.0 runs from the kept files, named by the rollback's file, not by a changed init script.
    assert f"ctr2svc_helper='{KEPT}/libexec/service'" in (ROLLBACK_STATE / "openrc").read_text()
    # The package's files as apk wrote them: the init script byte for byte (apk's audit does not
    # compare init scripts: its built-in protected path "@etc/init.d"), and nothing else of the package
    # reported changed but the rollback file edited above.
    member = read_apk(apks["2.0"]).member(f"etc/init.d/{NAME}")
    assert Path(f"/etc/init.d/{NAME}").read_bytes() == member.data
    for audit in (apk_run("audit"), apk_run("audit", "--system")):
        changed = [line for line in audit.stdout.splitlines() if NAME in line]
        assert audit.returncode == 0 and changed in ([], [f"U etc/{NAME}/rollback"]), (
            audit.stdout + audit.stderr
        )
    print(f"\napk add of a failing 2.0, rolled back to 1.0: {took:.1f} s")

    # 2. A fixed 3.0 installs cleanly; what the rollback kept and wrote is gone.
    fixed = apk_run("add", "--allow-untrusted", str(apks["3.0"]))
    said = fixed.stdout + fixed.stderr
    assert fixed.returncode == 0 and "ERROR" not in said, said
    assert f"{NAME}: version 3.0-r0 is ready (" in said, said
    assert installed() == [f"{NAME}-3.0-r0"]
    assert get(url, "written by 1.0") == "written by 1.0"
    assert not ROLLBACK_STATE.exists() and not KEPT.exists()

    # 3. No room for the snapshot (a 1 MiB tmpfs where it goes, 2 MiB of data), back to 2.0: apk
    # unpacks 2.0 whatever the pre-upgrade says, and post-upgrade leaves 3.0 running, from its kept
    # files: 2.0 never runs (it would rewrite the data), not even after a restart.
    (DATA / "volumes/data/blob").write_bytes(b"\0" * (2 << 20))
    rc.sh(f"mkdir -p {ROLLBACK_STATE.parent} && mount -t tmpfs -o size=1m tmpfs {ROLLBACK_STATE.parent}")
    try:
        refused = apk_run("add", "--allow-untrusted", str(apks["2.0"]))
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0, said
        assert f"{NAME}: upgrade to 2.0-r0 refused, 3.0-r0 keeps running: no room for the snapshot" in said, (
            said
        )
        assert f"{NAME}-2.0-r0.pre-upgrade: script exited with error 1" in said, said
        assert f"{NAME}: the upgrade to 2.0-r0 was refused (no room for the snapshot" in said, said
        assert f"{NAME}-2.0-r0.post-upgrade: script exited with error 1" in said, said
        assert rc.status(NAME) == "started"
        assert http_get(url).strip() == "written by 1.0"
        rc.sh(f"rc-service {NAME} restart")
        assert get(url, "written by 1.0") == "written by 1.0"
        assert (DATA / "volumes/data/index.html").read_text() == "written by 1.0\n"

        removed = apk_run("del", NAME)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert refuses(url)
        assert not ROLLBACK_STATE.exists() and not KEPT.exists()
    finally:
        rc.sh(f"umount {ROLLBACK_STATE.parent}", check=False)
