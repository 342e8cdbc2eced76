"""systemd-nspawn as the runtime (--runtime nspawn): the runtime config runc gets, adapted to what
`systemd-nspawn --oci-bundle` reads (systemd's src/nspawn/nspawn-oci.c, v252 as in Debian 12).

nspawn runs the same bundle (the helper's prepared root, volumes, network namespace) in the
foreground under the unit and registers the container with systemd-machined itself. Its reader refuses
what it cannot honour instead of ignoring it, so each change below is one refusal avoided; what the
container sees differently is in docs/service.md ("runc or nspawn").
"""

from __future__ import annotations

import copy
from typing import Any

# What the package depends on for the runtime: nspawn comes with machinectl in systemd-container.
PACKAGE = "systemd-container"
# nspawn accepts no other version (systemd issue 22148); runc takes 1.0.0 as well.
OCI_VERSION = "1.0.0"
# A bind mount's options nspawn knows are rbind and norbind ("Invalid bind mount option: rw").
BIND_OPTIONS = ("rbind", "norbind")


def package(runtime: str) -> str:
    """The package that provides RUNTIME."""
    return PACKAGE if runtime == "nspawn" else runtime


def inaccessible_dir(state_dir: str) -> str:
    """Where the helper makes the empty, mode 0000 file nspawn masks /proc's files with."""
    return f"{state_dir}/inaccessible"


def adapt(config: dict[str, Any], state_dir: str) -> dict[str, Any]:
    """CONFIG (runtime_config.patch's, for runc) as nspawn takes it, STATE_DIR the service's runtime
    directory; never edits its input."""
    cfg = copy.deepcopy(config)
    cfg["ociVersion"] = OCI_VERSION
    linux = cfg.setdefault("linux", {})
    # nspawn registers a container with machined only if it has a UTS namespace of its own: with the
    # host's network too, where the helper's awk names it as the host at each start.
    namespaces = linux.setdefault("namespaces", [])
    if not any(ns.get("type") == "uts" for ns in namespaces):
        namespaces.append({"type": "uts"})
    # nspawn reads cgroupsPath as a slice, and turns resources into properties of the unit it creates
    # over D-Bus; with --keep-unit it creates none. The unit holds the limits instead (MemoryMax=,
    # CPUQuota=, TasksMax=: templates/service.unit.j2), and nspawn runs the container in its cgroup.
    linux.pop("cgroupsPath", None)
    linux.pop("resources", None)
    # nspawn's seccomp reader knows no errnoRet (each refused call would fail with EPERM, clone3's
    # included, where glibc falls back to clone only on ENOSYS): nspawn's own filter applies instead.
    linux.pop("seccomp", None)
    readonly = list(linux.get("readonlyPaths", []))
    for mount in cfg.get("mounts", []):
        if mount.get("type") != "bind":
            continue
        options = mount.get("options", [])
        # A read-only bind: nspawn takes no "ro" either, but makes each readonlyPaths entry a
        # read-only bind of the path onto itself, after the mounts.
        if "ro" in options and mount["destination"] not in readonly:
            readonly.append(mount["destination"])
        mount["options"] = [o for o in options if o in BIND_OPTIONS]
    # nspawn leaves /proc's masked and read-only paths to itself (its reader skips them), and masks
    # /proc/kcore, kallsyms, keys, timer_list and sysrq-trigger (which root may write: the host's
    # reboot, say) with /run/systemd/inaccessible/reg as the container sees it. v252 mounts its own
    # /run first and so finds none: each stays open. The helper makes that file (inaccessible_dir),
    # bound there read-only before nspawn mounts /proc.
    cfg.setdefault("mounts", []).append(
        {
            "destination": "/run/systemd/inaccessible",
            "type": "bind",
            "source": inaccessible_dir(state_dir),
            "options": ["rbind"],
        }
    )
    readonly.append("/run/systemd/inaccessible")
    # Present even when empty: the helper's awk adds the admin's read-only mounts to it.
    linux["readonlyPaths"] = readonly
    return cfg
