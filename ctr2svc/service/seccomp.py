"""The container's system call filter: Docker's and podman's default allow-list, as containers-common
ships it, made into the OCI runtime's form for one service (its architecture and capabilities).

The profile file is an allow-list with conditions (a rule applies only with some capabilities, or only
on some architectures); the OCI runtime config wants a flat list. What a container may call is decided
at build time, as Docker decides it at `docker run`: a system call the list does not know fails with
ENOSYS, so calls added to the kernel after the list are refused until the list learns them.

containers-common's list lets a container without CAP_SYS_ADMIN make user namespaces, mount, unshare
and join namespaces, and reach a few calls Docker keeps behind a capability. Those are refused here as
Docker refuses them (`DOCKER_GATED`), so the filter is never looser than Docker's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ctr2svc.errors import ToolError

# Debian's golang-github-containers-common and Fedora's containers-common both install it here.
PROFILE_PATH = Path("/usr/share/containers/seccomp.json")
PROFILE_PACKAGES = "golang-github-containers-common on Debian and Ubuntu, containers-common on Fedora"

EPERM = 1
ENOSYS = 38
CLONE_NEWUSER = 0x10000000

# The native libseccomp architecture of each target, and the names the profile's `arches` use for it.
NATIVE_ARCH = {
    "amd64": ("SCMP_ARCH_X86_64", ("amd64",)),
    "i386": ("SCMP_ARCH_X86", ("x86",)),
    "arm64": ("SCMP_ARCH_AARCH64", ("arm64",)),
    "armhf": ("SCMP_ARCH_ARM", ("arm",)),
    "armel": ("SCMP_ARCH_ARM", ("arm",)),
    "ppc64el": ("SCMP_ARCH_PPC64LE", ("ppc64le",)),
    "s390x": ("SCMP_ARCH_S390X", ("s390x",)),
    "riscv64": ("SCMP_ARCH_RISCV64", ("riscv64",)),
    "mips64el": ("SCMP_ARCH_MIPSEL64", ("mips64le",)),
}

# System calls Docker's default profile refuses unless the container has the capability (None: never).
# containers-common allows these without it; they fail with EPERM here, as under Docker.
DOCKER_GATED: dict[str, str | None] = {
    "add_key": None,
    "keyctl": None,
    "request_key": None,
    "clock_adjtime": "CAP_SYS_TIME",
    "clock_adjtime64": "CAP_SYS_TIME",
    "get_mempolicy": "CAP_SYS_NICE",
    "mbind": "CAP_SYS_NICE",
    "set_mempolicy": "CAP_SYS_NICE",
    "fsconfig": "CAP_SYS_ADMIN",
    "fsmount": "CAP_SYS_ADMIN",
    "fsopen": "CAP_SYS_ADMIN",
    "fspick": "CAP_SYS_ADMIN",
    "mount": "CAP_SYS_ADMIN",
    "mount_setattr": "CAP_SYS_ADMIN",
    "move_mount": "CAP_SYS_ADMIN",
    "name_to_handle_at": "CAP_SYS_ADMIN",
    "open_tree": "CAP_SYS_ADMIN",
    "pivot_root": "CAP_SYS_ADMIN",
    "quotactl": "CAP_SYS_ADMIN",
    "quotactl_fd": "CAP_SYS_ADMIN",
    "setns": "CAP_SYS_ADMIN",
    "umount": "CAP_SYS_ADMIN",
    "umount2": "CAP_SYS_ADMIN",
    "unshare": "CAP_SYS_ADMIN",
    "process_vm_readv": "CAP_SYS_PTRACE",
    "process_vm_writev": "CAP_SYS_PTRACE",
    "pidfd_getfd": "CAP_SYS_PTRACE",
    "reboot": "CAP_SYS_BOOT",
}


@dataclass(frozen=True)
class Profile:
    """A default profile as read from its file."""

    path: str
    sha256: str
    data: dict[str, Any]

    @property
    def source(self) -> str:
        return f"{self.path} sha256:{self.sha256[:12]}"


@cache  # read once per build: the runtime config and image.json both need it
def load(path: Path = PROFILE_PATH) -> Profile:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ToolError(
            f"Docker's default seccomp profile is not installed ({path})",
            hint=f"install {PROFILE_PACKAGES}",
        ) from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ToolError(f"{path} is not JSON: {exc}", hint=f"reinstall {PROFILE_PACKAGES}") from None
    if not isinstance(data, dict) or not isinstance(data.get("syscalls"), list):
        raise ToolError(f"{path} is not a seccomp profile", hint=f"reinstall {PROFILE_PACKAGES}")
    return Profile(str(path), hashlib.sha256(raw).hexdigest(), data)


def _applies(rule: dict[str, Any], arch_names: tuple[str, ...], caps: frozenset[str]) -> bool:
    includes = rule.get("includes") or {}
    excludes = rule.get("excludes") or {}
    if includes.get("arches") and not set(includes["arches"]) & set(arch_names):
        return False
    if any(cap not in caps for cap in includes.get("caps") or ()):
        return False
    if set(excludes.get("arches") or ()) & set(arch_names):
        return False
    # minKernel is not checked: the host the package runs on is not known here, and what the lists
    # guard with it (ptrace on 4.8) is older than any supported kernel.
    return not set(excludes.get("caps") or ()) & caps


def _rule(
    names: list[str], action: str, errno: int | None = None, args: list[Any] | None = None
) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": names, "action": action}
    if errno is not None:
        rule["errnoRet"] = errno
    if args:
        rule["args"] = args
    return rule


def oci_seccomp(profile: Profile, arch: str, capabilities: list[str]) -> dict[str, Any]:
    """The OCI runtime config's linux.seccomp for a container of ARCH with CAPABILITIES."""
    data = profile.data
    caps = frozenset(capabilities)
    native, arch_names = NATIVE_ARCH.get(arch, ("", (arch,)))
    architectures = [native] if native else []
    for entry in data.get("archMap") or []:
        if entry.get("architecture") == native:
            architectures += list(entry.get("subArchitectures") or [])

    refused = {name for name, cap in DOCKER_GATED.items() if cap is None or cap not in caps}
    # Docker: without CAP_SYS_ADMIN, clone may not make a user namespace, and clone3 (whose flags a
    # filter cannot read) fails with ENOSYS so that libc falls back to clone.
    gate_clone = "CAP_SYS_ADMIN" not in caps
    if gate_clone:
        refused |= {"clone", "clone3"}

    syscalls: list[dict[str, Any]] = []
    for rule in data["syscalls"]:
        if not _applies(rule, arch_names, caps):
            continue
        names = [n for n in rule.get("names") or [] if n not in refused]
        if names:
            syscalls.append(_rule(names, rule["action"], rule.get("errnoRet"), rule.get("args")))
    syscalls.append(_rule(sorted(refused - {"clone", "clone3"}), "SCMP_ACT_ERRNO", EPERM))
    if gate_clone:
        # The flags are clone's first argument, its second on s390.
        index = 1 if arch == "s390x" else 0
        newuser = {"index": index, "value": CLONE_NEWUSER, "op": "SCMP_CMP_MASKED_EQ"}
        syscalls.append(_rule(["clone"], "SCMP_ACT_ALLOW", args=[newuser | {"valueTwo": 0}]))
        syscalls.append(_rule(["clone"], "SCMP_ACT_ERRNO", EPERM, [newuser | {"valueTwo": CLONE_NEWUSER}]))
        syscalls.append(_rule(["clone3"], "SCMP_ACT_ERRNO", ENOSYS))

    seccomp: dict[str, Any] = {"defaultAction": data.get("defaultAction", "SCMP_ACT_ERRNO")}
    if "defaultErrnoRet" in data:
        seccomp["defaultErrnoRet"] = data["defaultErrnoRet"]
    seccomp["architectures"] = architectures
    seccomp["syscalls"] = syscalls
    return seccomp
