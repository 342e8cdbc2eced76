from __future__ import annotations

import copy
import dataclasses
from typing import Any

from ctr2svc.model import Security, ServiceSpec, Volume
from ctr2svc.service import runtime_config

from .conftest import make_spec


def mount(cfg: dict[str, Any], destination: str) -> dict[str, Any]:
    found = [m for m in cfg["mounts"] if m["destination"] == destination]
    assert len(found) == 1, found
    only: dict[str, Any] = found[0]
    return only


def test_input_is_not_modified(umoci_config: dict[str, Any], spec: ServiceSpec) -> None:
    before = copy.deepcopy(umoci_config)
    runtime_config.patch(umoci_config, spec)
    assert umoci_config == before


def test_service_patches(umoci_config: dict[str, Any], spec: ServiceSpec) -> None:
    cfg = runtime_config.patch(umoci_config, spec)
    assert cfg["process"]["terminal"] is False
    assert cfg["process"]["args"] == ["docker-entrypoint.sh", "valkey-server"]
    assert cfg["root"] == {"path": "/run/valkey-svc/rootfs", "readonly": False}
    namespaces = {ns["type"] for ns in cfg["linux"]["namespaces"]}
    # Host network and UTS namespaces; a private cgroup namespace as Docker gives on cgroup v2.
    assert namespaces == {"pid", "ipc", "mount", "cgroup"}
    assert "hostname" not in cfg
    assert cfg["linux"]["cgroupsPath"] == "valkey-svc"
    assert "sysctl" not in cfg["linux"] and "hooks" not in cfg
    # umoci's 1024/1024 would cap servers; the unit's LimitNOFILE= applies instead.
    assert all(r["type"] != "RLIMIT_NOFILE" for r in cfg["process"].get("rlimits", []))
    assert cfg["annotations"]["org.ctr2svc.image"] == f"127.0.0.1:5000/valkey@{spec.image.digest}"
    assert cfg["annotations"]["org.opencontainers.image.stopSignal"] == "SIGTERM"


def test_volumes_become_persistent_binds(umoci_config: dict[str, Any], spec: ServiceSpec) -> None:
    assert mount(umoci_config, "/data")["type"] == "tmpfs"
    cfg = runtime_config.patch(umoci_config, spec)
    data = mount(cfg, "/data")
    assert data == {
        "destination": "/data",
        "type": "bind",
        "source": "/var/lib/valkey-svc/volumes/data",
        "options": ["rbind"],
    }
    # Per-start copies of the host's files, writable by the container as under Docker.
    for name in ("resolv.conf", "hosts", "hostname"):
        assert mount(cfg, f"/etc/{name}") == {
            "destination": f"/etc/{name}",
            "type": "bind",
            "source": f"/run/valkey-svc/{name}",
            "options": ["rbind", "rw"],
        }
    # What umoci mounts for the runtime itself stays.
    assert mount(cfg, "/proc")["type"] == "proc"
    assert mount(cfg, "/dev")["type"] == "tmpfs"


def test_root_gets_dockers_capabilities(umoci_config: dict[str, Any], spec: ServiceSpec) -> None:
    caps = runtime_config.patch(umoci_config, spec)["process"]["capabilities"]
    for needed in ("CAP_CHOWN", "CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE", "CAP_FOWNER"):
        assert needed in caps["effective"] and needed in caps["bounding"]
    assert "CAP_SYS_ADMIN" not in caps["bounding"]
    assert caps["ambient"] == [] and caps["inheritable"] == []


def test_non_root_user_gets_dockers_capability_fields(umoci_config: dict[str, Any]) -> None:
    # As Docker: the kernel clears a non-root init's permitted set at execve (no ambient capabilities),
    # while a root process exec'd into the container later gets the default set.
    caps = runtime_config.patch(umoci_config, make_spec(uid=999))["process"]["capabilities"]
    assert caps["effective"] == caps["permitted"] == caps["bounding"]
    assert caps["ambient"] == caps["inheritable"] == []
    assert "CAP_CHOWN" in caps["bounding"]


def test_proc_is_mounted_as_docker_mounts_it(umoci_config: dict[str, Any], spec: ServiceSpec) -> None:
    proc = mount(runtime_config.patch(umoci_config, spec), "/proc")
    assert proc["type"] == "proc" and set(proc["options"]) == {"nosuid", "noexec", "nodev"}


def test_default_security_profile(umoci_config: dict[str, Any], spec: ServiceSpec) -> None:
    cfg = runtime_config.patch(umoci_config, spec)
    linux = cfg["linux"]
    assert cfg["process"]["noNewPrivileges"] is True
    # Docker's masked and read-only paths, umoci's kept.
    assert {"/proc/kcore", "/proc/keys", "/proc/acpi", "/sys/firmware"} <= set(linux["maskedPaths"])
    assert {"/proc/sys", "/proc/sysrq-trigger", "/proc/bus"} <= set(linux["readonlyPaths"])
    # Docker's allow-list (tests/unit/test_seccomp.py has the details): what it does not name fails.
    seccomp = linux["seccomp"]
    assert (seccomp["defaultAction"], seccomp["defaultErrnoRet"]) == ("SCMP_ACT_ERRNO", 38)
    assert seccomp["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    blocked = {n for rule in seccomp["syscalls"] if rule["action"] == "SCMP_ACT_ERRNO" for n in rule["names"]}
    assert {"unshare", "setns", "mount", "keyctl", "bpf", "kexec_load", "clone3"} <= blocked
    assert linux["resources"]["pids"] == {"limit": 4096}
    # The device allow-list umoci wrote stays.
    assert linux["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    # No tmpfs on /tmp (Docker mounts none): the image's /tmp shows, in the overlay emptied at each start.
    assert not [m for m in cfg["mounts"] if m["destination"] == "/tmp"]


def test_privileged_and_capability_changes(umoci_config: dict[str, Any]) -> None:
    spec = dataclasses.replace(
        make_spec(), security=Security(cap_add=("CAP_NET_ADMIN",), cap_drop=("CAP_MKNOD",), pids_limit=0)
    )
    cfg = runtime_config.patch(umoci_config, spec)
    caps = cfg["process"]["capabilities"]["bounding"]
    assert "CAP_NET_ADMIN" in caps and "CAP_MKNOD" not in caps and "CAP_CHOWN" in caps
    assert "pids" not in cfg["linux"]["resources"]

    privileged = runtime_config.patch(
        umoci_config, dataclasses.replace(make_spec(), security=Security(privileged=True))
    )
    assert set(privileged["process"]["capabilities"]["bounding"]) == set(runtime_config.ALL_CAPABILITIES)
    assert privileged["process"]["noNewPrivileges"] is False
    for key in ("seccomp", "maskedPaths", "readonlyPaths"):
        assert key not in privileged["linux"]


def test_user_override(umoci_config: dict[str, Any]) -> None:
    spec = dataclasses.replace(make_spec(uid=1000), gid=1000, user="1000:1000")
    cfg = runtime_config.patch(umoci_config, spec)
    assert cfg["process"]["user"] == {"uid": 1000, "gid": 1000}
    assert cfg["process"]["capabilities"]["ambient"] == []


def test_a_tmp_volume_is_not_shadowed(umoci_config: dict[str, Any]) -> None:
    layout_path = make_spec().layout.volume_host_path("/tmp")
    spec = make_spec(volumes=(Volume("/tmp", layout_path, 0, 0, 0o1777, False),))
    cfg = runtime_config.patch(umoci_config, spec)
    assert mount(cfg, "/tmp")["type"] == "bind"


def test_volumes_at_runtime_paths_leave_no_mount(umoci_config: dict[str, Any]) -> None:
    """An image whose VOLUMEs include /, /proc and /dev: umoci adds a tmpfs at each (source "none"),
    which would hide the root, the kernel's /proc and runc's /dev. plan_service leaves those VOLUMEs
    out; their tmpfs mounts go too, and the runtime's own /proc and /dev stay."""
    declared = ("/", "/proc", "/dev", "/sys/kernel/x", "/data/../data")
    config = copy.deepcopy(umoci_config)
    config["mounts"] += [
        {"destination": path, "type": "tmpfs", "source": "none", "options": ["rw"]}
        for path in ("/", "/proc", "/dev", "/sys/kernel/x")
    ]
    base = make_spec()
    spec = dataclasses.replace(
        base,
        image=dataclasses.replace(
            base.image, config=dataclasses.replace(base.image.config, volumes=declared)
        ),
    )
    cfg = runtime_config.patch(config, spec)
    assert mount(cfg, "/proc")["type"] == "proc"
    assert mount(cfg, "/dev")["source"] == "tmpfs"
    assert not [m for m in cfg["mounts"] if m["destination"] in ("/", "/sys/kernel/x")]
    assert mount(cfg, "/data")["type"] == "bind"


def test_a_working_dir_replaces_umocis_cwd(umoci_config: dict[str, Any]) -> None:
    spec = dataclasses.replace(make_spec(), working_dir="/srv/app")
    assert runtime_config.patch(umoci_config, spec)["process"]["cwd"] == "/srv/app"
