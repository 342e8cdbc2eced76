"""Reproducible by default: the same image digest, options and ctr2svc give the same bytes.

Two builds of each format, into two output directories with two caches, a second apart and without
SOURCE_DATE_EPOCH, must be byte-identical (cmp); every timestamp in them is at most the image's
creation time. SOURCE_DATE_EPOCH, when set, is the clamp instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import REPO

from .helpers import sh

pytestmark = pytest.mark.integration

EXAMPLE = "oci:examples/hello:1.0"
CREATED = datetime(2025, 1, 1, tzinfo=UTC)  # examples/hello's config says so (examples/README.md)


def run_build(out: Path, cache: Path, epoch: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """`ctr2svc build EXAMPLE ARGS -o OUT` with its own cache and SOURCE_DATE_EPOCH only if EPOCH."""
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["CTR2SVC_CACHE_DIR"] = str(cache)
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = epoch
    return subprocess.run(
        [sys.executable, "-m", "ctr2svc", "build", EXAMPLE, *args, "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
        timeout=600,
    )


def build(out: Path, cache: Path, fmt: str, epoch: str | None = None) -> Path:
    proc = run_build(out, cache, epoch, "-q", "-f", fmt)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip())


@pytest.mark.parametrize("fmt", ["deb", "rpm", "apk"])
def test_two_builds_are_byte_identical(fmt: str, tmp_path: Path, integration_host: None) -> None:
    first = build(tmp_path / "a", tmp_path / "cache-a", fmt)
    time.sleep(1.1)  # a clock that leaked into the package would now differ
    second = build(tmp_path / "b", tmp_path / "cache-b", fmt)
    assert first.name == second.name
    assert sh("cmp", first, second, check=False).returncode == 0, f"{first} and {second} differ"


def test_timestamps_are_clamped(tmp_path: Path, integration_host: None) -> None:
    deb = build(tmp_path / "a", tmp_path / "cache", "deb")
    listing = sh("dpkg-deb", "-c", deb).stdout.splitlines()
    stamps = {" ".join(line.split()[3:5]) for line in listing}
    assert max(stamps) <= CREATED.strftime("%Y-%m-%d %H:%M"), sorted(stamps)[-3:]
    # SOURCE_DATE_EPOCH wins when set: an earlier clamp shows in the listing, and in the bytes.
    early = build(tmp_path / "b", tmp_path / "cache", "deb", epoch="1600000000")
    early_stamps = {" ".join(line.split()[3:5]) for line in sh("dpkg-deb", "-c", early).stdout.splitlines()}
    assert max(early_stamps) <= "2020-09-13 12:26", sorted(early_stamps)[-3:]
    assert sh("cmp", deb, early, check=False).returncode != 0


def test_a_bad_source_date_epoch_is_refused(tmp_path: Path, integration_host: None) -> None:
    proc = run_build(tmp_path / "o", tmp_path / "c", "yesterday")
    assert proc.returncode == 2
    assert "SOURCE_DATE_EPOCH='yesterday' is not a number of seconds" in proc.stderr
    assert not (tmp_path / "o").exists()
