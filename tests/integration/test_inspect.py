"""`ctr2svc inspect`: the image's declarations and the package it would make, from a real registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.images import multiarch_image, service_image
from tests.support.registry import Registry, free_port

pytestmark = pytest.mark.integration


def test_inspect_json_and_text(ctr2svc: Cli, registry: Registry, tmp_path: Path) -> None:
    port = free_port()
    ref = registry.push(
        service_image(tmp_path / "l", "9.0.0-rc1", port=port, version_text="x", stop_signal="SIGQUIT"),
        "itest/inspect",
        "9.0.0-rc1",
    )
    info = json.loads(ctr2svc("inspect", ref, "--json").stdout)
    assert info["entrypoint"] == ["/usr/local/bin/entrypoint.sh"] and info["cmd"] == ["serve"]
    assert info["exposed_ports"] == [f"{port}/tcp"] and info["volumes"] == ["/data"]
    assert info["stop_signal"] == "SIGQUIT" and info["platforms"] == ["linux/amd64"]
    assert f"PORT={port}" in info["env"]
    assert info["pinned"].endswith(info["digest"])
    pkg = info["package"]
    assert pkg["name"] == "inspect-svc" and pkg["service"] == "inspect-svc.service"
    assert pkg["formats"] == {
        "deb": {"version": "9.0.0~rc1", "arch": "amd64"},
        "rpm": {"version": "9.0.0~rc1-1", "arch": "x86_64"},
        "apk": {"version": "9.0.0_rc1-r0", "arch": "x86_64"},
    }
    assert pkg["volumes"] == {"/data": "/var/lib/inspect-svc/volumes/data"}
    shown = ctr2svc("inspect", ref).stdout
    assert "stop signal SIGQUIT" in shown and "deb       9.0.0~rc1 amd64" in shown


def test_inspect_lists_the_platforms(ctr2svc: Cli, registry: Registry, tmp_path: Path) -> None:
    ref = registry.push(
        multiarch_image(tmp_path / "m", "1.0", arches=["amd64", "arm64"]), "itest/multi", "1.0"
    )
    info = json.loads(ctr2svc("inspect", ref, "--json", "--arch", "arm64").stdout)
    assert info["platform"] == "linux/arm64"
    assert sorted(info["platforms"]) == ["linux/amd64", "linux/arm64/v8"]  # as the index says
    assert info["package"]["formats"]["rpm"]["arch"] == "aarch64"


def test_inspect_bad_reference(ctr2svc: Cli, registry: Registry) -> None:
    proc = ctr2svc("inspect", f"{registry.host}/itest/nothing:1.0", check=False)
    assert proc.returncode == 3 and "not found" in proc.stderr and proc.stdout == ""
