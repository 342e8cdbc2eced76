"""The .rpm: built from a registry image, checked with rpm's own tools, installed, upgraded, downgraded
and erased with the real rpm into a separate root (`rpm --root`), where its scriptlets really run.

No RPM distribution is reachable from here, so the root holds just what the scriptlets need (Debian's
static busybox as /bin/sh and its applets); the VM tests run the same package under systemd.
"""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli, require
from tests.support.images import service_image
from tests.support.registry import Registry, free_port

from .helpers import sh

pytestmark = pytest.mark.integration

NAME = "kv-svc"


@dataclass(frozen=True)
class Built:
    rpms: dict[str, Path]
    digest: str


@pytest.fixture(scope="module")
def built(registry: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory) -> Built:
    require(shutil.which("rpm") is not None, "rpm is not installed (apt-get install rpm)")
    work = tmp_path_factory.mktemp("rpm")
    port = free_port()
    rpms = {}
    digest = ""
    for version in ("1.0", "2.0"):
        source = service_image(work / "layout", version, port=port, version_text=f"kv {version}")
        ref = registry.push(source, "itest/kv", version)
        proc = ctr2svc("build", ref, "--format", "rpm", "-o", work / version)
        rpms[version] = Path(proc.stdout.strip())
        if version == "1.0":
            inspect = sh("skopeo", "inspect", "--tls-verify=false", f"docker://{ref}")
            digest = json.loads(inspect.stdout)["Digest"]
    return Built(rpms, digest)


def query(rpm: Path, fmt: str) -> str:
    return sh("rpm", "-qp", "--queryformat", fmt, rpm).stdout


def test_metadata_and_signature_check(built: Built) -> None:
    rpm = built.rpms["1.0"]
    assert rpm.name == f"{NAME}-1.0-1.x86_64.rpm"
    assert query(rpm, "%{NAME} %{VERSION} %{RELEASE} %{ARCH}") == f"{NAME} 1.0 1 x86_64"
    assert "runc" in query(rpm, "[%{REQUIRENAME}\n]").split()
    assert built.digest in query(rpm, "%{DESCRIPTION}")
    assert "digests OK" in sh("rpm", "-K", rpm).stdout
    scripts = sh("rpm", "-qp", "--scripts", rpm).stdout
    for scriptlet in ("postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet"):
        assert scriptlet in scripts
    listing = sh("rpm", "-qlvp", rpm).stdout
    assert f"/usr/lib/systemd/system/{NAME}.service" in listing
    assert f"/usr/lib/systemd/system-preset/50-{NAME}.preset" in listing
    # Faithful modes in the payload: sticky /tmp, setuid, setgid directory.
    modes = {line.split()[-1]: line.split()[0] for line in listing.splitlines() if "/rootfs/" in line}
    rootfs = f"/opt/containers/{NAME}/1.0-1/rootfs"
    assert modes[f"{rootfs}/tmp"] == "drwxrwxrwt"
    assert modes[f"{rootfs}/usr/bin/suidprobe"] == "-rwsr-xr-x"
    assert modes[f"{rootfs}/var/spool/app"] == "drwxrws---"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty rpm root with /bin/sh and the applets the scriptlets use: busybox-static's."""
    busybox = shutil.which("busybox")
    require(busybox is not None, "busybox is not installed (apt-get install busybox-static)")
    assert busybox is not None
    # A dynamically linked busybox would need the host's libraries inside the root.
    require(b"ld-linux" not in Path(busybox).read_bytes()[:4096], "busybox must be busybox-static's")
    path = tmp_path_factory.mktemp("rpmroot")
    (path / "bin").mkdir()
    shutil.copy2(busybox, path / "bin/busybox")
    for applet in sh(busybox, "--list").stdout.split():
        if not (path / "bin" / applet).exists():
            (path / "bin" / applet).symlink_to("busybox")
    sh("rpm", "--root", path, "--initdb")
    yield path


def rpm_in(root: Path, *args: str | Path) -> str:
    # --nodeps: runc is a dependency the bare root cannot satisfy.
    proc = sh("rpm", "--root", root, "--nodeps", *args)
    return proc.stdout + proc.stderr


def test_install_upgrade_downgrade_erase(built: Built, root: Path) -> None:
    out = rpm_in(root, "-ivh", built.rpms["1.0"])
    assert "scriptlet failed" not in out, out
    image = root / f"opt/containers/{NAME}/1.0-1"
    rootfs = image / "rootfs"
    # %post ran ownership.sh: the image's owners, setuid bits and hard links are back.
    owned = rootfs / "home/app/owned.txt"
    assert (owned.stat().st_uid, owned.stat().st_gid) == (999, 999)
    spool = (rootfs / "var/spool/app").stat()
    assert (spool.st_uid, stat.S_IMODE(spool.st_mode)) == (999, 0o2770)
    assert stat.S_IMODE((rootfs / "usr/bin/suidprobe").stat().st_mode) == 0o4755
    assert stat.S_IMODE((rootfs / "tmp").stat().st_mode) == 0o1777
    assert (rootfs / "bin/sh").stat().st_ino == (rootfs / "bin/busybox").stat().st_ino
    assert (rootfs / "var/run").is_symlink()
    # ... and init-data made the data dir.
    data = root / f"var/lib/{NAME}/volumes/data"
    assert data.is_dir()
    assert (root / f"usr/lib/systemd/system/{NAME}.service").is_file()
    assert sh("rpm", "--root", root, "-q", NAME).stdout.strip() == f"{NAME}-1.0-1.x86_64"

    (data / "answer").write_text("42")
    # As if the service ran: an upgrade must leave its runtime state and writable layer alone (the
    # old package's %preun/%postun run after the new %post, with $1 = 1).
    state = root / f"run/{NAME}"
    state.mkdir(parents=True)
    (root / f"var/lib/{NAME}/overlay").mkdir()

    out = rpm_in(root, "-Uvh", built.rpms["2.0"])
    assert "scriptlet failed" not in out, out
    assert sh("rpm", "--root", root, "-q", NAME).stdout.strip() == f"{NAME}-2.0-1.x86_64"
    assert sorted(p.name for p in (root / f"opt/containers/{NAME}").iterdir()) == ["2.0-1"]
    assert (root / f"opt/containers/{NAME}/2.0-1/rootfs/www/index.html").read_text() == "kv 2.0\n"
    assert (root / f"opt/containers/{NAME}/2.0-1/rootfs/home/app/owned.txt").stat().st_uid == 999
    assert (data / "answer").read_text() == "42"
    assert state.is_dir() and (root / f"var/lib/{NAME}/overlay").is_dir()

    out = rpm_in(root, "-Uvh", "--oldpackage", built.rpms["1.0"])
    assert "scriptlet failed" not in out, out
    assert sorted(p.name for p in (root / f"opt/containers/{NAME}").iterdir()) == ["1.0-1"]
    assert (data / "answer").read_text() == "42"

    out = rpm_in(root, "-e", NAME)
    assert "scriptlet failed" not in out, out
    assert sh("rpm", "--root", root, "-q", NAME, check=False).returncode != 0
    assert not (root / f"opt/containers/{NAME}").exists()
    assert not (root / f"usr/libexec/{NAME}").exists()
    # Erase stops and cleans the runtime state, and keeps the data: RPM has no purge.
    assert not state.exists() and not (root / f"var/lib/{NAME}/overlay").exists()
    assert (data / "answer").read_text() == "42"


# Every rpmlint finding left, with the reason it stays; anything else fails the test.
RPMLINT_ACCEPTED = {
    # The layout's choice (docs/layout.md): /opt is for add-on software trees.
    "dir-or-file-in-opt": "the image tree lives under /opt/containers by design",
    # The image's own files, shipped as they are in the image.
    "statically-linked-binary": "image content (the test image's busybox is static)",
    "position-independent-executable-suggested": "image content",
    "non-standard-dir-perm": "image content (/tmp is 1777 in the image)",
    "setuid-binary": "image content (the test image has a setuid file on purpose)",
    "non-standard-executable-perm": "image content (setuid file)",
    "setgid-binary": "image content",
    "zero-length": "image content",
    "non-readable": "image content (a file only its owner and group read)",
    "files-duplicated-waste": "hard links ship as copies and ownership.sh links them again on install",
    "hidden-file-or-dir": "image content",
    "missing-call-to-setgroups-before-setuid": "image content",
    "executable-stack": "image content",
    "devel-file-in-non-devel-package": "image content",
    "version-control-internal-file": "image content",
    "unstripped-binary-or-object": "image content",
    "binary-or-shlib-defines-rpath": "image content",
    "shared-library-without-dependency-information": "image content",
    "files-duplicate": "image content (the same bytes under two names)",
    "wrong-script-interpreter": "image content",
    "non-executable-script": "image content",
    "script-without-shebang": "image content",
    # Metadata a generated package cannot or need not have.
    "no-signature": "signing comes with repositories (ctr2svc repo); rpm -K checks the digests",
    "no-changelogname-tag": "there is no changelog: the image digest in the description says what changed",
    "no-url-tag": "set only when the image has an org.opencontainers.image.url/source label",
    "no-documentation": "a service package has no docs of its own",
    "summary-not-capitalized": "the summary starts with the image's title, as the image spells it",
    "invalid-license": "NOASSERTION (the image has no licenses label) or an SPDX id such as GPL-2.0-only: "
    "rpmlint knows Fedora's old short names only",
    "no-dependency-on": "rpmlint takes NAME-svc for a locale subpackage (locales-svc)",
    "only-non-binary-in-usr-lib": "the unit and preset are where systemd wants them",
    "description-line-too-long": "the pinned image reference (REPO@sha256:...) cannot be wrapped",
    "dangerous-command-in-%postun": "rm of the runtime state and throw-away layer on erase only ($1 = 0)",
}


def test_rpmlint_findings_are_all_accounted_for(built: Built) -> None:
    require(shutil.which("rpmlint") is not None, "rpmlint is not installed (apt-get install rpmlint)")
    proc = sh("rpmlint", built.rpms["1.0"], check=False)
    findings: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        parts = line.split(": ", 2)
        if len(parts) == 3 and parts[1] in ("E", "W"):
            findings.setdefault(parts[2].split()[0], line)
    unexplained = {code: line for code, line in findings.items() if code not in RPMLINT_ACCEPTED}
    assert not unexplained, "\n".join(unexplained.values())
    assert "dir-or-file-in-opt" in findings  # rpmlint did look at the package
