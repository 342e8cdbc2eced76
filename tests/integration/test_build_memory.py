"""A flat build's peak memory does not grow with the image (issue 24): nfpm built a .deb's payload in
memory, so a 436 MB root took 540 MB; the image's files are now streamed into the package.

An image of 256 MiB of generated files (half random bytes, which no compressor shrinks, so the
payload itself is over 128 MiB) is built as a flat .deb, and so is the small test image: each build's
peak resident memory, that of its largest process as GNU time reports it (ctr2svc, or one of the
tools it runs), stays under the 100 MiB bound, which the payload alone would exceed. Memory, not
time: timings are bench/'s business.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, require
from tests.support.images import generated_files, install_busybox, layered_image, service_image

pytestmark = pytest.mark.integration

BOUND_KIB = 100 * 1024
FILES = 256  # of 1 MiB each


def _peak_kib(source: str, work: Path) -> tuple[int, Path]:
    """The build's peak RSS in KiB (its largest process) and the package it wrote."""
    work.mkdir()
    report = work / "time"
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", report, sys.executable, "-m", "ctr2svc", "build", source, "-q",
         "--format", "deb", "--cache-dir", work / "cache", "-o", work / "out"],
        capture_output=True, text=True, cwd=REPO, timeout=1800, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return int(report.read_text().split()[-1]), Path(proc.stdout.strip())


def test_flat_build_memory_is_bounded(tmp_path: Path) -> None:
    require(Path("/usr/bin/time").exists(), "GNU time (apt-get install time)")
    small = service_image(tmp_path / "layout", "small", port=18099, version_text="small")
    large = layered_image(
        tmp_path / "layout", "large", [install_busybox, generated_files(FILES, links=1)],
        entrypoint=["/bin/sh", "-c", "sleep 1000"],
    )  # fmt: skip
    small_kib, _ = _peak_kib(small, tmp_path / "small")
    large_kib, deb = _peak_kib(large, tmp_path / "large")
    shutil.rmtree(tmp_path / "large" / "cache")
    assert deb.stat().st_size > BOUND_KIB * 1024, "the payload must be larger than the bound"
    assert small_kib < BOUND_KIB, small_kib
    assert large_kib < BOUND_KIB, f"{large_kib} KiB for the large image, {small_kib} KiB for the small one"
    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True).stdout
    links = [line for line in listing.splitlines() if "/generated/link-0.bin link to " in line]
    assert len(links) == 1 and links[0].endswith("/generated/0000.bin"), listing[-2000:]
