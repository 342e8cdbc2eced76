"""The seccomp filter made from containers-common's allow-list: conditions resolved for the container's
architecture and capabilities, Docker's capability gates on top, and clear errors when the list is
missing. The real list (installed by scripts/bootstrap) is used where the test is about its content."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ctr2svc.errors import ToolError
from ctr2svc.service import runtime_config, seccomp

DEFAULT_CAPS = list(runtime_config.DEFAULT_CAPABILITIES)


def synthetic(tmp_path: Path) -> seccomp.Profile:
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
        "syscalls": [
            {"names": ["read", "write", "mount", "unshare", "clone", "clone3"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
            {"names": ["s390_only"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
            {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}},
            {
                "names": ["chroot"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 1,
                "excludes": {"caps": ["CAP_SYS_CHROOT"]},
            },
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
                "comment": "dropped",
            },
        ],
    }
    path = tmp_path / "seccomp.json"
    path.write_text(json.dumps(profile))
    return seccomp.load(path)


def names(filt: dict[str, Any], action: str) -> set[str]:
    return {
        n
        for rule in filt["syscalls"]
        if rule["action"] == action and "args" not in rule
        for n in rule["names"]
    }


def test_conditions_resolved_for_arch_and_caps(tmp_path: Path) -> None:
    profile = synthetic(tmp_path)
    filt = seccomp.oci_seccomp(profile, "amd64", DEFAULT_CAPS)
    assert filt["defaultAction"] == "SCMP_ACT_ERRNO" and filt["defaultErrnoRet"] == 38
    assert filt["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    allowed = names(filt, "SCMP_ACT_ALLOW")
    assert {"read", "write", "arch_prctl", "chroot"} <= allowed  # Docker's defaults have CAP_SYS_CHROOT
    assert "s390_only" not in allowed
    # Docker's gates: containers-common allows mount and unshare; without CAP_SYS_ADMIN they are EPERM.
    refused = {n for r in filt["syscalls"] if r.get("errnoRet") == 1 and "args" not in r for n in r["names"]}
    assert {"mount", "unshare", "keyctl"} <= refused
    assert not {"mount", "unshare", "clone", "clone3"} & allowed
    # Rules keep only the OCI fields.
    personality = [r for r in filt["syscalls"] if r["names"] == ["personality"]]
    assert personality == [
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
        }
    ]


def test_clone_may_not_make_a_user_namespace(tmp_path: Path) -> None:
    filt = seccomp.oci_seccomp(synthetic(tmp_path), "amd64", DEFAULT_CAPS)
    clone = [r for r in filt["syscalls"] if r["names"] == ["clone"]]
    assert [(r["action"], r["args"][0]["value"], r["args"][0]["valueTwo"]) for r in clone] == [
        ("SCMP_ACT_ALLOW", seccomp.CLONE_NEWUSER, 0),
        ("SCMP_ACT_ERRNO", seccomp.CLONE_NEWUSER, seccomp.CLONE_NEWUSER),
    ]
    assert {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38} in filt["syscalls"]
    # On s390 the flags are clone's second argument.
    s390 = seccomp.oci_seccomp(synthetic(tmp_path), "s390x", DEFAULT_CAPS)
    assert {r["args"][0]["index"] for r in s390["syscalls"] if r["names"] == ["clone"]} == {1}


def test_capabilities_lift_the_gates(tmp_path: Path) -> None:
    profile = synthetic(tmp_path)
    caps = [*DEFAULT_CAPS, "CAP_SYS_ADMIN"]
    filt = seccomp.oci_seccomp(profile, "amd64", caps)
    assert {"mount", "unshare", "clone", "clone3"} <= names(filt, "SCMP_ACT_ALLOW")
    assert "keyctl" in names(filt, "SCMP_ACT_ERRNO")  # refused whatever the capabilities, as Docker does
    dropped = seccomp.oci_seccomp(profile, "amd64", [c for c in DEFAULT_CAPS if c != "CAP_SYS_CHROOT"])
    assert "chroot" in names(dropped, "SCMP_ACT_ERRNO") and "chroot" not in names(dropped, "SCMP_ACT_ALLOW")


def test_missing_or_broken_profile_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ToolError) as missing:
        seccomp.load(tmp_path / "nowhere.json")
    assert "golang-github-containers-common" in missing.value.one_line()
    assert missing.value.exit_code == 4
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ToolError, match="not JSON"):
        seccomp.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ToolError, match="not a seccomp profile"):
        seccomp.load(tmp_path / "list.json")


def test_the_installed_list() -> None:
    """containers-common's own list, as the build reads it: Docker's answers for the calls that matter."""
    profile = seccomp.load()
    filt = seccomp.oci_seccomp(profile, "amd64", DEFAULT_CAPS)
    allowed = names(filt, "SCMP_ACT_ALLOW")
    refused = names(filt, "SCMP_ACT_ERRNO")
    assert {"read", "openat", "epoll_wait", "io_setup", "ptrace", "arch_prctl"} <= allowed
    assert {"kexec_load", "mount", "unshare", "setns", "keyctl", "add_key", "reboot", "bpf"} <= refused
    assert not allowed & refused
    # Unknown to the list, refused with ENOSYS by default: io_uring (Docker refuses it too).
    assert "io_uring_setup" not in allowed | refused
    # runc reads every name: none is empty and no rule is left without names.
    assert all(rule["names"] and all(rule["names"]) for rule in filt["syscalls"])
