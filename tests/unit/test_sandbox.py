"""The unit's confinement: the container's capabilities always fit in the unit's bounding set, and a
capability given to the container lifts the unit's refusal of the calls it allows (as Docker's profile)."""

from __future__ import annotations

import dataclasses

from ctr2svc.model import Security
from ctr2svc.service import runtime_config, sandbox, units

from .conftest import make_spec


def test_default_sandbox() -> None:
    box = sandbox.unit_sandbox(make_spec())
    assert set(runtime_config.DEFAULT_CAPABILITIES) <= set(box.capability_bounding_set)
    assert set(sandbox.RUNTIME_CAPABILITIES) <= set(box.capability_bounding_set)
    assert not {"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_TIME", "CAP_BPF"} & set(
        box.capability_bounding_set
    )
    assert box.syscall_filter == ("@module", "@raw-io", "@reboot", "@swap", "@obsolete")
    assert box.no_new_privileges and box.restrict_realtime


def test_capabilities_lift_the_unit_gates() -> None:
    spec = dataclasses.replace(
        make_spec(), security=Security(cap_add=("CAP_SYS_MODULE", "CAP_SYS_NICE"), cap_drop=("CAP_NET_RAW",))
    )
    box = sandbox.unit_sandbox(spec)
    assert {"CAP_SYS_MODULE", "CAP_SYS_NICE"} <= set(box.capability_bounding_set)
    assert "CAP_NET_RAW" in box.capability_bounding_set  # the helper's, though the container drops it
    assert "@module" not in box.syscall_filter and "@obsolete" in box.syscall_filter
    assert not box.restrict_realtime


def test_privileged_unit_is_not_confined() -> None:
    spec = dataclasses.replace(make_spec(), security=Security(privileged=True))
    assert sandbox.unit_sandbox(spec) == sandbox.Sandbox()
    unit = units.render("service.unit.j2", **units._values(spec))
    for directive in ("CapabilityBoundingSet=", "SystemCallFilter=", "NoNewPrivileges=", "RestrictRealtime="):
        assert directive not in unit
