"""The .rpm: built from a registry image, checked with rpm's own tools, installed, upgraded, downgraded
and erased with the real rpm into a separate root (`rpm --root`), where its scriptlets really run; and
rpmlint on the packages a repository publishes (signed, flat and with shared layers), where every
finding left is listed with the reason it stays.

No RPM distribution is reachable from here, so the root holds just what the scriptlets need (Debian's
static busybox as /bin/sh and its applets); the VM tests run the same package under systemd.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli, require
from tests.support.images import service_image
from tests.support.registry import Registry, free_port

from .helpers import RPMLINT_ACCEPTED, rpmlint, sh, unexplained

pytestmark = pytest.mark.integration

NAME = "kv-svc"


@dataclass(frozen=True)
class Built:
    rpms: dict[str, Path]
    refs: dict[str, str]
    digest: str


@pytest.fixture(scope="module")
def built(registry: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory) -> Built:
    require(shutil.which("rpm") is not None, "rpm is not installed (apt-get install rpm)")
    work = tmp_path_factory.mktemp("rpm")
    port = free_port()
    rpms, refs = {}, {}
    digest = ""
    for version in ("1.0", "2.0"):
        source = service_image(work / "layout", version, port=port, version_text=f"kv {version}")
        ref = registry.push(source, "itest/kv", version)
        refs[version] = ref
        proc = ctr2svc("build", ref, "--format", "rpm", "-o", work / version)
        rpms[version] = Path(proc.stdout.strip())
        if version == "1.0":
            inspect = sh("skopeo", "inspect", "--tls-verify=false", f"docker://{ref}")
            digest = json.loads(inspect.stdout)["Digest"]
    return Built(rpms, refs, digest)


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
    # Fedora's rule (--activation distro): the distribution's presets decide, the package ships none.
    assert "/usr/lib/systemd/system-preset/" not in listing
    assert "systemctl --no-reload preset" in scripts and f"systemctl enable --now {NAME}.service" in scripts
    # Faithful modes in the payload: sticky /tmp, setuid, setgid directory.
    modes = {line.split()[-1]: line.split()[0] for line in listing.splitlines() if "/rootfs/" in line}
    rootfs = f"/opt/containers/{NAME}/1.0-1/rootfs"
    assert modes[f"{rootfs}/tmp"] == "drwxrwxrwt"
    assert modes[f"{rootfs}/usr/bin/suidprobe"] == "-rwsr-xr-x"
    assert modes[f"{rootfs}/var/spool/app"] == "drwxrws---"


def test_hard_links_are_stored_once(built: Built) -> None:
    """The image's hard link (bin/sh to bin/busybox) is one inode in the header and in the payload,
    whose content is stored once, and the installed size counts it once (as rpmbuild's does)."""
    rpm = built.rpms["1.0"]
    rootfs = f"/opt/containers/{NAME}/1.0-1/rootfs"
    fmt = "[%{FILEINODES} %{FILESIZES} %{FILENAMES}\n]"
    files = [line.split(" ", 2) for line in query(rpm, fmt).splitlines()]
    inode = {name: ino for ino, _, name in files}
    assert inode[f"{rootfs}/bin/sh"] == inode[f"{rootfs}/bin/busybox"]
    distinct = {ino: int(size) for ino, size, _ in files}
    assert int(query(rpm, "%{SIZE}")) == sum(distinct.values())
    # In the cpio payload both names have two links, and the content is there once.
    archive = subprocess.run(["rpm2cpio", rpm], capture_output=True, check=True).stdout
    assert len(archive) < sum(distinct.values()) + 100_000  # not a second busybox (1.9 MB)
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    links = {line.split()[-1][1:]: line.split()[1] for line in listing.splitlines()}
    assert links[f"{rootfs}/bin/sh"] == links[f"{rootfs}/bin/busybox"] == "2"
    assert "digests OK" in sh("rpm", "-K", rpm).stdout


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
    # %verify(not user group) on the files the ownership script gave their owners: rpm -V is quiet
    # about them, and still reports a file that really changed.
    assert sh("rpm", "--root", root, "-V", "--nodeps", NAME, check=False).stdout == ""
    owned.write_text("changed")
    verify = sh("rpm", "--root", root, "-V", "--nodeps", NAME, check=False).stdout
    changed = f"/opt/containers/{NAME}/1.0-1/rootfs/home/app/owned.txt"
    assert verify.splitlines() == [f"S.5....T.    {changed}"], verify

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


@dataclass(frozen=True)
class Signing:
    secret: Path  # armored OpenPGP secret key, for --sign-key-file
    home: Path  # a HOME whose .rpmmacros points rpm at a database that trusts the key


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signing]:
    base = tmp_path_factory.mktemp("rpm-signing")
    gnupg = base / "gnupg"
    gnupg.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(gnupg)}

    def gpg(*args: str) -> bytes:
        return subprocess.run(["gpg", "--batch", *args], env=env, capture_output=True, check=True).stdout

    gpg("--passphrase", "", "--quick-gen-key", "packager <packager@example.com>", "rsa2048", "sign", "never")
    (base / "secret.asc").write_bytes(gpg("--armor", "--export-secret-keys"))
    (base / "public.asc").write_bytes(gpg("--armor", "--export"))
    home = base / "home"
    (home / "rpmdb").mkdir(parents=True)
    (home / ".rpmmacros").write_text(f"%_dbpath {home / 'rpmdb'}\n")
    sh("rpm", "--dbpath", home / "rpmdb", "--import", base / "public.asc")
    yield Signing(base / "secret.asc", home)
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True, check=False)


def test_rpmlint_findings_are_all_accounted_for(
    built: Built, signing: Signing, ctr2svc: Cli, tmp_path: Path
) -> None:
    signed = ["--format", "rpm", "--sign-key-file", str(signing.secret)]
    flat = Path(ctr2svc("build", built.refs["1.0"], *signed, "-o", tmp_path / "flat").stdout.strip())
    shared = json.loads(
        ctr2svc(
            "build", built.refs["1.0"], *signed, "--layers", "shared", "--json", "-o", tmp_path / "shared"
        ).stdout
    )
    packages = [flat, Path(shared["package"]), *(Path(x["package"]) for x in shared["layers"])]
    assert len(packages) == 3  # the test image has one layer
    seen: set[str] = set()
    for rpm in packages:
        findings = rpmlint(rpm, signing.home)
        assert not unexplained(findings), f"rpmlint on {rpm.name}:\n" + "\n".join(unexplained(findings))
        seen |= {code for code, _ in findings}
    # rpmlint did look (the image tree is in /opt), and nothing is accepted that no longer occurs.
    assert seen == set(RPMLINT_ACCEPTED), sorted(set(RPMLINT_ACCEPTED) - seen)

    # The same package unsigned: rpmlint's no-signature is the one difference.
    unsigned = rpmlint(built.rpms["1.0"], signing.home)
    assert {c for c, _ in unsigned} - {c for c, _ in rpmlint(flat, signing.home)} == {"no-signature"}


def test_rpm_metadata_for_packagers(built: Built) -> None:
    """What rpmlint asks of the metadata: a %changelog entry for this version, dated by the image;
    a capitalised summary and description lines within 79 columns; no build host of this machine."""
    rpm = built.rpms["1.0"]
    changelog = sh("rpm", "-qp", "--changelog", rpm).stdout
    header, *items = changelog.splitlines()
    assert re.fullmatch(r"\* \w{3} \w{3} \d\d \d{4} ctr2svc <root@localhost> - 1\.0-1", header), header
    assert items[0].startswith("- The container image 127.0.0.1:") and built.digest in changelog
    summary = query(rpm, "%{SUMMARY}")
    assert summary[0].isupper() and len(summary) <= 79, summary
    description = query(rpm, "%{DESCRIPTION}").splitlines()
    assert all(len(line) <= 79 for line in description) and description[-1] == built.digest, description
    assert query(rpm, "%{BUILDHOST}") == "reproducible"
    assert query(rpm, "%{BUILDTIME}") == query(rpm, "%{CHANGELOGTIME}")
