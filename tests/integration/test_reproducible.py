"""Reproducible by default: the same image digest, options and ctr2svc give the same bytes.

Two builds of each format, into two output directories with two caches, a second apart and without
SOURCE_DATE_EPOCH, must be byte-identical (cmp); every timestamp in them is at most the image's
creation time. SOURCE_DATE_EPOCH, when set, is the clamp instead. Nor does the builder's umask show:
an image whose layer lists neither its root nor its files' parent directories, built under umask 077
and 022, gives the same bytes in every format, flat and with shared layers, those directories 0755.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.images import BUSYBOX, layered_image

from .helpers import sh

pytestmark = pytest.mark.integration

EXAMPLE = "oci:examples/hello:1.0"
CREATED = datetime(2025, 1, 1, tzinfo=UTC)  # examples/hello's config says so (examples/README.md)


def run_build(
    out: Path, cache: Path, epoch: str | None, *args: str, source: str = EXAMPLE, umask: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`ctr2svc build SOURCE ARGS -o OUT` with its own cache, SOURCE_DATE_EPOCH only if EPOCH, and
    under UMASK if given (set by a shell, as a user's login shell sets it)."""
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["CTR2SVC_CACHE_DIR"] = str(cache)
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = epoch
    command = [sys.executable, "-m", "ctr2svc", "build", source, *args, "-o", str(out)]
    if umask is not None:
        command = ["sh", "-c", f'umask {umask}; exec "$@"', "sh", *command]
    return subprocess.run(
        command,
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


def implied_dirs_image(layout: Path) -> str:
    """One layer that lists only files: the root and usr/, usr/share/, usr/share/site/ are implied."""
    layer = layout.parent / "layer.tar"
    layout.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, mode, data in (
            ("bin/busybox", 0o755, Path(BUSYBOX).read_bytes()),
            ("usr/share/site/index.html", 0o644, b"hello\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 1700000000
            archive.addfile(info, io.BytesIO(data))
    return layered_image(layout, "1", [layer], entrypoint=["/bin/busybox", "sleep", "1000"])


IMPLIED = ("", "bin", "usr", "usr/share", "usr/share/site")


@pytest.mark.parametrize(
    ("fmt", "layers"),
    [
        ("deb", "flat"),
        ("deb", "shared"),
        ("rpm", "flat"),
        ("rpm", "shared"),
        ("apk", "flat"),
        ("apk", "shared"),
    ],
)
def test_the_umask_does_not_change_the_package(
    fmt: str, layers: str, tmp_path: Path, integration_host: None
) -> None:
    source = implied_dirs_image(tmp_path / "image" / "layout")
    built: dict[str, list[Path]] = {}
    for umask in ("077", "022"):
        out = tmp_path / f"out-{umask}"
        proc = run_build(
            out, tmp_path / f"cache-{umask}", None, "-q", "-f", fmt, "--layers", layers, "--name", "um-svc",
            source=source, umask=umask,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        built[umask] = sorted(out.iterdir())
    assert [p.name for p in built["077"]] == [p.name for p in built["022"]]
    for private, usual in zip(built["077"], built["022"], strict=True):
        assert sh("cmp", private, usual, check=False).returncode == 0, f"{private.name} differs by umask"
    if fmt == "deb":
        # ... and the directories the layer implies are 0755, as Docker makes them.
        for deb in built["077"]:
            listing = sh("dpkg-deb", "-c", deb).stdout.splitlines()
            rootfs = [line.split()[0] + " " + line.split()[-1] for line in listing if "/rootfs/" in line]
            if not rootfs:
                continue  # the service package of shared layers
            modes = {entry.split("/rootfs/", 1)[1].rstrip("/"): entry.split()[0] for entry in rootfs}
            assert {d: modes[d] for d in IMPLIED} == dict.fromkeys(IMPLIED, "drwxr-xr-x"), rootfs
