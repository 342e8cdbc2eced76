"""What systemd confines a service's unit with, beyond the container's own profile.

Only directives that runc under systemd tolerates and that take nothing from the container that Docker
would give it. The unit's processes are the helper, runc (or crun) and, through them, the container,
which inherits the unit's capability bounding set and system call filter. So:

- The bounding set is what the helper and the runtime need, plus the container's own set.
- The filter refuses only call groups that Docker's profile also refuses the container without a
  capability it does not have.
- Directives that give the unit a mount namespace of its own (ProtectSystem=, PrivateTmp=,
  ProtectKernel*=, PrivateDevices=, …) are left out. The helper mounts the container's root and, with
  a private network, binds its network namespace under /run/netns. Those mounts must be the host's,
  seen by the unit's later commands (stop, cleanup) and by the admin; in a namespace of the unit's
  they would not be.

docs/service.md lists what was left out and why; `systemd-analyze security` scores the result.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctr2svc.model import ServiceSpec
from ctr2svc.service.runtime_config import capabilities

# The helper and the runtime: mounts, namespaces and pivot_root (SYS_ADMIN, SYS_CHROOT), the
# container's /dev (MKNOD), ownership of its files (CHOWN, DAC_*, FOWNER, FSETID), dropping to the
# container's user and capabilities (SETUID, SETGID, SETPCAP), rlimits and oom_score_adj
# (SYS_RESOURCE), signals (KILL), /proc/PID/ns of a container process running as another user
# (SYS_PTRACE, for `runc exec` and the health check), the private network (NET_ADMIN, NET_RAW, and
# NET_BIND_SERVICE for aardvark-dns, which netavark starts from the helper).
RUNTIME_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_ADMIN",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RESOURCE",
)

# systemd's call groups, each refused unless the container has the capability that lifts Docker's
# refusal of the same calls (None: Docker refuses them whatever the capabilities).
# @cpu-emulation, @clock and @debug are not here: Docker allows modify_ldt, adjtimex and ptrace.
SYSCALL_GROUPS: dict[str, str | None] = {
    "@module": "CAP_SYS_MODULE",
    "@raw-io": "CAP_SYS_RAWIO",
    "@reboot": "CAP_SYS_BOOT",
    "@swap": "CAP_SYS_ADMIN",
    "@obsolete": None,
}


@dataclass(frozen=True)
class Sandbox:
    """The unit's confinement; empty for --privileged, which Docker runs unconfined."""

    capability_bounding_set: tuple[str, ...] = ()
    syscall_filter: tuple[str, ...] = ()
    no_new_privileges: bool = False
    restrict_realtime: bool = False


def unit_sandbox(spec: ServiceSpec) -> Sandbox:
    if spec.security.privileged:
        return Sandbox()
    container = set(capabilities(spec))
    bounding = sorted(set(RUNTIME_CAPABILITIES) | container)
    refused = tuple(group for group, cap in SYSCALL_GROUPS.items() if cap is None or cap not in container)
    return Sandbox(
        capability_bounding_set=tuple(bounding),
        syscall_filter=refused,
        # The container has noNewPrivileges already (runtime_config); the helper and runc need none.
        no_new_privileges=True,
        # Docker's containers get no real-time scheduling without CAP_SYS_NICE either.
        restrict_realtime="CAP_SYS_NICE" not in container,
    )
