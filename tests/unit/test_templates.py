"""Generated files against golden copies, plus checks that they are valid for their consumers.

Set CTR2SVC_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change, then review the diff.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ctr2svc import __version__, runtime
from ctr2svc.image.bundle import Entry, Kind, RootfsScan
from ctr2svc.model import (
    HealthCheck,
    InitSystem,
    Layout,
    PackageFormat,
    PortMapping,
    ServiceSpec,
    SharedLayer,
)
from ctr2svc.options import values
from ctr2svc.service import runtime_config, units

from .conftest import make_spec

GOLDEN = Path(__file__).parent / "golden"


def sample_scan() -> RootfsScan:
    return RootfsScan(
        entries=[
            Entry("", Kind.DIR, 0o755, 0, 0, 0),
            Entry("bin", Kind.DIR, 0o755, 0, 0, 0),
            Entry("bin/busybox", Kind.FILE, 0o755, 0, 0, 0),
            Entry("bin/sh", Kind.HARDLINK, 0o755, 0, 0, 0, target="bin/busybox"),
            Entry("data", Kind.DIR, 0o750, 999, 999, 0),
            Entry("data/it's here", Kind.FILE, 0o640, 999, 999, 0),
            Entry("-odd", Kind.SYMLINK, 0o777, 999, 0, 0, target="bin"),
            Entry("usr/bin/agent", Kind.FILE, 0o2755, 0, 42, 0),
        ]
    )


SHARED = (
    SharedLayer("sha256:" + "ab" * 32, "ctr2svc-layer-abababababab", "/opt/containers/layers/abababababab",
                ("sha256:" + "ab" * 32,), 4096),
    SharedLayer("sha256:" + "cd" * 32, "ctr2svc-layer-cdcdcdcdcdcd", "/opt/containers/layers/cdcdcdcdcdcd",
                ("sha256:" + "cd" * 32,), 1024),
)  # fmt: skip


PORTS = (PortMapping(8081, 6379), PortMapping(5353, 53, "udp", "127.0.0.1"))


def layer_scripts() -> dict[str, str]:
    """A layer package's setup script and package scripts, per format."""
    scan = sample_scan()
    scan.whiteouts, scan.opaque = ["etc/gone", "-odd name"], ["srv/hidden"]
    batches, chmods, hardlinks = units.ownership_plan(scan)
    base = SHARED[0].directory
    values = {"id": SHARED[0].id, "base": base, "rootfs": f"{base}/rootfs"}
    files = {
        "layer-setup.sh": units.render(
            "layer/setup.sh.j2",
            **values,
            chown_batches=batches,
            chmods=chmods,
            hardlinks=hardlinks,
            whiteouts=scan.whiteouts,
            opaque=scan.opaque,
        )
    }
    dirs = [e for e in scan.foreign_owned if e.kind is Kind.DIR]
    for fmt in PackageFormat:
        for key, template in units.LAYER_SCRIPTS.items():
            if (fmt, key) == (PackageFormat.DEB, "postremove"):
                continue  # a .deb layer has none (package.layer_config)
            files[f"layer-{fmt}-{key}"] = units.render(f"{template}.j2", format=str(fmt), dirs=dirs, **values)
    files["layer-apk-preinstall"] = units.render("layer/preinst.j2", format="apk", dirs=dirs, **values)
    return files


def for_format(spec: ServiceSpec, fmt: PackageFormat, init: InitSystem, version: str) -> ServiceSpec:
    unit_dir = "/usr/lib/systemd/system" if fmt is PackageFormat.RPM else "/lib/systemd/system"
    layout = Layout(spec.name, version, unit_dir=unit_dir)
    # Each format's own rule for a first install (--activation distro).
    activation = values.activation(fmt, "distro")
    return dataclasses.replace(
        spec, format=fmt, init=init, version=version, layout=layout, activation=activation
    )


def rendered(spec: ServiceSpec) -> dict[str, str]:
    """Every generated file of the four kinds of package, named FORMAT[-INIT]-FILE (deb: plain)."""
    # The helper and its awk programs are the same in every package (tests/runtime checks them): the
    # golden files hold what is generated, service.env among it.
    static = {spec.layout.helper, spec.layout.config_awk, spec.layout.network_awk, spec.layout.idmap_program}
    generated = [f for f in units.service_files(spec, sample_scan()) if f.dest not in static]
    files = {Path(f.dest).name: f.text for f in generated}
    files.update({f"deb-{k}": v for k, v in units.package_scripts(spec).items()})
    variants = {
        "deb-openrc": for_format(spec, PackageFormat.DEB, InitSystem.OPENRC, "9.0.0"),
        "rpm": for_format(spec, PackageFormat.RPM, InitSystem.SYSTEMD, "9.0.0-1"),
        "apk": for_format(spec, PackageFormat.APK, InitSystem.OPENRC, "9.0.0-r0"),
    }
    # A health check and a readiness port add a helper command, timer units and OpenRC hooks.
    check = HealthCheck(("/bin/sh", "-c", "valkey-cli ping | grep -q PONG"), 5, 3, 2, 10)
    variants["checked"] = dataclasses.replace(variants["rpm"], health=check, ready_port=6379)
    variants["apk-checked"] = dataclasses.replace(variants["apk"], health=check, ready_port=6379)
    # An image that opens /dev/stdout: its output goes through a pipe and a relay.
    variants["piped"] = dataclasses.replace(spec, stdio="pipe")
    # Shared layers: the root is mounted from layer packages; no ownership script of its own.
    variants["shared"] = dataclasses.replace(spec, layers=SHARED)
    variants["apk-shared"] = dataclasses.replace(variants["apk"], layers=SHARED)
    # A private network: netavark in the helper, the ports file, and its awk program.
    variants["private"] = dataclasses.replace(spec, network="private", publish=PORTS, ready_port=6379)
    # systemd-nspawn in the foreground as the unit's main process.
    variants["nspawn"] = dataclasses.replace(spec, runtime="nspawn")
    # --activation start (Debian's rule everywhere) and manual (nothing on a first install).
    variants["rpm-start"] = dataclasses.replace(variants["rpm"], activation="start")
    variants["apk-start"] = dataclasses.replace(variants["apk"], activation="start")
    variants["deb-manual"] = dataclasses.replace(spec, activation="manual")
    variants["deb-openrc-manual"] = dataclasses.replace(variants["deb-openrc"], activation="manual")
    for prefix, variant in variants.items():
        integration = [variant.layout.unit_path, variant.layout.init_script, variant.layout.preset_path]
        if prefix.endswith(("-start", "-manual")):
            # The same service files; only the first install's script (and the rpm's preset) differ.
            integration = [variant.layout.preset_path]
        if prefix == "private":
            integration += [f"{variant.layout.config_dir}/ports"]
        if prefix.endswith(("checked", "shared", "private")) or prefix in ("piped", "nspawn"):
            integration += [
                variant.layout.service_env,
                *(f"{variant.layout.unit_dir}/valkey-svc-health.{k}" for k in ("service", "timer")),
            ]
        for f in units.service_files(variant, sample_scan()):
            if f.dest in integration:
                files[f"{prefix}-{Path(f.dest).name}"] = f.text
            elif f.dest.startswith("/etc/logrotate.d/") and not prefix.endswith(("-start", "-manual")):
                files[f"{prefix}-logrotate"] = f.text
        scripts = units.package_scripts(variant)
        if prefix.endswith(("-start", "-manual")):
            scripts = {"postinstall": scripts["postinstall"]}
        files.update({f"{prefix}-{k}": v for k, v in scripts.items()})
    files.update(layer_scripts())
    # The generator's version is in every header: keep the golden files stable across releases.
    return {k: v.replace(f"ctr2svc {__version__}", "ctr2svc VERSION") for k, v in files.items()}


GENERATED = sorted(rendered(make_spec()))
SCRIPTS = [name for name, text in rendered(make_spec()).items() if text.startswith("#!")]


@pytest.mark.parametrize("name", GENERATED)
def test_golden(spec: ServiceSpec, name: str) -> None:
    content = rendered(spec)[name]
    golden = GOLDEN / name
    if os.environ.get("CTR2SVC_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(content)
    assert content == golden.read_text()


def test_every_format_has_its_files() -> None:
    # A missing variant would silently shrink the golden set above.
    assert {
        "valkey-svc.service",
        "deb-postinstall",
        "deb-openrc-valkey-svc",
        "rpm-valkey-svc.service",
        "rpm-start-50-valkey-svc.preset",
        "rpm-postinstall",
        "apk-valkey-svc",
        "apk-postupgrade",
        "apk-postremove",
    } <= set(GENERATED)
    assert "rpm-valkey-svc" not in GENERATED and "deb-openrc-valkey-svc.service" not in GENERATED


def test_unit_values(spec: ServiceSpec) -> None:
    unit = rendered(spec)["valkey-svc.service"]
    assert "# Generated by ctr2svc VERSION from 127.0.0.1:5000/valkey@sha256:1f1f" in unit
    # % starts a systemd specifier: literal percent signs must be doubled.
    assert "Description=Valkey 100%% compatible (as a service)" in unit
    for line in (
        "ExecStart=/usr/libexec/valkey-svc/service start",
        "KillSignal=SIGTERM",
        # The helper's stop waits the stop timeout; the unit's allows the network's teardown more.
        "ExecStop=/usr/libexec/valkey-svc/service stop",
        "TimeoutStopSec=120",
        "Restart=on-failure",
        "Delegate=yes",
        "WantedBy=multi-user.target",
    ):
        assert line in unit.splitlines()


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_parse(spec: ServiceSpec, name: str, tmp_path: Path) -> None:
    script = tmp_path / name
    text = rendered(spec)[name]
    script.write_text(text)
    assert text.startswith("#!/"), "the interpreter line must come first"
    subprocess.run(["sh", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        # openrc-run scripts are sh with variables and functions openrc-run reads and calls.
        excluded = ["-e", "SC2034"] if text.startswith("#!/sbin/openrc-run") else []
        subprocess.run(["shellcheck", "-s", "sh", "-S", "warning", *excluded, str(script)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to other users needs root")
def test_ownership_script_restores_owners_links_and_modes(tmp_path: Path) -> None:
    from ctr2svc.model import Layout

    from .conftest import make_spec

    spec = make_spec()
    layout = Layout(spec.name, spec.version, prefix=str(tmp_path))
    spec = ServiceSpec(**{**spec.__dict__, "layout": layout})
    root = Path(layout.rootfs)
    (root / "bin").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin/busybox").write_text("binary")
    (root / "bin/sh").write_text("binary")  # what the package installs: a copy
    (root / "data/it's here").write_text("x")
    (root / "-odd").symlink_to("bin")
    (root / "usr/bin/agent").write_text("agent")
    (root / "usr/bin/agent").chmod(0o2755)
    script = next(f for f in units.service_files(spec, sample_scan()) if f.dest.endswith("ownership.sh"))
    subprocess.run(["sh", "-c", script.content], check=True)
    assert (root / "bin/sh").stat().st_ino == (root / "bin/busybox").stat().st_ino
    st = (root / "data/it's here").stat()
    assert (st.st_uid, st.st_gid) == (999, 999)
    assert (root / "data").stat().st_uid == 999
    assert (root / "-odd").lstat().st_uid == 999
    agent = (root / "usr/bin/agent").stat()
    assert (agent.st_gid, agent.st_mode & 0o7777) == (42, 0o2755)


AWKS = [["awk"], ["busybox", "awk"]]  # Debian's mawk, and the awk Alpine hosts have


@pytest.mark.parametrize("awk", AWKS, ids=["awk", "busybox-awk"])
def test_config_awk_applies_the_admins_settings(
    awk: list[str], spec: ServiceSpec, umoci_config: dict[str, Any], tmp_path: Path
) -> None:
    if not shutil.which(awk[0]):
        pytest.skip(f"{awk[0]} is not installed")
    program = tmp_path / "config.awk"
    program.write_text(runtime.awk_program("config.awk"))
    packaged = runtime_config.patch(umoci_config, spec)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(packaged, indent=2) + "\n")  # as package.py writes it
    (tmp_path / "env").write_text('# comment\n\nHOME=/srv\nGREETING=say "hi" \\ there\tnow\nEMPTY=\n')
    (tmp_path / "args").write_text("# comment\n--port\n6380\nwith space\n")
    (tmp_path / "mounts").write_text("/srv/certs /certs\n/srv/spool /spool rw\n")

    def apply(*files: str, cgroups: str = "") -> subprocess.CompletedProcess[str]:
        names = {"env": "ENVFILE", "args": "ARGSFILE", "mounts": "MOUNTSFILE"}
        variables = [f"-v{names[f]}={tmp_path / f if f in files else tmp_path / 'missing'}" for f in names]
        return subprocess.run(
            [
                *awk,
                "-v",
                "NAME=valkey-svc",
                "-v",
                "ENTRYPOINT_N=1",
                "-v",
                f"CGROUPS_PATH={cgroups}",
                *variables,
                "-f",
                program,
                config,
            ],
            capture_output=True,
            text=True,
            check=False,
        )

    # No admin files: the packaged config, unchanged.
    untouched = apply()
    assert untouched.returncode == 0, untouched.stderr
    assert json.loads(untouched.stdout) == packaged

    result = apply("env", "args", "mounts")
    assert result.returncode == 0, result.stderr
    cfg = json.loads(result.stdout)
    env = cfg["process"]["env"]
    # HOME replaced in place of the image's, new keys added, the rest of the image's kept.
    assert [e for e in env if e.startswith("HOME=")] == ["HOME=/srv"]
    assert 'GREETING=say "hi" \\ there\tnow' in env and "EMPTY=" in env
    assert any(e.startswith("PATH=") for e in env)
    assert cfg["process"]["args"] == ["docker-entrypoint.sh", "--port", "6380", "with space"]
    extra = cfg["mounts"][-2:]
    assert extra == [
        {"destination": "/certs", "type": "bind", "source": "/srv/certs", "options": ["rbind", "ro"]},
        {"destination": "/spool", "type": "bind", "source": "/srv/spool", "options": ["rbind", "rw"]},
    ]
    assert cfg["mounts"][:-2] == packaged["mounts"]

    # crun gets the unit's cgroup spelled out.
    placed = apply(cgroups="/system.slice/valkey-svc.service/valkey-svc")
    assert json.loads(placed.stdout)["linux"]["cgroupsPath"] == "/system.slice/valkey-svc.service/valkey-svc"

    (tmp_path / "env").write_text("not a variable\n")
    bad = apply("env")
    assert bad.returncode != 0
    assert f"valkey-svc: {tmp_path / 'env'} line 1: not KEY=VALUE" in bad.stderr


@pytest.mark.parametrize("awk", AWKS, ids=["awk", "busybox-awk"])
def test_network_awk_writes_netavarks_options(awk: list[str], spec: ServiceSpec, tmp_path: Path) -> None:
    if not shutil.which(awk[0]):
        pytest.skip(f"{awk[0]} is not installed")
    program = tmp_path / "network.awk"
    program.write_text(runtime.awk_program("network.awk"))
    ports = tmp_path / "ports"
    ports.write_text(rendered(spec)["private-ports"] + "\n  # comment\n10.0.0.1:8443:443/tcp\r\n")

    def apply() -> subprocess.CompletedProcess[str]:
        variables = [
            "NAME=valkey-svc",
            "ADDRESS=10.89.240.7",
            "SUBNET_PREFIX=10.89.240",
            f"PORTSFILE={ports}",
            f"PORTLIST={tmp_path / 'list'}",
            f"CONTAINER_ID={'c' * 64}",
            "NETWORK_NAME=ctr2svc",
            f"NETWORK_ID={'d' * 64}",
            "BRIDGE=ctr2svc0",
            "ALIASES=valkey-svc valkey",
        ]
        argv = [*awk, *(x for v in variables for x in ("-v", v)), "-f", str(program)]
        return subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)

    result = apply()
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["container_name"] == "valkey-svc"
    assert doc["networks"]["ctr2svc"] == {
        "interface_name": "eth0",
        "static_ips": ["10.89.240.7"],
        "static_mac": "02:c2:0a:59:f0:07",
        "aliases": ["valkey-svc", "valkey"],
    }
    info = doc["network_info"]["ctr2svc"]
    assert (info["network_interface"], info["subnets"]) == (
        "ctr2svc0",
        [{"subnet": "10.89.240.0/24", "gateway": "10.89.240.1"}],
    )
    assert doc["port_mappings"] == [
        {"host_ip": "", "container_port": 6379, "host_port": 8081, "range": 1, "protocol": "tcp"},
        {"host_ip": "127.0.0.1", "container_port": 53, "host_port": 5353, "range": 1, "protocol": "udp"},
        {"host_ip": "10.0.0.1", "container_port": 443, "host_port": 8443, "range": 1, "protocol": "tcp"},
    ]
    assert (tmp_path / "list").read_text() == "tcp 8081\nudp 5353\ntcp 8443\n"

    ports.write_text("")
    empty = apply()
    assert json.loads(empty.stdout)["port_mappings"] == []

    for line, problem in (
        ("8081", "not [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]"),
        ("8081:80/sctp", "not [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]"),
        ("70000:80", "not [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]"),
        ("localhost:8081:80", "not [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]"),
        ("8081:80\n8081:81/tcp", "host port 8081/tcp is published twice"),
    ):
        ports.write_text(f"# comment\n{line}\n")
        bad = apply()
        assert bad.returncode != 0, line
        assert f"valkey-svc: {ports} line {line.count(chr(10)) + 2}: {problem}" in bad.stderr, bad.stderr


@pytest.mark.parametrize("awk", AWKS, ids=["awk", "busybox-awk"])
@pytest.mark.parametrize(("packaged_mode", "admin_mode"), [("host", "private"), ("private", "host")])
def test_config_awk_switches_the_network(
    awk: list[str],
    packaged_mode: str,
    admin_mode: str,
    spec: ServiceSpec,
    umoci_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    """/etc/NAME/network says otherwise than the package: the runtime config the helper writes is the
    one ctr2svc would have packaged for the admin's mode (namespaces, host name), valid JSON."""
    if not shutil.which(awk[0]):
        pytest.skip(f"{awk[0]} is not installed")
    built = dataclasses.replace(spec, network=packaged_mode)
    wanted = runtime_config.patch(umoci_config, dataclasses.replace(spec, network=admin_mode))
    program = tmp_path / "config.awk"
    program.write_text(runtime.awk_program("config.awk"))
    config = tmp_path / "config.json"
    config.write_text(json.dumps(runtime_config.patch(umoci_config, built), indent=2) + "\n")
    missing = tmp_path / "missing"
    hostname = "valkey-svc" if admin_mode == "private" else "somehost"
    variables = [f"ENVFILE={missing}", f"ARGSFILE={missing}", f"MOUNTSFILE={missing}"]
    variables += ["NAME=valkey-svc", "ENTRYPOINT_N=1", f"HOSTNAME={hostname}", f"NETWORK={admin_mode}"]
    variables.append(f"NETNS_PATH={runtime_config.netns_path(spec.name)}")
    argv: list[str | Path] = [*awk, *(f"-v{v}" for v in variables), "-f", program, config]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    switched = json.loads(result.stdout)
    # The host name goes into the environment as HOSTNAME, as Docker sets it: the rest is the same.
    env = [e for e in switched["process"]["env"] if not e.startswith("HOSTNAME=")]
    assert (env, switched["process"]["env"][0]) == (wanted["process"]["env"], f"HOSTNAME={hostname}")
    switched["process"]["env"] = wanted["process"]["env"]
    assert switched == wanted
    assert next(iter(switched)) == "ociVersion"
