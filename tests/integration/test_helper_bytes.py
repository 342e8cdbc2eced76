"""Every package carries the same service helper (issue 23): two different images, built in two formats,
one flat and one with shared layers on a private network, hold byte-identical helpers and awk
programs, which are ctr2svc/runtime's program; only service.env differs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ctr2svc import runtime
from tests.conftest import REPO, Cli
from tests.support.images import service_image
from tests.support.registry import Registry, free_port

pytestmark = pytest.mark.integration

FILES = ("service", "config.awk", "network.awk", "service.env")


def deb_files(deb: Path, name: str, where: Path) -> dict[str, bytes]:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(where)], check=True)
    return {f: (where / "usr/libexec" / name / f).read_bytes() for f in FILES}


def rpm_files(rpm: Path, name: str, where: Path) -> dict[str, bytes]:
    where.mkdir()
    payload = subprocess.run(["rpm2cpio", str(rpm)], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=payload, cwd=where, check=True)
    return {f: (where / "usr/libexec" / name / f).read_bytes() for f in FILES}


def test_two_images_two_formats_one_helper(registry: Registry, ctr2svc: Cli, tmp_path: Path) -> None:
    hello = Path(ctr2svc("build", f"oci:{REPO / 'examples/hello'}:1.0", "-o", tmp_path / "a").stdout.strip())
    source = service_image(tmp_path / "layout", "1.0", port=free_port(), version_text="kv 1.0")
    ref = registry.push(source, "itest/helper-bytes", "1.0")
    built = ctr2svc("build", ref, "--name", "bytes-svc", "--format", "rpm", "--layers", "shared",
                    "--network", "private", "-p", "18080:80", "-o", tmp_path / "b")  # fmt: skip
    rpm = next(Path(line) for line in built.stdout.split() if "/bytes-svc-" in line)
    a = deb_files(hello, "hello-svc", tmp_path / "deb")
    b = rpm_files(rpm, "bytes-svc", tmp_path / "rpm")
    for name in ("service", "config.awk", "network.awk"):
        assert a[name] == b[name], f"{name} differs between the two packages"
    assert a["service"].decode() == runtime.program()
    assert a["service.env"] != b["service.env"]
    assert b"NAME=bytes-svc\n" in b["service.env"] and b"LOWER=" in b["service.env"]
