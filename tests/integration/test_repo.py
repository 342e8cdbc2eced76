"""Distribution: `ctr2svc repo add` (apt index by apt-ftparchive, rpm metadata by createrepo_c, both signed
with gpg), checked by the real consumers: apt-get update against the repository with its key (and
refusing it tampered or with another key), gpg --verify and the createrepo metadata for rpm. Then a
project file: `build -c` with one broken image among good ones, and `update`: no rebuild when the
digest is unchanged, a new digest under the same tag published with a version apt upgrades to.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.apk import read_apk, split_streams
from tests.support.images import service_image
from tests.support.registry import Registry, free_port

from .helpers import sh

pytestmark = pytest.mark.integration

KEY = "ctr2svc test <repo-test@example.com>"


@dataclass(frozen=True)
class Keys:
    home: Path
    public: Path  # binary keyring for apt's signed-by
    other: Path  # a key that did not sign anything


def gpg_key(home: Path, uid: str) -> None:
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
        env=env,
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    base = tmp_path_factory.mktemp("keys")
    gpg_key(base / "gnupg", KEY)
    gpg_key(base / "other", "someone else <other@example.com>")
    public, other = base / "repo.gpg", base / "other.gpg"
    for home, out in ((base / "gnupg", public), (base / "other", other)):
        exported = subprocess.run(
            ["gpg", "--export"], env={**os.environ, "GNUPGHOME": str(home)}, capture_output=True, check=True
        )
        out.write_bytes(exported.stdout)
    return Keys(base / "gnupg", public, other)


@pytest.fixture(scope="module")
def packages(registry: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("repo-packages")
    port = free_port()
    built = {}
    for version in ("1.0", "2.0"):
        ref = registry.push(
            service_image(work / "layout", version, port=port, version_text=f"kv {version}"),
            "itest/kvrepo",
            version,
        )
        for fmt in ("deb", "rpm"):
            out = ctr2svc(
                "build", ref, "--name", "kvrepo-svc", "--format", fmt, "-o", work / f"{fmt}-{version}"
            )
            built[f"{fmt}-{version}"] = Path(out.stdout.strip())
    return built


class Apt:
    """apt-get and apt-cache with their own sources, lists and cache: the host's apt is not touched."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("lists/partial", "cache/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.sources = root / "sources.list"

    def options(self) -> list[str]:
        return [
            "-o", f"Dir::Etc::SourceList={self.sources}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={self.root / 'lists'}",
            "-o", f"Dir::Cache={self.root / 'cache'}",
            "-o", "APT::Sandbox::User=root",
        ]  # fmt: skip

    def update(self, repo: Path, key: Path) -> subprocess.CompletedProcess[str]:
        self.sources.write_text(f"deb [signed-by={key}] file:{repo} ./\n")
        return sh("apt-get", *self.options(), "update", check=False)

    def versions(self, name: str) -> list[str]:
        shown = sh("apt-cache", *self.options(), "madison", name).stdout
        return [line.split("|")[1].strip() for line in shown.splitlines() if "|" in line]

    def candidate(self, name: str) -> str:
        policy = sh("apt-cache", *self.options(), "policy", name).stdout
        match = re.search(r"Candidate: (\S+)", policy)
        return match.group(1) if match else ""


def repo_add(
    ctr2svc: Cli, repo: Path, keys: Keys, *paths: Path, keep: int = 3
) -> subprocess.CompletedProcess[str]:
    return ctr2svc(
        "repo", "add", repo, *paths, "--sign-key", "repo-test@example.com", "--gnupghome", keys.home,
        "--keep", str(keep),
    )  # fmt: skip


def test_apt_repository(ctr2svc: Cli, packages: dict[str, Path], keys: Keys, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo_add(ctr2svc, repo, keys, packages["deb-1.0"])
    repo_add(ctr2svc, repo, keys, packages["deb-2.0"])
    flat = repo / "deb"
    assert {p.name for p in flat.iterdir()} >= {
        "Packages",
        "Packages.gz",
        "Release",
        "InRelease",
        "Release.gpg",
    }
    apt = Apt(tmp_path / "apt")
    proc = apt.update(flat, keys.public)
    assert proc.returncode == 0 and "W:" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    # Both versions are installable (a downgrade stays possible); the newest is the candidate.
    assert apt.versions("kvrepo-svc") == ["2.0", "1.0"]
    assert apt.candidate("kvrepo-svc") == "2.0"
    # What the index says is what the package holds.
    listing = (flat / "Packages").read_text()
    assert "X-Ctr2svc-Image-Digest: sha256:" in listing

    # Another key: apt refuses the repository.
    refused = Apt(tmp_path / "apt-other").update(flat, keys.other)
    assert refused.returncode != 0 or "NO_PUBKEY" in refused.stderr + refused.stdout
    assert "NO_PUBKEY" in refused.stdout + refused.stderr or "not signed" in refused.stdout + refused.stderr

    # Tampered index: the signed Release no longer matches it.
    (flat / "Packages").write_text(listing.replace("kv 2.0", "kv 6.6") + "\n")
    (flat / "Packages.gz").write_bytes(gzip.compress((flat / "Packages").read_bytes()))
    tampered = Apt(tmp_path / "apt-tampered").update(flat, keys.public)
    text = tampered.stdout + tampered.stderr
    assert "Hash Sum mismatch" in text or "File has unexpected size" in text, text
    assert Apt(tmp_path / "apt-tampered").versions("kvrepo-svc") == []

    # --keep 1 prunes the older version and reindexes.
    repo_add(ctr2svc, repo, keys, packages["deb-2.0"], keep=1)
    assert sorted(p.name for p in flat.glob("*.deb")) == ["kvrepo-svc_2.0_amd64.deb"]
    fresh = Apt(tmp_path / "apt-fresh")
    assert fresh.update(flat, keys.public).returncode == 0
    assert fresh.versions("kvrepo-svc") == ["2.0"]


def test_rpm_repository(ctr2svc: Cli, packages: dict[str, Path], keys: Keys, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo_add(ctr2svc, repo, keys, packages["rpm-1.0"], packages["rpm-2.0"])
    repodata = repo / "rpm" / "repodata"
    repomd = repodata / "repomd.xml"
    env = {**os.environ, "GNUPGHOME": str(keys.home)}
    verify = subprocess.run(
        ["gpg", "--verify", repomd.with_name("repomd.xml.asc"), repomd],
        env=env,
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
    primary = next(repodata.glob("*-primary.xml.gz"))
    assert f'<location href="repodata/{primary.name}"' in repomd.read_text()
    entries = re.findall(
        r'<name>(kvrepo-svc)</name>.*?<version epoch="0" ver="([^"]+)" rel="([^"]+)"/>',
        gzip.decompress(primary.read_bytes()).decode(),
        re.S,
    )
    assert sorted(entries) == [("kvrepo-svc", "1.0", "1"), ("kvrepo-svc", "2.0", "1")]
    # A changed repomd.xml no longer verifies.
    repomd.write_text(repomd.read_text().replace("<revision>", "<revision>6"))
    bad = subprocess.run(
        ["gpg", "--verify", repomd.with_name("repomd.xml.asc"), repomd],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0


@pytest.fixture
def project(registry: Registry, tmp_path: Path, keys: Keys) -> Iterator[tuple[Path, str, int]]:
    port = free_port()
    ref = registry.push(
        service_image(tmp_path / "layout", "1.0", port=port, version_text="fleet 1.0"), "itest/fleet", "1.0"
    )
    hello = registry.push(
        f"oci:{Path(__file__).resolve().parents[2] / 'examples/hello'}:1.0", "itest/hello", "1.0"
    )
    path = tmp_path / "ctr2svc.toml"
    path.write_text(
        f"""
output = "dist"

[repo]
path = "repo"
keep = 2
sign_key = "repo-test@example.com"
gnupghome = "{keys.home}"

[defaults]
formats = ["deb"]

[[image]]
ref = "{ref}"
name = "fleet-svc"
formats = ["deb", "rpm"]
env = {{ GREETING = "hi" }}
memory = "256M"

[[image]]
ref = "{hello}"
"""
    )
    yield path, ref, port


def test_project_build_with_one_broken_image(
    ctr2svc: Cli, registry: Registry, project: tuple[Path, str, int]
) -> None:
    path, _, _ = project
    path.write_text(path.read_text() + f'\n[[image]]\nref = "{registry.host}/itest/missing:1.0"\n')
    proc = ctr2svc("build", "-c", path, check=False)
    assert proc.returncode == 6, proc.stderr
    built = proc.stdout.split()
    assert sorted(Path(p).name for p in built) == [
        "fleet-svc-1.0-1.x86_64.rpm",
        "fleet-svc_1.0_amd64.deb",
        "hello-svc_1.0_amd64.deb",
    ]
    assert re.search(r"itest/missing:1.0\s+deb\s+failed\s+.*not found", proc.stderr), proc.stderr
    assert "2 of" not in proc.stderr and "1 of 4 packages could not be built" in proc.stderr
    # The project's env and memory reached the package.
    contents = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", path.parent / "dist/fleet-svc_1.0_amd64.deb"],
        capture_output=True,
        check=True,
    ).stdout
    assert b"GREETING=hi" in contents and b"MemoryMax=268435456" in contents


def test_project_file_errors(ctr2svc: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[image]]\nref = "a/b:1"\nformts = ["deb"]\n')
    proc = ctr2svc("build", "-c", bad, check=False)
    assert proc.returncode == 2
    assert f"{bad}: [[image]] 1: unknown key 'formts'" in proc.stderr and "known keys:" in proc.stderr
    bad.write_text('[[image]]\nref = "a/b:1"\nmemory = 512\n')
    proc = ctr2svc("build", "-c", bad, check=False)
    assert proc.returncode == 2 and "memory must be a str" in proc.stderr
    bad.write_text("[[image\n")
    proc = ctr2svc("build", "-c", bad, check=False)
    assert proc.returncode == 2 and "is not valid TOML" in proc.stderr


def test_update_rebuilds_only_what_changed(
    ctr2svc: Cli, registry: Registry, project: tuple[Path, str, int], keys: Keys, tmp_path: Path
) -> None:
    path, _, port = project
    repo = path.parent / "repo"
    first = ctr2svc("update", "-c", path)
    assert len(first.stdout.split()) == 3
    state = json.loads((repo / "ctr2svc-state.json").read_text())
    assert {v["version"] for v in state.values()} == {"1.0", "1.0-1"}

    # Nothing changed upstream: nothing is built, nothing is written.
    before = {p: p.stat().st_mtime_ns for p in repo.rglob("*") if p.is_file()}
    again = ctr2svc("update", "-c", path)
    assert again.stdout.strip() == ""
    assert again.stderr.count("unchanged") == 3
    assert {p: p.stat().st_mtime_ns for p in repo.rglob("*") if p.is_file()} == before

    # The same tag now points at a new image: a version that sorts above the published one.
    registry.push(
        service_image(tmp_path / "layout2", "1.0", port=port, version_text="fleet 1.0 rebuilt"),
        "itest/fleet",
        "1.0",
    )
    third = ctr2svc("update", "-c", path)
    rebuilt = sorted(Path(p).name for p in third.stdout.split())
    assert rebuilt == ["fleet-svc-1.0-2.x86_64.rpm", "fleet-svc_1.0-1_amd64.deb"], third.stderr
    assert third.stderr.count("unchanged") == 1  # hello
    apt = Apt(tmp_path / "apt")
    assert apt.update(repo / "deb", keys.public).returncode == 0
    assert apt.candidate("fleet-svc") == "1.0-1"
    assert apt.versions("fleet-svc") == ["1.0-1", "1.0"]


def test_apk_repository(ctr2svc: Cli, registry: Registry, tmp_path: Path) -> None:
    """apk-tools is not installable here: the index is read back with our own apk reader and openssl."""
    port = free_port()
    apks = []
    for version in ("1.0", "2.0"):
        ref = registry.push(
            service_image(tmp_path / "layout", version, port=port, version_text=f"kv {version}"),
            "itest/kvapk",
            version,
        )
        out = ctr2svc("build", ref, "--name", "kvapkrepo-svc", "--format", "apk", "-o", tmp_path / version)
        apks.append(Path(out.stdout.strip()))
    key, public = tmp_path / "ops.rsa", tmp_path / "ops.rsa.pub"
    subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", key, "-pubout", "-out", public], check=True, capture_output=True)
    repo = tmp_path / "repo"
    ctr2svc("repo", "add", repo, *apks, "--apk-key", key, "--apk-key-name", "ops.rsa.pub")

    arch_dir = repo / "apk" / "x86_64"
    assert sorted(p.name for p in arch_dir.glob("*.apk")) == [
        "kvapkrepo-svc-1.0-r0.apk",
        "kvapkrepo-svc-2.0-r0.apk",
    ]
    streams = split_streams((arch_dir / "APKINDEX.tar.gz").read_bytes())
    assert len(streams) == 2  # signature, index
    with tarfile.open(fileobj=io.BytesIO(streams[0][1] + b"\0" * 1024)) as sig_tar:
        member = sig_tar.getmembers()[0]
        assert member.name == ".SIGN.RSA.ops.rsa.pub"
        extracted = sig_tar.extractfile(member)
        assert extracted is not None
        (tmp_path / "sig").write_bytes(extracted.read())
    (tmp_path / "index.tar.gz").write_bytes(streams[1][0])
    verify: list[str | Path] = [
        "openssl",
        "dgst",
        "-sha1",
        "-verify",
        public,
        "-signature",
        tmp_path / "sig",
        tmp_path / "index.tar.gz",
    ]
    assert subprocess.run(verify, capture_output=True).returncode == 0
    with tarfile.open(fileobj=io.BytesIO(streams[1][1])) as index_tar:
        handle = index_tar.extractfile("APKINDEX")
        assert handle is not None
        records = [
            dict(line.split(":", 1) for line in r.splitlines())
            for r in handle.read().decode().split("\n\n")
            if r
        ]
    assert [(r["P"], r["V"], r["A"]) for r in records] == [
        ("kvapkrepo-svc", "1.0-r0", "x86_64"),
        ("kvapkrepo-svc", "2.0-r0", "x86_64"),
    ]
    for record, apk in zip(records, sorted(arch_dir.glob("*.apk")), strict=True):
        control = read_apk(apk).control_stream
        expected = "Q1" + base64.b64encode(hashlib.sha1(control, usedforsecurity=False).digest()).decode()
        assert record["C"] == expected
        assert int(record["S"]) == apk.stat().st_size
        assert "runc" in record["D"].split()
