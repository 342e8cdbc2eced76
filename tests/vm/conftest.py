"""The session-wide test VM (logic lives in tests/vm/vmhost.py)."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support.registry import free_port
from tests.vm import vmhost

# The private network's stack: the VM has no route to Debian's mirror, so its packages are downloaded
# on this host and installed in the VM with dpkg.
NETWORK_DEBS = (
    *("netavark", "aardvark-dns", "iptables", "netbase", "libmnl0", "libip4tc2", "libip6tc2"),
    *("libxtables12", "libnetfilter-conntrack3", "libnfnetlink0", "libnftnl11"),
)


def install_network_stack(vm: vmhost.VM, work: Path) -> None:
    """netavark, aardvark-dns and what they need, in the VM (downloaded into WORK on this host); once a
    session: the network and compose tests share the VM."""
    if (
        vm.ssh("dpkg-query -W -f '${Status}' netavark aardvark-dns", check=False).stdout.count("ok installed")
        == 2
    ):
        return
    downloads = work / "downloads"
    downloads.mkdir()
    got = subprocess.run(
        ["apt-get", "download", *NETWORK_DEBS], cwd=downloads, capture_output=True, text=True, check=False
    )
    require(got.returncode == 0, f"cannot download the network stack's packages: {got.stderr}")
    vm.ssh("mkdir -p /root/netdebs")
    for deb in downloads.glob("*.deb"):
        vm.copy_to(deb, f"/root/netdebs/{deb.name}")
    vm.ssh("dpkg -i /root/netdebs/*.deb", timeout=300)


def root_mounts(vm: vmhost.VM, name: str) -> int:
    """How many mounts are stacked on a service's root, by the kernel's table: 1 while it runs, 0 when
    stopped (issue 22: an upgrade used to leave the old one behind, and a remove then failed)."""
    table = f"awk -v root=/run/{name}/rootfs '$5 == root' /proc/self/mountinfo | wc -l"
    return int(vm.ssh(table).stdout.strip())


# The modules whose images are made of Debian packages (tests/support/realistic.py) run last: scripts/test
# builds those images in the background from its start, while the VM runs the other modules, instead of
# the VM waiting idle for the build (about 10 minutes of a clean CI run).
REALISTIC_MODULES = ("test_compose.py", "test_realistic.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    items.sort(key=lambda item: item.path.parent == here and item.path.name in REALISTIC_MODULES)


@pytest.fixture(scope="session")
def vm_image() -> Path:
    """The cached Debian 12 VM image directory (built on first use, ~2 minutes).

    Missing qemu/mmdebstrap/root: skip locally, fail when $CI is set.
    """
    missing = vmhost.missing_requirements()
    if missing:
        reason = "test VM unavailable, missing: " + ", ".join(missing)
        if vmhost.ci_mode():
            pytest.fail(reason)
        pytest.skip(reason)
    return vmhost.ensure_image()


@pytest.fixture(scope="session")
def vm(vm_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[vmhost.VM]:
    """A booted Debian 12 VM (systemd as PID 1, runc, ssh), shared by the session, powered off at its end."""
    machine = vmhost.VM(vm_image, tmp_path_factory.mktemp("vm"))
    machine.start()  # kills QEMU itself if the boot fails
    try:
        yield machine
    finally:
        machine.stop()


class Timings:
    """Durations the e2e tests measure, printed at the end of the run (docs/testing.md quotes them)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, float]] = []

    def record(self, what: str, seconds: float) -> None:
        self.entries.append((what, seconds))


_TIMINGS = Timings()


@pytest.fixture(scope="session")
def timings(vm: vmhost.VM) -> Timings:
    if not any(what.startswith("VM boot") for what, _ in _TIMINGS.entries):
        _TIMINGS.record("VM boot (qemu start → systemd booted, ssh up)", vm.boot_seconds)
    return _TIMINGS


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """An empty repository directory served over HTTP on the host's loopback (10.0.2.2 to the guest)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", repo, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield repo, port
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def fleet_key(tmp_path: Path) -> Path:
    """A gpg home holding the signing key fleet@example.com; its public key exported to
    tmp_path/key.gpg, for the guest's /etc/apt/keyrings."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    uid = "fleet <fleet@example.com>"
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    exported = subprocess.run(["gpg", "--export"], env=env, capture_output=True, check=True).stdout
    (tmp_path / "key.gpg").write_bytes(exported)
    return home


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TIMINGS.entries:
        return
    terminalreporter.section("ctr2svc e2e timings")
    for what, seconds in _TIMINGS.entries:
        terminalreporter.write_line(f"{seconds:7.1f}s  {what}")
