"""The session-wide test VM (logic lives in tests/vm/vmhost.py)."""

from collections.abc import Iterator

import pytest

from tests.vm import vmhost


@pytest.fixture(scope="session")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vmhost.VM]:
    """A booted Debian 12 VM (systemd as PID 1, runc, ssh), shared by the session and powered off at its end.

    Missing qemu/mmdebstrap/root: skip locally, fail when $CI is set.
    """
    missing = vmhost.missing_requirements()
    if missing:
        reason = "test VM unavailable, missing: " + ", ".join(missing)
        if vmhost.ci_mode():
            pytest.fail(reason)
        pytest.skip(reason)
    image = vmhost.ensure_image()
    machine = vmhost.VM(image, tmp_path_factory.mktemp("vm"))
    machine.start()  # kills QEMU itself if the boot fails
    try:
        yield machine
    finally:
        machine.stop()
