"""Run OpenRC init scripts for real on a host whose init is not OpenRC (Debian's `openrc` package).

openrc-run, librc and supervise-daemon have `/run/openrc` compiled in (RC_SVCDIR in the environment is
ignored), and they refuse to act unless `/run/openrc/softlevel` exists ("system which openrc did not
boot"). Creating that file on the host would be noticed by others: Debian's invoke-rc.d switches to
OpenRC mode when it exists, which would break concurrent .deb tests. So every OpenRC command runs in a
private mount namespace, held open by a `sleep` process, in which a scratch directory is bind-mounted on
`/run/openrc` and a scratch copy of `/etc/rc.conf` on `/etc/rc.conf`. supervise-daemon inherits the
namespace, so later `stop`/`status` calls see the same state, and tear-down can find every process this
instance started by its namespace alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

RC_SVCDIR = Path("/run/openrc")
RC_CONF = Path("/etc/rc.conf")
INIT_D = Path("/etc/init.d")
CGROUP2_HYBRID = Path("/sys/fs/cgroup/unified")
CGROUP2_UNIFIED = Path("/sys/fs/cgroup")
TOOLS = ("/sbin/openrc-run", "/sbin/supervise-daemon", "/sbin/rc-update", "unshare", "nsenter", "mount")
# librc marks states by creating symlinks in these; it does not create the directories itself (OpenRC's
# boot does), and a missing one shows up as the misleading "WARNING: NAME is already starting".
STATE_DIRS = (
    "daemons",
    "exclusive",
    "failed",
    "hotplugged",
    "inactive",
    "options",
    "scheduled",
    "started",
    "starting",
    "stopping",
    "tmp",
    "wasinactive",
)
STATUS_RE = re.compile(r"status: (\S+)")
DEFAULT_TIMEOUT = 120.0


class OpenRCError(RuntimeError):
    pass


def missing_requirements() -> list[str]:
    """What this host lacks to run OpenRC scripts (empty when everything is there)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (mount namespaces, /etc/init.d, supervise-daemon)")
    for tool in TOOLS:
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install openrc util-linux mount)")
    return missing


def _mnt_ns(pid: int | str) -> int | None:
    try:
        return Path(f"/proc/{pid}/ns/mnt").stat().st_ino
    except OSError:
        return None


class OpenRC:
    """A private OpenRC state for running `/etc/init.d/NAME start|stop|status|restart`.

    cgroups=True keeps OpenRC's own cgroup handling, as on Alpine: with rc_cgroup_mode "hybrid" (OpenRC's
    default, and this host's layout) openrc-run puts each service in /sys/fs/cgroup/unified/NAME and
    removes that on stop. cgroups=False sets rc_cgroup_mode="legacy", the only switch that stops OpenRC
    0.45 from touching cgroup v2 (its v1 handling only acts when /sys/fs/cgroup/openrc exists, which
    OpenRC's own boot mounts and this host lacks); use it where /sys/fs/cgroup is not writable.
    """

    def __init__(self, *, runlevel: str = "default", cgroups: bool = True, rc_conf: str = "") -> None:
        missing = missing_requirements()
        if missing:
            raise OpenRCError("cannot run OpenRC here, missing: " + ", ".join(missing))
        self.runlevel = runlevel
        self.cgroups = cgroups
        self._tmp = Path(tempfile.mkdtemp(prefix="ctr2svc-openrc-"))
        self.state_dir = self._tmp / "svcdir"
        self._holder: subprocess.Popen[bytes] | None = None
        self._ns: int | None = None
        self._created_svcdir = False
        self._services: dict[str, Path] = {}
        self._preexisting: set[Path] = set()
        try:
            self._prepare(rc_conf)
        except BaseException:
            self.close()
            raise

    def _prepare(self, extra_conf: str) -> None:
        if not RC_CONF.exists():
            raise OpenRCError(f"{RC_CONF} is missing: is the openrc package installed?")
        self.state_dir.mkdir()
        for name in STATE_DIRS:
            (self.state_dir / name).mkdir()
        (self.state_dir / "softlevel").write_text(self.runlevel + "\n")
        conf = RC_CONF.read_text()
        if not self.cgroups:
            conf += '\nrc_cgroup_mode="legacy"\n'
        conf += "\n" + extra_conf + "\n"
        (self._tmp / "rc.conf").write_text(conf)
        if not RC_SVCDIR.exists():
            # A bind mount needs a mount point; /run is a tmpfs, so this is gone at the next boot anyway.
            RC_SVCDIR.mkdir(parents=True)
            self._created_svcdir = True
        own_ns = _mnt_ns("self")
        # --propagation private: the bind mounts below must not leak back to the host.
        self._holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sleep", "infinity"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # unshare execs sleep in the same process: wait until the namespace switch has happened.
        deadline = time.monotonic() + 10
        while _mnt_ns(self._holder.pid) in (own_ns, None) or self._comm(self._holder.pid) != "sleep":
            if self._holder.poll() is not None or time.monotonic() > deadline:
                raise OpenRCError("unshare --mount did not start (no CAP_SYS_ADMIN?)")
            time.sleep(0.01)
        self._ns = _mnt_ns(self._holder.pid)
        self._nsenter(["mount", "--bind", str(self.state_dir), str(RC_SVCDIR)])
        self._nsenter(["mount", "--bind", str(self._tmp / "rc.conf"), str(RC_CONF)])

    @staticmethod
    def _comm(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return ""

    def _nsenter(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        assert self._holder is not None
        proc = subprocess.run(
            ["nsenter", "-t", str(self._holder.pid), "-m", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise OpenRCError(f"{argv} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def __enter__(self) -> OpenRC:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @staticmethod
    def script_path(script: str | Path) -> Path:
        path = Path(script)
        return path if path.is_absolute() else INIT_D / path

    def run(
        self, script: str | Path, action: str, *, check: bool = True, timeout: float = DEFAULT_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """`SCRIPT ACTION` inside the namespace, executed through its #! line as OpenRC would."""
        if self._holder is None:
            raise OpenRCError("this OpenRC instance is closed")
        path = self.script_path(script)
        if action in ("start", "restart"):
            self._remember(path)
        return self._in_namespace([str(path), action], f"{path} {action}", check=check, timeout=timeout)

    def _in_namespace(
        self, argv: list[str], label: str, *, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        assert self._holder is not None
        # librc rebuilds the dependency cache only when a script is newer than it, with one-second
        # resolution: a script rewritten within the same second as the last run would keep stale
        # depend() data. Dropping the cache makes every run see the scripts as they are now.
        for cache in ("deptree", "depconfig"):
            (self.state_dir / cache).unlink(missing_ok=True)
        # Files, not pipes: supervise-daemon and anything start_pre leaves behind may inherit the
        # descriptors, and a pipe would then keep communicate() waiting until the timeout.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.run(
                ["nsenter", "-t", str(self._holder.pid), "-m", "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={**os.environ, "EINFO_COLOR": "NO"},
                timeout=timeout,
                check=False,
            )
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
        if check and result.returncode != 0:
            raise OpenRCError(f"{label} exited {result.returncode}:\n{result.stdout}{result.stderr}".rstrip())
        return result

    def sh(
        self, command: str, *, check: bool = True, timeout: float = DEFAULT_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """A shell command inside the namespace, where OpenRC counts as booted (package scripts)."""
        if self._holder is None:
            raise OpenRCError("this OpenRC instance is closed")
        return self._in_namespace(["sh", "-c", command], command, check=check, timeout=timeout)

    def status(self, script: str | Path) -> str:
        """OpenRC's word for the state: started, stopped, crashed, starting, stopping, inactive..."""
        proc = self.run(script, "status", check=False)
        match = STATUS_RE.search(proc.stdout + proc.stderr)
        if match is None:
            raise OpenRCError(f"no status in: {proc.stdout}{proc.stderr}")
        return match.group(1)

    def option(self, name: str, key: str) -> str | None:
        """A value supervise-daemon records for the service (child_pid, start_count, retry, ...)."""
        try:
            return (self.state_dir / "options" / name / key).read_text().strip()
        except FileNotFoundError:
            return None

    def child_pid(self, name: str) -> int | None:
        """PID of the process supervise-daemon runs for NAME (changes when it respawns)."""
        value = self.option(name, "child_pid")
        return int(value) if value else None

    def started_child(self, name: str, timeout: float = 15.0) -> int:
        """The child's PID once supervise-daemon has recorded it: `start` returns before it does."""
        deadline = time.monotonic() + timeout
        while (pid := self.child_pid(name)) is None:
            if time.monotonic() > deadline:
                raise OpenRCError(f"supervise-daemon recorded no child for {name} within {timeout:.0f}s")
            time.sleep(0.05)
        return pid

    def supervisor_pid(self, name: str) -> int | None:
        value = self.option(name, "pidfile")
        pidfile = Path(value) if value else Path(f"/run/supervise-{name}.pid")
        try:
            return int(pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _leftovers(self, name: str) -> list[Path]:
        return [
            Path(f"/run/supervise-{name}.pid"),
            CGROUP2_HYBRID / name,
            CGROUP2_UNIFIED / name,
        ]

    def _remember(self, path: Path) -> None:
        if path.name not in self._services:
            self._services[path.name] = path
            self._preexisting.update(p for p in self._leftovers(path.name) if p.exists())

    def processes(self) -> list[int]:
        """PIDs in this instance's mount namespace, except the holder: what it still runs."""
        if self._holder is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if (
                entry.name.isdigit()
                and int(entry.name) != self._holder.pid
                and _mnt_ns(entry.name) == self._ns
            ):
                pids.append(int(entry.name))
        return pids

    def close(self) -> None:
        """Stop what was started, kill what is left in the namespace, and undo every host change."""
        if self._holder is not None:
            for script in self._services.values():
                with contextlib.suppress(OpenRCError, subprocess.TimeoutExpired):
                    if self.status(script) != "stopped":
                        self.run(script, "stop", check=False, timeout=60)
            # A stop that failed or hung leaves supervise-daemon and its child behind. Processes the
            # service put in new mount namespaces (runc containers) are not found here: their owner
            # has to remove them (runc delete --force).
            for _ in range(50):
                pids = self.processes()
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
            self._holder.kill()
            self._holder.wait(timeout=10)
            self._holder = None
            for name in self._services:
                for path in self._leftovers(name):
                    if path in self._preexisting or not path.exists():
                        continue
                    with contextlib.suppress(OSError):
                        path.rmdir() if path.is_dir() else path.unlink()
        if self._created_svcdir:
            with contextlib.suppress(OSError):
                RC_SVCDIR.rmdir()
            self._created_svcdir = False
        shutil.rmtree(self._tmp, ignore_errors=True)
