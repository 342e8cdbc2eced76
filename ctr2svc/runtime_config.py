"""Patch umoci's generated OCI runtime config so the bundle runs well as a host service.

umoci writes a config meant for an interactive `runc run`. Each change below says why a service
needs it; `patch()` applies them all and never edits its input.
"""

from __future__ import annotations

import copy
from typing import Any

from ctr2svc.model import ServiceSpec

# Docker's default capability set (moby's oci/caps/defaults.go): enough for entrypoints that chown
# their data dir and drop privileges (valkey, redis, postgres), nothing beyond what `docker run` grants.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

ANNOTATION_PREFIX = "org.ctr2svc"


def patch(config: dict[str, Any], spec: ServiceSpec) -> dict[str, Any]:
    cfg = copy.deepcopy(config)
    process = cfg.setdefault("process", {})

    # systemd gives a service no terminal; with terminal=true runc fails ("inappropriate ioctl for device").
    process["terminal"] = False
    process.pop("consoleSize", None)

    process["args"] = list(spec.args)

    # The installed image dir stays pristine (dpkg -V keeps meaning something): the container's root is
    # an overlay of it that the service mounts here before runc starts (runc hooks run inside the
    # container's namespaces and cannot do it).
    cfg["root"] = {"path": spec.layout.merged_root, "readonly": False}

    _set_capabilities(process, spec)
    _set_rlimits(process)

    linux = cfg.setdefault("linux", {})
    # Host networking, as `docker run --network host`: the service's ports are reachable without NAT
    # or port publishing. The UTS namespace goes with it, so the container sees the host's name.
    linux["namespaces"] = [
        ns for ns in linux.get("namespaces", []) if ns.get("type") not in ("network", "uts")
    ]
    cfg.pop("hostname", None)
    # Network sysctls need a network namespace, and hooks from other runtimes point at binaries this
    # host does not have: both make `runc run` fail.
    linux.pop("sysctl", None)
    cfg.pop("hooks", None)
    # A relative path makes runc put the container's cgroup beside its own: under the unit's cgroup
    # (the service helper moves itself into a leaf first), so unit limits apply to the container.
    linux["cgroupsPath"] = spec.name

    cfg["mounts"] = _mounts(cfg.get("mounts", []), spec)

    annotations = cfg.setdefault("annotations", {})
    annotations[f"{ANNOTATION_PREFIX}.image"] = spec.image.pinned
    annotations[f"{ANNOTATION_PREFIX}.package"] = f"{spec.name}={spec.version}"
    annotations["org.opencontainers.image.stopSignal"] = spec.stop_signal
    return cfg


def _set_capabilities(process: dict[str, Any], spec: ServiceSpec) -> None:
    caps = list(DEFAULT_CAPABILITIES)
    # A process that starts as root gets the set in effect, as under Docker; one that starts as another
    # user keeps it only as a bounding set (it can regain them through file capabilities at most).
    in_effect = caps if spec.uid == 0 else []
    process["capabilities"] = {
        "bounding": caps,
        "effective": in_effect,
        "permitted": in_effect,
        "inheritable": [],
        "ambient": [],
    }


def _set_rlimits(process: dict[str, Any]) -> None:
    # umoci pins RLIMIT_NOFILE at 1024/1024, too low for servers such as valkey. Without an entry the
    # container inherits the unit's LimitNOFILE=, which an admin can change in a drop-in; runc could
    # not raise a hard limit above its own anyway without CAP_SYS_RESOURCE.
    limits = [r for r in process.get("rlimits", []) if r.get("type") != "RLIMIT_NOFILE"]
    if limits:
        process["rlimits"] = limits
    else:
        process.pop("rlimits", None)


def _mounts(mounts: list[dict[str, Any]], spec: ServiceSpec) -> list[dict[str, Any]]:
    volume_paths = {v.container_path.rstrip("/") or "/" for v in spec.volumes}
    # umoci turns every VOLUME into a tmpfs: the data would vanish at every stop. Each becomes a bind
    # mount of a persistent directory on the host instead.
    kept = [
        m
        for m in mounts
        if (m.get("destination", "").rstrip("/") or "/") not in volume_paths
        and m.get("destination") not in ("/etc/resolv.conf", "/etc/hosts")
    ]
    for volume in spec.volumes:
        kept.append(
            {
                "destination": volume.container_path,
                "type": "bind",
                "source": volume.host_path,
                "options": ["rbind"],
            }
        )
    # With host networking the container resolves names as the host does; images do not ship these.
    for path in ("/etc/resolv.conf", "/etc/hosts"):
        kept.append({"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]})
    return kept
