"""Admin settings in /etc/NAME (env, args, mounts): packaged defaults from build flags, applied at each
start, kept by dpkg across an upgrade (conffiles) while the image's new Env defaults still arrive.
The service runs here as its unit would run it (prepare, start, stop), as in test_deb_lifecycle.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.images import service_image
from tests.support.registry import Registry, free_port

from .helpers import purge, sh, wait_for_http

pytestmark = pytest.mark.integration

NAME = "admin-svc"
ETC = Path("/etc") / NAME
HELPER = f"/usr/libexec/{NAME}/service"
EXTRA = Path("/srv/ctr2svc-test-extra")


@pytest.fixture(scope="module")
def debs(
    registry: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, dict[str, Path]]]:
    work = tmp_path_factory.mktemp("admin")
    port = free_port()
    debs = {}
    for version in ("1.0", "2.0"):
        source = service_image(work / "layout", version, port=port, version_text=f"kv {version}")
        ref = registry.push(source, "itest/admin", version)
        flags = (
            "--env",
            "GREETING=hello",
            "--volume",
            f"{EXTRA}:/extra",
            "--memory",
            "256M",
            "--cpus",
            "0.5",
        )
        debs[version] = Path(
            ctr2svc("build", ref, "--name", NAME, *flags, "-o", work / version).stdout.strip()
        )
    EXTRA.mkdir(parents=True, exist_ok=True)
    (EXTRA / "file").write_text("from the host\n")
    purge(NAME)
    yield port, debs
    if Path(HELPER).exists():
        sh(HELPER, "stop", check=False)
    purge(NAME)
    shutil.rmtree(EXTRA, ignore_errors=True)


def restart(log: Path) -> int:
    sh(HELPER, "stop", check=False)
    sh(HELPER, "prepare")
    with log.open("ab") as out:
        subprocess.run([HELPER, "start"], stdout=out, stderr=out, check=True, timeout=60)
    return int(Path(f"/run/{NAME}/pid").read_text())


def container_env(port: int) -> dict[str, str]:
    text = wait_for_http(f"http://127.0.0.1:{port}/cgi-bin/env")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_defaults_edits_and_upgrade(debs: tuple[int, dict[str, Path]], tmp_path: Path) -> None:
    port, packages = debs
    sh("dpkg", "-i", packages["1.0"])
    # The build flags are the packaged defaults, in conffiles the admin owns.
    assert "GREETING=hello" in (ETC / "env").read_text().splitlines()
    assert f"{EXTRA} /extra ro" in (ETC / "mounts").read_text().splitlines()
    conffiles = sh("dpkg-query", "-W", "-f", "${Conffiles}", NAME).stdout
    assert all(str(ETC / f) in conffiles for f in ("env", "args", "mounts"))
    unit = Path(f"/lib/systemd/system/{NAME}.service").read_text().splitlines()
    assert "MemoryMax=268435456" in unit and "CPUQuota=50%" in unit

    restart(tmp_path / "log")
    env = container_env(port)
    assert env["GREETING"] == "hello" and env["APP_VERSION"] == "kv 1.0"
    runc = ["runc", "--root", f"/run/{NAME}/runc", "exec", NAME]
    assert sh(*runc, "cat", "/extra/file").stdout == "from the host\n"
    assert sh(*runc, "touch", "/extra/new", check=False).returncode != 0  # read-only bind

    # The admin edits, restarts: the container sees the new values.
    (ETC / "env").write_text("GREETING=changed\nLEVEL=debug\n")
    (ETC / "args").write_text("serve\nextra-arg\n")
    pid = restart(tmp_path / "log")
    env = container_env(port)
    assert env["GREETING"] == "changed" and env["LEVEL"] == "debug"
    # The entrypoint (kept) got the admin's arguments instead of the image's command.
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-3:] == [b"serve", b"extra-arg", b""]

    # An upgrade keeps the edits; the image's own new defaults arrive.
    sh("dpkg", "-i", packages["2.0"])
    assert (ETC / "env").read_text() == "GREETING=changed\nLEVEL=debug\n"
    restart(tmp_path / "log")
    env = container_env(port)
    assert env["GREETING"] == "changed" and env["APP_VERSION"] == "kv 2.0"

    # A broken line stops the start with a message naming the file and line.
    (ETC / "env").write_text("GREETING=changed\nthis is wrong\n")
    sh(HELPER, "stop", check=False)
    failed = sh(HELPER, "prepare", check=False)
    assert failed.returncode != 0
    assert f"{NAME}: {ETC}/env line 2: not KEY=VALUE" in failed.stderr
    sh(HELPER, "cleanup", check=False)

    sh("dpkg", "--purge", NAME)
    assert not ETC.exists()
