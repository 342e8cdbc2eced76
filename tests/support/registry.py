"""A throw-away local container registry (Debian's docker-registry, distribution v2) for tests."""

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .images import ToolError, is_index_source, run

REGISTRY_BIN = "/usr/bin/docker-registry"
START_TIMEOUT = 15.0
PUSH_TIMEOUT = 300.0


def free_port() -> int:
    """A port that was free a moment ago (the kernel picks it; another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Registry:
    host: str
    username: str | None = None
    password: str | None = None
    # init=False: dataclasses.replace(reg, password="wrong") gives a client-only copy that cannot stop
    # the server.
    _proc: "subprocess.Popen[bytes] | None" = field(default=None, init=False, repr=False, compare=False)
    _log: Path | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def creds(self) -> str | None:
        if self.username is None:
            return None
        return f"{self.username}:{self.password or ''}"

    def ref(self, name: str, tag: str) -> str:
        return f"{self.host}/{name}:{tag}"

    def push(self, source: str, name: str, tag: str, *, all_images: bool | None = None) -> str:
        """Copy SOURCE to this registry as NAME:TAG and return 'HOST/NAME:TAG'.

        all_images=None detects an image index behind an 'oci:' source; without --all skopeo would copy
        only the host's platform out of it.
        """
        if all_images is None:
            all_images = is_index_source(source)
        dest = self.ref(name, tag)
        # Test code pushing its own images: no signature policy wanted, and /etc/containers may be absent.
        argv = ["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", "--retry-times", "2"]
        if all_images:
            argv.append("--all")
        if self.creds is not None:
            argv += ["--dest-creds", self.creds]
        argv += [source, f"docker://{dest}"]
        run(argv, timeout=PUSH_TIMEOUT)
        return dest

    def log_tail(self, lines: int = 40) -> str:
        if self._log is None or not self._log.exists():
            return ""
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _write_config(workdir: Path, port: int, auth: tuple[str, str] | None) -> Path:
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(workdir / "storage")},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "ctr2svc-test-only"},
    }
    if auth is not None:
        user, password = auth
        # distribution only accepts bcrypt entries in htpasswd files.
        entry = run(["htpasswd", "-Bbn", user, password]).stdout.strip()
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(entry + "\n")
        config["auth"] = {"htpasswd": {"realm": "ctr2svc-test", "path": str(htpasswd)}}
    path = workdir / "config.yml"
    # JSON is valid YAML; this avoids a YAML dependency.
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def _answers(url: str, auth: bool) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (fixed http://127.0.0.1 URL)
            return int(resp.status) == 200
    except urllib.error.HTTPError as e:
        return auth and e.code == 401
    except (urllib.error.URLError, OSError):
        return False


def start_registry(workdir: Path, *, auth: tuple[str, str] | None = None) -> Registry:
    """Start docker-registry on 127.0.0.1:<free port>, storing under WORKDIR; wait until /v2/ answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "registry.log"
    last_error = ""
    # free_port() can race with other processes: retry on a new port if the bind fails.
    for _attempt in range(3):
        port = free_port()
        config = _write_config(workdir, port, auth)
        host = f"127.0.0.1:{port}"
        reg = Registry(host, *(auth or (None, None)))
        reg._log = log
        with log.open("ab") as log_fh:
            reg._proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if reg._proc.poll() is not None:
                break
            if _answers(f"http://{host}/v2/", auth is not None):
                return reg
            time.sleep(0.05)
        tail = reg.log_tail()
        rc = reg._proc.poll()
        reg.stop()
        last_error = f"registry on {host} {'exited with ' + str(rc) if rc is not None else 'did not answer'}"
        if "address already in use" not in tail:
            raise ToolError(f"{last_error}; log {log}:\n{tail}")
    raise ToolError(f"{last_error} (port races); log {log}:\n{reg.log_tail()}")
