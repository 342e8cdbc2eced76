"""Package signatures with user-supplied keys, checked by the formats' own verifiers: rpm -K against an
rpm database that trusts (or does not trust) the key, gpg over a .deb's debian-binary + control + data
against its _gpgorigin member (dpkg-sig/debsigs "origin" style), and apk's RSA signature over the
control stream (tests/support/apk.py, as apk-tools checks it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, Cli
from tests.support.apk import verify_signature
from tests.support.images import service_image
from tests.support.registry import Registry, free_port

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Keys:
    gnupghome: Path
    pgp_secret: Path
    pgp_public: Path
    rsa: Path
    rsa_public: Path
    other_rsa_public: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    base = tmp_path_factory.mktemp("signing")
    home = base / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}

    def gpg(*args: str) -> bytes:
        return subprocess.run(["gpg", "--batch", *args], env=env, capture_output=True, check=True).stdout

    gpg("--passphrase", "", "--quick-gen-key", "packager <packager@example.com>", "rsa2048", "sign", "never")
    (base / "secret.asc").write_bytes(gpg("--armor", "--export-secret-keys"))
    (base / "public.asc").write_bytes(gpg("--armor", "--export"))
    for name in ("ops", "other"):
        subprocess.run(
            ["openssl", "genrsa", "-out", base / f"{name}.rsa", "2048"], check=True, capture_output=True
        )
        subprocess.run(
            ["openssl", "rsa", "-in", base / f"{name}.rsa", "-pubout", "-out", base / f"{name}.rsa.pub"],
            check=True,
            capture_output=True,
        )
    return Keys(
        home,
        base / "secret.asc",
        base / "public.asc",
        base / "ops.rsa",
        base / "ops.rsa.pub",
        base / "other.rsa.pub",
    )


@pytest.fixture(scope="module")
def ref(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    layout = tmp_path_factory.mktemp("signed") / "layout"
    return registry.push(
        service_image(layout, "1.0", port=free_port(), version_text="signed"), "itest/signed", "1.0"
    )


def test_rpm_signature(ctr2svc: Cli, ref: str, keys: Keys, tmp_path: Path) -> None:
    rpm = Path(
        ctr2svc(
            "build", ref, "--format", "rpm", "--sign-key-file", keys.pgp_secret, "-o", tmp_path
        ).stdout.strip()
    )
    db = tmp_path / "rpmdb"
    db.mkdir()
    untrusted = subprocess.run(["rpm", "--dbpath", db, "-K", rpm], capture_output=True, text=True)
    assert "SIGNATURES NOT OK" in untrusted.stdout or untrusted.returncode != 0
    subprocess.run(["rpm", "--dbpath", db, "--import", keys.pgp_public], check=True)
    trusted = subprocess.run(["rpm", "--dbpath", db, "-K", rpm], capture_output=True, text=True)
    assert trusted.returncode == 0 and "digests signatures OK" in trusted.stdout, trusted.stdout


def verify_origin(deb: Path, keys: Keys, work: Path) -> subprocess.CompletedProcess[bytes]:
    """gpg's check of DEB's debsigs "origin" signature (_gpgorigin, the last member) over the members
    before it, one after the other."""
    work.mkdir()
    subprocess.run(["ar", "x", deb], cwd=work, check=True)
    members = subprocess.run(["ar", "t", deb], capture_output=True, text=True, check=True).stdout.split()
    assert members[0] == "debian-binary" and members[-1] == "_gpgorigin"
    signed = b"".join((work / m).read_bytes() for m in members[:-1])
    return subprocess.run(
        ["gpg", "--batch", "--verify", work / "_gpgorigin", "-"],
        input=signed,
        env={**os.environ, "GNUPGHOME": str(keys.gnupghome)},
        capture_output=True,
    )


def test_deb_signature(ctr2svc: Cli, ref: str, keys: Keys, tmp_path: Path) -> None:
    deb = Path(
        ctr2svc("build", ref, "--sign-key-file", keys.pgp_secret, "-o", tmp_path / "out").stdout.strip()
    )
    verify = verify_origin(deb, keys, tmp_path / "ar")
    assert verify.returncode == 0, verify.stderr
    # Still an ordinary package for dpkg, with the image's hard link (bin/sh) as a hard link: the
    # payload was rewritten after nfpm and signed again, with the same bytes at every build.
    assert subprocess.run(["dpkg-deb", "--info", deb], capture_output=True).returncode == 0
    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True).stdout
    assert any(
        line.endswith("/rootfs/bin/busybox") and "/rootfs/bin/sh link to" in line
        for line in listing.splitlines()
    )
    again = Path(
        ctr2svc("build", ref, "--sign-key-file", keys.pgp_secret, "-o", tmp_path / "again").stdout.strip()
    )
    assert again.read_bytes() == deb.read_bytes()


def test_a_key_newer_than_the_image_signs_what_gpg_verifies(
    ctr2svc: Cli, ref: str, keys: Keys, tmp_path: Path
) -> None:
    """The package is dated by its image (here SOURCE_DATE_EPOCH, 2001), the key was made today: the
    signature takes the key's time, not an earlier one that gpg refuses ("Time conflict"), in the
    .deb's _gpgorigin and in the rpm's header, and two builds are still the same bytes."""
    env = {**os.environ, "CTR2SVC_CACHE_DIR": str(ctr2svc.cache_dir), "SOURCE_DATE_EPOCH": "1000000000"}
    built = {}
    for fmt in ("deb", "rpm"):
        for run in ("one", "two"):
            proc = subprocess.run(
                [sys.executable, "-m", "ctr2svc", "build", ref, "--format", fmt, "--sign-key-file",
                 str(keys.pgp_secret), "-o", str(tmp_path / fmt / run)],
                capture_output=True, text=True, env=env, check=True, cwd=REPO,
            )  # fmt: skip
            built[fmt, run] = Path(proc.stdout.strip())
        assert built[fmt, "one"].read_bytes() == built[fmt, "two"].read_bytes()
    deb = built["deb", "one"]
    verify = verify_origin(deb, keys, tmp_path / "ar")
    assert verify.returncode == 0, verify.stderr
    db = tmp_path / "rpmdb"
    db.mkdir()
    subprocess.run(["rpm", "--dbpath", db, "--import", keys.pgp_public], check=True)
    checked = subprocess.run(
        ["rpm", "--dbpath", db, "-K", built["rpm", "one"]], capture_output=True, text=True
    )
    assert checked.returncode == 0 and "signatures OK" in checked.stdout, checked.stdout + checked.stderr


def test_apk_signature(ctr2svc: Cli, ref: str, keys: Keys, tmp_path: Path) -> None:
    apk = Path(
        ctr2svc(
            "build", ref, "--format", "apk", "--sign-key-file", keys.rsa, "--sign-key-name", "ops.rsa.pub",
            "-o", tmp_path,
        ).stdout.strip()
    )  # fmt: skip
    assert verify_signature(apk, keys.rsa_public, key_name="ops.rsa.pub")
    assert not verify_signature(apk, keys.other_rsa_public, key_name="ops.rsa.pub")


def test_wrong_kind_of_key(ctr2svc: Cli, ref: str, keys: Keys, tmp_path: Path) -> None:
    proc = ctr2svc(
        "build", ref, "--format", "apk", "--sign-key-file", keys.pgp_secret, "-o", tmp_path, check=False
    )
    assert proc.returncode == 2
    assert "is not a PEM RSA private key" in proc.stderr and "openssl genrsa" in proc.stderr
    assert list(tmp_path.iterdir()) == []
    proc = ctr2svc("build", ref, "--format", "rpm", "--sign-key-file", keys.rsa, "-o", tmp_path, check=False)
    assert proc.returncode == 2 and "armored OpenPGP secret key" in proc.stderr
