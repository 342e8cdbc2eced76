"""A Debian 12 test VM with systemd as PID 1, for end-to-end tests of the packages ctr2svc builds.

The disk image is built once by build-image.sh (mmdebstrap + mke2fs -d) and cached under
``${CTR2SVC_TEST_CACHE:-/var/cache/ctr2svc-tests}/vm/<key>/``; every VM boots from its own
copy-on-write qcow2 overlay on top of it, so the cached base stays pristine. QEMU runs with direct
kernel boot, user-mode networking (ssh and any extra guest ports forwarded to 127.0.0.1) and, by
default, TCG software emulation (override with CTR2SVC_VM_ACCEL, e.g. ``kvm``).

    image = ensure_image()
    vm = VM(image, workdir)
    vm.start()
    vm.ssh("systemctl is-active foo")
    vm.reboot()
    vm.stop()

Processes: QEMU and the ssh control master are started under ``setpriv --pdeathsig KILL`` when
setpriv exists, so they die with the Python thread that started them, and an atexit hook kills
whatever is still running. Start VMs from the main thread.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-image.sh"

#: What the image holds on top of a minbase Debian 12.
DEFAULT_PACKAGES: tuple[str, ...] = (
    "systemd-sysv",
    "linux-image-amd64",
    "openssh-server",
    "runc",
    "dbus",
    "iproute2",
    "procps",
    "curl",
    "ca-certificates",
    "kmod",
    "udev",
    "e2fsprogs",
    "busybox-static",
    "rpm",  # the .rpm lifecycle test installs with rpm on this systemd host
    "crun",  # --runtime crun, which needs the unified cgroup hierarchy this guest has
    "postgresql-client",  # test_realistic.py: psql against the postgres-like service
    "redis-tools",  # test_realistic.py: redis-cli against the redis-like service
    "systemd-container",  # systemd-machined: services registered as machines (machinectl)
)

#: Host programs needed to boot a cached image / to build one.
BOOT_TOOLS: tuple[str, ...] = ("qemu-system-x86_64", "qemu-img", "ssh", "scp")
BUILD_TOOLS: tuple[str, ...] = ("bash", "mmdebstrap", "mke2fs", "ssh-keygen")

IMAGE_FILES: tuple[str, ...] = ("disk.img", "vmlinuz", "initrd.img", "id_ed25519", "image.json")
BUILD_TIMEOUT = 1800.0
DEFAULT_ACCEL = "tcg,thread=multi"
SERIAL_TAIL_LINES = 40
OUTPUT_TAIL_LINES = 30
GUEST_SHARE_DIR = "/mnt/host"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class VMError(RuntimeError):
    """Anything that went wrong building, booting or talking to the VM (message carries the details)."""


class SSHCommandError(VMError):
    """A command run in the guest exited non-zero (or ssh itself failed: returncode 255)."""

    def __init__(self, message: str, command: str, returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(message)
        self.command = command
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


# --------------------------------------------------------------------------------------------------
# helpers


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _tail_file(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    text = _ANSI.sub("", data.decode("utf-8", errors="replace")).replace("\r", "")
    return _tail(text, lines)


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


def _free_port(taken: set[int]) -> int:
    """A loopback port that was free a moment ago (QEMU may still lose a race for it: start() retries)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in taken:
            return port


def _deathsig_prefix() -> list[str]:
    """Make a child die with us even if we are SIGKILLed (no atexit then)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL"] if setpriv else []


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM the process group led by PROC, then SIGKILL it after GRACE seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def ci_mode() -> bool:
    """True when the CI environment variable is set (then missing prerequisites fail instead of skip)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# --------------------------------------------------------------------------------------------------
# the image


def cache_dir() -> Path:
    return Path(os.environ.get("CTR2SVC_TEST_CACHE") or "/var/cache/ctr2svc-tests") / "vm"


def image_key(packages: Sequence[str] = DEFAULT_PACKAGES) -> str:
    """Hash of build-image.sh and the package list: a change to either means another image."""
    h = hashlib.sha256()
    h.update(BUILD_SCRIPT.read_bytes())
    h.update(b"\0packages\0")
    h.update("\n".join(packages).encode())
    return h.hexdigest()[:16]


def _image_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in IMAGE_FILES)


def cached_image(packages: Sequence[str] = DEFAULT_PACKAGES) -> Path | None:
    path = cache_dir() / image_key(packages)
    return path if _image_complete(path) else None


def missing_requirements(packages: Sequence[str] = DEFAULT_PACKAGES) -> list[str]:
    """What this host lacks to boot the VM (and, if the image is not cached yet, to build it)."""
    missing = [f"program {tool}" for tool in BOOT_TOOLS if shutil.which(tool) is None]
    if cached_image(packages) is None:
        missing += [f"program {tool}" for tool in BUILD_TOOLS if shutil.which(tool) is None]
        if os.geteuid() != 0:
            missing.append("root (to build the VM image with mmdebstrap; it is not cached yet)")
    return missing


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_tree(path: Path) -> None:
    # --one-file-system: never descend into a mount a killed mmdebstrap may have left in its chroot.
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def ensure_image(packages: Sequence[str] = DEFAULT_PACKAGES, *, timeout: float = BUILD_TIMEOUT) -> Path:
    """Return the cached image directory for PACKAGES, building it first if needed (~2 minutes).

    The build runs in a temporary directory beside the cache entry, under a file lock, and is renamed
    into place only when complete: an interrupted build never leaves a usable-looking entry behind.
    """
    key = image_key(packages)
    base = cache_dir()
    final = base / key
    if _image_complete(final):
        return final
    base.mkdir(parents=True, exist_ok=True)
    with _locked(base / f"{key}.lock"):
        if _image_complete(final):  # another session built it while we waited
            return final
        for stale in base.glob(f".build-{key}-*"):
            log.info("removing stale partial build %s", stale)
            _remove_tree(stale)
        if final.exists():
            _remove_tree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=base))
        build_log = tmp / "build.log"
        log.info("building VM image %s in %s (takes a few minutes)", key, tmp)
        started = time.monotonic()
        with build_log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", str(BUILD_SCRIPT), str(tmp), *packages],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise VMError(
                    f"VM image build timed out after {timeout:.0f}s; log {build_log}:\n"
                    + _tail_file(build_log, OUTPUT_TAIL_LINES)
                ) from None
            except BaseException:
                _kill_group(proc)
                raise
        seconds = time.monotonic() - started
        if rc != 0:
            raise VMError(
                f"VM image build failed (exit {rc}): bash {BUILD_SCRIPT} {tmp} {' '.join(packages)}\n"
                f"--- {build_log} (last {OUTPUT_TAIL_LINES} lines) ---\n"
                + _tail_file(build_log, OUTPUT_TAIL_LINES)
            )
        missing = [name for name in IMAGE_FILES if name != "image.json" and not (tmp / name).is_file()]
        if missing:
            raise VMError(f"VM image build in {tmp} did not produce {missing}")
        meta = {
            "key": key,
            "packages": list(packages),
            "build_seconds": round(seconds, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
        tmp.chmod(0o755)
        tmp.rename(final)
        dir_fd = os.open(base, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        log.info("VM image %s built in %.0fs", key, seconds)
        return final


def image_build_seconds(image_dir: Path) -> float | None:
    """How long the build of IMAGE_DIR took (from its image.json)."""
    try:
        value = json.loads((image_dir / "image.json").read_text())["build_seconds"]
    except (OSError, ValueError, KeyError):
        return None
    return float(value)


# --------------------------------------------------------------------------------------------------
# the VM

_LIVE: set[VM] = set()


@atexit.register
def _kill_live_vms() -> None:
    for vm in list(_LIVE):
        vm.kill()


class _PortClash(VMError):
    """QEMU could not bind a forwarded port (another process took it after we picked it)."""


class VM:
    """One QEMU guest booted from a throw-away overlay on a cached image.

    workdir receives the overlay disk, serial.log (the guest console), qemu.log, ssh_config (usable
    by hand: ``ssh -F WORKDIR/ssh_config vm``) and the ssh key. The overlay survives reboot() and
    stop()/start(); stop() deletes it unless keep_disk=True.
    """

    def __init__(
        self,
        image_dir: Path,
        workdir: Path,
        *,
        memory_mb: int = 2048,
        cpus: int = 2,
        extra_forwards: Sequence[int] = (),
        share_dir: Path | None = None,
        accel: str | None = None,
        kernel_args: Sequence[str] = (),
    ) -> None:
        self.image_dir = image_dir.resolve()
        self.workdir = workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.extra_forwards = tuple(extra_forwards)
        self.share_dir = share_dir.resolve() if share_dir is not None else None
        self.accel = accel or os.environ.get("CTR2SVC_VM_ACCEL") or DEFAULT_ACCEL
        self.kernel_args = tuple(kernel_args)

        self.overlay = self.workdir / "overlay.qcow2"
        self.serial_log = self.workdir / "serial.log"
        self.qemu_log = self.workdir / "qemu.log"
        self.ssh_config = self.workdir / "ssh_config"
        self.key_file = self.workdir / "id_ed25519"
        self._ctl_dir: Path | None = None
        self._ctl_path = self.workdir / "ssh-ctl"
        self._ports: dict[int, int] = {}

        self._proc: subprocess.Popen[bytes] | None = None
        self._master: subprocess.Popen[bytes] | None = None
        self._qemu_log_fh: IO[bytes] | None = None

        #: Seconds from launching QEMU to ssh answering and systemd having finished booting.
        self.boot_seconds: float = 0.0
        #: Seconds the last reboot() took (command issued → back up, boot finished).
        self.reboot_seconds: float = 0.0
        #: /proc/sys/kernel/random/boot_id of the current boot.
        self.boot_id: str = ""
        #: `systemctl is-system-running` after the last boot, and the failed units if degraded.
        self.system_state: str = ""
        self.failed_units: list[str] = []

    # ---- public API ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def host_port(self, guest_port: int) -> int:
        """The 127.0.0.1 port forwarded to GUEST_PORT (22 and the extra_forwards given at creation)."""
        try:
            return self._ports[guest_port]
        except KeyError:
            raise VMError(
                f"guest port {guest_port} is not forwarded (forwarded: {sorted(self._ports)}); "
                "pass it in extra_forwards"
            ) from None

    def start(self, timeout: float = 300) -> None:
        """Boot and wait until ssh answers and systemd has finished booting (running or degraded)."""
        if self._proc is not None:
            raise VMError("VM already started")
        self._prepare()
        started = time.monotonic()
        deadline = started + timeout
        for attempt in range(3):
            self._allocate_ports()
            self._write_ssh_config()
            self._launch()
            try:
                self._wait_booted(deadline, old_boot_id=None)
                break
            except _PortClash:
                self.kill()
                if attempt == 2:
                    raise VMError("QEMU could not bind its forwarded ports three times in a row") from None
                log.info("QEMU lost a race for a forwarded port, retrying")
            except BaseException:
                self.kill()
                raise
        self.boot_seconds = time.monotonic() - started
        log.info("VM up in %.1fs (state %s)", self.boot_seconds, self.system_state)
        try:
            self._after_boot()
        except BaseException:
            self.kill()
            raise

    def ssh(
        self,
        command: str,
        *,
        check: bool = True,
        timeout: float = 120,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run COMMAND (a shell command line) as root in the guest."""
        if not self.running:
            if self._proc is not None:
                self._check_alive()  # says how QEMU ended
            raise self._error(f"VM is not running; cannot run: {command}")
        self._ensure_master()
        return self._ssh(command, check=check, timeout=timeout, input=input)

    def wait_until(self, command: str, *, timeout: float = 120, interval: float = 1.0) -> str:
        """Re-run COMMAND until it succeeds (returns its stdout); VMError after TIMEOUT seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            result = self.ssh(command, check=False, timeout=max(5.0, remaining))
            if result.returncode == 0:
                return result.stdout
            if time.monotonic() + interval > deadline:
                raise self._command_error(
                    f"still failing after {timeout:.0f}s of retries",
                    command,
                    result.returncode,
                    result.stdout,
                    result.stderr,
                )
            time.sleep(interval)

    def copy_to(self, local: Path, remote: str, *, timeout: float = 300) -> None:
        """scp LOCAL (file or directory, recursively) to REMOTE in the guest."""
        self._scp([str(local), f"vm:{remote}"], timeout)

    def copy_from(self, remote: str, local: Path, *, timeout: float = 300) -> None:
        """scp REMOTE (file or directory) from the guest to LOCAL."""
        self._scp([f"vm:{remote}", str(local)], timeout)

    def reboot(self, timeout: float = 300, *, command: str = "systemctl reboot") -> None:
        """Reboot the guest with COMMAND and wait until it is back (new boot id, boot finished).

        The guest shuts down for real; QEMU runs with -no-reboot, so its reset ends the QEMU process and
        a fresh one boots the same overlay with the same forwarded ports. (An in-place reset under TCG
        made the next boot 1.3-4x slower here, with stale translated code to invalidate.) A guest
        rebooting on its own, outside this method, leaves the VM stopped.
        """
        old = self.ssh("cat /proc/sys/kernel/random/boot_id", timeout=60).stdout.strip()
        started = time.monotonic()
        deadline = started + timeout
        try:
            # The connection may die under our feet: don't check.
            self._ssh(command, check=False, timeout=60, input=None)
            self._stop_master()
            self._wait_qemu_exit(deadline, what=f"shut down after {command!r}")
            self._launch()
            self._wait_booted(deadline, old_boot_id=old)
            self.reboot_seconds = time.monotonic() - started
            log.info("VM rebooted in %.1fs (state %s)", self.reboot_seconds, self.system_state)
            self._after_boot()
        except BaseException:
            self.kill()
            raise

    def _wait_qemu_exit(self, deadline: float, *, what: str) -> None:
        proc = self._proc
        if proc is None:
            raise self._error("VM is not running")
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            raise self._error(f"guest did not {what} in time") from None
        self._proc = None
        if self._qemu_log_fh is not None:
            self._qemu_log_fh.close()
            self._qemu_log_fh = None

    def stop(self, *, timeout: float = 120, keep_disk: bool = False) -> None:
        """Power the guest off cleanly; kill QEMU if it has not exited after TIMEOUT seconds."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            delivered = False
            with contextlib.suppress(VMError):
                result = self._ssh("systemctl poweroff", check=False, timeout=30, input=None)
                delivered = result.returncode == 0
            # If the guest did not even take the command, don't wait long for it.
            wait = timeout if delivered else min(timeout, 15.0)
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                log.warning("VM did not power off within %.0fs; killing QEMU", wait)
        self.kill()
        if not keep_disk:
            self.overlay.unlink(missing_ok=True)

    def kill(self) -> None:
        """Stop QEMU and the ssh master at once (no clean shutdown). Safe to call repeatedly."""
        self._stop_master()
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            self._proc = None
        if self._qemu_log_fh is not None:
            self._qemu_log_fh.close()
            self._qemu_log_fh = None
        if self._ctl_dir is not None:
            shutil.rmtree(self._ctl_dir, ignore_errors=True)
            self._ctl_dir = None
        _LIVE.discard(self)

    def serial_tail(self, lines: int = SERIAL_TAIL_LINES) -> str:
        """The last LINES lines of the guest's serial console."""
        return _tail_file(self.serial_log, lines)

    def __enter__(self) -> VM:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- internals -------------------------------------------------------------------------------

    def _prepare(self) -> None:
        missing = [name for name in IMAGE_FILES if not (self.image_dir / name).is_file()]
        if missing:
            raise VMError(f"image {self.image_dir} is incomplete, missing {missing}")
        # ssh insists on a private key only its user can read.
        if not self.key_file.exists():
            shutil.copyfile(self.image_dir / "id_ed25519", self.key_file)
        self.key_file.chmod(0o600)
        if not self.overlay.exists():
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                 str(self.image_dir / "disk.img"), str(self.overlay)],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip

    def _allocate_ports(self) -> None:
        taken: set[int] = set()
        self._ports = {}
        for guest in (22, *self.extra_forwards):
            if guest in self._ports:
                continue
            port = _free_port(taken)
            taken.add(port)
            self._ports[guest] = port

    def _write_ssh_config(self) -> None:
        # ssh's ControlPath must fit in a unix socket address (~104 bytes with ssh's temporary suffix).
        ctl = self.workdir / "ssh-ctl"
        if len(str(ctl)) > 80:
            if self._ctl_dir is None:
                self._ctl_dir = Path(tempfile.mkdtemp(prefix="c2s-vm-"))
            ctl = self._ctl_dir / "ctl"
        self._ctl_path = ctl
        options = {
            "HostName": "127.0.0.1",
            "Port": str(self._ports[22]),
            "User": "root",
            "IdentityFile": str(self.key_file),
            "IdentitiesOnly": "yes",
            "BatchMode": "yes",
            "StrictHostKeyChecking": "no",
            "UserKnownHostsFile": "/dev/null",
            "GlobalKnownHostsFile": "/dev/null",
            "CheckHostIP": "no",
            "LogLevel": "ERROR",
            "ConnectTimeout": "10",
            "ConnectionAttempts": "1",
            "ServerAliveInterval": "10",
            "ServerAliveCountMax": "6",
            "ControlMaster": "no",
            "ControlPath": str(self._ctl_path),
            "ForwardAgent": "no",
            "ForwardX11": "no",
        }
        # A file of our own, read with -F: the user's and the system's ssh_config do not apply (no
        # SendEnv LANG LC_* either, so the guest's perl does not complain about missing locales).
        text = "Host vm\n" + "".join(f"    {k} {v}\n" for k, v in options.items())
        self.ssh_config.write_text(text)

    def _qemu_argv(self) -> list[str]:
        forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in self._ports.items())
        append = " ".join(
            ["root=/dev/vda", "rw", "console=ttyS0,115200", "net.ifnames=0", "panic=-1", *self.kernel_args]
        )
        cpu = "host" if self.accel.startswith("kvm") else "max"
        argv = [
            "qemu-system-x86_64",
            "-name", "ctr2svc-test-vm",
            "-machine", "q35",
            "-accel", self.accel,
            "-cpu", cpu,
            "-m", str(self.memory_mb),
            "-smp", str(self.cpus),
            "-nodefaults", "-no-user-config",
            "-display", "none",
            # append=on: one log across the QEMU processes of reboot().
            "-chardev", f"file,id=serial0,path={self.serial_log},append=on",
            "-serial", "chardev:serial0",
            # A guest reset ends QEMU: reboot() starts a fresh one (see there); a panic (panic=-1) too.
            "-no-reboot",
            "-kernel", str(self.image_dir / "vmlinuz"),
            "-initrd", str(self.image_dir / "initrd.img"),
            "-append", append,
            "-drive", f"file={self.overlay},format=qcow2,if=virtio,cache=unsafe,discard=unmap",
            "-netdev", f"user,id=net0,{forwards}",
            "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-rng-pci",
        ]  # fmt: skip
        if self.share_dir is not None:
            argv += ["-virtfs", f"local,path={self.share_dir},mount_tag=host,security_model=none,id=host"]
        return argv

    def _launch(self) -> None:
        argv = self._qemu_argv()
        self._qemu_log_fh = self.qemu_log.open("ab")
        self._qemu_log_fh.write(f"+ {shlex.join(argv)}\n".encode())
        self._qemu_log_fh.flush()
        log.info("starting %s", shlex.join(argv))
        self._proc = subprocess.Popen(
            [*_deathsig_prefix(), *argv],
            stdin=subprocess.DEVNULL,
            stdout=self._qemu_log_fh,
            stderr=subprocess.STDOUT,
        )
        _LIVE.add(self)

    def _check_alive(self) -> None:
        proc = self._proc
        if proc is None:
            raise self._error("VM is not running")
        rc = proc.poll()
        if rc is None:
            return
        qemu_out = _tail_file(self.qemu_log, 10)
        if "forwarding" in qemu_out and rc != 0:
            raise _PortClash(qemu_out)
        hint = " (the guest powered off, rebooted or panicked: use VM.reboot() to reboot)" if rc == 0 else ""
        raise self._error(f"QEMU exited with status {rc}{hint}; {self.qemu_log}:\n{qemu_out}")

    def _wait_booted(self, deadline: float, old_boot_id: str | None) -> None:
        """Poll ssh until the guest answers with a boot id other than OLD_BOOT_ID, then wait for systemd."""
        last: subprocess.CompletedProcess[str] | None = None
        while True:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                detail = f"last ssh attempt: exit {last.returncode}, {_tail(last.stderr, 5)}" if last else ""
                raise self._error(f"guest not reachable by ssh in time. {detail}")
            last = self._ssh(
                "cat /proc/sys/kernel/random/boot_id",
                check=False,
                timeout=min(30.0, max(remaining, 1.0)),
                input=None,
                allow_timeout=True,
            )
            boot_id = last.stdout.strip()
            if last.returncode == 0 and boot_id and boot_id != old_boot_id:
                self.boot_id = boot_id
                break
            time.sleep(1.0)
        self._ensure_master()
        remaining = max(deadline - time.monotonic(), 10.0)
        state = self._ssh("systemctl is-system-running --wait", check=False, timeout=remaining, input=None)
        self.system_state = state.stdout.strip()
        self.failed_units = []
        if self.system_state == "degraded":
            failed = self._ssh("systemctl list-units --failed --plain --no-legend", check=False,
                               timeout=60, input=None)  # fmt: skip
            self.failed_units = [line.split()[0] for line in failed.stdout.splitlines() if line.split()]
            log.warning("VM is degraded; failed units: %s", self.failed_units)
        elif self.system_state != "running":
            raise self._command_error(
                "systemd did not finish booting", "systemctl is-system-running --wait",
                state.returncode, state.stdout, state.stderr,
            )  # fmt: skip

    def _after_boot(self) -> None:
        if self.share_dir is not None:
            self._ssh(
                f"mkdir -p {GUEST_SHARE_DIR} && (mountpoint -q {GUEST_SHARE_DIR} || "
                f"mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host {GUEST_SHARE_DIR})",
                check=True, timeout=60, input=None,
            )  # fmt: skip

    def _ensure_master(self) -> None:
        """(Re)start the ssh control master; without one, commands still work, only slower."""
        if self._master is not None and self._master.poll() is None:
            return
        self._stop_master()
        self._master = subprocess.Popen(
            [*_deathsig_prefix(), "ssh", "-F", str(self.ssh_config), "-M", "-N",
             "-o", "ControlPersist=no", "vm"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._master.poll() is None:
            check = subprocess.run(
                ["ssh", "-F", str(self.ssh_config), "-O", "check", "vm"],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False,
            )  # fmt: skip
            if check.returncode == 0:
                return
            time.sleep(0.2)
        log.warning("ssh control master did not come up; continuing without it")
        self._stop_master()

    def _stop_master(self) -> None:
        master = self._master
        self._master = None
        if master is None:
            return
        if master.poll() is None:
            master.terminate()
            try:
                master.wait(timeout=10)
            except subprocess.TimeoutExpired:
                master.kill()
                master.wait(timeout=10)
        with contextlib.suppress(FileNotFoundError):
            self._ctl_path.unlink()

    def _ssh(
        self,
        command: str,
        *,
        check: bool,
        timeout: float,
        input: bytes | None,
        allow_timeout: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", "-F", str(self.ssh_config), "vm", "--", command]
        try:
            raw = subprocess.run(
                argv,
                input=input,
                stdin=subprocess.DEVNULL if input is None else None,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            if allow_timeout:
                return subprocess.CompletedProcess(argv, 255, _decode(exc.stdout), "ssh timed out")
            raise self._command_error(
                f"timed out after {timeout:.0f}s", command, None, _decode(exc.stdout), _decode(exc.stderr)
            ) from None
        result = subprocess.CompletedProcess(argv, raw.returncode, _decode(raw.stdout), _decode(raw.stderr))
        if check and result.returncode != 0:
            raise self._command_error("failed", command, result.returncode, result.stdout, result.stderr)
        return result

    def _scp(self, args: list[str], timeout: float) -> None:
        if not self.running:
            raise self._error(f"VM is not running; cannot scp {args}")
        self._ensure_master()
        argv = ["scp", "-F", str(self.ssh_config), "-q", "-r", *args]
        try:
            raw = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise self._command_error(
                f"timed out after {timeout:.0f}s",
                shlex.join(argv),
                None,
                _decode(exc.stdout),
                _decode(exc.stderr),
            ) from None
        if raw.returncode != 0:
            raise self._command_error(
                "failed", shlex.join(argv), raw.returncode, _decode(raw.stdout), _decode(raw.stderr)
            )

    def _error(self, message: str) -> VMError:
        return VMError(
            f"{message}\n--- serial console (last {SERIAL_TAIL_LINES} lines of {self.serial_log}) ---\n"
            + self.serial_tail()
        )

    def _command_error(
        self, what: str, command: str, returncode: int | None, stdout: str, stderr: str
    ) -> SSHCommandError:
        status = "no exit status" if returncode is None else f"exit {returncode}"
        message = (
            f"guest command {what} ({status}): {command}\n"
            f"--- stdout (last {OUTPUT_TAIL_LINES} lines) ---\n{_tail(stdout, OUTPUT_TAIL_LINES)}\n"
            f"--- stderr (last {OUTPUT_TAIL_LINES} lines) ---\n{_tail(stderr, OUTPUT_TAIL_LINES)}\n"
            f"--- serial console (last {SERIAL_TAIL_LINES} lines of {self.serial_log}) ---\n"
            + self.serial_tail()
        )
        return SSHCommandError(message, command, -1 if returncode is None else returncode, stdout, stderr)
