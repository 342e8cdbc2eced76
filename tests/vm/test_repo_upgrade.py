"""A fleet host kept current by its package manager: the VM installs a service from a signed apt
repository that `ctr2svc update` maintains on the host (served over HTTP on the host's loopback, which
the guest reaches as 10.0.2.2); a new image pushed under the same tag reaches it with `apt upgrade`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.images import service_image
from tests.support.registry import Registry, free_port
from tests.vm import vmhost

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

NAME = "fleet-svc"
APT = "DEBIAN_FRONTEND=noninteractive apt-get -q"


def test_apt_upgrade_from_a_ctr2svc_repository(
    vm: vmhost.VM, registry: Registry, ctr2svc: Cli, tmp_path: Path, served: tuple[Path, int], fleet_key: Path
) -> None:
    repo, http_port = served
    home = fleet_key

    port = free_port()
    ref = registry.push(
        service_image(tmp_path / "l1", "1.0", port=port, version_text="fleet 1.0"), "e2e/fleet", "1.0"
    )
    project = tmp_path / "ctr2svc.toml"
    project.write_text(
        f'[repo]\npath = "{repo}"\nsign_key = "fleet@example.com"\ngnupghome = "{home}"\n\n'
        # Flat: this test keeps a flat package's repository path covered (test_shared_layers.py has
        # the project default, shared layers).
        f'[[image]]\nref = "{ref}"\nname = "{NAME}"\nlayers = "flat"\n'
    )
    ctr2svc("update", "-c", project)

    # The guest trusts the key and uses the repository (and nothing else: it has no internet).
    vm.copy_to(tmp_path / "key.gpg", "/etc/apt/keyrings/fleet.gpg")
    vm.ssh(
        "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*; "
        f"echo 'deb [signed-by=/etc/apt/keyrings/fleet.gpg] http://10.0.2.2:{http_port}/deb ./' "
        "> /etc/apt/sources.list.d/fleet.list"
    )
    try:
        vm.ssh(f"{APT} update && {APT} install -y {NAME}", timeout=600)
        get = f"curl -fsS --max-time 2 http://127.0.0.1:{port}"
        assert vm.wait_until(f"{get}/", timeout=60).strip() == "fleet 1.0"
        vm.wait_until(f"{get}/cgi-bin/put?answer=42", timeout=30)

        # A new image under the same tag: update publishes it, apt upgrade installs it.
        registry.push(
            service_image(tmp_path / "l2", "1.0", port=port, version_text="fleet 1.0 rebuilt"),
            "e2e/fleet",
            "1.0",
        )
        published = ctr2svc("update", "-c", project).stdout.split()
        assert [Path(p).name for p in published] == [f"{NAME}_1.0-1_amd64.deb"]
        vm.ssh(f"{APT} update && {APT} upgrade -y", timeout=600)
        assert vm.ssh(f"dpkg-query -W -f '${{Version}}' {NAME}").stdout == "1.0-1"
        assert vm.wait_until(f"{get}/", timeout=60).strip() == "fleet 1.0 rebuilt"
        assert vm.wait_until(f"{get}/cgi-bin/get?answer", timeout=30).strip() == "42"
        # The previous version stays in the repository: a downgrade is one apt command away.
        assert "1.0 " in vm.ssh(f"apt-cache madison {NAME}").stdout
    finally:
        vm.ssh(f"{APT} purge -y {NAME}; rm -f /etc/apt/sources.list.d/fleet.list", timeout=300, check=False)
