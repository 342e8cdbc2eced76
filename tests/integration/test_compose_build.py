"""`ctr2svc build --compose` of a service the file builds (build:): podman builds its Dockerfile (FROM an
image in the local registry, COPY, and a RUN step) in ctr2svc's own store, the service is packaged
from the result like any image, installed and run; and --image SERVICE=REF packages another image
instead of building.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, require
from tests.support.images import web_image
from tests.support.registry import Registry, free_port

from .helpers import deb_listing, dpkg, leftovers, purge, sh, wait_for_http

pytestmark = pytest.mark.integration

APP = "c2s-built"
EPOCH = "1767225600"  # 2026-01-01: the image's date, as $SOURCE_DATE_EPOCH gives it
PAGE = "built by compose\n"
LOGO = b"\x89PNG\r\n\x1a\n\x00\xff"


def write_project(directory: Path, registry: str, port: int) -> Path:
    web = directory / "web"
    web.mkdir(parents=True)
    (web / "index.html").write_text(PAGE)
    (web / "Dockerfile").write_text(
        f"FROM {registry}/compose-build/base:1 AS base\n"
        "ARG GREETING=unset\n"
        "COPY index.html /www/index.html\n"
        'RUN echo "$GREETING" > /www/greeting.txt\n'
        "FROM base AS prod\n"
        "LABEL com.example.stage=prod\n"
    )
    # The application's own files beside the compose file, one of them not text: packaged as data.
    site = directory / "site"
    site.mkdir()
    (site / "extra.txt").write_text("from the project\n")
    (site / "logo.bin").write_bytes(LOGO)
    path = directory / "compose.yaml"
    path.write_text(
        f"""services:
  web:
    build:
      context: ./web
      args:
        GREETING: hello from the build
      target: prod
      network: none
    ports: ["{port}:80"]
    volumes: ["./site:/www/site"]
"""
    )
    return path


def summary_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


@pytest.fixture(scope="module")
def base(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    require(shutil.which("podman") is not None, "podman is not installed (apt-get install podman)")
    registry.push(
        web_image(tmp_path_factory.mktemp("base") / "oci", "1", "the base"), "compose-build/base", "1"
    )
    return registry


@pytest.fixture(scope="module")
def project(base: Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    port = free_port()
    return write_project(tmp_path_factory.mktemp("built") / "shop", base.host, port), port


def test_build_service_is_built_packaged_and_runs(
    project: tuple[Path, int],
    ctr2svc: Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    integration_host: None,
) -> None:
    path, port = project
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    out = tmp_path / "dist"
    proc = ctr2svc("build", "--compose", path, "--project-name", APP, "-o", out, "--json")
    summary = summary_of(proc)
    web = summary["services"][0]
    assert "Building the image of web" in proc.stderr
    # Tagged latest as compose tags what it builds: the version rule for a moving tag and its date.
    assert web["version"] == "0+latest.20260101000000", web
    assert web["pinned"].startswith("oci:") and "/built/c2s-built-web" in web["pinned"]
    files = [
        Path(summary["package"]),
        Path(web["package"]),
        *(Path(layer["package"]) for layer in web["layers"]),
    ]
    listed = {name for deb in files for name in deb_listing(deb)}
    assert any(name.endswith("/rootfs/www/index.html") for name in listed), sorted(listed)[:20]
    assert any(name.endswith("/rootfs/www/greeting.txt") for name in listed)
    # The bound site: the package's data (not conffiles), the binary file as it is.
    assert f"usr/share/{APP}-web/files/site/logo.bin" in listed
    conffiles = sh("dpkg-deb", "-I", web["package"], "conffiles", check=False).stdout
    assert "/files/site/" not in conffiles
    # The same context builds the same image: nothing to do the second time.
    again = summary_of(ctr2svc("build", "--compose", path, "--project-name", APP, "-o", out, "--json"))
    assert again["services"][0]["up_to_date"] and again["services"][0]["sha256"] == web["sha256"]
    # Installed and run by its helper (systemd is not PID 1 here).
    helper = Path(f"/usr/libexec/{APP}-web/service")
    for name in (f"{APP}-stack", f"{APP}-web"):
        purge(name)
    dpkg("-i", *dict.fromkeys(files))
    try:
        sh(helper, "prepare")
        # Its output to a file, as the journal takes it: the container keeps a pipe open.
        with (tmp_path / "web.log").open("ab") as log:
            subprocess.run([str(helper), "start"], stdout=log, stderr=log, check=True, timeout=60)
        assert wait_for_http(f"http://127.0.0.1:{port}/", deadline=60) == PAGE
        assert wait_for_http(f"http://127.0.0.1:{port}/greeting.txt") == "hello from the build\n"
        assert wait_for_http(f"http://127.0.0.1:{port}/site/extra.txt") == "from the project\n"
        assert Path(f"/usr/share/{APP}-web/files/site/logo.bin").read_bytes() == LOGO
    finally:
        sh(helper, "stop", check=False)
        dpkg("--purge", f"{APP}-stack", f"{APP}-web")
        layers = sorted({f.name.split("_")[0] for f in files if f.name.startswith("ctr2svc-layer-")})
        dpkg("--purge", *layers)
    assert leftovers() == []


def test_image_option_packages_another_image_instead(
    project: tuple[Path, int], base: Registry, ctr2svc: Cli, tmp_path: Path
) -> None:
    path, _ = project
    ref = base.ref("compose-build/base", "1")
    out = tmp_path / "dist"
    proc = ctr2svc(
        "build", "--compose", path, "--project-name", APP, "--image", f"web={ref}", "-o", out, "--json"
    )
    web = summary_of(proc)["services"][0]
    assert "Building the image" not in proc.stderr
    assert web["version"] == "1" and web["pinned"].startswith(f"{base.host}/compose-build/base@sha256:")


def test_update_rebuilds_to_the_same_image(base: Registry, ctr2svc: Cli, tmp_path: Path) -> None:
    """`update -c`: the service is built every time, and the same context gives the same digest, so
    the second run publishes nothing; a changed file is a new version."""
    path = write_project(tmp_path / "shop", base.host, free_port())
    repo = tmp_path / "repo"
    ctr2svc("update", "-c", path, "--repo", repo)
    first = sorted(p.name for p in (repo / "deb").glob("shop-web_*.deb"))
    assert len(first) == 1, first
    again = ctr2svc("update", "-c", path, "--repo", repo)
    row = next(line.split() for line in again.stderr.splitlines() if line.startswith("shop-web"))
    assert row[2] == "unchanged", again.stderr
    index = path.parent / "web" / "index.html"
    index.write_text("a new page\n")
    ctr2svc("update", "-c", path, "--repo", repo)
    versions = sorted(p.name for p in (repo / "deb").glob("shop-web_*.deb"))
    assert len(versions) == 2 and first[0] in versions, versions
