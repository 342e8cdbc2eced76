"""The rpm repository `ctr2svc repo add` writes, used by the real dnf (Debian's dnf 4) as a Fedora host
uses it: a .repo file with gpgcheck=1, repo_gpgcheck=1 and the fleet's key as gpgkey=file://, the
repository served over HTTP on 127.0.0.1, and dnf installing into a root of its own (--installroot)
holding Debian's static busybox, where the package's scriptlets run.

dnf checks the signature of repomd.xml (repo_gpgcheck) and of each package (gpgcheck) against the
gpgkey: it installs the service package and the dependency it resolves from the repository, refuses an
upgrade whose package another key signed, upgrades once `repo add` has published a newer version
signed with the right key, and refuses the whole repository when its metadata is signed by a key that
is not the repository's gpgkey.
"""

from __future__ import annotations

import json
import os
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
from tests.support.webserver import serve

from .helpers import sh
from .test_shared_formats import make_root, nfpm

pytestmark = pytest.mark.integration

NAME = "kvdnf-svc"
FLEET = "fleet <fleet@example.com>"


@dataclass(frozen=True)
class Key:
    home: Path  # its gpg home
    secret: Path  # armored secret key, for --sign-key-file
    public: Path  # armored public key, for gpgkey=
    short_id: str  # as rpm names it once imported: gpg-pubkey-SHORT_ID-...


def make_key(base: Path, uid: str) -> Key:
    home = base / "gnupg"
    home.mkdir(parents=True, mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}

    def gpg(*args: str) -> bytes:
        return subprocess.run(["gpg", "--batch", *args], env=env, capture_output=True, check=True).stdout

    gpg("--passphrase", "", "--quick-gen-key", uid, "rsa2048", "sign", "never")
    (base / "secret.asc").write_bytes(gpg("--armor", "--export-secret-keys"))
    (base / "public.asc").write_bytes(gpg("--armor", "--export"))
    listing = gpg("--with-colons", "--list-keys").decode()
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    return Key(home, base / "secret.asc", base / "public.asc", fingerprint[-8:].lower())


def signed_stub(name: str, key: Key, out: Path) -> Path:
    """An empty package named NAME, signed by KEY: what the service package depends on (runc) and the
    test root cannot have for real."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / f"{name}.yaml"
    config.write_text(
        json.dumps(
            {
                "name": name,
                "version": "1.0",
                "arch": "amd64",
                "platform": "linux",
                "maintainer": "ctr2svc tests <tests@example.invalid>",
                "description": f"stand-in for {name}",
                "license": "MIT",
                "rpm": {"signature": {"key_file": str(key.secret)}},
            }
        )
    )
    target = out / f"{name}-1.0.0-1.x86_64.rpm"
    sh(nfpm(), "package", "-f", config, "-p", "rpm", "-t", target)
    return target


@dataclass(frozen=True)
class Repository:
    path: Path
    fleet: Key
    other: Key
    later: Path  # 3.0, signed with the fleet's key: not in the repository yet

    def publish(self, ctr2svc: Cli, *rpms: Path) -> None:
        ctr2svc(
            "repo", "add", self.path, *rpms, "--sign-key", "fleet@example.com", "--gnupghome", self.fleet.home
        )


@pytest.fixture(scope="module")
def repository(
    registry: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Repository]:
    """kvdnf-svc 1.0 signed with the fleet's key and 2.0 signed with another, a runc stand-in, and the
    metadata signed with the fleet's key; 3.0 built for later."""
    require(shutil.which("dnf") is not None, "dnf is not installed (apt-get install dnf)")
    work = tmp_path_factory.mktemp("dnf-repo")
    fleet, other = make_key(work / "fleet", FLEET), make_key(work / "other", "other <other@example.com>")
    port = free_port()
    rpms = []
    for version, key in (("1.0", fleet), ("2.0", other), ("3.0", fleet)):
        source = service_image(work / "layout", version, port=port, version_text=f"kv {version}")
        ref = registry.push(source, "itest/kvdnf", version)
        built = ctr2svc(
            "build", ref, "--format", "rpm", "--name", NAME, "--sign-key-file", key.secret,
            "-o", work / version,
        )  # fmt: skip
        rpms.append(Path(built.stdout.strip()))
    runc = signed_stub("runc", fleet, work / "stubs")
    repository = Repository(work / "repo", fleet, other, rpms[2])
    repository.publish(ctr2svc, rpms[0], rpms[1], runc)
    yield repository
    for key in (fleet, other):
        subprocess.run(
            ["gpgconf", "--kill", "gpg-agent"],
            env={**os.environ, "GNUPGHOME": str(key.home)},
            capture_output=True,
            check=False,
        )


class Dnf:
    """dnf with a root, configuration, repository list and cache of its own: the host is not touched."""

    def __init__(self, base: Path, url: str, gpgkey: Path) -> None:
        self.root = make_root(base / "root")
        # The scriptlets' output goes to /dev/null, as on any host.
        (self.root / "dev").mkdir()
        os.mknod(self.root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        self.conf = base / "dnf.conf"
        self.conf.write_text("[main]\ngpgcheck=1\ninstall_weak_deps=False\nbest=True\n")
        self.repos = base / "repos"
        self.repos.mkdir()
        (self.repos / "fleet.repo").write_text(
            "[fleet]\n"
            "name=ctr2svc fleet\n"
            f"baseurl={url}/rpm\n"
            "enabled=1\n"
            "gpgcheck=1\n"
            "repo_gpgcheck=1\n"
            f"gpgkey=file://{gpgkey}\n"
        )
        self.cache = base / "cache"

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return sh(
            "dnf", "-y", "--noplugins", "--installroot", self.root, "--config", self.conf,
            "--setopt", f"reposdir={self.repos}", "--setopt", f"cachedir={self.cache}",
            "--releasever", "1", "--disablerepo", "*", "--enablerepo", "fleet", *args,
            check=False,
        )  # fmt: skip

    def __enter__(self) -> Dnf:
        return self

    def __exit__(self, *exc: object) -> None:
        # librepo checks repomd.xml.asc with a keyring of its own in the cache, whose gpg-agent stays.
        for keyring in self.cache.glob("*/pubring"):
            subprocess.run(
                ["gpgconf", "--homedir", keyring, "--kill", "gpg-agent"], capture_output=True, check=False
            )

    def installed(self) -> list[str]:
        listing = sh("rpm", "--root", self.root, "-qa", "--queryformat", "%{NAME}-%{VERSION}-%{RELEASE}\n")
        return sorted(listing.stdout.split())


def said(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def test_dnf_installs_from_the_signed_repository(
    repository: Repository, ctr2svc: Cli, tmp_path: Path
) -> None:
    with serve(repository.path) as url, Dnf(tmp_path, url, repository.fleet.public) as dnf:
        # repo_gpgcheck: repomd.xml.asc verified with the gpgkey, which dnf imports.
        listed = dnf("list", "--available", NAME)
        assert listed.returncode == 0, said(listed)
        assert f"{NAME}.x86_64" in listed.stdout and "2.0-1" in listed.stdout, said(listed)

        proc = dnf("install", f"{NAME}-1.0")
        assert proc.returncode == 0, said(proc)
        assert "scriptlet" not in proc.stderr and "can't" not in said(proc), said(proc)
        # runc came from the repository (dnf resolved the dependency); the fleet's key is in the root's
        # rpm database, imported from gpgkey.
        installed = dnf.installed()
        assert [p for p in installed if not p.startswith("gpg-pubkey-")] == [f"{NAME}-1.0-1", "runc-1.0.0-1"]
        assert [p.split("-")[2] for p in installed if p.startswith("gpg-pubkey-")] == [
            repository.fleet.short_id
        ]
        rootfs = dnf.root / f"opt/containers/{NAME}/1.0-1/rootfs"
        assert (rootfs / "home/app/owned.txt").stat().st_uid == 999  # %post ran ownership.sh
        assert (dnf.root / f"var/lib/{NAME}/volumes/data").is_dir()  # ... and init-data

        # 2.0 is in the repository, but signed with a key that is not the repository's gpgkey.
        refused = dnf("upgrade", NAME)
        assert refused.returncode != 0, said(refused)
        assert "Error: GPG check FAILED" in said(refused), said(refused)
        assert f"{NAME}-1.0-1" in dnf.installed()

        # A new version published: dnf reads the new metadata and upgrades, the old image goes.
        repository.publish(ctr2svc, repository.later)
        proc = dnf("upgrade", "--refresh", NAME)
        assert proc.returncode == 0, said(proc)
        assert f"{NAME}-3.0-1" in dnf.installed()
        assert sorted(p.name for p in (dnf.root / f"opt/containers/{NAME}").iterdir()) == ["3.0-1"]
        assert (dnf.root / f"opt/containers/{NAME}/3.0-1/rootfs/www/index.html").read_text() == "kv 3.0\n"


def test_dnf_refuses_metadata_signed_by_another_key(repository: Repository, tmp_path: Path) -> None:
    with serve(repository.path) as url, Dnf(tmp_path, url, repository.other.public) as dnf:
        proc = dnf("install", f"{NAME}-1.0")
        assert proc.returncode != 0, said(proc)
        assert "repomd.xml GPG signature verification error" in said(proc), said(proc)
        assert dnf.installed() == []
