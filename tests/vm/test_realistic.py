"""Realistic images as services under systemd (the Debian 12 test VM): Debian's own nginx, PostgreSQL and
redis, shaped like their official images (tests/support/realistic.py), installed with apt and used with
real clients (curl, psql, redis-cli). What a unit adds to the host-side conformance suite
(tests/conformance): the journal's socket as stdout/stderr, systemd's KillSignal= and restart logic.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, require
from tests.support import realistic
from tests.support.registry import Registry
from tests.vm import vmhost
from tests.vm.conftest import Timings, root_mounts

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SERVICES = ("nginx", "postgres", "redis")
STOP_TIMEOUT = 30  # ctr2svc's default --stop-timeout


def unit(image: str) -> str:
    return f"real-{image}.service"


def journal(vm: vmhost.VM, image: str) -> str:
    return vm.ssh(f"journalctl -u {unit(image)} --no-pager -o cat").stdout


def show(vm: vmhost.VM, image: str, prop: str) -> str:
    return vm.ssh(f"systemctl show -p {prop} --value {unit(image)}").stdout.strip()


def psql(sql: str, port: int = realistic.POSTGRES_PORT) -> str:
    return f"psql -h 127.0.0.1 -p {port} -U postgres -tAc {sql!r}"


def redis(*words: str) -> str:
    return f"redis-cli -p {realistic.REDIS_PORT} " + " ".join(words)


@pytest.fixture(scope="module")
def debs(
    vm: vmhost.VM, registry: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory
) -> list[str]:
    """The three services' packages and their layer packages, copied into the VM (paths there)."""
    missing = realistic.missing_requirements()
    require(not missing, f"cannot build the realistic images: {', '.join(missing)}")
    work = tmp_path_factory.mktemp("realistic")
    copied: set[str] = set()
    for image in SERVICES:
        ref = registry.push(realistic.build(image), f"e2e/real-{image}", "1")
        # Shared layers, as a project file builds them: the Debian base every image is built on is one
        # package, installed once (and the VM's dpkg, under emulation, unpacks it once, not three times).
        ctr2svc("build", ref, "--name", f"real-{image}", "--layers", "shared", "-o", work / image)
        # The service's package and its layers' (stdout names the service's only).
        for deb in sorted((work / image).glob("*.deb")):
            if deb.name not in copied:
                vm.copy_to(deb, f"/root/{deb.name}")
                copied.add(deb.name)
    return [f"/root/{name}" for name in sorted(copied)]


@pytest.fixture(scope="module")
def installed(vm: vmhost.VM, debs: list[str], timings: Timings) -> Iterator[float]:
    """All three installed with apt (enabled and started by the package); yields when that finished."""
    start = time.monotonic()
    vm.ssh("DEBIAN_FRONTEND=noninteractive apt-get install -y " + " ".join(debs), timeout=900)
    for image in SERVICES:
        assert root_mounts(vm, f"real-{image}") == 1
    timings.record("realistic: apt install of nginx + postgres + redis packages", time.monotonic() - start)
    try:
        yield time.monotonic()
    finally:
        names = " ".join(f"real-{image}" for image in SERVICES)
        vm.ssh(
            f"DEBIAN_FRONTEND=noninteractive apt-get purge -y {names} 'ctr2svc-layer-*'",
            check=False,
            timeout=600,
        )


def test_nginx_answers_and_its_access_log_reaches_the_journal(vm: vmhost.VM, installed: float) -> None:
    """access.log -> /dev/stdout: under systemd stdout is the journal's socket, which nginx cannot open
    (ENXIO) unless the service gives it something else."""
    body = vm.wait_until(f"curl -fsS --max-time 2 http://127.0.0.1:{realistic.NGINX_PORT}/", timeout=90)
    assert body.strip() == "conformance nginx"
    vm.wait_until(
        f"journalctl -u {unit('nginx')} --no-pager -o cat | grep -F '\"GET / HTTP/1.1\" 200'", timeout=30
    )
    log = journal(vm, "nginx")
    assert "Configuration complete; ready for start up" in log, log
    assert "Permission denied" not in log and "No such device" not in log, log
    # Master as root, workers as www-data (uid 33), as in the image.
    users = vm.ssh("ps -o user=,args= -C nginx").stdout
    assert any(line.startswith("root") and "master process" in line for line in users.splitlines()), users
    assert any(line.startswith("www-data") and "worker process" in line for line in users.splitlines()), users


def test_postgres_initialises_its_volume_and_accepts_connections(vm: vmhost.VM, installed: float) -> None:
    assert vm.wait_until(psql("select 6 * 7"), timeout=120).strip() == "42"
    vm.ssh(psql("create table kept (v text); insert into kept values ('across restarts')"))
    # The entrypoint ran as root, chowned PGDATA to postgres (999) and initdb'd it as postgres (0700).
    data = "/var/lib/real-postgres/volumes/var/lib/postgresql/data"
    assert vm.ssh(f"stat -c %u:%g:%a {data}").stdout.strip() == "999:999:700"
    assert vm.ssh(f"cat {data}/PG_VERSION").stdout.strip() == "15"
    log = journal(vm, "postgres")
    assert "PostgreSQL init process complete; ready for start up." in log, log
    assert "database system is ready to accept connections" in log, log


def test_redis_answers(vm: vmhost.VM, installed: float) -> None:
    assert vm.wait_until(redis("ping"), timeout=60).strip() == "PONG"
    assert vm.ssh(redis("set", "answer", "42")).stdout.strip() == "OK"
    assert vm.ssh(redis("get", "answer")).stdout.strip() == "42"
    assert vm.ssh(redis("save")).stdout.strip() == "OK"
    assert vm.ssh("stat -c %u /var/lib/real-redis/volumes/data/dump.rdb").stdout.strip() == "999"
    assert "Ready to accept connections" in journal(vm, "redis")


def test_no_restart_loop(vm: vmhost.VM, installed: float) -> None:
    """A crash-looping service can look active between two restarts: NRestarts says."""
    time.sleep(max(0.0, installed + 15 - time.monotonic()))
    for image in SERVICES:
        assert show(vm, image, "ActiveState") == "active", journal(vm, image)[-3000:]
        assert show(vm, image, "NRestarts") == "0", journal(vm, image)[-3000:]


STOPS = {
    # image: (KillSignal systemd sends, lines its shutdown prints)
    "nginx": ("SIGQUIT", ("signal 3 (SIGQUIT) received", "gracefully shutting down", "exit")),
    "postgres": ("SIGINT", ("received fast shutdown request", "database system is shut down")),
    "redis": ("SIGTERM", ("Received SIGTERM scheduling shutdown", "Redis is now ready to exit")),
}


@pytest.mark.parametrize("image", SERVICES)
def test_stop_honours_the_stop_signal(vm: vmhost.VM, installed: float, image: str, timings: Timings) -> None:
    signal_name, lines = STOPS[image]
    # The unit's KillSignal= is the image's STOPSIGNAL.
    assert show(vm, image, "KillSignal") == str(int(signal.Signals[signal_name]))
    pid = show(vm, image, "MainPID")
    start = time.monotonic()
    vm.ssh(f"systemctl stop {unit(image)}", timeout=120)
    took = time.monotonic() - start
    timings.record(f"realistic: systemctl stop {image} ({signal_name})", took)
    # Well within the timeout: the signal stopped it, not the SIGKILL that follows the timeout.
    assert took < STOP_TIMEOUT / 2, f"{image} took {took:.1f}s to stop"
    assert show(vm, image, "Result") == "success", journal(vm, image)[-3000:]
    assert vm.ssh(f"test -d /proc/{pid} && echo alive || echo gone").stdout.strip() == "gone"
    for line in lines:
        vm.wait_until(
            f"journalctl -u {unit(image)} --no-pager -o cat | grep -F {line!r}", timeout=20
        )  # fmt: skip


def test_postgres_data_survives_a_restart(vm: vmhost.VM, installed: float) -> None:
    vm.ssh(f"systemctl start {unit('postgres')}", timeout=120)
    assert vm.wait_until(psql("select v from kept"), timeout=120).strip() == "across restarts"
    # The second start found PGDATA initialised: no second initdb.
    assert journal(vm, "postgres").count("PostgreSQL init process complete") == 1


def test_postgres_under_nspawn(
    vm: vmhost.VM, installed: float, registry: Registry, ctr2svc: Cli, tmp_path: Path
) -> None:
    """Issue 25: the same PostgreSQL image run by systemd-nspawn (--runtime nspawn, on the shared layers
    the runc service installed): the root entrypoint chowns PGDATA and initdb runs as postgres, it
    accepts connections, is a machine, stops on SIGINT, and its data survives a restart."""
    name, port = "real-postgres-nspawn", realistic.POSTGRES_PORT + 1
    ref = registry.push(realistic.build("postgres"), "e2e/real-postgres", "1")
    nspawn = ("--runtime", "nspawn", "--layers", "shared", "--env", f"PGPORT={port}")
    deb = Path(ctr2svc("build", ref, "--name", name, *nspawn, "-o", tmp_path).stdout.strip())
    vm.copy_to(deb, f"/root/{deb.name}")
    try:
        vm.ssh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y /root/{deb.name}", timeout=600)
        assert vm.wait_until(psql("select 6 * 7", port), timeout=180).strip() == "42"
        vm.ssh(psql("create table kept (v text); insert into kept values ('under nspawn')", port))
        data = f"/var/lib/{name}/volumes/var/lib/postgresql/data"
        assert vm.ssh(f"stat -c %u:%g:%a {data}").stdout.strip() == "999:999:700"
        main = vm.ssh(f"systemctl show -p MainPID --value {name}.service").stdout.strip()
        assert vm.ssh(f"cat /proc/{main}/comm").stdout.strip() == "systemd-nspawn"
        vm.wait_until(f"machinectl list --no-legend | grep -w {name}", timeout=30)
        vm.ssh(f"systemctl stop {name}.service", timeout=120)
        result = vm.ssh(f"systemctl show -p Result --value {name}.service").stdout.strip()
        log = vm.ssh(f"journalctl -u {name}.service --no-pager -o cat").stdout
        assert result == "success", log[-3000:]
        assert "received fast shutdown request" in log, log[-3000:]
        vm.ssh(f"systemctl start {name}.service", timeout=120)
        assert vm.wait_until(psql("select v from kept", port), timeout=180).strip() == "under nspawn"
    finally:
        vm.ssh(f"DEBIAN_FRONTEND=noninteractive apt-get purge -y {name}", check=False, timeout=600)
