"""Conformance with Docker on realistic images, podman as the reference (issue 12).

Each image of tests/support/realistic.py (Debian's own nginx, PostgreSQL, redis, apache2, Python, plain
Debian, shaped like their official images) runs twice on this host: with ``podman run --network host``
and as the installed ctr2svc service (``ctr2svc build``, ``dpkg -i``, then the installed helper's
``prepare`` and ``start`` exactly as the unit runs them, its stdout and stderr on a UNIX stream socket as
journald gives a unit: tests/conformance/supervise.py plays systemd). The probe (probe.sh, run as root
in the running container) reports what the container's processes get; the two reports are compared
field by field. Every difference must be zero or explained in DIFFERENCES, so a new one fails.

The service must also work: nginx and httpd answer and their access-log line reaches the log, psql
connects, redis answers PING, and the image's STOPSIGNAL stops each one cleanly in both runtimes.

    python -m pytest tests/conformance -s            # -s prints each image's table of differences
    CTR2SVC_CONFORMANCE_REPORT=FILE                  # also appends the tables to FILE
Each image's probe output and logs (both runtimes) are kept in pytest's tmp dir, conformance-IMAGE*/.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, Cli, require
from tests.integration.helpers import http_get, sh
from tests.support import realistic
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

PROBE = (Path(__file__).parent / "probe.sh").read_text()
PODMAN_ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768")
STOP_TIMEOUT = 30
IMAGES = list(realistic.SPECS)

# Docker's default capability set (what ctr2svc gives) and podman 4.3's (no NET_RAW, MKNOD, AUDIT_WRITE).
DOCKER_CAPS = "00000000a80425fb"
PODMAN_CAPS = "00000000800405fb"
#: Processes that come and go while the probe runs (the debian image's `sleep 1`).
TRANSIENT = ("sleep",)
#: What the probe's own process needs beyond a plain root exec: read any process's /proc entries.
PROBE_CAPS = ("CAP_SYS_PTRACE", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH")

#: Every difference between podman (the reference) and ctr2svc that is on purpose or comes from the
#: reference itself, with the reason. Keys are fnmatch patterns over "IMAGE:FIELD" or "FIELD".
#: Before comparing, normalise() reads podman's default capability set as Docker's (podman 4.3 leaves
#: out NET_RAW, MKNOD and AUDIT_WRITE: ctr2svc gives Docker's), the host's name as "<host's name>" and
#: namespace ids as host/private; transient processes (TRANSIENT) are left out.
DIFFERENCES: dict[str, str] = {
    # ---- podman-specific, not Docker
    "file./run/.containerenv": "podman's own marker file; Docker has /.dockerenv instead, ctr2svc neither",
    "mount./run/.containerenv": "podman's own marker file (bind mount)",
    "init.env.container": "podman sets container=podman; Docker does not",
    "init.env.TERM": "podman sets TERM=xterm without a terminal; Docker only with -t",
    "etc.hosts": "podman writes its own /etc/hosts (host.containers.internal, its name); ctr2svc copies "
    "the host's at each start, as `docker run --network host` does",
    "pyapp:init.env.HOME": "USER 10001 has no passwd entry: Docker sets HOME=/ as ctr2svc does; podman "
    "4.3 sets the working directory",
    "limit.Max open files": "podman here needs --ulimit nofile=20000:20000 (sandbox without "
    "CAP_SYS_RESOURCE, FACTS.md); ctr2svc takes the unit's LimitNOFILE=1024:524288",
    "limit.Max processes": "podman here needs --ulimit nproc=32768:32768 (FACTS.md); ctr2svc keeps the "
    "host's",
    "limit.Max pending signals": "the host's per-user default; podman copies its own process's value",
    "ns.uts": "podman makes a UTS namespace holding the host's name; ctr2svc shares the host's (no UTS "
    "namespace, docs/service.md); both see the host's hostname (uts.hostname is compared)",
    "ns.cgroup": "this host mounts cgroup v1 + v2 (hybrid): podman then keeps the host's cgroup namespace, "
    "ctr2svc makes a private one as podman and Docker do on cgroup v2",
    "mount./sys/fs/cgroup*": "cgroup mounts: podman uses the v1 hierarchies on this hybrid host",
    "mount./proc/acpi": "masked paths: podman 4.3's list; ctr2svc uses Docker's",
    "mount./sys/dev/block": "masked paths: podman 4.3's list; ctr2svc uses Docker's",
    "mount./etc/hostname": "podman bind-mounts a generated /etc/hostname file",
    "mount./etc/hosts": "podman bind-mounts a generated file; ctr2svc a per-start copy of the host's",
    "mount./etc/resolv.conf": "podman bind-mounts a generated copy; ctr2svc a per-start copy of the host's",
    "file./": "podman shows / as 0555 (containers/storage's mount point) whatever the image says; "
    "Docker and ctr2svc give the image's root entry ('./' 0755 in the base layer)",
    "file./etc/mtab": "podman adds /etc/mtab -> /proc/mounts when the image lacks it; Docker does not",
    "mount./dev": "podman adds noexec to /dev; Docker's /dev is nosuid,strictatime,mode=755 as ctr2svc's",
    "mount./proc/keys": "masked: a bind of the container's /dev/null carries /dev's flags (see /dev)",
    "mount./proc/timer_list": "masked: a bind of the container's /dev/null carries /dev's flags (see /dev)",
    "mount./proc/kcore": "masked: a bind of the container's /dev/null carries /dev's flags (see /dev)",
    "mount./proc/interrupts": "masked paths: Docker (since 25) and ctr2svc mask /proc/interrupts, podman 4.3 "
    "does not",
    "*:mount./data": "volume: podman mounts its volumes nodev,nosuid; Docker's and ctr2svc's are plain binds",
    "*:mount./var/lib/postgresql/data": "volume: podman mounts its volumes nodev,nosuid (see /data)",
    "*:mount./srv/data": "volume: podman mounts its volumes nodev,nosuid (see /data)",
    "*:mount./srv/cache": "volume: podman mounts its volumes nodev,nosuid (see /data)",
    "*:mount./var/log/app": "volume: podman mounts its volumes nodev,nosuid (see /data)",
    "pyapp:proc.*.Groups": "USER 10001 without passwd entry: podman adds gid 0 as a supplementary group; "
    "Docker takes supplementary groups from /etc/group and --group-add only (none here), as ctr2svc",
    # ---- ctr2svc, on purpose
    "*NoNewPrivs": "ctr2svc sets noNewPrivileges, Docker and podman do not: a setuid binary cannot "
    "regain privileges (docs/service.md 'Security profile')",
}


# --------------------------------------------------------------------------------------------------
# Running an image both ways


@dataclass
class Run:
    """One image run by one runtime: what the probe saw, the log, the checks, the stop."""

    runtime: str
    probe: dict[str, str] = field(default_factory=dict)
    log: str = ""
    checks: dict[str, str] = field(default_factory=dict)
    exit: str = ""
    stop_seconds: float = 0.0


def _wait(predicate: Callable[[], bool], timeout: float, what: str, log: Callable[[], str]) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s; log:\n{log()[-3000:]}")


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def parse_probe(text: str) -> dict[str, str]:
    facts: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("\t")
        if sep:
            facts[key] = value
    return facts


def redis_command(port: int, *words: str) -> str:
    payload = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload.encode())
        return s.recv(4096).decode().strip()


def service_checks(
    spec: realistic.Spec, exec_: Callable[..., subprocess.CompletedProcess[str]]
) -> dict[str, str]:
    """Talk to the running service like a client: what it answered."""
    port = spec.port
    checks: dict[str, str] = {}
    if spec.name in ("nginx", "httpd", "pyapp"):
        assert port is not None
        checks["http"] = http_get(f"http://127.0.0.1:{port}/", timeout=5).strip()
    elif spec.name == "redis":
        assert port is not None
        checks["ping"] = redis_command(port, "PING")
        checks["set"] = redis_command(port, "SET", "k", "v42")
        checks["get"] = redis_command(port, "GET", "k")
    elif spec.name == "postgres":
        if shutil.which("psql"):
            checks["psql"] = sh(
                "psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-tAc", "select 6 * 7"
            ).stdout.strip()
        # The image's own client over the unix socket, as `docker exec db psql` does.
        inner = exec_("gosu", "postgres", "psql", "-tAc", "select current_user")
        checks["psql-in-container"] = inner.stdout.strip() or inner.stderr.strip()
    elif spec.name == "debian":
        health = exec_("/usr/local/bin/app", "health")
        checks["healthcheck"] = f"exit {health.returncode}"
    return checks


EXPECTED_CHECKS: dict[str, dict[str, str]] = {
    "nginx": {"http": "conformance nginx"},
    "httpd": {"http": "<html><body><h1>It works!</h1></body></html>"},
    "pyapp": {"http": "hello from python as 10001:0"},
    "redis": {"ping": "+PONG", "set": "+OK", "get": "$3\r\nv42"},
    "postgres": {"psql": "42", "psql-in-container": "postgres"},
    "debian": {"healthcheck": "exit 0"},
}

# A request's line in each server's access log, as it reaches stdout.
ACCESS_LOG_LINE = {
    "nginx": '"GET / HTTP/1.1" 200',
    "httpd": '"GET / HTTP/1.1" 200',
    "pyapp": '"GET / HTTP/1.1" 200',
}


def _ready(spec: realistic.Spec, log: Callable[[], str]) -> Callable[[], bool]:
    def ready() -> bool:
        if spec.ready_message and spec.ready_message not in log():
            return False
        return spec.port is None or _port_open(spec.port)

    return ready


def run_podman(spec: realistic.Spec, ref: str) -> Run:
    result = Run("podman")
    name = f"conformance-{spec.name}"
    sh("podman", "rm", "--force", "--volumes", name, check=False)
    sh("podman", "pull", "--quiet", "--tls-verify=false", ref)

    def log() -> str:
        proc = sh("podman", "logs", name, check=False)
        return proc.stdout + proc.stderr

    try:
        sh("podman", "run", "--detach", "--name", name, "--network", "host", *PODMAN_ULIMITS, ref)
        _wait(_ready(spec, log), 120, f"podman: {spec.name} not ready", log)

        def exec_(*argv: str) -> subprocess.CompletedProcess[str]:
            return sh("podman", "exec", "-u", "0", name, *argv, check=False)

        result.checks = service_checks(spec, exec_)
        mark = f"conformance-mark-{uuid.uuid4().hex[:8]}"
        # --privileged for the probe alone: CAP_SYS_PTRACE to read other users' /proc/PID/environ.
        probe = sh(
            "podman", "exec", "--privileged", "-u", "0", "-e", "CONFORMANCE_PROBE=1",
            "-e", f"CONFORMANCE_MARK={mark}", name, "sh", "-c", PROBE,
        )  # fmt: skip
        result.probe = parse_probe(probe.stdout)
        result.probe["stdio.mark"] = _marks(mark, log)
        result.probe["exec.root.caps"] = _exec_caps(exec_)
        started = time.monotonic()
        sh("podman", "stop", "--time", str(STOP_TIMEOUT), name)
        result.stop_seconds = time.monotonic() - started
        result.exit = (
            "exited " + sh("podman", "inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        )
        result.log = log()
    finally:
        sh("podman", "rm", "--force", "--volumes", name, check=False)
        sh("podman", "rmi", "--force", ref, check=False)
    return result


def _exec_caps(exec_: Callable[..., subprocess.CompletedProcess[str]]) -> str:
    """The capability sets of a plain root exec (`docker exec -u 0`), as a debugging admin gets."""
    proc = exec_("grep", "^Cap", "/proc/self/status")
    return " ".join(line.split()[1] for line in proc.stdout.splitlines()) or proc.stderr.strip()


def dpkg(*args: str | Path) -> None:
    """dpkg, waiting for its lock while another test on this machine holds it."""
    end = time.monotonic() + 300
    while True:
        proc = sh("dpkg", *args, check=False)
        if proc.returncode == 0:
            return
        if "lock" not in proc.stderr or time.monotonic() > end:
            raise AssertionError(f"dpkg {args} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        time.sleep(2)


def dpkg_purge(name: str) -> None:
    if sh("dpkg-query", "-W", name, check=False).returncode == 0:
        dpkg("--purge", name)


def _marks(mark: str, log: Callable[[], str]) -> str:
    """Which of the probe's lines written to the service's fd 1 and 2 reached its log."""
    end = time.monotonic() + 3
    while True:
        text = log()
        found = [fd for fd in ("fd1", "fd2") if f"{mark} {fd}" in text]
        if len(found) == 2 or time.monotonic() > end:
            return ",".join(found) or "none"
        time.sleep(0.2)


def run_ctr2svc(spec: realistic.Spec, ref: str, cli: Cli, work: Path) -> Run:
    result = Run("ctr2svc")
    name = f"conformance-{spec.name}"
    # -q after the subcommand, as people type it.
    build = cli("build", "-q", ref, "--name", name, "--stop-timeout", str(STOP_TIMEOUT), "-o", work)
    deb = Path(build.stdout.strip())
    dpkg_purge(name)
    dpkg("-i", deb)
    helper = f"/usr/libexec/{name}/service"
    log_path, status_path = work / "service.log", work / "exit-status"
    log_path.write_text("")

    def log() -> str:
        return log_path.read_text(errors="replace")

    supervisor = None
    try:
        sh(helper, "prepare")
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "tests.conformance.supervise", name, str(log_path), str(status_path)],
            cwd=REPO,
        )
        started = status_path.with_name(status_path.name + ".started")
        _wait(started.exists, 60, f"ctr2svc: {name} start did not return", log)
        assert started.read_text().strip() == "started", f"{started.read_text()}\n{log()}"
        _wait(_ready(spec, log), 120, f"ctr2svc: {spec.name} not ready", log)
        runc = ("runc", "--root", f"/run/{name}/runc", "exec")

        def exec_(*argv: str) -> subprocess.CompletedProcess[str]:
            return sh(*runc, "--user", "0:0", name, *argv, check=False)

        result.checks = service_checks(spec, exec_)
        mark = f"conformance-mark-{uuid.uuid4().hex[:8]}"
        caps = [arg for cap in PROBE_CAPS for arg in ("--cap", cap)]
        probe = sh(
            *runc, "--user", "0:0", *caps, "--env", "CONFORMANCE_PROBE=1",
            "--env", f"CONFORMANCE_MARK={mark}", name, "sh", "-c", PROBE,
        )  # fmt: skip
        result.probe = parse_probe(probe.stdout)
        result.probe["stdio.mark"] = _marks(mark, log)
        result.probe["exec.root.caps"] = _exec_caps(exec_)
        t0 = time.monotonic()
        sh(helper, "stop")
        result.stop_seconds = time.monotonic() - t0
        supervisor.wait(timeout=30)
        result.exit = status_path.read_text().strip()
        result.log = log()
    finally:
        sh(helper, "stop", check=False)
        if supervisor is not None and supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        dpkg_purge(name)
    return result


@dataclass
class Pair:
    spec: realistic.Spec
    podman: Run
    ctr2svc: Run


@pytest.fixture(scope="module")
def podman_host(integration_host: None) -> None:
    require(shutil.which("podman") is not None, "podman is not installed (the reference runtime)")
    missing = realistic.missing_requirements()
    require(not missing, f"cannot build the realistic images: {', '.join(missing)}")


_PAIRS: dict[str, Pair] = {}


@pytest.fixture(params=IMAGES)
def pair(
    request: pytest.FixtureRequest,
    podman_host: None,
    registry: Registry,
    ctr2svc: Cli,
    tmp_path_factory: pytest.TempPathFactory,
) -> Pair:
    """IMAGE run by podman and by ctr2svc, once per session (every test of an image shares it)."""
    image: str = request.param
    if image not in _PAIRS:
        spec = realistic.SPECS[image]
        ref = registry.push(realistic.build(image), f"conformance/{image}", "1")
        work = tmp_path_factory.mktemp(f"conformance-{image}")
        found = Pair(spec, run_podman(spec, ref), run_ctr2svc(spec, ref, ctr2svc, work))
        # Raw material for whoever reads a failure.
        for run in (found.podman, found.ctr2svc):
            (work / f"{run.runtime}.probe.json").write_text(json.dumps(run.probe, indent=1, sort_keys=True))
            (work / f"{run.runtime}.log").write_text(run.log)
        _PAIRS[image] = found
    return _PAIRS[image]


# --------------------------------------------------------------------------------------------------
# Comparing


def host_namespaces() -> dict[str, str]:
    return {f"ns.{p.name}": str(p.readlink()) for p in Path("/proc/self/ns").iterdir()}


def normalise(probe: dict[str, str], spec: realistic.Spec) -> dict[str, str]:
    """Facts that can be compared between runtimes: namespaces as host/private, no probe noise."""
    host = host_namespaces()
    facts: dict[str, str] = {}
    for key, value in probe.items():
        if key.startswith(tuple(f"proc.{name}." for name in TRANSIENT)):
            continue
        value = value.replace(PODMAN_CAPS, DOCKER_CAPS)
        if key.startswith("ns."):
            value = "host" if host.get(key) == value else "private"
        elif key.startswith(("exec.id", "exec.cwd", "stdio.mark")):
            continue
        elif key in ("init.env.HOSTNAME", "etc.hostname", "uts.hostname"):
            value = "<host's name>" if value == socket.gethostname() else value
        facts[key] = value
    return facts


def explain(image: str, key: str) -> str | None:
    for pattern, reason in DIFFERENCES.items():
        if fnmatch.fnmatchcase(key, pattern) or fnmatch.fnmatchcase(f"{image}:{key}", pattern):
            return reason
    return None


def differences(pair: Pair) -> list[tuple[str, str, str, str | None]]:
    """(field, podman's value, ctr2svc's value, reason or None) for every field that differs."""
    ref, got = normalise(pair.podman.probe, pair.spec), normalise(pair.ctr2svc.probe, pair.spec)
    rows = []
    for key in sorted(ref.keys() | got.keys()):
        a, b = ref.get(key, "<absent>"), got.get(key, "<absent>")
        if a != b:
            rows.append((key, a, b, explain(pair.spec.name, key)))
    return rows


def table(rows: list[tuple[str, str, str, str | None]]) -> str:
    def cut(text: str, n: int = 60) -> str:
        return text if len(text) <= n else text[: n - 1] + "…"

    lines = [f"{'field':<48} {'podman':<40} {'ctr2svc':<40} reason"]
    for key, a, b, reason in rows:
        lines.append(f"{cut(key, 48):<48} {cut(a, 40):<40} {cut(b, 40):<40} {reason or 'UNEXPLAINED'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Tests


def test_probe_sees_the_container(pair: Pair) -> None:
    """The probe itself works in both runtimes (else every comparison would pass vacuously)."""
    for run in (pair.podman, pair.ctr2svc):
        facts = run.probe
        # postgres moves into PGDATA; the others stay in the image's WorkingDir.
        cwd = "/var/lib/postgresql/data" if pair.spec.name == "postgres" else (pair.spec.workdir or "/")
        assert facts.get("init.cwd") == cwd, (run.runtime, facts.get("init.cwd"))
        # nginx clears its environment and redis overwrites it with its process title.
        if pair.spec.name not in ("nginx", "redis"):
            assert facts.get("init.env.PATH") == dict(pair.spec.env)["PATH"], run.runtime
        assert facts.get("ns.pid") and facts.get("ns.mnt"), run.runtime
        assert sum(k.startswith("file./usr/bin/") for k in facts) > 50, run.runtime
        assert "file./etc/os-release" in facts, run.runtime
        assert any(k.startswith("proc.") for k in facts), run.runtime
        assert facts.get("mount./", "").startswith("overlay"), (run.runtime, facts.get("mount./"))


def test_namespaces(pair: Pair) -> None:
    """Private pid, mount, ipc and cgroup namespaces, the host's network (--network host). The cgroup
    namespace is checked here because podman on this cgroup-hybrid host keeps the host's (see
    DIFFERENCES): Docker and podman make a private one on cgroup v2 hosts, which systemd hosts are."""
    facts = normalise(pair.ctr2svc.probe, pair.spec)
    expected = {"ns.pid": "private", "ns.mnt": "private", "ns.ipc": "private", "ns.cgroup": "private"}
    expected |= {"ns.net": "host", "ns.user": "host"}
    assert {k: facts.get(k) for k in expected} == expected
    reference = normalise(pair.podman.probe, pair.spec)
    assert {k: reference.get(k) for k in ("ns.pid", "ns.mnt", "ns.ipc", "ns.net")} == {
        k: expected[k] for k in ("ns.pid", "ns.mnt", "ns.ipc", "ns.net")
    }


def test_service_works(pair: Pair) -> None:
    expected = EXPECTED_CHECKS[pair.spec.name]
    assert pair.podman.checks == expected, "podman, the reference, disagrees: the test image is wrong"
    assert pair.ctr2svc.checks == expected, pair.ctr2svc.log[-3000:]


def test_logs_reach_the_socket(pair: Pair) -> None:
    """The service's start message and (for web servers) the request's access-log line are in the log
    that systemd would hand to journald, as they are in `podman logs`."""
    wanted = [pair.spec.ready_message]
    if pair.spec.name in ACCESS_LOG_LINE:
        wanted.append(ACCESS_LOG_LINE[pair.spec.name])
    for line in wanted:
        assert line in pair.podman.log, f"podman's log lacks {line!r}: the test image is wrong"
        assert line in pair.ctr2svc.log, f"ctr2svc's log lacks {line!r}:\n{pair.ctr2svc.log[-3000:]}"


def test_stdout_and_stderr_open_by_path(pair: Pair) -> None:
    """`ln -s /dev/stdout /var/log/nginx/access.log` works only if the service's stdout can be opened
    by path: under systemd a socket cannot (ENXIO). Written lines must reach the log."""
    for run in (pair.podman, pair.ctr2svc):
        assert run.probe.get("stdio.open.fd1") == "yes", run.runtime
        assert run.probe.get("stdio.open.fd2") == "yes", run.runtime
        assert run.probe.get("stdio.mark") == "fd1,fd2", run.runtime


def test_stop_signal_stops_it_cleanly(pair: Pair) -> None:
    """The image's STOPSIGNAL reaches the service: its own shutdown message, a clean exit, no kill."""
    spec = pair.spec
    for run in (pair.podman, pair.ctr2svc):
        assert spec.stop_message in run.log, f"{run.runtime}: no {spec.stop_message!r}:\n{run.log[-2000:]}"
        assert run.stop_seconds < STOP_TIMEOUT - 5, (run.runtime, run.stop_seconds)
    assert pair.podman.exit == "exited 0", pair.podman.exit
    assert pair.ctr2svc.exit == pair.podman.exit, pair.ctr2svc.log[-2000:]


def test_same_as_podman(pair: Pair) -> None:
    """Field by field: every difference is explained in DIFFERENCES (a new one fails here)."""
    rows = differences(pair)
    report = f"\n== {pair.spec.name}: {len(rows)} differences (podman → ctr2svc)\n{table(rows)}\n"
    print(report)
    out = os.environ.get("CTR2SVC_CONFORMANCE_REPORT")
    if out:
        with Path(out).open("a") as fh:
            fh.write(report)
    unexplained = [row for row in rows if row[3] is None]
    assert not unexplained, report


@pytest.fixture(scope="session", autouse=True)
def _no_leftovers() -> Iterator[None]:
    yield
    if shutil.which("podman") is None:
        return
    for image in IMAGES:
        sh("podman", "rm", "--force", "--volumes", f"conformance-{image}", check=False)
