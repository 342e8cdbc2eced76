"""The security profile, seen from inside: a packaged service is installed and started here as its unit
would start it, and probes read what its processes really get from the kernel (capability sets,
seccomp mode, no_new_privs, namespaces, pids limit, masked and read-only paths, writable places, uid),
compared with Docker's defaults. The same image built with --privileged shows the difference.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli, require
from tests.support.images import service_image
from tests.support.registry import Registry, free_port

from .helpers import purge, sh, wait_for_http

pytestmark = pytest.mark.integration

# What `docker run` gives a root process: CapBnd/CapEff 00000000a80425fb (chown, dac_override, fowner,
# fsetid, kill, setgid, setuid, setpcap, net_bind_service, net_raw, sys_chroot, mknod, audit_write,
# setfcap).
DOCKER_DEFAULT_CAPS = 0xA80425FB
ALL_CAPS = (1 << 41) - 1


@dataclass(frozen=True)
class Running:
    name: str
    port: int
    pid: int

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return sh("runc", "--root", f"/run/{self.name}/runc", "exec", self.name, *argv, check=False)


def status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


@pytest.fixture(scope="module")
def image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    port = free_port()
    source = service_image(
        tmp_path_factory.mktemp("probe") / "layout", "1.0", port=port, version_text="probe"
    )
    return registry.push(source, "itest/probe", "1.0"), port


@contextlib.contextmanager
def run_packaged(ctr2svc: Cli, ref: str, port: int, name: str, out: Path, *flags: str) -> Iterator[Running]:
    deb = Path(ctr2svc("build", ref, "--name", name, *flags, "-o", out).stdout.strip())
    purge(name)
    sh("dpkg", "-i", deb)
    helper = f"/usr/libexec/{name}/service"
    try:
        sh(helper, "prepare")
        # A file, not a pipe: runc --detach hands its stdio to the container.
        with (out / "service.log").open("ab") as log:
            subprocess.run([helper, "start"], stdout=log, stderr=log, check=True, timeout=60)
        wait_for_http(f"http://127.0.0.1:{port}/")
        yield Running(name, port, int(Path(f"/run/{name}/pid").read_text()))
    finally:
        sh(helper, "stop", check=False)
        purge(name)


@pytest.fixture(scope="module")
def default(
    image: tuple[str, int], ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    with run_packaged(ctr2svc, *image, "probe-svc", tmp_path_factory.mktemp("default")) as running:
        yield running


def test_capabilities_seccomp_and_no_new_privs(default: Running) -> None:
    init = status(default.pid)
    # The entrypoint started as root and dropped to the app user: nothing effective, Docker's bounding set.
    assert int(init["CapBnd"], 16) == DOCKER_DEFAULT_CAPS
    assert int(init["CapEff"], 16) == 0
    assert init["Uid"].split()[0] == "999"
    assert init["NoNewPrivs"] == "1"
    assert init["Seccomp"] == "2"  # a filter is installed
    # A root process in the container (runc exec, as the entrypoint starts) has exactly Docker's set.
    probe = default.exec("grep", "-E", "^(CapEff|CapBnd|Seccomp|NoNewPrivs):", "/proc/self/status")
    fields = dict(line.split(":\t") for line in probe.stdout.splitlines())
    assert int(fields["CapEff"], 16) == int(fields["CapBnd"], 16) == DOCKER_DEFAULT_CAPS, probe


def test_namespaces(default: Running) -> None:
    def ns(pid: int | str, kind: str) -> str:
        return str(Path(f"/proc/{pid}/ns/{kind}").readlink())

    for kind in ("pid", "mnt", "ipc"):
        assert ns(default.pid, kind) != ns("self", kind), kind
    # Host networking: the service's ports are the host's, its name the host's.
    for kind in ("net", "uts"):
        assert ns(default.pid, kind) == ns("self", kind), kind


def test_seccomp_blocks_what_docker_blocks(default: Running) -> None:
    # A new user namespace needs no capability on Debian; the filter refuses it (EPERM).
    refused = default.exec("unshare", "-U", "true")
    assert refused.returncode != 0
    assert "Operation not permitted" in refused.stderr


# x86_64 system call numbers, and what the probe's arguments make the kernel answer without a filter.
GETPID = ("39",)  # 0
KEYCTL = ("250", "0", "-3", "0")  # KEYCTL_GET_KEYRING_ID of the session keyring
IO_URING_SETUP = ("425", "1", "0")  # EFAULT: no parameters
FUTEX_WAITV = ("449", "0", "0", "0", "0", "0")  # EINVAL: no futexes
EPERM, EFAULT, EINVAL, ENOSYS = 1, 14, 22, 38


@pytest.fixture(scope="module")
def syscall_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/support/syscall_probe.c, static, so that it runs in the busybox image."""
    require(shutil.which("gcc") is not None, "gcc is not installed (scripts/bootstrap --test)")
    binary = tmp_path_factory.mktemp("probe-bin") / "syscall-probe"
    sh("gcc", "-static", "-O2", "-o", binary, Path(__file__).parents[1] / "support" / "syscall_probe.c")
    return binary


def probe(running: Running, binary: Path, call: tuple[str, ...]) -> int:
    # The volume is a bind mount of this directory: the container sees the file at /data.
    target = Path(f"/var/lib/{running.name}/volumes/data/syscall-probe")
    if not target.exists():
        shutil.copy2(binary, target)
    proc = running.exec("/data/syscall-probe", *call)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


def test_seccomp_is_dockers_allow_list(default: Running, syscall_probe: Path) -> None:
    """System calls the allow-list does not name fail with ENOSYS, as under Docker and podman: io_uring
    and futex_waitv, which the block-list ctr2svc used before let through (as --privileged shows)."""
    assert probe(default, syscall_probe, GETPID) == 0
    assert probe(default, syscall_probe, IO_URING_SETUP) == ENOSYS
    assert probe(default, syscall_probe, FUTEX_WAITV) == ENOSYS
    # Named in the list, but behind Docker's gate: the kernel keyring is not namespaced.
    assert probe(default, syscall_probe, KEYCTL) == EPERM


def test_paths(default: Running) -> None:
    # /proc/sys is read-only, /proc/kcore masked; /tmp is the image's, as under Docker (no tmpfs), and
    # private: in the writable layer, emptied at every start.
    assert default.exec("sh", "-c", "echo 1 > /proc/sys/kernel/ns_last_pid").returncode != 0
    assert default.exec("cat", "/proc/kcore").stdout == ""
    mounts = default.exec("cat", "/proc/mounts").stdout
    assert not any(line.split()[1] == "/tmp" for line in mounts.splitlines()), mounts
    assert default.exec("touch", "/tmp/written-by-probe").returncode == 0
    assert Path("/var/lib/probe-svc/overlay/upper/tmp/written-by-probe").exists()
    # The root is writable through the overlay only: the installed tree is never written.
    assert default.exec("touch", "/etc/written-by-probe").returncode == 0
    assert Path("/var/lib/probe-svc/overlay/upper/etc/written-by-probe").exists()
    assert not Path("/opt/containers/probe-svc/1.0/rootfs/etc/written-by-probe").exists()
    # Volumes are the other writable place, persistent on the host.
    assert default.exec("su", "-s", "/bin/sh", "app", "-c", "touch /data/x").returncode == 0
    assert Path("/var/lib/probe-svc/volumes/data/x").stat().st_uid == 999


def test_pids_limit(default: Running) -> None:
    lines = Path(f"/proc/{default.pid}/cgroup").read_text().splitlines()
    v1 = [line.split(":", 2)[2] for line in lines if line.split(":")[1] == "pids"]
    path = Path("/sys/fs/cgroup/pids" + v1[0]) if v1 else Path("/sys/fs/cgroup" + lines[-1].split(":", 2)[2])
    assert (path / "pids.max").read_text().strip() == "4096"


def test_privileged_lifts_it_all(
    default: Running, image: tuple[str, int], ctr2svc: Cli, syscall_probe: Path, tmp_path: Path
) -> None:
    sh(f"/usr/libexec/{default.name}/service", "stop")
    # This machine's sandbox lacks CAP_SYS_RESOURCE in its own bounding set, and runc cannot grant what
    # it does not have: dropped here only, a real host has it.
    flags = ("--privileged", "--pids-limit", "0", "--cap-drop", "SYS_RESOURCE")
    try:
        with run_packaged(ctr2svc, *image, "probe-priv-svc", tmp_path, *flags) as privileged:
            init = status(privileged.pid)
            expected = ALL_CAPS & int(status(1)["CapBnd"], 16) & ~(1 << 24)
            assert int(init["CapBnd"], 16) == expected
            assert init["Seccomp"] == "0" and init["NoNewPrivs"] == "0"
            assert privileged.exec("unshare", "-U", "true").returncode == 0
            # No filter: the kernel answers the calls the default profile refuses.
            assert probe(privileged, syscall_probe, IO_URING_SETUP) == EFAULT
            assert probe(privileged, syscall_probe, FUTEX_WAITV) == EINVAL
            assert probe(privileged, syscall_probe, KEYCTL) != EPERM
    finally:
        sh(f"/usr/libexec/{default.name}/service", "prepare")
        with (tmp_path / "restart.log").open("ab") as log:
            subprocess.run(
                [f"/usr/libexec/{default.name}/service", "start"],
                stdout=log,
                stderr=log,
                check=True,
                timeout=60,
            )
