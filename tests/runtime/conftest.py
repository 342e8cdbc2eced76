"""The service helper on its own: its program and a service.env pointing into a temporary directory,
run against a stand-in runtime (fake-runc) or against the kernel (mounts, in a private mount namespace).
No VM, no package: what the helper does with its data, command by command."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ctr2svc import runtime
from ctr2svc.model import HealthCheck, ServiceSpec, Volume
from ctr2svc.service import runtime_config
from tests.conftest import require
from tests.unit.conftest import make_spec

HERE = Path(__file__).resolve().parent
FAKE_RUNC = HERE / "fake-runc"


@dataclass
class Helper:
    """A service's helper installed under TOP, its paths all below TOP."""

    top: Path
    spec: ServiceSpec
    values: dict[str, str] = field(default_factory=dict)

    @property
    def libexec(self) -> Path:
        return self.top / "libexec"

    @property
    def program(self) -> Path:
        return self.libexec / "service"

    def path(self, key: str) -> Path:
        return Path(self.values[key])

    def install(self, **overrides: str) -> Helper:
        """Writes the program, its awk programs and service.env (SPEC's values, paths moved below TOP,
        then OVERRIDES), and an image: a rootfs with a seeded volume and the packaged config.json."""
        top = self.top
        values = runtime.service_values(self.spec, "k" * 16, 0o755, 0, 0)
        name = self.spec.name
        data = top / "var/lib" / name
        values.update(
            IMAGE_DIR=str(top / "opt" / name / self.spec.version),
            STATE_DIR=str(top / "run" / name),
            DATA_DIR=str(data),
            VOLUMES_DIR=str(data / "volumes"),
            OVERLAY_DIR=str(data / "overlay"),
            ROOT=str(top / "run" / name / "rootfs"),
            CONFIG_DIR=str(top / "etc" / name),
            LAYERS_DIR=str(top / "layers"),
            # Six words a volume, as the package writes them (mount.sh's init_volume's arguments).
            VOLUMES=runtime._words(
                word
                for v in self.spec.volumes
                for word in (
                    str(data / "volumes" / v.container_path.strip("/")),
                    v.container_path,
                    v.uid,
                    v.gid,
                    f"{v.mode:04o}",
                    "yes" if v.seed else "no",
                )
            ),
        )
        values.update(overrides)
        self.values = values
        self.libexec.mkdir(parents=True, exist_ok=True)
        self.program.write_text(runtime.program())
        self.program.chmod(0o755)
        for awk in runtime.AWK_PROGRAMS:
            (self.libexec / awk).write_text(runtime.awk_program(awk))
        (self.libexec / "service.env").write_text(runtime.service_env(values))
        (self.libexec / "library.sh").write_text(runtime.library())
        image = self.path("IMAGE_DIR")
        (image / "rootfs/data").mkdir(parents=True, exist_ok=True)
        (image / "rootfs/data/seed").write_text("from the image\n")
        (image / "rootfs/etc").mkdir(exist_ok=True)
        (image / "config.json").write_text(json.dumps(packaged_config(self.spec), indent=2) + "\n")
        self.path("CONFIG_DIR").mkdir(parents=True, exist_ok=True)
        return self

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {"PATH": os.environ["PATH"], "CTR2SVC_RUNC": str(FAKE_RUNC), **(extra or {})}

    def run(
        self, *args: str, extra: Mapping[str, str] | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """The helper's command line, as the unit runs it."""
        proc = subprocess.run([str(self.program), *args], env=self.env(extra), capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"service {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def shell(
        self,
        script: str,
        extra: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = 60,
        namespace: bool = False,
        network: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """SCRIPT with the helper's functions defined and its paths derived (library.sh), run from its
        directory; with NAMESPACE, in a mount namespace of its own, whose mounts go with it; with NETWORK,
        in a network namespace of its own."""
        body = f'set -eu\n. ./library.sh\nderive_paths\nSEED_ROOT="$IMAGE_DIR/rootfs"\n{script}'
        argv = ["sh", "-c", body]
        if namespace:
            argv = ["unshare", "--mount", "--propagation", "private", *argv]
        if network:
            argv = ["unshare", "--net", *argv]
        proc = subprocess.run(argv, cwd=self.libexec, env=self.env(extra), capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"script exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc


def packaged_config(spec: ServiceSpec) -> dict[str, Any]:
    """The runtime config ctr2svc would package for SPEC, from what umoci wrote for a test image."""
    umoci: dict[str, Any] = json.loads((HERE.parent / "unit/data/umoci-config.json").read_text())
    return runtime_config.patch(umoci, spec)


def spec_for(name: str = "kv-svc", version: str = "1.0", **changes: Any) -> ServiceSpec:
    base = make_spec(volumes=(Volume("/data", "", 999, 999, 0o750, True),))
    layout = dataclasses.replace(base.layout, name=name, version=version)
    health = HealthCheck(("/bin/sh", "-c", "kv ping"), 1, 2, 2, 0)
    return dataclasses.replace(base, name=name, version=version, layout=layout, health=health, **changes)


@pytest.fixture
def helper(tmp_path: Path) -> Iterator[Helper]:
    """A service's helper; what a failed test left running or mounted goes at its end."""
    installed = Helper(tmp_path / "host", spec_for()).install()
    yield installed
    installed.shell('runc_ delete --force "$NAME" 2>/dev/null || true\nunmount_all "$ROOT"', check=False)


@pytest.fixture
def as_root() -> None:
    require(os.geteuid() == 0, "needs root (mounts in a mount namespace of its own, chown)")
    require(shutil.which("unshare") is not None, "unshare (util-linux) is not installed")
