"""--runtime nspawn on the host side: the runtime config nspawn's reader takes, the unit that runs it,
the package's dependency, and the admin's read-only mounts through the helper's awk."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ctr2svc import runtime
from ctr2svc.errors import UsageError
from ctr2svc.model import BindMount, Security, ServiceSpec
from ctr2svc.options import values
from ctr2svc.service import nspawn, runtime_config, units

from .test_templates import AWKS, sample_scan


@pytest.fixture
def nspawn_spec(spec: ServiceSpec) -> ServiceSpec:
    return dataclasses.replace(spec, runtime="nspawn", mounts=(BindMount("/srv/certs", "/certs", "ro"),))


def mount(cfg: dict[str, Any], destination: str) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in cfg["mounts"] if m["destination"] == destination)
    return found


def binds(cfg: dict[str, Any]) -> dict[str, list[str]]:
    return {m["destination"]: m["options"] for m in cfg["mounts"] if m["type"] == "bind"}


def test_the_config_is_what_nspawn_reads(umoci_config: dict[str, Any], nspawn_spec: ServiceSpec) -> None:
    # A later umoci's version (runc 1.1's own spec is 1.0.2-dev): nspawn accepts only 1.0.0.
    umoci_config = umoci_config | {"ociVersion": "1.0.2-dev"}
    runc = runtime_config.patch(umoci_config, dataclasses.replace(nspawn_spec, runtime="runc"))
    cfg = runtime_config.patch(umoci_config, nspawn_spec)
    assert cfg["ociVersion"] == "1.0.0" and runc["ociVersion"] == "1.0.2-dev"
    # A slice path, D-Bus properties, errno-less seccomp: what nspawn would refuse or misread.
    for key in ("cgroupsPath", "resources", "seccomp"):
        assert key in runc["linux"] and key not in cfg["linux"], key
    # The same container otherwise: process, root, namespaces, masked paths.
    for key in ("process", "root", "annotations"):
        assert cfg[key] == runc[key], key
    # Its own UTS namespace, which nspawn wants before it registers the container with machined.
    assert cfg["linux"]["namespaces"] == [*runc["linux"]["namespaces"], {"type": "uts"}]
    assert cfg["linux"]["maskedPaths"] == runc["linux"]["maskedPaths"]
    # No "rw" or "ro" in a bind's options ("Invalid bind mount option"): a read-only one is a
    # readonlyPaths entry, which nspawn binds read-only onto itself.
    assert binds(runc)["/etc/hosts"] == ["rbind", "rw"] and binds(cfg)["/etc/hosts"] == ["rbind"]
    assert all(set(options) <= set(nspawn.BIND_OPTIONS) for options in binds(cfg).values())
    # What nspawn 252 masks /proc's kcore, keys, sysrq-trigger... with, where it looks for it.
    assert mount(cfg, "/run/systemd/inaccessible") == {
        "destination": "/run/systemd/inaccessible",
        "type": "bind",
        "source": "/run/valkey-svc/inaccessible",
        "options": ["rbind"],
    }
    assert cfg["linux"]["readonlyPaths"] == [*runc["linux"]["readonlyPaths"], "/run/systemd/inaccessible"]
    # The hostname stays right after ociVersion, where the helper's awk looks for it.
    private = runtime_config.patch(umoci_config, dataclasses.replace(nspawn_spec, network="private"))
    assert list(private)[:2] == ["ociVersion", "hostname"]


def test_read_only_binds_and_init(umoci_config: dict[str, Any], nspawn_spec: ServiceSpec) -> None:
    spec = dataclasses.replace(nspawn_spec, init_process=True)
    cfg = runtime_config.patch(umoci_config, spec)
    assert binds(cfg)[runtime_config.INIT_PATH] == ["rbind"]
    assert runtime_config.INIT_PATH in cfg["linux"]["readonlyPaths"]
    # --privileged has no readonlyPaths of its own: the key is there for the admin's mounts.
    privileged = dataclasses.replace(nspawn_spec, security=Security(privileged=True))
    assert runtime_config.patch(umoci_config, privileged)["linux"]["readonlyPaths"] == [
        "/run/systemd/inaccessible"
    ]


def test_adapt_does_not_edit_its_input(umoci_config: dict[str, Any], spec: ServiceSpec) -> None:
    cfg = runtime_config.patch(umoci_config, spec)
    before = copy.deepcopy(cfg)
    nspawn.adapt(cfg, spec.layout.state_dir)
    assert cfg == before


def test_the_package_depends_on_systemd_container() -> None:
    assert nspawn.package("nspawn") == "systemd-container"
    assert nspawn.package("runc") == "runc" and nspawn.package("crun") == "crun"


def test_nspawn_is_for_systemd_hosts() -> None:
    assert values.check_runtime("nspawn") == "nspawn"
    with pytest.raises(UsageError, match="unknown runtime 'kata'"):
        values.check_runtime("kata")


def test_the_unit_runs_nspawn_in_the_foreground(nspawn_spec: ServiceSpec) -> None:
    spec = dataclasses.replace(nspawn_spec, stop_signal="SIGQUIT")
    unit = next(f.text for f in units.service_files(spec, sample_scan()) if f.dest == spec.layout.unit_path)
    lines = unit.splitlines()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/libexec/valkey-svc/service nspawn",
        "ExecStartPre=/usr/libexec/valkey-svc/service prepare",
        # The helper's stop: SIGTERM to nspawn, which sends the init the image's signal; the deadline.
        "ExecStop=/usr/libexec/valkey-svc/service stop",
        "ExecStopPost=/usr/libexec/valkey-svc/service cleanup",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        "Delegate=yes",
        f"TasksMax={runtime_config.DEFAULT_PIDS_LIMIT}",
        "DevicePolicy=closed",
    ):
        assert line in lines, line
    assert not any(line.startswith(("PIDFile=", "KillSignal=SIGQUIT")) for line in lines)
    unlimited = dataclasses.replace(spec, security=Security(pids_limit=0))
    unit = next(f.text for f in units.service_files(unlimited, sample_scan()) if f.dest.endswith(".service"))
    assert "TasksMax=infinity" in unit.splitlines()
    env = next(f.text for f in units.service_files(spec, sample_scan()) if f.dest == spec.layout.service_env)
    assert "RUNTIME=nspawn" in env.splitlines()


@pytest.mark.parametrize("awk", AWKS, ids=["awk", "busybox-awk"])
def test_the_admins_read_only_mounts(
    awk: list[str], nspawn_spec: ServiceSpec, umoci_config: dict[str, Any], tmp_path: Path
) -> None:
    """/etc/NAME/mounts under nspawn: binds without ro/rw, the read-only ones in readonlyPaths; with the
    host's network, a UTS namespace named as the host (machined registers no container without)."""
    if not shutil.which(awk[0]):
        pytest.skip(f"{awk[0]} is not installed")
    program = tmp_path / "config.awk"
    program.write_text(runtime.awk_program("config.awk"))
    (tmp_path / "mounts").write_text("/srv/certs /certs\n/srv/spool /spool rw\n/srv/keys /keys ro\n")
    for privileged in (False, True):
        spec = dataclasses.replace(nspawn_spec, security=Security(privileged=privileged))
        packaged = runtime_config.patch(umoci_config, spec)
        config = tmp_path / "config.json"
        config.write_text(json.dumps(packaged, indent=2) + "\n")  # as the package has it
        none = tmp_path / "none"
        variables = [f"ENVFILE={none}", f"ARGSFILE={none}", f"MOUNTSFILE={tmp_path / 'mounts'}", "NSPAWN=1"]
        variables += ["NAME=valkey-svc", "ENTRYPOINT_N=1", "NETWORK=host", "HOSTNAME=the-host"]
        argv = [*awk, *(f"-v{v}" for v in variables)]
        done = subprocess.run([*argv, "-f", program, config], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        cfg = json.loads(done.stdout)
        assert cfg["mounts"][-3:] == [
            {"destination": d, "type": "bind", "source": f"/srv/{d[1:]}", "options": ["rbind"]}
            for d in ("/certs", "/spool", "/keys")
        ]
        expected = [*packaged["linux"]["readonlyPaths"], "/certs", "/keys"]
        assert sorted(cfg["linux"]["readonlyPaths"]) == sorted(expected)
        assert cfg["hostname"] == "the-host"
        assert [ns["type"] for ns in cfg["linux"]["namespaces"]].count("uts") == 1
