"""Issue 17's scenario under systemd (the Debian 12 test VM): a compose application written as people
write them (tests/support/compose_app.py: nginx in front, an app server, a redis store with a named
volume, a health-gated depends_on, a one-shot seed, a secret and an `.env` file), built with
`ctr2svc build --compose` and installed with apt. The front end answers on its published port and
reaches the app server by name, which reaches the store by name; the units start in depends_on order,
the app only once the store is healthy and the seed has completed; a reboot brings it all back in
order; an upgrade of the store keeps its data; removing the application package stops everything and
nothing starts it at boot; a purge leaves nothing.

The VM has no route to Debian's mirror: the network stack's packages are downloaded on this host and
installed with dpkg first (as tests/vm/test_network.py does).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, require
from tests.support import compose_app, realistic
from tests.support.registry import Registry
from tests.vm import vmhost
from tests.vm.conftest import Timings, install_network_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

APP = "shop"
SERVICES = ("store", "seed", "app", "web")  # in start order
UNITS = {s: f"{APP}-{s}.service" for s in SERVICES}
TARGET = f"{APP}-stack.target"
URL = f"http://127.0.0.1:{compose_app.WEB_PORT}"


@dataclass(frozen=True)
class Debs:
    install: str  # the install command, run in /root/compose
    store_upgrade: str  # the store's package of its next tag, in the VM
    layers: tuple[str, ...]  # the layer packages the application's services depend on


def build(ctr2svc: Cli, project: Path, out: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(ctr2svc("build", "--compose", project, "-o", out, "--json").stdout)
    return summary


@pytest.fixture(scope="module")
def debs(vm: vmhost.VM, registry: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory) -> Debs:
    missing = realistic.missing_requirements()
    require(not missing, f"cannot build the realistic images: {', '.join(missing)}")
    work = tmp_path_factory.mktemp("compose")
    install_network_stack(vm, work)
    vm.ssh("mkdir -p /root/compose/dist /root/upgrade")

    compose_app.push_images(registry, work / "images")
    project = compose_app.write_project(work / APP, registry.host)
    summary = build(ctr2svc, project, work / "dist")
    for path in (work / "dist").iterdir():
        vm.copy_to(path, f"/root/compose/dist/{path.name}")
    # The store's next tag (the same image): the upgrade of one service.
    upgraded = compose_app.write_project(work / "next" / APP, registry.host, store_tag="7.1")
    next_summary = build(ctr2svc, upgraded, work / "next-dist")
    store = Path(next(s["package"] for s in next_summary["services"] if s["compose_service"] == "store"))
    vm.copy_to(store, f"/root/upgrade/{store.name}")
    install = str(summary["install"]).replace(str(work / "dist"), "./dist")
    layers = sorted({layer["name"] for s in summary["services"] for layer in s["layers"]})
    return Debs(install, f"/root/upgrade/{store.name}", tuple(layers))


def monotonic(vm: vmhost.VM, unit: str, prop: str) -> int:
    return int(vm.ssh(f"systemctl show -p {prop} --value {unit}").stdout.strip() or 0)


def hits(vm: vmhost.VM, timeout: float = 600) -> int:
    """The app's counter, through the front end. Restarts under emulation take minutes when the host is
    busy: the wait is long, and a failure shows the units and their journals."""
    try:
        body = vm.wait_until(f"curl -fsS --max-time 5 {URL}/cgi-bin/hits", timeout=timeout).strip()
    except vmhost.VMError as exc:
        units = vm.ssh(f"systemctl list-units --all --no-pager '{APP}-*'", check=False).stdout
        logs = vm.ssh(f"journalctl -b --no-pager -o short-monotonic -u '{APP}-*' | tail -n 80", check=False)
        raise AssertionError(f"{exc}\n{units}\n{logs.stdout}") from exc
    words = body.split()
    assert words[0] == "hits" and words[2:] == ["from", "app", "1.0"], body
    return int(words[1])


def started_in_order(vm: vmhost.VM) -> None:
    """Each unit left 'inactive' only once what it waits for was active: the store active means healthy
    (its start waits for the health check), the seed active means it completed."""
    active = {s: monotonic(vm, UNITS[s], "ActiveEnterTimestampMonotonic") for s in SERVICES}
    began = {s: monotonic(vm, UNITS[s], "InactiveExitTimestampMonotonic") for s in SERVICES}
    assert all(active.values()), active
    assert began["seed"] >= active["store"] and began["app"] >= active["store"], (began, active)
    assert began["app"] >= active["seed"] and began["web"] >= active["app"], (began, active)


def journal(vm: vmhost.VM, service: str) -> str:
    return vm.ssh(f"journalctl -b -u {UNITS[service]} --no-pager -o cat", check=False).stdout


@pytest.fixture(scope="module")
def installed(vm: vmhost.VM, debs: Debs, timings: Timings) -> Debs:
    start = time.monotonic()
    command = debs.install.replace("apt ", "apt-get -y ", 1)  # the line the build printed
    vm.ssh(f"cd /root/compose && DEBIAN_FRONTEND=noninteractive {command}", timeout=1200)
    timings.record("compose: apt install of a four-service application", time.monotonic() - start)
    return debs


def test_install_brings_the_application_up_in_order(vm: vmhost.VM, installed: Debs) -> None:
    assert vm.ssh(f"systemctl is-active {TARGET}").stdout.strip() == "active"
    for service in SERVICES:
        state = vm.ssh(f"systemctl is-active {UNITS[service]}", check=False).stdout.strip()
        assert state == "active", f"{service}: {state}\n{journal(vm, service)[-3000:]}"
    started_in_order(vm)
    # The front end answers on its published port; through it the app server, through that the store.
    assert hits(vm) == 101  # the seed's SETNX, then one hit
    assert hits(vm) == 102
    token = vm.ssh(f"curl -fsS --max-time 5 {URL}/cgi-bin/token").stdout.strip()
    assert token == f"token {compose_app.TOKEN}"
    assert "seeding: 1" in journal(vm, "seed")
    # The secret is root-only on the host; the store's memory limit is the unit's.
    assert vm.ssh(f"stat -c %a:%U /etc/{APP}-app/secrets/app_token").stdout.strip() == "600:root"
    assert vm.ssh(f"systemctl show -p MemoryMax --value {UNITS['store']}").stdout.strip() == str(256 << 20)
    # The store's data is its named volume, in the service's data directory.
    vm.ssh(f"redis-cli -h $(cat /var/lib/{APP}-store/address) -p {realistic.REDIS_PORT} save")
    # The application's own network: its bridge and /24, where the store's address is.
    prefix = vm.ssh(f"cat /var/lib/ctr2svc/networks/ctr2svc-{APP}").stdout.strip()
    assert vm.ssh(f"cat /var/lib/{APP}-store/address").stdout.startswith(prefix + ".")
    assert prefix != "10.89.240" and vm.ssh(f"ip -o link show c2s-{APP}", check=False).returncode == 0
    vm.ssh(f"test -s /var/lib/{APP}-store/volumes/data/dump.rdb")
    # The whole application is the target's: its dependencies are the four services.
    deps = vm.ssh(f"systemctl list-dependencies --plain --no-pager {TARGET}").stdout
    assert all(UNITS[s] in deps for s in SERVICES), deps


def test_reboot_brings_it_back_in_order(vm: vmhost.VM, installed: Debs, timings: Timings) -> None:
    before = hits(vm)
    vm.reboot(timeout=900)  # the application starts during the boot: slow under emulation
    start = time.monotonic()
    after = hits(vm)
    timings.record("compose: reboot → the application answers", time.monotonic() - start)
    assert after == before + 1  # the store's data came back with it
    started_in_order(vm)
    assert vm.ssh(f"systemctl is-active {TARGET}").stdout.strip() == "active"


def test_upgrade_of_the_store_keeps_its_data(vm: vmhost.VM, installed: Debs) -> None:
    before = hits(vm)
    # apt marks a package given by its file as installed by hand: apt-mark auto gives it back to the
    # application, as the install line the build prints does, so that removing the application and
    # autoremove take it too (an upgrade from a repository keeps the mark by itself).
    command = f"apt-get install -y {installed.store_upgrade} && apt-mark auto {APP}-store"
    vm.ssh(f"DEBIAN_FRONTEND=noninteractive {command}", timeout=600)
    version = vm.ssh(f"dpkg-query -W -f '${{Version}}' {APP}-store").stdout.strip()
    assert version == "7.1"
    assert hits(vm) == before + 1
    for service in SERVICES:
        assert vm.ssh(f"systemctl is-active {UNITS[service]}", check=False).stdout.strip() == "active"


def test_remove_of_the_application_stops_everything(vm: vmhost.VM, installed: Debs) -> None:
    removed = vm.ssh("DEBIAN_FRONTEND=noninteractive apt-get remove -y shop-stack", timeout=600)
    for service in SERVICES:
        state = vm.ssh(f"systemctl is-active {UNITS[service]}", check=False).stdout.strip()
        if state not in ("inactive", "failed"):
            units = vm.ssh(f"systemctl list-units --all --no-pager '{APP}-*'", check=False).stdout
            shown = vm.ssh(f"systemctl show -p PartOf -p ConsistsOf {UNITS[service]} {TARGET}", check=False)
            logs = vm.ssh("journalctl -b --no-pager -o short-monotonic | tail -n 120", check=False).stdout
            raise AssertionError(f"{service}: {state}\n{removed.stdout}\n{units}\n{shown.stdout}\n{logs}")
    assert vm.ssh(f"curl -fsS --max-time 3 {URL}/", check=False).returncode != 0
    assert vm.ssh(f"ip -o link show c2s-{APP}", check=False).returncode != 0  # no service left on it
    # The target is masked, as debhelper masks a removed package's units: nothing starts the services
    # at boot any more. They stay installed until autoremove (the install marked them automatic).
    assert vm.ssh(f"systemctl is-enabled {TARGET}", check=False).stdout.strip() == "masked"
    vm.ssh("DEBIAN_FRONTEND=noninteractive apt-get autoremove -y", timeout=600)
    listed = vm.ssh(f"dpkg-query -W -f '${{Package}} ${{Status}}\\n' '{APP}-*'", check=False).stdout
    assert "install ok installed" not in listed, listed


def test_purge_leaves_nothing(vm: vmhost.VM, installed: Debs) -> None:
    names = vm.ssh(f"dpkg-query -W -f '${{Package}}\\n' '{APP}-*'").stdout.split()
    assert set(names) == {f"{APP}-{s}" for s in (*SERVICES, "stack")}  # removed, their files kept
    vm.ssh(f"dpkg --purge {' '.join(names)}", timeout=600)
    left = vm.ssh(
        f"ls -d /etc/{APP}-* /var/lib/{APP}-* /opt/containers/{APP}-* /run/{APP}-* "
        f"/lib/systemd/system/{APP}-* /etc/systemd/system/{APP}-* /etc/systemd/system/*/{APP}-* 2>/dev/null",
        check=False,
    ).stdout.split()
    assert left == [], left
    listed = vm.ssh(f"dpkg-query -W -f '${{Package}} ${{Status}}\\n' '{APP}-*' {' '.join(installed.layers)}",
                    check=False).stdout  # fmt: skip
    assert "installed" not in listed and "config-files" not in listed, listed
