"""The runtime bundle the helper writes at a start: the packaged config.json with the admin's settings,
against a golden copy; written again only when something it is made of changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import Helper

# prepare mounts the root, start runs the stand-in container.
pytestmark = pytest.mark.usefixtures("as_root")

GOLDEN = Path(__file__).parent / "golden"


def admin_settings(helper: Helper) -> None:
    config = helper.path("CONFIG_DIR")
    (config / "env").write_text("# the admin's\nHOME=/srv\nPASSWORD=it's \"secret\" \\ $x\n")
    (config / "args").write_text("--port\n6380\n")
    (config / "mounts").write_text("/srv/certs /certs\n/srv/spool /spool rw\n")


def render(helper: Helper, network: str = "host") -> Path:
    helper.shell(f'NETWORK={network}\nmkdir -p "$BUNDLE"\nrender_config')
    return helper.path("STATE_DIR") / "bundle/config.json"


@pytest.mark.parametrize("network", ["host", "private"])
def test_the_bundle_against_its_golden_copy(helper: Helper, network: str) -> None:
    admin_settings(helper)
    written = render(helper, network).read_text()
    # The host's name (host network) is this machine's: the golden copy has a placeholder.
    hostname = Path("/proc/sys/kernel/hostname").read_text().strip()
    written = written.replace(json.dumps(f"HOSTNAME={hostname}"), '"HOSTNAME=HOST"')
    golden = GOLDEN / f"bundle-{network}.json"
    if os.environ.get("CTR2SVC_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(written)
    assert written == golden.read_text()
    json.loads(written)


def test_written_again_only_when_an_input_changed(helper: Helper) -> None:
    admin_settings(helper)
    bundle = render(helper)
    first = bundle.stat()
    assert render(helper).stat().st_mtime_ns == first.st_mtime_ns  # nothing changed: left as it is
    # The admin edits a file: written again, with the edit.
    env = helper.path("CONFIG_DIR") / "env"
    env.write_text("HOME=/elsewhere\n")
    os.utime(env, (first.st_mtime + 5, first.st_mtime + 5))
    again = render(helper)
    assert again.stat().st_mtime_ns != first.st_mtime_ns
    assert "HOME=/elsewhere" in json.loads(again.read_text())["process"]["env"]
    # Another network: written again, with the namespace.
    switched = json.loads(render(helper, "private").read_text())
    assert {"type": "network", "path": "/run/netns/ctr2svc-kv-svc"} in switched["linux"]["namespaces"]


def test_a_broken_admin_file_fails_the_start_naming_the_line(helper: Helper) -> None:
    (helper.path("CONFIG_DIR") / "env").write_text("# fine\nnot a variable\n")
    failed = helper.shell('mkdir -p "$BUNDLE"\nrender_config', check=False)
    assert failed.returncode != 0
    assert f"kv-svc: {helper.path('CONFIG_DIR') / 'env'} line 2: not KEY=VALUE" in failed.stderr
    assert not (helper.path("STATE_DIR") / "bundle/config.json").exists()


def test_a_wrong_network_word_fails_the_start(helper: Helper) -> None:
    (helper.path("CONFIG_DIR") / "network").write_text("# mine\nbridged\n")
    failed = helper.run("prepare", check=False)
    assert failed.returncode == 1
    network = helper.path("CONFIG_DIR") / "network"
    assert failed.stderr.strip() == f"kv-svc: {network} says 'bridged': write host or private there"
