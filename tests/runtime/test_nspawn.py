"""--runtime nspawn: the helper against the real systemd-nspawn on this host (no systemd running here:
nspawn runs unregistered; the VM test, tests/vm/test_nspawn.py, has machined). prepare mounts the root,
`nspawn` runs the container in the foreground as the unit would, and exec, health, wait-ready and stop
find the container's init from nspawn's PID."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctr2svc.model import HealthCheck
from ctr2svc.runtime import _words
from tests.conftest import require
from tests.support.images import BUSYBOX
from tests.support.registry import free_port

from .conftest import Helper, spec_for

pytestmark = pytest.mark.usefixtures("as_root")

# Nothing but PATH: on this host, which mounts cgroup v1 and v2 side by side (FACTS.md), the helper
# itself tells nspawn to use v2 only.
NSPAWN_ENV: dict[str, str] = {}
APPLETS = ("sh", "httpd", "cat", "id", "test", "sleep", "kill", "env")


def container(tmp_path: Path, script: str, **changes: Any) -> Helper:
    """A service whose image is busybox alone (no /usr: nspawn would refuse it as it is), running
    SCRIPT as its init, with a health check that looks for the seeded volume's file."""
    require(shutil.which("systemd-nspawn") is not None, "systemd-nspawn (systemd-container) is not installed")
    health = HealthCheck(("/bin/sh", "-c", "test -f /data/seed && test ! -e /data/sick"), 1, 5, 1, 0)
    spec = dataclasses.replace(
        spec_for(runtime="nspawn", args=("/bin/sh", "-c", script), **changes), health=health
    )
    # The volume, at a path of its own.
    volume = tmp_path / "host/var/lib" / spec.name / "volumes/data"
    helper = Helper(tmp_path / "host", spec).install(
        VOLUMES=_words([volume, "/data", 999, 999, "0750", "yes"])
    )
    # The packaged config names the installed paths: here they are below the test's directory.
    config = helper.path("IMAGE_DIR") / "config.json"
    doc = json.loads(config.read_text().replace(f'"/run/{spec.name}', f'"{helper.path("STATE_DIR")}'))
    for mount in doc["mounts"]:
        if mount["destination"] == "/data":
            mount["source"] = str(volume)
    config.write_text(json.dumps(doc, indent=2) + "\n")
    rootfs = helper.path("IMAGE_DIR") / "rootfs"
    (rootfs / "bin").mkdir()
    shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "www").mkdir()
    (rootfs / "www/index.html").write_text("nspawn\n")
    return helper


class Running:
    def __init__(self, helper: Helper) -> None:
        self.helper = helper
        helper.run("prepare", extra=NSPAWN_ENV)
        # As the unit's ExecStart: the helper becomes nspawn, in the foreground.
        self.proc = subprocess.Popen(
            [str(helper.program), "nspawn"],
            env=helper.env(NSPAWN_ENV),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 30
        while helper.run("status").stdout.strip() != "running":
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, "the container did not start"
            time.sleep(0.1)

    def output(self) -> str:
        out, _ = self.proc.communicate(timeout=30)
        return out


@pytest.fixture
def started() -> Iterator[list[Running]]:
    running: list[Running] = []
    yield running
    for item in running:
        if item.proc.poll() is None:
            item.proc.kill()
            item.proc.wait()
        if item.proc.stdout is not None:
            item.proc.stdout.close()
        item.helper.run("cleanup", check=False)


def test_nspawn_runs_the_bundle_and_execs_into_it(tmp_path: Path, started: list[Running]) -> None:
    port = free_port()
    script = f"trap 'echo stopping on SIGINT; kill $!; exit 0' INT; httpd -f -p {port} -h /www & wait"
    helper = container(tmp_path, script, stop_signal="SIGINT", stop_timeout=10)
    # The admin's, with what the config's JSON escapes: exec gets it back as written.
    (helper.path("CONFIG_DIR") / "env").write_text('GREETING=say "hi" \\ there\tnow\n')
    run = Running(helper)
    started.append(run)
    nspawn_pid = int((helper.path("STATE_DIR") / "pid").read_text())
    assert Path(f"/proc/{nspawn_pid}/comm").read_text().strip() == "systemd-nspawn"
    ready = helper.run("wait-ready", str(port), "30", check=False)
    assert ready.returncode == 0, ready.stderr + run.output()
    # The config's user (umoci's 999 here) and environment, in the container's root and volume.
    assert helper.run("exec", "cat", "/www/index.html").stdout == "nspawn\n"
    assert helper.run("exec", "id", "-u").stdout.strip() == "999"
    env = helper.run("exec", "env").stdout.splitlines()
    assert "HOME=/data" in env and 'GREETING=say "hi" \\ there\tnow' in env, env
    assert helper.run("exec", "cat", "/data/seed").stdout == "from the image\n"
    # Masked read-only as runc masks them (nspawn 252 alone leaves them open: ctr2svc/service/nspawn.py;
    # this host's /proc has no sysrq-trigger or kcore, which the VM test checks).
    mounts = [line.split() for line in helper.run("exec", "cat", "/proc/1/mountinfo").stdout.splitlines()]
    masked = {fields[4]: fields[5] for fields in mounts if fields[3].endswith("/inaccessible/reg")}
    assert {"/proc/keys", "/proc/timer_list"} <= set(masked), masked
    assert all(options.startswith("ro") for options in masked.values()), masked
    assert helper.run("health").returncode == 0
    (helper.path("VOLUMES_DIR") / "data/sick").touch()
    sick = helper.run("health", check=False)
    assert sick.returncode == 1 and "unhealthy after 1 failed health checks" in sick.stderr
    begin = time.monotonic()
    helper.run("stop")
    took = time.monotonic() - begin
    assert run.proc.wait(timeout=10) == 0
    assert "stopping on SIGINT" in run.output()
    assert took < 5, f"the stop took {took:.1f} s"
    assert helper.run("status").stdout.strip() == "stopped"
    assert not any(helper.path("ROOT").iterdir())


def test_an_init_that_ignores_the_stop_signal_is_killed_on_time(
    tmp_path: Path, started: list[Running]
) -> None:
    # busybox sleep as PID 1 has no handler for SIGTERM: the kernel ignores it.
    helper = container(tmp_path, "exec sleep 1000", stop_timeout=2)
    run = Running(helper)
    started.append(run)
    begin = time.monotonic()
    said = helper.run("stop").stderr
    took = time.monotonic() - begin
    assert "kv-svc: still running after 2s; killing it" in said
    assert 2 <= took <= 5, f"the stop took {took:.1f} s"
    # nspawn's status for a container killed by a signal.
    assert run.proc.wait(timeout=10) == 1
    assert not any(helper.path("ROOT").iterdir())
    assert (helper.path("OVERLAY_DIR") / "upper").is_dir()
