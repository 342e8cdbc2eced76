"""What a user sees: progress on a terminal only, the no-op rebuild, `inspect --generated`, completion."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, Cli
from tests.support.images import build_image, install_busybox, put_file, service_image
from tests.support.registry import Registry, free_port

pytestmark = pytest.mark.integration


def _populate_large(root: Path) -> None:
    install_busybox(root, symlinks=("sleep",))
    # Compressible text like real software, enough for each step to take a few progress ticks.
    shutil.copytree("/usr/share/doc", root / "usr/share/doc", symlinks=True)
    put_file(root, "srv/big.txt", "".join(f"line {i} of a large file\n" for i in range(1_500_000)))


@pytest.fixture(scope="module")
def large(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("large")
    image = build_image(work / "l", "1.0", _populate_large, entrypoint=["/bin/sleep", "1000"])
    return registry.push(image, "ux/large", "1.0")


def on_terminal(args: list[str], cache: Path) -> tuple[int, str]:
    """Run ctr2svc with stderr on a pseudo-terminal, as in an interactive shell; returns (status, stderr)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "CTR2SVC_CACHE_DIR": str(cache), "COLUMNS": "120"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctr2svc", *args],
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env=env,
        cwd=REPO,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=600), b"".join(chunks).decode(errors="replace")


def piped(args: list[str], env: dict[str, str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """ctr2svc with its output on pipes (a script, a CI log), in the environment ENV."""
    return subprocess.run(
        [sys.executable, "-m", "ctr2svc", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=check,
    )


def test_progress_redrawn_on_a_terminal_and_plain_in_a_log(large: str, tmp_path: Path) -> None:
    status, shown = on_terminal(["build", large, "-o", str(tmp_path / "tty")], tmp_path / "cache-tty")
    assert status == 0, shown
    # Each long step redraws one line in place: carriage return, erase line, "step  done / total (N%)".
    redraws = [part for part in shown.split("\r\x1b[K") if part.strip()]
    assert any(p.startswith("  pulling") and "%" in p and "blobs" in p for p in redraws), shown
    assert any(p.startswith("  unpacking") and "layer 1/1" in p for p in redraws), shown
    assert any(p.startswith("  packing") and "MB /" in p for p in redraws), shown
    assert "✓" in shown and "install: apt install" in shown

    status, quiet = on_terminal(["-q", "build", large, "-o", str(tmp_path / "q")], tmp_path / "cache-q")
    assert status == 0 and "\x1b[K" not in quiet and "pulling" not in quiet, quiet

    # Not a terminal (a pipe, a CI log): the step lines alone, nothing redrawn.
    env = {**os.environ, "CTR2SVC_CACHE_DIR": str(tmp_path / "cache-pipe")}
    proc = piped(["build", large, "-o", str(tmp_path / "pipe")], env)
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    assert "‣ Packing" in proc.stderr and proc.stdout.strip().endswith(".deb")

    # A long step in a log still says how far it is, a plain line every CTR2SVC_PROGRESS_INTERVAL
    # seconds (10 by default; short here so that this small image's steps last several of them).
    env["CTR2SVC_CACHE_DIR"] = str(tmp_path / "cache-log")
    env["CTR2SVC_PROGRESS_INTERVAL"] = "0.05"
    proc = piped(["build", large, "-o", str(tmp_path / "log")], env)
    lines = proc.stderr.splitlines()
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    assert any(line.startswith("  packing") and "MB /" in line for line in lines), proc.stderr
    assert any(line.startswith("  pulling") or line.startswith("  unpacking") for line in lines), proc.stderr


def test_noop_rebuild(ctr2svc: Cli, registry: Registry, tmp_path: Path) -> None:
    ref = registry.push(
        service_image(tmp_path / "l", "1.0", port=free_port(), version_text="one"), "ux/noop", "1.0"
    )
    out = tmp_path / "out"
    first = ctr2svc("build", ref, "-o", out)
    package = Path(first.stdout.strip())
    before = package.stat()

    again = ctr2svc("-v", "build", ref, "-o", out)
    assert Path(again.stdout.strip()) == package
    assert "(up to date)" in again.stderr
    digest = hashlib.sha256(package.read_bytes()).hexdigest()
    assert f"sha256:  {digest}" in first.stderr and f"sha256:  {digest}" in again.stderr
    # Only the manifest was asked for (and the tools their versions): no pull, no unpack, no pack.
    commands = [line for line in again.stderr.splitlines() if line.startswith("debug: + ")]
    assert any(" inspect --raw " in c for c in commands), commands
    assert all(" inspect --raw " in c or c.endswith(" --version") for c in commands), commands
    assert package.stat().st_mtime_ns == before.st_mtime_ns and package.stat().st_ino == before.st_ino

    # Another option, another package: a real build.
    changed = ctr2svc("build", ref, "-o", out, "--memory", "64M")
    assert "up to date" not in changed.stderr and "‣ Packing" in changed.stderr
    # The package replaced by hand (here: emptied) is not trusted: built again.
    package.write_bytes(b"")
    rebuilt = ctr2svc("build", ref, "-o", out, "--memory", "64M")
    assert "up to date" not in rebuilt.stderr and package.stat().st_size > 0
    # A new digest behind the same tag: built again.
    registry.push(
        service_image(tmp_path / "l", "1.0", port=free_port(), version_text="two"), "ux/noop", "1.0"
    )
    moved = ctr2svc("build", ref, "-o", out, "--memory", "64M")
    assert "up to date" not in moved.stderr and "‣ Packing" in moved.stderr


def test_inspect_generated(ctr2svc: Cli, registry: Registry, tmp_path: Path) -> None:
    port = free_port()
    ref = registry.push(
        service_image(tmp_path / "l", "2.0", port=port, version_text="x"), "ux/inspect", "2.0"
    )
    info = json.loads(ctr2svc("inspect", ref, "--generated", "--memory", "64M", "--json").stdout)
    made = info["generated"]
    files = {f["path"]: f for f in made["files"]}
    unit = files["/lib/systemd/system/inspect-svc.service"]["content"]
    assert "MemoryMax=67108864" in unit and "ExecStart=/usr/libexec/inspect-svc/service start" in unit
    assert files["/etc/inspect-svc/env"]["conffile"] and files["/etc/inspect-svc/env"]["mode"] == "0600"
    diff = made["config_diff"].splitlines()
    assert '-    "terminal": true,' in diff and '+    "terminal": false,' in diff
    assert any(line.startswith("+") and '"limit": 67108864' in line for line in diff)
    assert made["config_json"] == "/opt/containers/inspect-svc/2.0/config.json"

    rpm = json.loads(ctr2svc("inspect", ref, "--generated", "--format", "rpm", "--json").stdout)
    assert "/usr/lib/systemd/system/inspect-svc.service" in {f["path"] for f in rpm["generated"]["files"]}
    apk = ctr2svc("inspect", ref, "--generated", "--format", "apk").stdout
    assert "--- /etc/init.d/inspect-svc" in apk and "supervisor=supervise-daemon" in apk
    # Nothing was built or written beside the cache.
    assert not list(tmp_path.glob("*.deb")) and not list(REPO.glob("inspect-svc*"))


def test_shell_completion(tmp_path: Path) -> None:
    ctr2svc = shutil.which("ctr2svc", path=str(Path(sys.executable).parent))
    assert ctr2svc is not None
    script = subprocess.run([ctr2svc, "completion", "bash"], capture_output=True, text=True, check=True)
    (tmp_path / "ctr2svc.bash").write_text(script.stdout)
    # What bash does on TAB: the completion function fills COMPREPLY.
    probe = (
        f"source {tmp_path / 'ctr2svc.bash'}\n"
        "complete -p ctr2svc\n"
        "COMP_WORDS=(ctr2svc build --format ''); COMP_CWORD=3\n"
        f"_ctr2svc_completion {ctr2svc}\n"
        'echo "formats: ${COMPREPLY[*]}"\n'
        "COMPREPLY=(); COMP_WORDS=(ctr2svc re); COMP_CWORD=1\n"
        f"_ctr2svc_completion {ctr2svc}\n"
        'echo "commands: ${COMPREPLY[*]}"\n'
    )
    shown = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "formats: deb rpm apk" in shown and "commands: repo" in shown, shown
    for shell in ("zsh", "fish"):
        out = subprocess.run([ctr2svc, "completion", shell], capture_output=True, text=True, check=True)
        assert "_CTR2SVC_COMPLETE" in out.stdout


def test_build_json(ctr2svc: Cli, integration_host: None, tmp_path: Path) -> None:
    """`build --json`: the summary on stdout instead of the path; again, up to date, with the same package."""
    first = json.loads(ctr2svc("build", "oci:examples/hello:1.0", "-o", tmp_path, "--json").stdout)
    package = Path(first["package"])
    assert package.parent == tmp_path and package.name == "hello-svc_1.0_amd64.deb"
    assert first["schema_version"] == 1 and first["format"] == "deb" and first["up_to_date"] is False
    assert first["name"] == "hello-svc" and first["version"] == "1.0"
    assert first["size"] == package.stat().st_size
    assert first["sha256"] == hashlib.sha256(package.read_bytes()).hexdigest()
    assert first["pinned"].endswith(first["digest"]) and first["digest"].startswith("sha256:")
    assert first["service"] == "hello-svc.service" and first["data_dir"] == "/var/lib/hello-svc"
    assert first["install"] == f"apt install {package}"
    again = json.loads(ctr2svc("build", "oci:examples/hello:1.0", "-o", tmp_path, "--json").stdout)
    assert again == {**first, "up_to_date": True}


def test_the_maintainer_as_debian_tools_take_it(registry: Registry, tmp_path: Path) -> None:
    """DEBFULLNAME/DEBEMAIL as dch takes them, else the image's authors label, else the default with
    a warning that says how to set one; --maintainer over all of them."""
    labels = {"org.opencontainers.image.authors": "Image Author <author@example.org>"}
    plain = registry.push(
        build_image(tmp_path / "p", "1.0", install_busybox, entrypoint=["/bin/sleep", "1000"]),
        "ux/maint",
        "1.0",
    )
    labelled = registry.push(
        build_image(tmp_path / "l", "1.0", install_busybox, entrypoint=["/bin/sleep", "1000"], labels=labels),
        "ux/maint-label",
        "1.0",
    )
    bare = {k: v for k, v in os.environ.items() if k not in ("DEBEMAIL", "DEBFULLNAME", "EMAIL", "NAME")}
    cache = {"CTR2SVC_CACHE_DIR": str(tmp_path / "cache")}

    def build(ref: str, out: str, *extra: str, **env: str) -> tuple[str, str]:
        proc = piped(["build", ref, "-o", str(tmp_path / out), *extra], {**bare, **cache, **env})
        field = subprocess.run(
            ["dpkg-deb", "-f", proc.stdout.strip(), "Maintainer"], capture_output=True, text=True, check=True
        )
        return field.stdout.strip(), proc.stderr

    maintainer, stderr = build(plain, "default")
    assert maintainer == "ctr2svc <root@localhost>"
    assert "not a real address" in stderr and "DEBEMAIL" in stderr

    maintainer, stderr = build(plain, "env", DEBFULLNAME="Ada Ops", DEBEMAIL="ada@example.com")
    assert maintainer == "Ada Ops <ada@example.com>" and "warning" not in stderr

    assert build(labelled, "label")[0] == "Image Author <author@example.org>"
    assert build(labelled, "env-over-label", EMAIL="Bo <bo@example.com>")[0] == "Bo <bo@example.com>"
    given = build(labelled, "given", "--maintainer", "Cy <cy@example.com>", DEBEMAIL="Ada <ada@example.com>")
    assert given[0] == "Cy <cy@example.com>"

    bad = piped(
        ["build", plain, "-o", str(tmp_path / "bad")],
        {**bare, **cache, "DEBEMAIL": "ada@example.com"},
        check=False,
    )
    assert bad.returncode == 2 and "DEBEMAIL" in bad.stderr and "DEBFULLNAME" in bad.stderr, bad.stderr
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
