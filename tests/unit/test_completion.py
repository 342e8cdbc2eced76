"""Shell completion of image references and capabilities: the callbacks, then bash on a terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from ctr2svc import completion
from ctr2svc.cli import cli
from ctr2svc.service.runtime_config import ALL_CAPABILITIES
from tests.conftest import REPO


def _values(items: list[click.shell_completion.CompletionItem]) -> list[str]:
    return [str(item.value) for item in items]


def _images(incomplete: str) -> list[str]:
    ctx = click.Context(cli)
    return _values(completion.image_references(ctx, click.Argument(["image"]), incomplete))


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "examples/hello").mkdir(parents=True)
    (tmp_path / "examples/hello/index.json").write_text(
        '{"manifests": [{"annotations": {"org.opencontainers.image.ref.name": "1.0"}},'
        ' {"annotations": {"org.opencontainers.image.ref.name": "2.0-rc1"}}]}'
    )
    (tmp_path / "exports").mkdir()
    (tmp_path / "app.tar").write_text("")
    (tmp_path / "apple.txt").write_text("")
    (tmp_path / ".hidden").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_oci_completes_directories(tree: Path) -> None:
    assert _images("oci:examp") == ["oci:examples/"]
    assert _images("oci:ex") == ["oci:examples/", "oci:exports/"]
    assert _images("oci:examples/") == ["oci:examples/hello/"]
    assert _images("oci:") == ["oci:examples/", "oci:exports/"]  # no files, no hidden directories
    assert _images("oci:.h") == ["oci:.hidden/"]
    assert _images(f"oci:{tree}/exa") == [f"oci:{tree}/examples/"]


def test_oci_completes_tags(tree: Path) -> None:
    assert _images("oci:examples/hello:") == ["oci:examples/hello:1.0", "oci:examples/hello:2.0-rc1"]
    assert _images("oci:examples/hello:2") == ["oci:examples/hello:2.0-rc1"]


def test_archives_complete_files(tree: Path) -> None:
    assert _images("oci-archive:ap") == ["oci-archive:app.tar", "oci-archive:apple.txt"]
    assert _images("docker-archive:app.") == ["docker-archive:app.tar"]
    assert _images("docker-archive:e") == ["docker-archive:examples/", "docker-archive:exports/"]


def test_transports_complete(tree: Path) -> None:
    assert _images("o") == ["oci:", "oci-archive:"]
    assert _images("docker-") == ["docker-archive:"]
    assert _images("registry.example.com/a") == []


def _caps(option: str, incomplete: str) -> list[str]:
    for param in cli.commands["build"].params:
        if option in param.opts:
            return _values(param.shell_complete(click.Context(cli.commands["build"]), incomplete))
    raise AssertionError(option)


def test_capabilities() -> None:
    every = _caps("--cap-add", "")
    assert set(every) == {*ALL_CAPABILITIES, *(c.removeprefix("CAP_") for c in ALL_CAPABILITIES)}
    assert "ALL" not in every
    assert _caps("--cap-add", "NET_A") == ["NET_ADMIN"]
    assert _caps("--cap-add", "CAP_SYS_TI") == ["CAP_SYS_TIME"]
    assert _caps("--cap-add", "sys_ti") == ["sys_time"]  # the case typed; build takes either
    assert _caps("--cap-drop", "AL") == ["ALL"]
    assert "ALL" in _caps("--cap-drop", "")


def test_inspect_completes_the_same() -> None:
    image = next(p for p in cli.commands["inspect"].params if p.name == "image")
    assert _values(image.shell_complete(click.Context(cli.commands["inspect"]), "oci-a")) == ["oci-archive:"]


class Bash:
    """An interactive bash on a pseudo-terminal with ctr2svc's completion loaded: TAB as a user presses it."""

    def __init__(self, cwd: Path) -> None:
        ctr2svc = shutil.which("ctr2svc", path=str(Path(sys.executable).parent))
        assert ctr2svc is not None
        self.leader, follower = pty.openpty()
        env = {
            "PATH": f"{Path(ctr2svc).parent}:/usr/bin:/bin",
            "TERM": "dumb",
            "HOME": str(cwd),
            "PS1": "$ ",
            "INPUTRC": "/dev/null",
            "PYTHONPATH": str(REPO),
        }
        self.proc = subprocess.Popen(
            ["bash", "--norc", "--noprofile", "-i"],
            stdin=follower,
            stdout=follower,
            stderr=follower,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        os.close(follower)
        self.run("source <(ctr2svc completion bash); echo '[loaded]'")
        self.wait_for(re.compile(r"^\[loaded\]$", re.M))

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 30) -> re.Match[str]:
        seen, end = "", time.monotonic() + timeout
        while time.monotonic() < end:
            ready, _, _ = select.select([self.leader], [], [], 0.2)
            if ready:
                seen += os.read(self.leader, 4096).decode(errors="replace").replace("\r", "")
                found = pattern.search(seen)
                if found:
                    return found
        raise AssertionError(f"no {pattern.pattern!r} in {seen!r}")

    def run(self, line: str) -> None:
        os.write(self.leader, line.encode() + b"\n")

    def tab(self, typed: str) -> str:
        """Type `typed`, press TAB, and return the command line as completed."""
        os.write(self.leader, typed.encode() + b"\t")
        time.sleep(0.5)  # the completion runs ctr2svc; readline applies it before the next keys
        # Ctrl-A, then wrap the line in an echo (Ctrl-E for its end), so bash prints what TAB made.
        os.write(self.leader, b'\x01echo "<<\x05>>"\n')
        return self.wait_for(re.compile(r"^<<(.*)>>$", re.M)).group(1)

    def close(self) -> None:
        os.write(self.leader, b"\x03")  # Ctrl-C: drop whatever a failed test left on the line
        self.run("exit")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.leader)


def test_bash_completes_on_tab(tree: Path) -> None:
    bash = Bash(tree)
    try:
        # bash breaks words at ':', yet the whole reference completes, with no space after a directory.
        assert bash.tab("ctr2svc build oci:examp") == "ctr2svc build oci:examples/"
        assert bash.tab("ctr2svc build oci:examples/hello:2") == "ctr2svc build oci:examples/hello:2.0-rc1 "
        assert bash.tab("ctr2svc inspect docker-archive:app.") == "ctr2svc inspect docker-archive:app.tar "
        assert bash.tab("ctr2svc build oci-arch") == "ctr2svc build oci-archive:"
        assert bash.tab("ctr2svc build --cap-add NET_A") == "ctr2svc build --cap-add NET_ADMIN "
        assert bash.tab("ctr2svc build --cap-drop AL") == "ctr2svc build --cap-drop ALL "
        assert bash.tab("ctr2svc build --format r") == "ctr2svc build --format rpm "
    finally:
        bash.close()
