"""Compose files: the real docker-compose reads them (validation, interpolation, .env, env_file), then
ctr2svc maps every key it supports and refuses every other one, naming the key and the service.

Golden files (tests/unit/golden/compose-*) hold the mapping of a realistic application
(tests/support/compose_app.py) and the units and scripts it renders; CTR2SVC_UPDATE_GOLDEN=1 rewrites
them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ctr2svc import __version__
from ctr2svc.apps import compose, compose_file, compose_keys, stack
from ctr2svc.apps.entries import Application
from ctr2svc.errors import ToolError, UsageError
from ctr2svc.image.reference import parse
from ctr2svc.model import HealthCheck, PackagedFile, PackageFormat, ServiceSpec, TmpfsMount
from ctr2svc.options.build_options import BuildOptions
from ctr2svc.options.request import resolve
from ctr2svc.options.values import RESTART, env_defaults, restart_policy
from ctr2svc.service import runtime_config, units
from ctr2svc.service.plan import health_check
from tests.support import compose_app

from .conftest import make_spec
from .test_templates import GOLDEN, sample_scan

REGISTRY = "registry.example.com:5000"
COMMON: dict[str, Any] = {"output_dir": Path("dist")}


def write(directory: Path, text: str, **files: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name.replace("__", "/").replace("_dot_", ".")).parent.mkdir(parents=True, exist_ok=True)
        (directory / name.replace("__", "/").replace("_dot_", ".")).write_text(content)
    path = directory / "compose.yaml"
    path.write_text(text)
    return path


def load(
    path: Path, name: str | None = None, allow_outside: tuple[Path, ...] = (), **common: Any
) -> Application:
    return compose.load(path, name, {**COMMON, **common}, allow_outside)


def service(app: Application, name: str) -> BuildOptions:
    return next(s.options for s in app.services if s.service == name)


@pytest.fixture
def shop(tmp_path: Path) -> Application:
    return load(compose_app.write_project(tmp_path / "shop", REGISTRY))


# --- reading: the reference loader ------------------------------------------------------------------


def test_the_binary_is_compose_gos() -> None:
    found = compose_file.find_compose()
    assert Path(found).name == "docker-compose"
    version = subprocess.run([found, "version"], capture_output=True, text=True, check=True).stdout
    assert "Docker Compose version v2." in version


def test_interpolation_env_file_and_dot_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_ENV", "environment")
    monkeypatch.delenv("UNSET", raising=False)
    path = write(
        tmp_path / "proj",
        """
services:
  api:
    image: ${REG}/api:${TAG:-3.1}
    env_file: api.env
    environment:
      A: ${FROM_ENV}
      B: ${UNSET:-fallback}
      C: ${DOTENV}
      PASSED_THROUGH:
""",
        api_dot_env="FROM_FILE=file\nA=overridden-by-environment\n",
        _dot_env="REG=reg.example.com\nDOTENV=dotenv\n",
    )
    app = load(path)
    opts = service(app, "api")
    assert app.name == "proj"  # the directory's name, as compose does
    assert str(opts.reference) == "reg.example.com/api:3.1"
    assert dict(e.split("=", 1) for e in opts.env) == {
        "A": "environment",
        "B": "fallback",
        "C": "dotenv",
        "FROM_FILE": "file",
    }


def test_project_name_names_the_packages(tmp_path: Path) -> None:
    path = write(tmp_path / "dir", "services:\n  db_main:\n    image: postgres:16\n")
    assert load(path).packages == ("dir-db-main",)
    app = load(path, "shop")
    assert app.name == "shop" and app.stack == "shop-stack" and app.packages == ("shop-db-main",)
    named = write(tmp_path / "other", "name: erp\nservices:\n  web:\n    image: nginx:1\n")
    assert load(named).packages == ("erp-web",)


def test_compose_validation_errors_are_one_line_usage_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "p", "services:\n  db:\n    image: postgres:16\n    bogus: 1\n")
    with pytest.raises(UsageError) as caught:
        load(path)
    message = caught.value.one_line()
    assert "services.db" in message and "'bogus'" in message and str(path) in message
    assert "\n" not in message and caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "services:\n  a:\n    image: a:1\n    depends_on: [b]\n"
            "  b:\n    image: b:1\n    depends_on: [a]\n",
            "dependency cycle detected: a -> b -> a",
        ),
        (
            "services:\n  a:\n    image: ${TAG:?set TAG to the release}\n",
            "required variable TAG is missing a value: set TAG to the release",
        ),
        ("services:\n  a:\n    image: a:1\n    depends_on: [nothere]\n", 'undefined service "nothere"'),
        ("services:\n  a:\n    image: a:1\n    ports: ['x:y']\n", "invalid containerPort: y"),
        ("nonsense: : :\n", "yaml: mapping values are not allowed"),
    ],
)
def test_composes_own_errors_are_one_line(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "p", text)
    with pytest.raises(UsageError) as caught:
        load(path)
    message = caught.value.one_line()
    assert problem in message and str(path) in message and "\n" not in message, message


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such compose file"):
        load(tmp_path / "nothing.yaml")


# --- mapping ---------------------------------------------------------------------------------------


def test_start_order_follows_depends_on(shop: Application) -> None:
    assert [s.service for s in shop.services] == ["store", "seed", "app", "web"]


def test_depends_on_conditions(shop: Application) -> None:
    store, seed, app, web = (service(shop, n) for n in ("store", "seed", "app", "web"))
    assert store.ready_health and not store.oneshot  # app waits for it to be healthy
    assert seed.oneshot and not seed.ready_health  # app waits for it to complete
    assert sorted(app.requires) == ["shop-seed", "shop-store"] and app.ready_health
    assert web.requires == ("shop-app",) and not web.ready_health
    assert {o.stack for o in (store, seed, app, web)} == {"shop-stack"}


def test_optional_dependencies_are_wants(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p",
        """
services:
  a:
    image: a:1
    depends_on:
      b: {condition: service_started, required: false}
  b:
    image: b:1
""",
    )
    a = service(load(path), "a")
    assert a.wants == ("p-b",) and a.requires == ()


def test_the_mapping_of_every_supported_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", "from-the-environment")
    path = write(
        tmp_path / "p",
        """
services:
  api:
    image: api:2
    platform: linux/arm64
    entrypoint: /bin/api
    command: ["serve", "--port", "80"]
    user: "1000:1000"
    working_dir: /srv
    ports: ["8080:80", "127.0.0.1:5353:53/udp"]
    expose: ["9000"]
    networks:
      default:
        aliases: [backend]
    container_name: api-main
    volumes:
      - data:/var/lib/api
      - ./conf/api.ini:/etc/api.ini
      - ./static:/srv/static:ro
      - /srv/host-certs:/certs:ro
      - type: tmpfs
        target: /cache
        tmpfs: {size: 1048576, mode: 0o700}
    tmpfs: [/tmp, "/run:size=64m"]
    healthcheck:
      test: curl -f http://localhost/
      interval: 1m30s
      timeout: 500ms
      retries: 4
      start_period: 2m
    restart: unless-stopped
    stop_signal: SIGQUIT
    stop_grace_period: 45s
    cap_add: [NET_ADMIN]
    cap_drop: [MKNOD]
    privileged: false
    read_only: true
    mem_limit: 512m
    cpus: 1.5
    pids_limit: 100
    secrets:
      - token
      - source: key
        target: /etc/api/key.pem
        mode: 0440
    configs:
      - site
    labels:
      com.example.team: core
    init: true
volumes:
  data:
secrets:
  token:
    file: ./token.txt
  key:
    environment: API_KEY
configs:
  site:
    content: "inline config"
""",
        conf__api_dot_ini="[api]\n",
        static__index_dot_html="<h1>hi</h1>\n",
        static__css__site_dot_css="body {}\n",
        token_dot_txt="t0ken\n",  # noqa: S106 - a test secret
    )
    o = service(load(path), "api")
    assert o.arch == "arm64"
    assert o.entrypoint == ("/bin/api",) and o.cmd == ("serve", "--port", "80")
    assert (o.user, o.working_dir, o.stop_signal, o.stop_timeout) == ("1000:1000", "/srv", "SIGQUIT", 45)
    assert o.network == "private" and o.publish == ("8080:80/tcp", "127.0.0.1:5353:53/udp")
    assert o.aliases == ("api", "backend", "api-main")
    assert o.volume_paths == ("/var/lib/api",)
    assert o.volumes == ("/etc/p-api/files/static:/srv/static:ro", "/srv/host-certs:/certs:ro")
    assert o.tmpfs == ("/tmp", "/run:size=64m", "/cache:size=1048576,mode=700")
    assert o.health_test == ("/bin/sh", "-c", "curl -f http://localhost/")
    assert (o.health_interval, o.health_timeout, o.health_retries, o.health_start_period) == (90, 1, 4, 120)
    assert o.restart == "unless-stopped" and resolve(o).restart == "always"
    assert (o.cap_add, o.cap_drop, o.privileged, o.read_only) == (("NET_ADMIN",), ("MKNOD",), False, True)
    assert (o.memory, o.cpus, o.pids_limit) == ("536870912", 1.5, 100)
    assert o.labels == ("com.example.team=core",) and o.init_process
    files = {f.dest: f for f in o.files}
    assert files["/etc/p-api/secrets/token"] == PackagedFile(
        str(tmp_path / "p/token.txt"), "/etc/p-api/secrets/token", "/run/secrets/token", "t0ken\n", 0o600
    )
    assert files["/etc/p-api/secrets/key"].content == "from-the-environment"
    assert (files["/etc/p-api/secrets/key"].target, files["/etc/p-api/secrets/key"].mode) == (
        "/etc/api/key.pem",
        0o440,
    )
    assert (files["/etc/p-api/configs/site"].target, files["/etc/p-api/configs/site"].mode) == (
        "/site",
        0o644,
    )
    assert files["/etc/p-api/files/conf/api.ini"].target == "/etc/api.ini"
    assert not files["/etc/p-api/files/conf/api.ini"].read_only
    # A directory: its files packaged, the directory mounted once (in volumes above).
    assert files["/etc/p-api/files/static/css/site.css"].target == ""
    assert files["/etc/p-api/files/static/index.html"].content == "<h1>hi</h1>\n"
    resolve(o)


def test_deploy_resources_and_restart_policy(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p",
        """
services:
  db:
    image: postgres:16
    deploy:
      replicas: 1
      resources:
        limits: {cpus: "0.5", memory: 1G, pids: 50}
      restart_policy: {condition: on-failure}
""",
    )
    o = service(load(path), "db")
    assert (o.cpus, o.memory, o.pids_limit, o.restart) == (0.5, "1073741824", 50, "on-failure")


def test_network_mode_host(tmp_path: Path) -> None:
    path = write(tmp_path / "p", "services:\n  a:\n    image: a:1\n    network_mode: host\n")
    assert service(load(path), "a").network == "host"


def test_healthcheck_none_switches_the_images_off(tmp_path: Path) -> None:
    path = write(tmp_path / "p", "services:\n  a:\n    image: a:1\n    healthcheck:\n      disable: true\n")
    assert service(load(path), "a").health_cmd == "none"


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("1m30s", 90), ("500ms", 1), ("2h", 7200), ("1.5s", 2), ("0s", 0)]
)
def test_durations(text: str, seconds: int) -> None:
    assert compose_keys.duration(Path("c.yaml"), "x", text) == seconds


def test_restart_policies() -> None:
    assert RESTART == {"no": "no", "always": "always", "on-failure": "on-failure", "unless-stopped": "always"}
    assert restart_policy(None, oneshot=False) == "on-failure"  # ctr2svc's default when compose says nothing
    assert restart_policy(None, oneshot=True) == "no"
    with pytest.raises(UsageError, match="others wait to complete"):
        restart_policy("always", oneshot=True)
    base = BuildOptions(reference=parse("a:1"))
    assert resolve(base).restart == "on-failure"
    with pytest.raises(UsageError, match="others wait to complete"):
        resolve(dataclasses.replace(base, oneshot=True, restart="always"))


def test_health_check_merges_compose_timings_over_the_images() -> None:
    image = {"Test": ["CMD-SHELL", "true"], "Interval": 10 * 10**9, "Retries": 7}
    opts = BuildOptions(reference=parse("a:1"), health_test=("pg_isready",), health_timeout=4)
    assert health_check(resolve(opts).health, image) == HealthCheck(("pg_isready",), 10, 4, 7, 0)
    later = resolve(dataclasses.replace(opts, health_start_period=60))
    assert health_check(later.health, None) == HealthCheck(("pg_isready",), 30, 4, 3, 60)


# --- refused keys: one line, the key, the service, a hint ---------------------------------------------

REFUSED = [
    ("    hostname: x\n", "services.a.hostname: not supported", "host name is its package name"),
    ("    logging: {driver: json-file}\n", "services.a.logging: not supported", "journal"),
    ("    extra_hosts: ['h:1.2.3.4']\n", "services.a.extra_hosts: not supported", "/etc/hosts"),
    ("    dns: 1.1.1.1\n", "services.a.dns: not supported", "resolver"),
    ("    ulimits: {nofile: 1024}\n", "services.a.ulimits: not supported", "LimitNOFILE"),
    ("    sysctls: {net.core.somaxconn: 1024}\n", "services.a.sysctls: not supported", "sysctl"),
    ("    shm_size: 1g\n", "services.a.shm_size: not supported", "/dev/shm"),
    ("    devices: ['/dev/fuse']\n", "services.a.devices: not supported", "devices"),
    ("    security_opt: ['no-new-privileges']\n", "services.a.security_opt: not supported", "seccomp"),
    ("    pid: host\n", "services.a.pid: not supported", "process namespace"),
    ("    ipc: host\n", "services.a.ipc: not supported", "IPC"),
    ("    stdin_open: true\n", "services.a.stdin_open: not supported", "docs/compose.md"),
    ("    network_mode: bridge\n", "services.a.network_mode: 'bridge' is not supported", "host"),
    ("    ports: ['80']\n", "published on a random host port", "one host port"),
    ("    restart: on-failure:3\n", "retry count", "on-failure"),
    ("    stop_grace_period: 2h\n", "7200 s is not 1 s to 1 h", "30s"),
    ("    volumes: ['./missing:/x:ro']\n", "does not exist beside the compose file", "create it"),
    ("    volumes: ['vol:/x:ro']\n", "read-only volume", "drop :ro"),
    ("    deploy: {replicas: 3}\n", "one container per service", "replicas"),
    ("    deploy: {resources: {reservations: {memory: 1G}}}\n", "deploy.resources.reservations", "remove"),
    ("    deploy: {placement: {constraints: ['node.role==manager']}}\n", "deploy.placement", "remove"),
    ("    healthcheck: {test: [CMD]}\n", "healthcheck.test: is not CMD", "CMD"),
    ("    secrets: [{source: s, uid: '0'}]\n", "secrets[0].uid: not supported", "remove"),
    ("    networks: [n1, n2]\n", "on 2 networks", "one network"),
    ("    cap_add: [FROBNICATE]\n", "unknown capability 'FROBNICATE'", "capabilities(7)"),
    ('    environment: {A: "x\\ny"}\n', "environment.A: has a line break", "secret"),
]


@pytest.mark.parametrize(("extra", "problem", "hint"), REFUSED, ids=[r[1][:40] for r in REFUSED])
def test_refused(tmp_path: Path, extra: str, problem: str, hint: str) -> None:
    text = f"services:\n  a:\n    image: a:1\n{extra}volumes:\n  vol:\nnetworks:\n  n1:\n  n2:\n"
    text += "secrets:\n  s:\n    file: ./s.txt\n"
    path = write(tmp_path / "p", text, s_dot_txt="x\n")
    with pytest.raises(UsageError) as caught:
        load(path)
    message = caught.value.one_line()
    assert problem in message and hint in message, message
    assert str(path) in message and "\n" not in message


def test_a_volume_shared_by_two_services_is_refused(tmp_path: Path) -> None:
    text = "services:\n  a:\n    image: a:1\n    volumes: [data:/a]\n"
    text += "  b:\n    image: b:1\n    volumes: [data:/b]\n"
    path = write(tmp_path / "p", text + "volumes:\n  data:\n")
    with pytest.raises(UsageError, match="the volume data is also a's"):
        load(path)


@pytest.mark.parametrize(
    ("use", "top", "problem"),
    [
        ("volumes: ['vol:/x']", "volumes:\n  vol:\n    driver: local\n", "volumes.vol.driver: not supported"),
        (
            "volumes: ['vol:/x']",
            "volumes:\n  vol:\n    external: true\n",
            "volumes.vol.external: not supported",
        ),
        ("networks: [net]", "networks:\n  net:\n    driver: macvlan\n", "networks.net"),
        (
            "networks: [net]",
            "networks:\n  net:\n    ipam: {config: [{subnet: 10.0.0.0/24}]}\n",
            "networks.net",
        ),
        ("secrets: [sec]", "secrets:\n  sec:\n    external: true\n", "secrets.sec.external: not supported"),
    ],
)
def test_refused_top_level_definitions(tmp_path: Path, use: str, top: str, problem: str) -> None:
    path = write(tmp_path / "p", f"services:\n  a:\n    image: a:1\n    {use}\n{top}")
    with pytest.raises(UsageError) as caught:
        load(path)
    assert problem in caught.value.one_line()


def test_port_ranges_are_one_mapping_each(tmp_path: Path) -> None:
    path = write(tmp_path / "p", "services:\n  a:\n    image: a:1\n    ports: ['8000-8001:80-81']\n")
    assert service(load(path), "a").publish == ("8000:80/tcp", "8001:81/tcp")


def test_openrc_and_apk_are_refused() -> None:
    with pytest.raises(UsageError, match="systemd only"):
        compose.check_format(PackageFormat.APK, None)
    base = BuildOptions(reference=parse("a:1"), init=None, format=PackageFormat.APK, stack="x-stack")
    with pytest.raises(UsageError, match="systemd only"):
        resolve(base)


# --- the CLI -----------------------------------------------------------------------------------------


def ctr2svc(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CTR2SVC_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "ctr2svc", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[2],
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("--entrypoint", "/x"), "--entrypoint describes one image, and --compose builds many"),
        (("-p", "8080:80"), "--publish describes one image"),
        (("--format", "apk"), "systemd only"),
        (("--init", "openrc"), "systemd only"),
        (("oci:x:1",), "give one of IMAGE, -c FILE or --compose FILE"),
    ],
)
def test_cli_refuses_what_does_not_go_with_compose(
    tmp_path: Path, args: tuple[str, ...], problem: str
) -> None:
    path = compose_app.write_project(tmp_path / "shop", REGISTRY)
    out = tmp_path / "out"
    proc = ctr2svc("build", "--compose", path, "-o", out, *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert problem in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()


def test_cli_bad_compose_file_writes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "p", "services:\n  a:\n    image: a:1\n    logging: {driver: syslog}\n")
    out = tmp_path / "out"
    proc = ctr2svc("build", "--compose", path, "-o", out, cwd=tmp_path)
    assert proc.returncode == 2
    assert "services.a.logging: not supported by ctr2svc" in proc.stderr
    assert not out.exists()


def test_project_name_needs_compose(tmp_path: Path) -> None:
    proc = ctr2svc("build", "oci:x:1", "--project-name", "x", cwd=tmp_path)
    assert proc.returncode == 2 and "--project-name goes with --compose" in proc.stderr


# --- what the packages hold: golden files -------------------------------------------------------------


def plan_document(app: Application, base: Path) -> str:
    """The mapping of every service, as JSON, with the temporary directory replaced by $DIR."""
    doc = {
        "name": app.name,
        "stack": app.stack,
        "services": {s.service: dataclasses.asdict(s.options) for s in app.services},
    }
    text = json.dumps(doc, indent=2, default=str, sort_keys=True) + "\n"
    return text.replace(str(base), "$DIR")


def compose_spec(opts: BuildOptions) -> ServiceSpec:
    """make_spec()'s image as the service OPTS describes (what plan_service decides from them)."""
    from ctr2svc.service.plan import option_fields

    spec = make_spec()
    request = resolve(opts)
    check = health_check(request.health, None) if request.ready_health else None
    return dataclasses.replace(
        spec,
        name=str(opts.name),
        layout=dataclasses.replace(spec.layout, name=str(opts.name)),
        health=check,
        network=opts.network,
        **option_fields(request),
    )


def shop_files(tmp_path: Path) -> dict[str, str]:
    base = tmp_path / "shop"
    app = load(compose_app.write_project(base, REGISTRY))
    files = {"compose-plan.json": plan_document(app, base)}
    for plan in app.services:
        spec = compose_spec(plan.options)
        for f in units.service_files(spec, sample_scan()):
            if f.dest.endswith((".service", "/mounts")) or ("/etc/shop-" in f.dest and "/files/" in f.dest):
                files[f"compose-{plan.service}-{Path(f.dest).name}"] = f.text
            if f.dest == spec.layout.service_env and plan.service in ("store", "seed"):
                files[f"compose-{plan.service}-service.env"] = f.text
        config = runtime_config.patch(
            json.loads((Path(__file__).parent / "data/umoci-config.json").read_text()), spec
        )
        files[f"compose-{plan.service}-config.json"] = json.dumps(config, indent=2, sort_keys=True) + "\n"
    for fmt in (PackageFormat.DEB, PackageFormat.RPM):
        packaged, scripts = stack.stack_files(app, fmt, "1")
        for f in packaged:
            files[f"compose-{fmt}-{Path(f.dest).name}"] = f.text
        files.update({f"compose-{fmt}-stack-{key}": text for key, text in scripts.items()})
    return {k: v.replace(f"ctr2svc {__version__}", "ctr2svc VERSION") for k, v in files.items()}


def _shop_names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return sorted(shop_files(Path(tmp)))


SHOP = _shop_names()


@pytest.mark.parametrize("name", SHOP)
def test_golden(tmp_path: Path, name: str) -> None:
    content = shop_files(tmp_path)[name]
    golden = GOLDEN / name
    if os.environ.get("CTR2SVC_UPDATE_GOLDEN"):
        golden.write_text(content)
    assert content == golden.read_text()


def test_golden_set_is_complete() -> None:
    assert {
        "compose-plan.json",
        "compose-app-shop-app.service",
        "compose-seed-shop-seed.service",
        "compose-store-service.env",
        "compose-web-app.conf",
        "compose-deb-shop-stack.target",
        "compose-deb-stack-postinstall",
        "compose-rpm-50-shop-stack.preset",
    } <= set(SHOP)


@pytest.mark.parametrize("name", [n for n in SHOP if "stack-" in n or n.endswith("-helper")])
def test_scripts_parse(tmp_path: Path, name: str) -> None:
    script = tmp_path / name
    script.write_text(shop_files(tmp_path)[name])
    subprocess.run(["sh", "-n", str(script)], check=True)
    if subprocess.run(["which", "shellcheck"], capture_output=True, check=False).returncode == 0:
        subprocess.run(["shellcheck", "-s", "sh", "-S", "warning", str(script)], check=True)


def test_units_verify(tmp_path: Path) -> None:
    """systemd-analyze verify reads the units as systemd will (it exits 0 on warnings: stderr too)."""
    files = shop_files(tmp_path)
    units_dir = tmp_path / "units"
    units_dir.mkdir()
    for name, text in files.items():
        if name.endswith((".service", ".target")) and name.startswith("compose-") and "-rpm-" not in name:
            (units_dir / name.split("-", 2)[2]).write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in units_dir.iterdir())],
        capture_output=True,
        text=True,
        check=False,
    )
    wrong = [
        line
        for line in proc.stderr.splitlines()
        if "Unknown key" in line or "Failed to parse" in line or "Invalid" in line or "bad-setting" in line
    ]
    assert not wrong, proc.stderr


def test_the_units_depend_and_order(tmp_path: Path) -> None:
    files = shop_files(tmp_path)
    app_unit = files["compose-app-shop-app.service"].splitlines()
    for line in (
        "PartOf=shop-stack.target",
        "Requires=shop-store.service",
        "After=shop-store.service",
        "Requires=shop-seed.service",
        "After=shop-seed.service",
        "WantedBy=shop-stack.target",
        "Restart=on-failure",
    ):
        assert line in app_unit
    seed = files["compose-seed-shop-seed.service"].splitlines()
    for line in ("Type=oneshot", "RemainAfterExit=yes", "ExecStart=/usr/libexec/shop-seed/service run-once"):
        assert line in seed
    assert "Restart=no" in seed and "PIDFile=/run/shop-seed/pid" not in seed
    store = files["compose-store-shop-store.service"].splitlines()
    assert "ExecStartPost=/usr/libexec/shop-store/service wait-healthy 480" in store
    assert "Restart=always" in files["compose-web-shop-web.service"].splitlines()  # unless-stopped
    target = files["compose-deb-shop-stack.target"]
    assert "Wants=shop-store.service shop-seed.service shop-app.service shop-web.service" in target


def test_the_runtime_config(tmp_path: Path) -> None:
    config = json.loads(shop_files(tmp_path)["compose-app-config.json"])
    assert config["root"]["readonly"] is True
    tmp = next(m for m in config["mounts"] if m["destination"] == "/tmp")
    assert tmp == {
        "destination": "/tmp",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "nodev", "noexec"],
    }
    web = json.loads(shop_files(tmp_path)["compose-web-config.json"])
    assert web["annotations"]["com.example.role"] == "frontend"


def test_init_mounts_tini_and_runs_below_it() -> None:
    spec = dataclasses.replace(make_spec(), init_process=True, working_dir="/srv")
    config = runtime_config.patch({"process": {}, "mounts": []}, spec)
    assert {"destination": "/sbin/docker-init", "type": "bind", "source": "/usr/bin/tini-static",
            "options": ["rbind", "ro"]} in config["mounts"]  # fmt: skip
    assert config["process"]["cwd"] == "/srv"
    assert spec.package_depends == ("tini",)
    assert dataclasses.replace(spec, format=PackageFormat.RPM).package_depends == ("tini-static",)


def test_tmpfs_options() -> None:
    from ctr2svc.options.values import tmpfs_mounts

    assert tmpfs_mounts(("/run:size=64m,mode=0755",)) == (TmpfsMount("/run", ("size=64m", "mode=0755")),)
    with pytest.raises(UsageError, match="is not PATH"):
        tmpfs_mounts(("run",))


def test_a_secret_is_root_only_and_a_conffile(tmp_path: Path) -> None:
    app = load(compose_app.write_project(tmp_path / "shop", REGISTRY))
    spec = compose_spec(service(app, "app"))
    secret = next(
        f for f in units.service_files(spec, sample_scan()) if f.dest.endswith("/secrets/app_token")
    )
    assert (secret.mode, secret.config, secret.content) == (0o600, True, compose_app.TOKEN + "\n")
    assert "/etc/shop-app/secrets/app_token /run/secrets/app_token ro" in (
        next(f for f in units.service_files(spec, sample_scan()) if f.dest.endswith("/mounts")).content
    )


def test_json_has_the_documented_fields(tmp_path: Path) -> None:
    from ctr2svc.distribution.record import BuildResult
    from tests.support.docs import json_fields, top_level

    app = load(compose_app.write_project(tmp_path / "shop", REGISTRY))
    files = []
    for name in ("shop-stack_1_all.deb", *(f"{p}_1.0_amd64.deb" for p in app.packages)):
        (tmp_path / name).write_bytes(b"x")
        files.append(tmp_path / name)
    done = tuple(
        (
            plan,
            BuildResult(
                path, str(plan.options.name), "1.0", "sha256:00", "x@sha256:00", "x.service", "/var/lib/x"
            ),
        )
        for plan, path in zip(app.services, files[1:], strict=True)
    )
    result = stack.ApplicationResult(app, files[0], "1", "00", False, done)
    shown = stack.summary(result)
    fields = json_fields("`ctr2svc build --compose --json`")
    assert set(shown) == top_level(fields)
    nested = {f.split(".", 1)[1] for f in fields if f.startswith("services[].")}
    assert all(set(service) == nested for service in shown["services"])
    assert shown["install"].startswith(f"apt install {files[0]} ") and "apt-mark auto" in shown["install"]


def test_a_compose_file_is_a_project_file(tmp_path: Path) -> None:
    from ctr2svc.apps.project import load as load_project
    from ctr2svc.apps.project import options

    path = compose_app.write_project(tmp_path / "shop", REGISTRY)
    project = load_project(path)
    assert project.application is not None and project.application.stack == "shop-stack"
    assert project.output_dir == tmp_path / "shop" / "dist"
    assert [e.name for e in project.images] == ["shop-store", "shop-seed", "shop-app", "shop-web"]
    entry = project.images[2]
    opts = options(project, entry, PackageFormat.RPM, min_version="1.0")
    assert (opts.format, opts.output_dir, opts.min_version) == (PackageFormat.RPM, project.output_dir, "1.0")
    assert entry.preset is not None and opts.requires == entry.preset.requires


# --- `$`: docker-compose's escaping undone once (issue 22) ---------------------------------------------
#
# `docker-compose config` doubles every `$` of what it prints, so that its output reads back as a compose
# file; `docker compose up` gives the containers the values before that doubling. Each row: where the
# value is, how the compose file (or .env, or env_file) writes it, and what the container gets.

DOLLAR_DOTENV = "DOT_PLAIN=pa$$word\nDOT_SINGLE='sin$gle'\nDOT_DOUBLE=\"dou$$ble\"\nDOT_LONE=lone$\n"
DOLLAR_ENV_FILE = "F_ESCAPED=a$$b\nF_SINGLE='q$x'\nF_LONE=lone$\nF_FROM_DOTENV=${DOT_PLAIN}\n"
DOLLAR_FILE = r"""
services:
  a:
    image: a:1
    command: ["sh", "-c", "echo $$HOME $$$$ $${X} ${UNSET_C2S:-d} end$"]
    entrypoint: "/bin/sh -c 'echo $$(cat /x)'"
    env_file: a.env
    environment:
      ESCAPED: "pa$$word"
      TWICE: "$$$$"
      BRACES: "$${VAR}"
      DEFAULT: "${UNSET_C2S:-x}"
      END: "cost$"
      LONE: "$"
      DOTENV_PLAIN: ${DOT_PLAIN}
      DOTENV_SINGLE: ${DOT_SINGLE}
      DOTENV_DOUBLE: ${DOT_DOUBLE}
      DOTENV_LONE: ${DOT_LONE}
      K$$1: not interpolated
    healthcheck:
      test: ["CMD-SHELL", "test -n \"$$HOME\""]
    labels:
      com.example.price: "$$5"
    secrets: [pw]
    configs: [site]
  b:
    image: b:1
    environment:
      - LIST_ESCAPED=a$$b
      - LIST_TWICE=$$$$
    healthcheck:
      test: ["CMD", "check", "--token=$$T"]
secrets:
  pw:
    file: ./pw$$.txt
configs:
  site:
    content: "price: $$5"
"""
DOLLARS = [
    ("command", "a", "cmd", ("sh", "-c", "echo $HOME $$ ${X} d end$")),
    ("entrypoint", "a", "entrypoint", ("/bin/sh", "-c", "echo $(cat /x)")),
    ("environment $$", "a", "env:ESCAPED", "pa$word"),
    ("environment $$$$", "a", "env:TWICE", "$$"),
    ("environment $${VAR}", "a", "env:BRACES", "${VAR}"),
    ("environment ${VAR:-x}", "a", "env:DEFAULT", "x"),
    ("environment lone $ at the end", "a", "env:END", "cost$"),
    ("environment lone $", "a", "env:LONE", "$"),
    (".env unquoted $$", "a", "env:DOTENV_PLAIN", "pa$word"),
    (".env single-quoted $", "a", "env:DOTENV_SINGLE", "sin$gle"),
    (".env double-quoted $$", "a", "env:DOTENV_DOUBLE", "dou$ble"),
    (".env lone $", "a", "env:DOTENV_LONE", "lone$"),
    ("environment key (not interpolated)", "a", "env:K$$1", "not interpolated"),
    ("env_file $$", "a", "env:F_ESCAPED", "a$b"),
    ("env_file single-quoted $", "a", "env:F_SINGLE", "q$x"),
    ("env_file lone $", "a", "env:F_LONE", "lone$"),
    ("env_file ${VAR} from .env", "a", "env:F_FROM_DOTENV", "pa$word"),
    ("environment list $$", "b", "env:LIST_ESCAPED", "a$b"),
    ("environment list $$$$", "b", "env:LIST_TWICE", "$$"),
    ("healthcheck CMD-SHELL", "a", "health_test", ("/bin/sh", "-c", 'test -n "$HOME"')),
    ("healthcheck CMD", "b", "health_test", ("check", "--token=$T")),
    ("labels", "a", "labels", ("com.example.price=$5",)),
    ("secret file: path", "a", "file:/etc/p-a/secrets/pw", "read from pw$.txt\n"),
    ("config content:", "a", "file:/etc/p-a/configs/site", "price: $5"),
]


@pytest.fixture(scope="module")
def dollars(tmp_path_factory: pytest.TempPathFactory) -> Application:
    os.environ.pop("UNSET_C2S", None)
    path = write(
        tmp_path_factory.mktemp("dollars") / "p",
        DOLLAR_FILE,
        _dot_env=DOLLAR_DOTENV,
        a_dot_env=DOLLAR_ENV_FILE,
    )
    (path.parent / "pw$.txt").write_text("read from pw$.txt\n")
    return load(path)


def mapped(opts: BuildOptions, field: str) -> object:
    if field.startswith("env:"):
        return dict(e.split("=", 1) for e in opts.env)[field[4:]]
    if field.startswith("file:"):
        return next(f.content for f in opts.files if f.dest == field[5:])
    return getattr(opts, field)


@pytest.mark.parametrize(("case", "service_name", "field", "container"), DOLLARS, ids=[d[0] for d in DOLLARS])
def test_dollars_reach_the_container_as_docker_compose_gives_them(
    dollars: Application, case: str, service_name: str, field: str, container: object
) -> None:
    assert mapped(service(dollars, service_name), field) == container


def test_dollars_in_the_generated_files(dollars: Application, umoci_config: dict[str, Any]) -> None:
    """What the package holds: /etc/NAME/env lines, config.json's args and annotations, the helper's
    health check command, the secret's and the config's files."""
    opts = service(dollars, "a")
    spec = dataclasses.replace(
        compose_spec(opts),
        args=(*(opts.entrypoint or ()), *(opts.cmd or ())),
        env=opts.env,
        health=health_check(resolve(opts).health, None),
    )
    files = {f.dest: f.content for f in units.service_files(spec, sample_scan())}
    env = files["/etc/p-a/env"].splitlines()
    for line in ("ESCAPED=pa$word", "TWICE=$$", "BRACES=${VAR}", "END=cost$", "DOTENV_SINGLE=sin$gle"):
        assert line in env
    assert files["/etc/p-a/secrets/pw"] == "read from pw$.txt\n"
    assert files["/etc/p-a/configs/site"] == "price: $5"
    health = shlex.join(("/bin/sh", "-c", 'test -n "$HOME"'))
    assert f"HEALTH_CMD={shlex.quote(health)}\n" in files[spec.layout.service_env]
    config = runtime_config.patch(umoci_config, spec)
    assert config["process"]["args"] == [
        "/bin/sh", "-c", "echo $(cat /x)", "sh", "-c", "echo $HOME $$ ${X} d end$",
    ]  # fmt: skip
    assert config["annotations"]["com.example.price"] == "$5"


def test_an_unescaped_dollar_is_not_guessed_at() -> None:
    """Should a compose ever print a single `$`, halving would corrupt the value: refused instead."""
    assert compose_file.unescape({"a$$": ["$$$$", "x$$"]}) == {"a$": ["$$", "x$"]}
    with pytest.raises(
        ToolError, match=r"a single '\$' in the model\.services\.a\.environment\.A,"
    ) as caught:
        compose_file.unescape({"services": {"a": {"environment": {"A": "pa$word"}}}})
    assert "pa$word" not in caught.value.one_line()  # it may be a password


# --- files from outside the project's directory (issue 22) -------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file and a directory beside the project, not in it; symlinks to them in the project."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "key.txt").write_text("not the project's\n")
    (tmp_path / "elsewhere" / "conf").mkdir()
    (tmp_path / "elsewhere" / "conf" / "a.ini").write_text("[a]\n")
    (tmp_path / "elsewhere" / "x.env").write_text("TOKEN=not the project's\n")
    project = tmp_path / "p"
    project.mkdir()
    (project / "key-link.txt").symlink_to(tmp_path / "elsewhere" / "key.txt")
    (project / "conf-link").symlink_to(tmp_path / "elsewhere" / "conf")
    (project / "env-link.env").symlink_to(tmp_path / "elsewhere" / "x.env")
    (project / "inside.txt").write_text("the project's\n")
    (project / "link-inside.txt").symlink_to("inside.txt")
    return project


USES_S = "secrets: [s]"
OUTSIDE = [
    ("secret by absolute path", USES_S, "secrets:\n  s:\n    file: /etc/shadow\n", "secrets.s.file",
     "/etc/shadow is outside"),
    ("secret up the tree", USES_S, "secrets:\n  s:\n    file: ../elsewhere/key.txt\n", "secrets.s.file",
     "elsewhere/key.txt is outside"),
    ("secret through a symlink", USES_S, "secrets:\n  s:\n    file: ./key-link.txt\n", "secrets.s.file",
     "key-link.txt (which leads to"),
    ("config through a symlink", "configs: [c]", "configs:\n  c:\n    file: ./key-link.txt\n",
     "configs.c.file", "key-link.txt (which leads to"),
    ("bind-mounted file through a symlink", "volumes: ['./key-link.txt:/k']", "", "services.a.volumes[0]",
     "key-link.txt (which leads to"),
    ("bind-mounted directory through a symlink", "volumes: ['./conf-link:/conf']", "",
     "services.a.volumes[0]", "conf-link (which leads to"),
    ("env_file up the tree", "env_file: ../elsewhere/x.env", "", "services.a.env_file",
     "elsewhere/x.env is outside"),
    ("env_file through a symlink", "env_file: [env-link.env]", "", "services.a.env_file",
     "env-link.env (which leads to"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "use", "top", "where", "says"), OUTSIDE, ids=[o[0] for o in OUTSIDE])
def test_files_outside_the_project_are_refused(
    outside: Path, case: str, use: str, top: str, where: str, says: str
) -> None:
    path = write(outside, f"services:\n  a:\n    image: a:1\n    {use}\n{top}")
    with pytest.raises(UsageError) as caught:
        load(path)
    line = caught.value.one_line()
    assert f"{path}: {where}: " in line and says in line and "outside the project's directory" in line, line
    assert "--allow-outside /" in line and "\n" not in line and caught.value.exit_code == 2


def test_allow_outside_packages_the_path_it_names(outside: Path) -> None:
    text = """
services:
  a:
    image: a:1
    secrets: [s]
    env_file: ../elsewhere/x.env
    volumes: ['./conf-link:/conf:ro', './key-link.txt:/k', './link-inside.txt:/i']
secrets:
  s:
    file: ../elsewhere/key.txt
"""
    path = write(outside, text)
    elsewhere = outside.parent / "elsewhere"
    opts = service(load(path, allow_outside=(elsewhere,)), "a")
    assert opts.env == ("TOKEN=not the project's",)
    files = {f.dest: f for f in opts.files}
    assert files["/etc/p-a/secrets/s"].content == "not the project's\n"
    assert files["/etc/p-a/files/conf-link/a.ini"].content == "[a]\n"
    assert files["/etc/p-a/files/key-link.txt"].target == "/k"
    assert files["/etc/p-a/files/link-inside.txt"].content == "the project's\n"  # a link within: fine
    # Naming one file allows that file, not its directory's others.
    with pytest.raises(UsageError, match=r"conf-link \(which leads to"):
        load(path, allow_outside=(elsewhere / "key.txt",))


def test_allow_outside_reaches_a_compose_file_given_as_a_project(outside: Path) -> None:
    """`build -c compose.yaml --allow-outside` and `update -c`: project.load passes it on."""
    from ctr2svc.apps.project import load as load_project

    path = write(outside, "services:\n  a:\n    image: a:1\n    volumes: ['./key-link.txt:/k']\n")
    with pytest.raises(UsageError, match="outside the project's directory"):
        load_project(path)
    project = load_project(path, (outside.parent / "elsewhere",))
    assert project.images[0].preset is not None
    assert project.images[0].preset.files[0].content == "not the project's\n"


def test_a_host_path_bind_mount_is_mounted_not_read(outside: Path) -> None:
    """A bind mount of a path outside the project is the host's at each start (nothing read here)."""
    path = write(outside, "services:\n  a:\n    image: a:1\n    volumes: ['../elsewhere:/e:ro']\n")
    opts = service(load(path), "a")
    assert opts.volumes == (f"{outside.parent / 'elsewhere'}:/e:ro",) and opts.files == ()


def test_cli_allow_outside(outside: Path, tmp_path: Path) -> None:
    path = write(
        outside, "services:\n  a:\n    image: a:1\n    secrets: [s]\nsecrets:\n  s:\n    file: /etc/shadow\n"
    )
    out = tmp_path / "out"
    proc = ctr2svc("build", "--compose", path, "-o", out, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "secrets.s.file: /etc/shadow is outside the project's directory" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
    proc = ctr2svc("build", "oci:x:1", "--allow-outside", "/etc", cwd=tmp_path)
    assert proc.returncode == 2 and "--allow-outside goes with a compose file" in proc.stderr


# --- names: services, variables; profiles (issue 22) ---------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [("Web", "web"), ("db_main", "db-main")])
def test_services_that_would_be_one_package_are_refused(tmp_path: Path, first: str, second: str) -> None:
    path = write(tmp_path / "p", f"services:\n  {first}:\n    image: a:1\n  {second}:\n    image: b:1\n")
    with pytest.raises(UsageError) as caught:
        load(path)
    line = caught.value.one_line()
    pair = sorted((f"services.{first}", f"services.{second}"))  # compose's order
    assert f"{pair[0]} and {pair[1]}: both would be the package p-{second.lower()}" in line, line
    assert "rename one of them" in line


def test_a_service_named_like_the_application_package_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "p", "services:\n  stack:\n    image: a:1\n")
    with pytest.raises(
        UsageError, match=r"services\.stack: its package would be named p-stack, the application's"
    ):
        load(path)


def test_dotted_variable_names_are_passed(tmp_path: Path) -> None:
    """As Docker passes them (elasticsearch's and opensearch's settings)."""
    text = "services:\n  es:\n    image: es:8\n    environment:\n      discovery.type: single-node\n"
    text += "      cluster.routing.allocation.disk.threshold_enabled: 'false'\n"
    opts = service(load(write(tmp_path / "p", text)), "es")
    assert sorted(opts.env) == [
        "cluster.routing.allocation.disk.threshold_enabled=false",
        "discovery.type=single-node",
    ]
    resolve(opts)


@pytest.mark.parametrize("item", ["discovery.type=single-node", "1ST=x", "K$$1=v", "a-b=", "A#B=x"])
def test_env_takes_the_names_docker_takes(item: str) -> None:
    assert env_defaults((item,)) == (item,)


@pytest.mark.parametrize("item", ["A B=x", "=x", "#A=x", "A", " A=x"])
def test_env_refuses_names_a_line_of_the_env_file_cannot_hold(item: str) -> None:
    with pytest.raises(UsageError, match="is not KEY=VALUE"):
        env_defaults((item,))


def test_dotted_variable_names_reach_the_runtime_config(tmp_path: Path, umoci_config: dict[str, Any]) -> None:
    """The helper's config.awk reads /etc/NAME/env as the package writes it (mawk: Debian's awk)."""
    spec = dataclasses.replace(make_spec(), env=("discovery.type=single-node", "K$$1=v"))
    files = {Path(f.dest).name: f.text for f in units.service_files(spec, sample_scan())}
    (tmp_path / "config.awk").write_text(files["config.awk"])
    (tmp_path / "env").write_text(files["env"])
    (tmp_path / "config.json").write_text(
        json.dumps(runtime_config.patch(umoci_config, spec), indent=2) + "\n"
    )
    none = tmp_path / "none"
    proc = subprocess.run(
        ["awk", "-v", "NAME=x", "-v", "ENTRYPOINT_N=1", "-v", f"ENVFILE={tmp_path / 'env'}",
         "-v", f"ARGSFILE={none}", "-v", f"MOUNTSFILE={none}", "-f", tmp_path / "config.awk",
         tmp_path / "config.json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    env = json.loads(proc.stdout)["process"]["env"]
    assert "discovery.type=single-node" in env and "K$$1=v" in env


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ('"A B": x', "'A B' is not a variable name ctr2svc can pass"),
        ("x-setting: x", "variables whose names start with x- do not reach the container"),
    ],
)
def test_variable_names_ctr2svc_cannot_pass_are_refused_in_composes_terms(
    tmp_path: Path, entry: str, says: str
) -> None:
    path = write(tmp_path / "p", f"services:\n  a:\n    image: a:1\n    environment:\n      {entry}\n")
    with pytest.raises(UsageError) as caught:
        load(path)
    line = caught.value.one_line()
    assert "services.a.environment" in line and says in line and "--env" not in line, line


def test_labels_compose_would_drop_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "p", "services:\n  a:\n    image: a:1\n    labels:\n      x-team: core\n")
    with pytest.raises(UsageError, match=r"services\.a\.labels: labels whose names start with x- are lost"):
        load(path)


def test_services_left_out_by_profiles_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "services:\n  app:\n    image: a:1\n  adminer:\n    image: adminer:4\n    profiles: [debug]\n"
    text += "  mail:\n    image: mailpit:1\n    profiles: [dev, test]\n"
    path = write(tmp_path / "p", text)
    monkeypatch.delenv("COMPOSE_PROFILES", raising=False)
    assert load(path).packages == ("p-app",)
    err = capsys.readouterr().err
    assert "2 service(s) left out, as their profiles are not enabled: adminer (profile debug), " in err
    assert "mail (profile dev or test)" in err and "set COMPOSE_PROFILES=debug,dev,test" in err
    monkeypatch.setenv("COMPOSE_PROFILES", "debug")
    assert set(load(path).packages) == {"p-app", "p-adminer"}
    assert "mail (profile dev or test)" in capsys.readouterr().err
    monkeypatch.setenv("COMPOSE_PROFILES", "debug,dev")
    load(path)
    assert "left out" not in capsys.readouterr().err


# --- numbers out of range (issue 22) ------------------------------------------------------------------

OUT_OF_RANGE = [
    ("    pids_limit: 99999999999999999999\n", "services.a.pids_limit: -9223372036854775808 is not"),
    ("    pids_limit: 5000000\n", "services.a.pids_limit: 5000000 is not a number of processes"),
    ("    deploy: {resources: {limits: {pids: -5}}}\n", "deploy.resources.limits.pids: -5 is not"),
    ("    cpus: -1\n", "services.a.cpus: -1.0 is not a number of CPUs"),
    ("    cpus: 5000\n", "services.a.cpus: 5000.0 is not a number of CPUs"),
    ("    mem_limit: -1\n", "services.a.mem_limit: -1 is not a memory limit"),
    ("    healthcheck: {test: [CMD, x], retries: 99999999999999999999}\n", "healthcheck.retries: 9223372036"),
    ("    healthcheck: {test: [CMD, x], start_period: 100000h}\n", "start_period: 100000h0m0s is more than"),
    ("    healthcheck: {test: [CMD, x], interval: 48h}\n", "interval: 48h0m0s is more than 86400 s"),
    ("    volumes: [{type: tmpfs, target: /x, tmpfs: {mode: 99999}}]\n",
     "volumes[0].tmpfs.mode: 303237 (octal) is not a file mode"),
    ("    user: '99999999999:0'\n", "services.a.user: 99999999999 is not a user or group id"),
    ("    user: '0:4294967295'\n", "services.a.user: 4294967295 is not a user or group id"),
    ("    ports: ['0:80']\n", "container port 80 published on a random host port"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "says"), OUT_OF_RANGE, ids=[o[1][:50] for o in OUT_OF_RANGE])
def test_numbers_out_of_range_are_refused(tmp_path: Path, extra: str, says: str) -> None:
    path = write(tmp_path / "p", f"services:\n  a:\n    image: a:1\n{extra}")
    with pytest.raises(UsageError) as caught:
        load(path)
    line = caught.value.one_line()
    assert says in line and str(path) in line and "\n" not in line, line
    assert "--" not in line.split("(hint:")[0], line  # compose's terms, not the CLI's


def test_zero_means_what_it_means_to_docker(tmp_path: Path) -> None:
    """Health check timings of 0 are Docker's "not given" (the image's, else the defaults); a pids
    limit of -1 is no limit."""
    text = "services:\n  a:\n    image: a:1\n    pids_limit: -1\n"
    text += "    healthcheck: {test: [CMD, x], retries: 0, interval: 0s, timeout: 0s}\n"
    opts = service(load(write(tmp_path / "p", text)), "a")
    assert (opts.health_retries, opts.health_interval, opts.health_timeout, opts.pids_limit) == (
        None,
        None,
        None,
        0,
    )
    image = {"Test": ["CMD", "y"], "Interval": 10 * 10**9, "Timeout": 2 * 10**9, "Retries": 7}
    assert health_check(resolve(opts).health, image) == HealthCheck(("x",), 10, 2, 7, 0)


# --- every problem of a file at once (issue 24) --------------------------------------------------------


def test_every_refused_key_is_reported_at_once(tmp_path: Path) -> None:
    text = """
services:
  a:
    image: a:1
    hostname: a
    logging: {driver: syslog}
    deploy: {resources: {reservations: {memory: 1G}}}
  b:
    image: b:1
    devices: ['/dev/fuse']
    healthcheck: {test: [CMD, x], retries: 99999999999999999999}
  c:
    image: c:1
    volumes: ['data:/v']
volumes:
  data:
    driver: local
"""
    path = write(tmp_path / "p", text)
    with pytest.raises(UsageError) as caught:
        load(path)
    line = caught.value.one_line()
    assert line.startswith(f"{path}: 6 problems: "), line
    for where in (
        "services.a.hostname: not supported by ctr2svc (hint: drop it: a service's host name",
        "services.a.logging: not supported by ctr2svc (hint: drop it: the output goes to the journal",
        "services.a.deploy.resources.reservations: not supported",
        "services.b.devices: not supported",
        "services.b.healthcheck.retries: 9223372036854775808 is not a number of failures",
        "volumes.data.driver: not supported",
    ):
        assert where in line, line
    assert "\n" not in line and caught.value.exit_code == 2
