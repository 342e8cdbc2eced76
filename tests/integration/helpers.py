"""Small helpers for the integration tests: HTTP polling, dpkg queries, package listings, rpmlint."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ctr2svc.package.imagelint import UNPREDICTABLE
from tests.conftest import require


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


# rpmlint (Debian's 2.4, with its default configuration: close to openSUSE's, with Fedora's old license
# names) on the packages a repository would publish: signed, flat and with shared layers. Every finding
# left is here, with the reason it stays and where it may be: a code with a pattern is accepted only
# when its argument (the path, the command, the value) matches it, so that a finding on a file of
# ctr2svc's own fails the test even under a code accepted for the image's files. Anything else fails.
IMAGE_FILE = r"/opt/containers/(\S+/\S+|layers/[0-9a-f]{12})/rootfs/\S+"
RPMLINT_ACCEPTED: dict[str, tuple[str, str | None]] = {
    "dir-or-file-in-opt": (
        "the image tree lives in /opt/containers by design: FHS 3.13 puts add-on software in /opt",
        r"/opt/containers(/\S+)?",
    ),
    # The image's own files, shipped as they are in the image (the test image has a static busybox,
    # a setuid file, a root-only home, a sticky /tmp and a hard link on purpose).
    "statically-linked-binary": ("the image's own files", IMAGE_FILE),
    "position-independent-executable-suggested": ("the image's own files", IMAGE_FILE),
    "setuid-binary": ("the image's own files", IMAGE_FILE + r" \S+ \d+"),
    "non-standard-executable-perm": ("the image's own files", IMAGE_FILE + r" \d+"),
    "non-standard-dir-perm": ("the image's own files", IMAGE_FILE + r" \d+"),
    "non-readable": (
        "the image's own files, and /etc/NAME/env, root-only on purpose: it is where the admin puts "
        "passwords",
        rf"({IMAGE_FILE} \d+|/etc/[a-z-]+/env 600)",
    ),
    # Metadata.
    "no-url-tag": ("set only from the image's org.opencontainers.image.url or .source label", None),
    "no-documentation": ("a service made of an image has no documentation of its own", None),
    "invalid-license": (
        "SPDX (what Fedora and openSUSE use now), or NOASSERTION when the image has no licenses label: "
        "Debian's rpmlint 2.4 knows only Fedora's old short names",
        r"\S+",
    ),
    "no-dependency-on": (
        "rpmlint reads NAME-svc as a locale package (svc is an ISO 639-3 code)",
        r"locales-svc",
    ),
    "only-non-binary-in-usr-lib": (
        "the systemd unit and preset are where systemd wants them (/usr/lib/systemd)",
        None,
    ),
    "no-binary": (
        "a service package with shared layers holds only text, and stays of the layers' architecture",
        None,
    ),
    # Scriptlets.
    "dangerous-command-in-%postun": (
        "rm of the runtime state (service) or of the whiteouts (layer), on erase only ($1 = 0)",
        r"rm",
    ),
    "dangerous-command-in-%pre": (
        "rm of a rollback's own state and snapshot (/var/lib/ctr2svc/rollback/NAME), before an upgrade",
        r"rm",
    ),
    "dangerous-command-in-%preun": (
        "rm of what an upgrade kept for a rollback, on erase only ($1 = 0)",
        r"rm",
    ),
}


# What images made of real Debian packages add (tests/integration/test_lint_realistic.py): all of it
# about the image's own files, which run inside the container on the image's own libraries.
RPMLINT_ACCEPTED_REAL_IMAGES: dict[str, tuple[str, str | None]] = {
    # Hard links are stored once (rpmheader.py); these are distinct files with the same content.
    "files-duplicate": (
        "the image's own identical files, which are not hard links in the image",
        rf"{IMAGE_FILE} {IMAGE_FILE}",
    ),
    "files-duplicated-waste": ("the same files, counted in bytes", r"\d+"),
    "setgid-binary": ("the image's own files (chage, expiry, unix_chkpwd)", IMAGE_FILE + r" \S+ \d+"),
    "missing-call-to-setgroups-before-setuid": ("the image's own files", IMAGE_FILE),
    "call-to-mktemp": ("the image's own files", IMAGE_FILE),
    "binary-or-shlib-calls-gethostbyname": ("the image's own files", IMAGE_FILE),
    "binary-or-shlib-defines-rpath": ("the image's own files", IMAGE_FILE + r" \(RU?N?PATH: .*\)"),
    "shared-library-without-dependency-information": ("the image's own files", IMAGE_FILE),
    "library-not-linked-against-libc": ("the image's own files", IMAGE_FILE),
    "devel-file-in-non-devel-package": ("the image's own files", IMAGE_FILE),
    "non-executable-script": ("the image's own files", IMAGE_FILE + r" \d+ .+"),
    "shared-library-not-executable": ("the image's own files (PostgreSQL's modules)", IMAGE_FILE),
    "no-soname": ("the image's own files (PostgreSQL's modules, loaded with dlopen)", IMAGE_FILE),
    "missing-hash-section": ("the image's own files (PostgreSQL's modules)", IMAGE_FILE),
    "non-versioned-file-in-library-package": (
        "openSUSE's policy for a package that holds a shared library: a layer package holds an image "
        "layer as the image has it, libraries and all",
        r"/opt/containers(/\S+)?",
    ),
    "zero-length": ("the image's own files (/etc/machine-id, lock files)", IMAGE_FILE),
    "hidden-file-or-dir": ("the image's own files (/etc/skel, lock files)", IMAGE_FILE),
    "dangling-symlink": (
        "the image's own links, resolved inside the container (/dev/fd -> /proc/self/fd)",
        IMAGE_FILE + r" \S+",
    ),
    "dangling-relative-symlink": (
        "the image's own links, to files the image leaves out (its docs are excluded)",
        IMAGE_FILE + r" \S+",
    ),
    "symlink-should-be-relative": (
        "the image's own links: absolute ones are resolved inside the container's root",
        IMAGE_FILE + r" \S+",
    ),
}


def rpmlint(rpm: Path, home: Path) -> list[tuple[str, str]]:
    """rpmlint's errors and warnings on RPM as (code, argument); rpm -K inside it reads HOME's rpmdb."""
    require(shutil.which("rpmlint") is not None, "rpmlint is not installed (apt-get install rpmlint)")
    proc = subprocess.run(
        ["rpmlint", rpm], capture_output=True, text=True, env={**os.environ, "HOME": str(home)}, check=False
    )
    findings = []
    for line in proc.stdout.splitlines():
        parts = line.split(": ", 2)
        if len(parts) == 3 and parts[1] in ("E", "W"):
            code, _, argument = parts[2].partition(" ")
            findings.append((code, argument.strip()))
    assert "packages and 0 specfiles checked" in proc.stdout, proc.stdout + proc.stderr
    return findings


def unexplained(
    findings: list[tuple[str, str]], accepted_codes: dict[str, tuple[str, str | None]] = RPMLINT_ACCEPTED
) -> list[str]:
    """The findings (as 'code argument') that ACCEPTED_CODES does not account for."""
    bad = []
    for code, argument in findings:
        accepted = accepted_codes.get(code)
        if accepted is None or (accepted[1] is not None and not re.fullmatch(accepted[1], argument)):
            bad.append(f"{code} {argument}")
    return bad


def _unused_override(line: str) -> bool:
    """An `I: PACKAGE: unused-override TAG ...` line, for a tag ctr2svc predicts (not one of those that
    rest on lintian's own data tables, imagelint.UNPREDICTABLE, overridden whenever they could apply)."""
    words = line.split()
    return "unused-override" in words and words[words.index("unused-override") + 1] not in UNPREDICTABLE


def lintian(deb: Path, timeout: float = 600) -> tuple[list[str], str]:
    """lintian's E:/W: lines on DEB (a non-zero exit without one counts as one) and its reports of
    an override it found no use for (`I: unused-override`, which `lintian -I` shows everyone), and
    its output."""
    proc = subprocess.run(
        ["lintian", "--fail-on", "error,warning", "--display-info", "--tag-display-limit", "0", str(deb)],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    tags = [
        line
        for line in proc.stdout.splitlines()
        if line.startswith(("E:", "W:")) or (line.startswith("I:") and _unused_override(line))
    ]
    # (--show-overrides would show what the overrides silence, but makes --fail-on count it too.)
    if proc.returncode != 0 and not tags:
        tags = [f"lintian exited {proc.returncode}"]
    return tags, proc.stdout + proc.stderr
