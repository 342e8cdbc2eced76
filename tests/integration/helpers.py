"""Small helpers for the integration tests: HTTP polling, dpkg queries, package listings."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def http_get(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback test server
        body: bytes = response.read()
    return body.decode()


def wait_for_http(url: str, deadline: float = 20.0) -> str:
    """The body of the first successful GET, polling until the deadline."""
    end = time.monotonic() + deadline
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            return http_get(url)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {deadline}s: {last}")


def refuses(url: str) -> bool:
    try:
        http_get(url, timeout=1)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return True
    return False


def sh(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, timeout=600)
    if check and proc.returncode != 0:
        # The command's own words, so that a CI log says why.
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


def running(comm: str) -> list[int]:
    """Processes named COMM, zombies left out (PID 1 of this test host does not reap orphans)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text()
            name, state = fields[fields.index("(") + 1 : fields.rindex(")")], fields[fields.rindex(")") + 2]
            if name == comm and state != "Z":
                found.append(int(stat.parent.name))
    return found


def leftovers() -> list[str]:
    """What a stopped private-network service could leave on the host: none of it may be there."""
    found = []
    links = sh("ip", "-o", "link").stdout
    found += [f"link {m}" for m in re.findall(r"^\d+: (ctr2svc0|c2s-[\w-]+|veth\w+)", links, re.MULTILINE)]
    found += [
        f"netns {n}"
        for n in sh("ip", "netns", "list").stdout.split()
        if n.startswith(("ctr2svc-ctr2svc", "ctr2svc-c2s-"))
    ]
    ruleset = sh("nft", "list", "ruleset").stdout
    found += [f"nft {line.strip()}" for line in ruleset.splitlines() if re.search(r"NETAVARK|10\.89\.", line)]
    found += [f"aardvark-dns pid {pid}" for pid in running("aardvark-dns")]
    return found


def dpkg(*args: str | Path) -> None:
    # Other tests use dpkg at the same time: wait for its lock rather than fail.
    for _ in range(60):
        proc = sh("dpkg", *args, check=False)
        if proc.returncode == 0:
            return
        if "lock" not in proc.stderr:
            raise AssertionError(proc.stderr)
        time.sleep(2)
    raise AssertionError(f"dpkg {args}: the lock stayed taken")


def dpkg_installed(name: str) -> bool:
    proc = sh("dpkg-query", "-W", "-f", "${Status}", name, check=False)
    return proc.returncode == 0 and proc.stdout.startswith("install ok installed")


def purge(name: str) -> None:
    if sh("dpkg-query", "-W", name, check=False).returncode == 0:
        sh("dpkg", "--purge", name, check=False)


@dataclass(frozen=True)
class TarEntry:
    mode: str
    owner: str
    path: str
    link: str | None
    hardlink: str | None = None  # a hard link's target (without ./); its mode starts with "h"


def deb_listing(deb: Path) -> dict[str, TarEntry]:
    """`dpkg-deb -c` parsed: path (without ./) -> entry."""
    entries: dict[str, TarEntry] = {}
    for line in sh("dpkg-deb", "-c", deb).stdout.splitlines():
        m = re.match(r"^(\S+) (\S+)\s+\d+ \S+ \S+ \./(.*?)(?: -> (.*)| link to \./(.*))?$", line)
        assert m, line
        mode, owner, path, link, hardlink = m.groups()
        entries[path.rstrip("/")] = TarEntry(mode, owner, path.rstrip("/"), link, hardlink)
    return entries
