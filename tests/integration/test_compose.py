"""`ctr2svc build --compose` on this host: a realistic three-service application (nginx in front, an app
server, a redis store with a named volume, a one-shot seed, a secret, an `.env`; see
tests/support/compose_app.py) built from images in a local registry, its packages read back with
dpkg-deb, installed with dpkg, and the application run by the installed helpers in the order its units
give (systemd is not PID 1 here: tests/vm/test_compose.py runs it under systemd).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, require
from tests.support import compose_app, realistic
from tests.support.registry import Registry, free_port

from .helpers import deb_listing, dpkg, leftovers, purge, sh, wait_for_http

pytestmark = pytest.mark.integration

APP = "c2s-shop"  # unique: the host's dpkg is shared with other tests
SERVICES = ("store", "seed", "app", "web")  # start order
PACKAGES = tuple(f"{APP}-{s}" for s in SERVICES)


def helper(name: str) -> Path:
    return Path("/usr/libexec") / name / "service"


def control(deb: Path, field: str) -> str:
    return sh("dpkg-deb", "-f", deb, field).stdout.strip()


@dataclass(frozen=True)
class Built:
    summary: dict[str, Any]
    out: Path
    project: Path
    web_port: int
    stderr: str

    def deb(self, service: str) -> Path:
        return Path(next(s["package"] for s in self.summary["services"] if s["compose_service"] == service))

    @property
    def files(self) -> list[Path]:
        found = [Path(self.summary["package"])]
        for service in self.summary["services"]:
            found += [Path(service["package"]), *(Path(layer["package"]) for layer in service["layers"])]
        return list(dict.fromkeys(found))


@pytest.fixture(scope="module")
def images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    missing = realistic.missing_requirements()
    require(not missing, f"cannot build the realistic images: {', '.join(missing)}")
    compose_app.push_images(registry, tmp_path_factory.mktemp("compose-images"))
    return registry


@pytest.fixture(scope="module")
def built(images: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("compose")
    port = free_port()
    project = compose_app.write_project(work / "shop", images.host, web_port=port)
    out = work / "dist"
    proc = ctr2svc("build", "--compose", project, "--project-name", APP, "-o", out, "--json")
    return Built(json.loads(proc.stdout), out, project, port, proc.stderr)


def test_one_package_per_service_and_the_application(built: Built) -> None:
    summary = built.summary
    assert summary["name"] == f"{APP}-stack" and summary["target"] == f"{APP}-stack.target"
    assert [s["compose_service"] for s in summary["services"]] == list(SERVICES)
    assert [s["name"] for s in summary["services"]] == list(PACKAGES)
    assert {s["version"] for s in summary["services"]} == {"7.0", "1.0"}
    # Layers are shared by default: the app and the seed are one image, so one layer package.
    assert {s["layers"][0]["name"] for s in summary["services"] if s["compose_service"] in ("app", "seed")}
    assert sorted(p.name for p in built.out.iterdir()) == sorted(p.name for p in built.files)
    stack = Path(summary["package"])
    assert stack.name == f"{APP}-stack_1_all.deb"
    assert control(stack, "Depends") == ", ".join(PACKAGES)
    assert summary["install"].startswith(f"apt install {stack} ")
    marked = summary["install"].split(" && apt-mark auto ", 1)[1].split()
    assert set(PACKAGES) <= set(marked) and all(m.startswith((APP, "ctr2svc-layer-")) for m in marked)


def test_service_packages_depend_on_what_they_wait_for(built: Built) -> None:
    depends = {s: control(built.deb(s), "Depends").split(", ") for s in SERVICES}
    assert {f"{APP}-store", f"{APP}-seed"} <= set(depends["app"])
    assert f"{APP}-app" in depends["web"] and f"{APP}-store" in depends["seed"]
    assert not [d for d in depends["store"] if d.startswith(APP)]
    assert "netavark" in depends["web"]  # the application's network


def test_files_secrets_and_conffiles(built: Built) -> None:
    app = deb_listing(built.deb("app"))
    secret = app[f"etc/{APP}-app/secrets/app_token"]
    assert (secret.mode, secret.owner) == ("-rw-------", "root/root")
    conffiles = sh("dpkg-deb", "-I", built.deb("app"), "conffiles").stdout.split()
    assert f"/etc/{APP}-app/secrets/app_token" in conffiles
    web = deb_listing(built.deb("web"))
    assert f"etc/{APP}-web/files/nginx/app.conf" in web
    listing = deb_listing(Path(built.summary["package"]))
    assert "lib/systemd/system/c2s-shop-stack.target" in listing


def test_a_rebuild_is_up_to_date(built: Built, ctr2svc: Cli) -> None:
    proc = ctr2svc("build", "--compose", built.project, "--project-name", APP, "-o", built.out, "--json")
    again = json.loads(proc.stdout)
    assert again["up_to_date"] and again["sha256"] == built.summary["sha256"]
    assert all(s["up_to_date"] for s in again["services"])
    assert [s["sha256"] for s in again["services"]] == [s["sha256"] for s in built.summary["services"]]


def test_a_failing_service_leaves_nothing(images: Registry, ctr2svc: Cli, tmp_path: Path) -> None:
    """The store builds, then the app's tag does not exist: the store's packages go again."""
    project = compose_app.write_project(tmp_path / "shop", images.host, app_tag="9.9")
    out = tmp_path / "dist"
    proc = ctr2svc("build", "--compose", project, "--project-name", APP, "-o", out, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "9.9" in proc.stderr.strip().splitlines()[-1]
    assert "Service store" in proc.stderr  # it was built before the app failed
    assert list(out.iterdir()) == []


@pytest.fixture(scope="module")
def installed(built: Built, integration_host: None) -> Iterator[Built]:
    require(any(Path(d, "netavark").exists() for d in ("/usr/lib/podman", "/usr/libexec/podman")),
            "netavark is not installed (apt install netavark aardvark-dns)")  # fmt: skip
    for name in (f"{APP}-stack", *PACKAGES):
        purge(name)
    dpkg("-i", *built.files)
    try:
        yield built
    finally:
        for name in reversed(PACKAGES):
            if helper(name).exists():
                sh(helper(name), "stop", check=False)
        dpkg("--purge", f"{APP}-stack", *PACKAGES)
        # The layer packages it installed: nothing else on this host needs them now.
        layers = sorted(
            {layer.name.split("_")[0] for layer in built.files if layer.name.startswith("ctr2svc-layer-")}
        )
        dpkg("--purge", *layers)


def start(name: str, *then: str) -> None:
    sh(helper(name), "prepare")
    with Path(f"/tmp/{name}-journal.log").open("ab") as log:
        subprocess.run([str(helper(name)), "start"], stdout=log, stderr=log, check=True, timeout=60)
    if then:
        sh(helper(name), *then)


def test_installed_files(installed: Built) -> None:
    secret = Path(f"/etc/{APP}-app/secrets/app_token")
    assert secret.read_text() == compose_app.TOKEN + "\n"
    # `$` as docker compose passes it: compose's `$$` halved once, a lone `$` kept.
    env = Path(f"/etc/{APP}-app/env").read_text().splitlines()
    assert f"APP_PASSWORD={compose_app.PASSWORD}" in env and f"APP_GREETING={compose_app.GREETING}" in env
    assert sh("stat", "-c", "%a %U", secret).stdout.split() == ["600", "root"]
    units = [Path(f"/lib/systemd/system/{name}.service") for name in PACKAGES]
    target = Path(f"/lib/systemd/system/{APP}-stack.target")
    proc = sh("systemd-analyze", "verify", "--man=no", target, *units, check=False)
    bad = [line for line in proc.stderr.splitlines() if "Unknown key" in line or "Failed to parse" in line]
    assert not bad, proc.stderr
    assert f"PartOf={APP}-stack.target" in units[2].read_text()


def test_the_application_runs_in_order(installed: Built) -> None:
    """As the units run it: the store (healthy), the seed to completion, the app (healthy), nginx; the
    front end answers on its published port and reaches the app, the app the store, by name."""
    store, seed, app, web = PACKAGES
    try:
        start(store, "wait-healthy", "120")
        sh(helper(seed), "prepare")
        ran = sh(helper(seed), "run-once")
        assert "seeding: 1" in ran.stdout + ran.stderr, ran.stdout + ran.stderr
        sh(helper(seed), "cleanup")
        start(app, "wait-healthy", "120")
        start(web)
        url = f"http://127.0.0.1:{installed.web_port}"
        assert wait_for_http(f"{url}/cgi-bin/hits", deadline=60).strip() == "hits 101 from app 1.0"
        assert wait_for_http(f"{url}/cgi-bin/hits").strip() == "hits 102 from app 1.0"
        assert wait_for_http(f"{url}/cgi-bin/token").strip() == f"token {compose_app.TOKEN}"
        # The app's root is read-only, its /tmp a tmpfs.
        runc = ("runc", "--root", f"/run/{app}/runc", "exec", app, "sh", "-c")
        # Its health check passed with `$${PORT}` (the container's $PORT); its environment has the `$`s
        # docker compose would give it.
        shown = sh(*runc, 'printf "%s|%s" "$APP_PASSWORD" "$APP_GREETING"').stdout
        assert shown == f"{compose_app.PASSWORD}|{compose_app.GREETING}"
        probe = sh(*runc, ": >/probe", check=False)
        assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe.stderr
        sh(*runc, ": >/tmp/probe")
        # The store's data is in its named volume, the service's data directory.
        sh(helper(store), "stop")
        assert Path(f"/var/lib/{store}/volumes/data/dump.rdb").is_file()
        start(store, "wait-healthy", "120")
        assert wait_for_http(f"{url}/cgi-bin/hits").strip() == "hits 103 from app 1.0"
    finally:
        for name in (web, app, seed, store):
            sh(helper(name), "stop", check=False)
    assert leftovers() == []


def test_each_application_has_its_own_network(
    installed: Built, images: Registry, ctr2svc: Cli, tmp_path: Path
) -> None:
    """A second application with the same service names: each is on a bridge and a /24 of its own, and
    each app server finds its own store by the short name `store`."""
    other = "c2s-two"
    project = compose_app.write_project(tmp_path / "two", images.host, web_port=free_port())
    proc = ctr2svc("build", "--compose", project, "--project-name", other, "-o", tmp_path / "dist", "--json")
    summary = json.loads(proc.stdout)
    files = [summary["package"], *(s["package"] for s in summary["services"])]
    files += [layer["package"] for s in summary["services"] for layer in s["layers"]]
    dpkg("-i", *dict.fromkeys(files))
    apps = (APP, other)
    try:
        for app in apps:
            start(f"{app}-store", "wait-healthy", "120")
            start(f"{app}-app")
        prefixes = {app: Path(f"/var/lib/ctr2svc/networks/ctr2svc-{app}").read_text().strip() for app in apps}
        assert len(set(prefixes.values())) == 2 and "10.89.240" not in prefixes.values(), prefixes
        stores = {app: Path(f"/var/lib/{app}-store/address").read_text().strip() for app in apps}
        for app in apps:
            assert stores[app].startswith(prefixes[app] + "."), (stores, prefixes)
            gateway = Path(f"/sys/class/net/c2s-{app}/address").read_text().strip()
            assert gateway == "02:c2:" + ":".join(f"{int(n):02x}" for n in f"{prefixes[app]}.1".split("."))
            runc = ("runc", "--root", f"/run/{app}-app/runc", "exec", f"{app}-app")
            found = sh(*runc, "nslookup", "store").stdout
            theirs = next(stores[a] for a in apps if a != app)
            assert stores[app] in found and theirs not in found, found
    finally:
        for app in apps:
            for service in ("app", "store"):
                sh(helper(f"{app}-{service}"), "stop", check=False)
        dpkg("--purge", f"{other}-stack", *(f"{other}-{s}" for s in SERVICES))
    assert leftovers() == []


def test_update_publishes_the_application(images: Registry, ctr2svc: Cli, tmp_path: Path) -> None:
    """`update -c compose.yaml`: every service and the application package into the repository; a
    second run with nothing moved publishes nothing."""
    project = compose_app.write_project(tmp_path / "shop", images.host)
    repo = tmp_path / "repo"
    first = ctr2svc("update", "-c", project, "--repo", repo)
    published = sorted(p.name for p in (repo / "deb").glob("*.deb"))
    assert "shop-stack_1_all.deb" in published, first.stderr
    assert {f"shop-{s}" for s in SERVICES} <= {name.split("_")[0] for name in published}
    assert "shop-stack" in first.stderr and "built" in first.stderr
    again = ctr2svc("update", "-c", project, "--repo", repo)
    rows = [line.split() for line in again.stderr.splitlines() if line.startswith("shop-")]
    assert rows and all(row[2] == "unchanged" for row in rows), again.stderr
    assert sorted(p.name for p in (repo / "deb").glob("*.deb")) == published
