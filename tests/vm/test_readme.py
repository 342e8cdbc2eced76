"""The README's example, line by line, as a newcomer runs it: `scripts/serve-example` and `ctr2svc
build` on this machine, `apt install`, `systemctl status` and `curl` in the Debian VM (systemd as PID 1),
in a directory holding the same `dist/`. The registry's port is a free one instead of 5000."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.registry import free_port
from tests.vm import vmhost

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

GUEST_DIR = "/root/readme"


def example_lines() -> list[str]:
    """The commands of the README's example block, comments dropped."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Example: build, install, check, upgrade") :]
    block = section[
        section.index("```sh\n") + len("```sh\n") : section.index("```\n", section.index("```sh"))
    ]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


@pytest.fixture
def port() -> Iterator[int]:
    chosen = free_port()
    yield chosen
    env = {**os.environ, "CTR2SVC_EXAMPLE_PORT": str(chosen)}
    subprocess.run([REPO / "scripts/serve-example", "stop"], env=env, check=False)


def test_the_readme_example_runs_as_written(vm: vmhost.VM, port: int, tmp_path: Path) -> None:
    lines = example_lines()
    assert [line.split()[0] for line in lines] == [
        "scripts/serve-example", "ctr2svc", "apt", "systemctl", "curl", "ctr2svc", "apt",
    ], lines  # fmt: skip
    env = {**os.environ, "CTR2SVC_EXAMPLE_PORT": str(port)}
    vm.ssh(f"mkdir -p {GUEST_DIR}/dist")
    try:
        for line in lines:
            words = shlex.split(line.replace("127.0.0.1:5000", f"127.0.0.1:{port}"))
            if words[0] == "scripts/serve-example":
                subprocess.run([REPO / words[0], *words[1:]], env=env, check=True, timeout=300)
            elif words[0] == "ctr2svc":
                built = subprocess.run([sys.executable, "-m", "ctr2svc", *words[1:]], cwd=tmp_path, env=env,
                                       capture_output=True, text=True, check=False, timeout=600)  # fmt: skip
                assert built.returncode == 0, built.stderr
                package = Path(built.stdout.strip())
                assert package.parent == Path("dist") and re.fullmatch(
                    r"hello-svc_1\.[01]_amd64\.deb", package.name
                )
                vm.copy_to(tmp_path / package, f"{GUEST_DIR}/{package}")
            else:
                done = vm.ssh(f"cd {GUEST_DIR} && DEBIAN_FRONTEND=noninteractive {line}", timeout=600)
                if words[0] == "curl":
                    assert "Hello from ctr2svc" in done.stdout
                if words[0] == "systemctl":
                    assert "active (running)" in done.stdout
        assert vm.ssh("dpkg-query -W -f '${Version}' hello-svc").stdout == "1.1"
        assert vm.ssh("systemctl is-active hello-svc").stdout.strip() == "active"
        vm.wait_until(
            "curl -fsS --max-time 2 http://127.0.0.1:8080/ | grep -q 'Hello from ctr2svc'", timeout=60
        )
    finally:
        vm.ssh("DEBIAN_FRONTEND=noninteractive apt-get purge -y hello-svc", check=False, timeout=300)
