"""lintian, Debian's package checker: 0 errors and 0 warnings on the .debs of the example image.

Flat, with shared layers (the service package and its layer packages) and for OpenRC. The overrides the
packages ship (/usr/share/lintian/overrides/NAME) cover only tags that are wrong for this kind of
package, and only those the package raises: lintian reports no unused override either. The build
passes a real maintainer address: the default `ctr2svc <root@localhost>` is one lintian refuses (the
build warns about it).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, require

from .helpers import lintian

pytestmark = pytest.mark.integration

EXAMPLE = "oci:examples/hello:1.0"
MAINTAINER = "Ops <ops@example.com>"
VARIANTS = {"flat": [], "shared": ["--layers", "shared"], "openrc": ["--init", "openrc"]}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, integration_host: None) -> Path:
    require(shutil.which("lintian") is not None, "lintian is not installed (scripts/bootstrap --test)")
    return tmp_path_factory.mktemp("lintian-cache")


def build(out: Path, cache: Path, *args: str) -> list[Path]:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["CTR2SVC_CACHE_DIR"] = str(cache)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ctr2svc",
            "build",
            EXAMPLE,
            "--maintainer",
            MAINTAINER,
            *args,
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "not a real address" not in proc.stderr
    return sorted(out.glob("*.deb"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_lintian_is_clean(variant: str, cache: Path, tmp_path: Path) -> None:
    debs = build(tmp_path / "out", cache, *VARIANTS[variant])
    assert len(debs) == (2 if variant == "shared" else 1), debs
    for deb in debs:
        tags, output = lintian(deb)
        assert tags == [], f"lintian on {deb.name}:\n{output}"


def test_debian_files(cache: Path, tmp_path: Path) -> None:
    """The copyright file names the image and its license; the changelog is dated by the image."""
    (deb,) = build(tmp_path / "out", cache)
    files = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in ("copyright", "changelog.gz"):
        assert f"./usr/share/doc/hello-svc/{path}\n" in files
    assert "./usr/share/lintian/overrides/hello-svc\n" in files
    unpacked = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    copyright_text = (unpacked / "usr/share/doc/hello-svc/copyright").read_text()
    assert copyright_text.startswith(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
    )
    assert "oci:examples/hello:1.0@sha256:" in copyright_text
    assert "\nLicense: GPL-2.0-only\n" in copyright_text  # examples/hello's license label
    text = tmp_path / "changelog"
    text.write_bytes(gzip.decompress((unpacked / "usr/share/doc/hello-svc/changelog.gz").read_bytes()))
    changelog = subprocess.run(
        ["dpkg-parsechangelog", "-l", str(text), "-S", "Date"],
        capture_output=True,
        text=True,
        check=False,
    )
    if changelog.returncode == 0:  # dpkg-dev may be absent
        assert changelog.stdout.strip() == "Wed, 01 Jan 2025 00:00:00 +0000"
    # gzip -n: no name, no time in the header, so that builds stay byte-identical.
    header = (unpacked / "usr/share/doc/hello-svc/changelog.gz").read_bytes()[:10]
    assert header[3] & 0x08 == 0 and header[4:8] == b"\0\0\0\0"
