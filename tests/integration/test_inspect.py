"""`ctr2svc inspect`: the image's declarations and the package it would make, from a real registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.docs import json_fields, top_level
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
    assert info["schema_version"] == 1
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


def test_inspect_json_has_the_documented_fields(ctr2svc: Cli, integration_host: None) -> None:
    """docs/json.md lists exactly the fields `inspect --json` prints, at the top and in `package`."""
    fields = json_fields("`ctr2svc inspect --json`")
    info = json.loads(ctr2svc("inspect", "oci:examples/hello:1.0", "--json").stdout)
    assert set(info) == top_level(fields)
    assert {f"package.{key}" for key in info["package"]} == {
        f for f in fields if f.startswith("package.") and f.count(".") == 1
    }
    assert info["schema_version"] == 1 and info["generated"] is None
    made = json.loads(ctr2svc("inspect", "oci:examples/hello:1.0", "--json", "--generated").stdout)
    assert {f"generated.{key}" for key in made["generated"]} == {
        f for f in fields if f.startswith("generated.") and f.count(".") == 1
    }
    assert {f"generated.files[].{key}" for key in made["generated"]["files"][0]} == {
        f for f in fields if f.startswith("generated.files[].")
    }
