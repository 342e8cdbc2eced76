"""Two real `ctr2svc build` processes of one image into one output directory.

Before the lock both succeeded and one reported the sha256 of a file the other had replaced. Now the
second waits for the first, then finds its record: the package is built once and both report the
file that is there.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, Cli
from tests.support.images import build_image, install_busybox, put_file
from tests.support.registry import Registry

pytestmark = pytest.mark.integration


def _populate(root: Path) -> None:
    install_busybox(root)
    # Incompressible bytes: the first build must still hold the lock when the second one, a new
    # Python process, gets to it (a few MB made that a race a fast or idle machine could lose).
    put_file(root, "srv/blob", os.urandom(48 * 1024 * 1024))


@pytest.fixture(scope="module")
def image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    layout = tmp_path_factory.mktemp("race") / "layout"
    source = build_image(layout, "1.0", _populate, entrypoint=["/bin/busybox"], cmd=["sleep", "3600"])
    return registry.push(source, "itest/race", "1.0")


def _start(ctr2svc: Cli, *args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ctr2svc", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CTR2SVC_CACHE_DIR": str(ctr2svc.cache_dir)},
        cwd=REPO,
    )


def _sha256_line(stderr: str) -> str:
    """The summary's "  sha256:  HEX" line."""
    found = re.search(r"^\s+sha256:\s+([0-9a-f]{64})$", stderr, re.MULTILINE)
    assert found, stderr
    return found.group(1)


def test_two_builds_into_one_directory(image: str, ctr2svc: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _start(ctr2svc, "build", image, "-o", out)
    assert first.stderr is not None
    # The first holds the lock once it is past resolving; the second starts while it does.
    seen = []
    for line in first.stderr:
        seen.append(line)
        if line.startswith("‣ Unpacking"):
            break
    second = _start(ctr2svc, "build", image, "-o", out)
    rest = first.communicate(timeout=300)[1]
    first_err = "".join(seen) + rest
    second_out, second_err = second.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert second.returncode == 0, second_err
    assert "waiting for another build of race-svc (deb)" in second_err, second_err
    assert "(up to date)" in second_err
    package = Path(second_out.strip())
    digest = hashlib.sha256(package.read_bytes()).hexdigest()
    # Both name the sha256 of the file that is there, which was written once.
    assert _sha256_line(first_err) == _sha256_line(second_err) == digest
    assert [p.name for p in out.iterdir()] == [package.name]


def test_a_different_output_directory_does_not_wait(image: str, ctr2svc: Cli, tmp_path: Path) -> None:
    first = _start(ctr2svc, "build", image, "-o", tmp_path / "a", "--env", "A=1")
    time.sleep(0.5)
    second = _start(ctr2svc, "build", image, "-o", tmp_path / "b", "--env", "A=2")
    _, first_err = first.communicate(timeout=300)
    _, second_err = second.communicate(timeout=300)
    assert first.returncode == second.returncode == 0, first_err + second_err
    assert "waiting for another build" not in first_err + second_err
