"""Patch umoci's generated OCI runtime config so the bundle runs well as a host service.

umoci writes a config meant for an interactive `runc run`. Each change below says why a service
needs it; `patch()` applies them all and never edits its input.
"""

from __future__ import annotations

import copy
import posixpath
from typing import Any

from ctr2svc import metadata
from ctr2svc.model import ServiceSpec
from ctr2svc.service import nspawn, seccomp

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

# Every capability Linux knows (capability(7)): what --cap-add accepts and --privileged grants.
ALL_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

# Docker's masked and read-only /proc and /sys paths (moby's oci/defaults.go), a superset of umoci's.
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

DEFAULT_PIDS_LIMIT = 4096

ANNOTATION_PREFIX = "org.ctr2svc"
# What umoci 0.4.7 writes; a config without one gets it (runc needs the field).
OCI_VERSION = "1.0.2"
# `init: true` (compose) / `docker run --init`: the host's static tini, where Docker mounts its
# docker-init. Debian's and Fedora's tini packages install it there.
INIT_PATH = "/sbin/docker-init"
TINI_STATIC = "/usr/bin/tini-static"
# Docker's options for a tmpfs (`--tmpfs`, compose's `tmpfs:`); the user's come after and win.
TMPFS_OPTIONS = ("nosuid", "nodev", "noexec")


def patch(config: dict[str, Any], spec: ServiceSpec) -> dict[str, Any]:
    cfg = copy.deepcopy(config)
    process = cfg.setdefault("process", {})

    # systemd gives a service no terminal; with terminal=true runc fails ("inappropriate ioctl for device").
    process["terminal"] = False
    process.pop("consoleSize", None)

    process["args"] = list(spec.args)
    # umoci adds TERM=xterm for the terminal it planned; without one Docker sets no TERM either.
    if not any(e.startswith("TERM=") for e in spec.image.config.env):
        process["env"] = [e for e in process.get("env", []) if e != "TERM=xterm"]

    # The installed image dir stays pristine (dpkg -V keeps meaning something): the container's root is
    # an overlay of it that the service mounts here before runc starts (runc hooks run inside the
    # container's namespaces and cannot do it).
    cfg["root"] = {"path": spec.layout.merged_root, "readonly": spec.read_only}
    if spec.working_dir is not None:
        process["cwd"] = spec.working_dir

    _set_capabilities(process, spec)
    _set_rlimits(process)
    if spec.user is not None:
        process["user"] = {"uid": spec.uid, "gid": spec.gid}
    # A setuid binary in the image cannot gain privileges back (umoci sets it too; Docker does not).
    process["noNewPrivileges"] = not spec.security.privileged

    linux = cfg.setdefault("linux", {})
    # Host networking, as `docker run --network host`: the service's ports are reachable without NAT
    # or port publishing. The UTS namespace goes with it, so the container sees the host's name.
    namespaces = [ns for ns in linux.get("namespaces", []) if ns.get("type") not in ("network", "uts")]
    # A private cgroup namespace, as Docker and podman give on cgroup v2: the container sees its own
    # cgroup as the root of /sys/fs/cgroup and nothing of the host's tree.
    if not any(ns.get("type") == "cgroup" for ns in namespaces):
        namespaces.append({"type": "cgroup"})
    if spec.private_network:
        # A private network: the namespace the service helper creates and netavark wires to the
        # ctr2svc bridge before runc starts, and a UTS namespace with the service's name as host name,
        # which is also the name the other services reach it by.
        namespaces += [{"type": "network", "path": netns_path(spec.name)}, {"type": "uts"}]
    linux["namespaces"] = namespaces
    cfg.pop("hostname", None)
    # Network sysctls need a network namespace, and hooks from other runtimes point at binaries this
    # host does not have: both make `runc run` fail.
    linux.pop("sysctl", None)
    cfg.pop("hooks", None)
    # A relative path makes runc put the container's cgroup beside its own: under the unit's cgroup
    # (the service helper moves itself into a leaf first), so unit limits apply to the container.
    linux["cgroupsPath"] = spec.name

    if spec.security.privileged:
        # As `docker run --privileged`: nothing masked or read-only, no system call filter.
        linux.pop("maskedPaths", None)
        linux.pop("readonlyPaths", None)
        linux.pop("seccomp", None)
    else:
        linux["maskedPaths"] = sorted(set(linux.get("maskedPaths", [])) | set(MASKED_PATHS))
        linux["readonlyPaths"] = sorted(set(linux.get("readonlyPaths", [])) | set(READONLY_PATHS))
        linux["seccomp"] = seccomp.oci_seccomp(seccomp.load(), spec.arch, capabilities(spec))
    resources = linux.setdefault("resources", {})
    # A fork bomb in one service must not starve the host.
    if spec.security.pids_limit:
        resources["pids"] = {"limit": spec.security.pids_limit}
    else:
        resources.pop("pids", None)

    # Also in the unit (MemoryMax=, CPUQuota=); here for runtimes started without systemd (OpenRC).
    if spec.resources.memory:
        resources["memory"] = {"limit": spec.resources.memory}
    if spec.resources.cpus:
        resources["cpu"] = {"quota": round(spec.resources.cpus * 100000), "period": 100000}

    cfg["mounts"] = _mounts(cfg.get("mounts", []), spec)
    # Docker's /proc: no device files, set-user-ID programs or executables through it (umoci gives none
    # of these options); the read-only /proc paths below it inherit them.
    for mount in cfg["mounts"]:
        if mount.get("destination") == "/proc" and mount.get("type") == "proc":
            mount["options"] = ["nosuid", "noexec", "nodev"]

    annotations = cfg.setdefault("annotations", {})
    annotations[f"{ANNOTATION_PREFIX}.image"] = spec.image.pinned
    annotations[f"{ANNOTATION_PREFIX}.package"] = f"{spec.name}={spec.version}"
    annotations["org.opencontainers.image.stopSignal"] = spec.stop_signal
    for key, value in spec.annotations:
        annotations.setdefault(key, value)
    # The helper's awk switches the network at start (/etc/NAME/network): it finds the host name, if
    # any, right after ociVersion, which leads.
    head: dict[str, Any] = {"ociVersion": cfg.pop("ociVersion", OCI_VERSION)}
    if spec.private_network:
        head["hostname"] = spec.name
    if spec.runtime == "nspawn":
        return nspawn.adapt(head | cfg, spec.layout.state_dir)
    return head | cfg


def netns_path(name: str) -> str:
    """The service's network namespace (private network), as `ip netns add` makes it."""
    return f"/run/netns/ctr2svc-{name}"


def capabilities(spec: ServiceSpec) -> list[str]:
    """The capability set: Docker's defaults, or all with --privileged, then --cap-add and --cap-drop."""
    sec = spec.security
    caps = list(ALL_CAPABILITIES if sec.privileged else DEFAULT_CAPABILITIES)
    caps += [c for c in sec.cap_add if c not in caps]
    return [c for c in caps if c not in sec.cap_drop]


def _set_capabilities(process: dict[str, Any], spec: ServiceSpec) -> None:
    caps = capabilities(spec)
    # As Docker: the set in every field but inheritable and ambient. A process that starts as root has
    # it in effect; one that starts as another user loses it at execve (no ambient capabilities, and
    # the kernel clears a non-root process's permitted set), keeping it only as a bounding set; and a
    # root process started in the container later (`runc exec --user 0`, as `docker exec -u 0`) has it.
    process["capabilities"] = {
        "bounding": caps,
        "effective": caps,
        "permitted": caps,
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


def _umoci_volume(mount: dict[str, Any], declared: set[str]) -> bool:
    """One of the tmpfs mounts umoci adds for the image's VOLUMEs (source "none", as runc's own never
    are): each is replaced by a data directory, or left out with the VOLUME (at /proc, say)."""
    if mount.get("type") != "tmpfs" or mount.get("source") != "none":
        return False
    return posixpath.normpath("/" + str(mount.get("destination", ""))).replace("//", "/") in declared


def _mounts(mounts: list[dict[str, Any]], spec: ServiceSpec) -> list[dict[str, Any]]:
    volume_paths = {v.container_path.rstrip("/") or "/" for v in spec.volumes}
    declared = {metadata.volume_path(v) for v in spec.image.config.volumes}
    # umoci turns every VOLUME into a tmpfs: the data would vanish at every stop. Each becomes a bind
    # mount of a persistent directory on the host instead.
    kept = [
        m
        for m in mounts
        if (m.get("destination", "").rstrip("/") or "/") not in volume_paths
        and not _umoci_volume(m, declared)
        and m.get("destination") not in ("/etc/resolv.conf", "/etc/hosts", "/etc/hostname")
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
    for tmpfs in spec.tmpfs:
        kept = [m for m in kept if m.get("destination") != tmpfs.destination]
        kept.append(
            {
                "destination": tmpfs.destination,
                "type": "tmpfs",
                "source": "tmpfs",
                "options": [*TMPFS_OPTIONS, *tmpfs.options],
            }
        )
    if spec.init_process:
        kept.append(
            {"destination": INIT_PATH, "type": "bind", "source": TINI_STATIC, "options": ["rbind", "ro"]}
        )
    # No tmpfs on /tmp (Docker and podman mount none): the image's /tmp stays visible, and the overlay's
    # writable layer, emptied at every start, already keeps nothing between starts.
    # The host's resolver and hosts file, as Docker gives them with host networking: copies the helper
    # makes at each start, writable by the container, and the host's name in /etc/hostname.
    for name in ("resolv.conf", "hosts", "hostname"):
        kept.append(
            {
                "destination": f"/etc/{name}",
                "type": "bind",
                "source": f"{spec.layout.state_dir}/{name}",
                "options": ["rbind", "rw"],
            }
        )
    return kept
