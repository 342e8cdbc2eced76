"""Hostile and clumsy input to `repo add`, `build -c` and `update` (issue 13), with the real tools:
dpkg-deb, rpm, apt-ftparchive, createrepo_c, gpg and openssl.

Every failure is one line `ctr2svc: error: ... (hint: ...)`, the right exit status, no traceback, and a
repository (or output directory) exactly as it was: same files, same sizes, same sha256.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, Cli
from tests.support.faults import tmpfs
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

HELLO = "oci:examples/hello:1.0"
FORMATS = ("deb", "rpm", "apk")
KEY = "hardening@example.com"
LOCKED_KEY = "locked@example.com"


# --------------------------------------------------------------------------------------------------
# Checking


def snapshot(path: Path) -> dict[str, tuple[int, str] | str] | None:
    """Every entry under PATH, hidden ones included: files by size and sha256, directories as such."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())}
    entries: dict[str, tuple[int, str] | str] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            entries[rel] = f"-> {p.readlink()}"
        elif p.is_dir():
            entries[rel] = "dir"
        else:
            entries[rel] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return entries


def error_line(proc: subprocess.CompletedProcess[str], status: int, *says: str) -> str:
    """The one error line: last on stderr, the only one, no traceback, with a hint; SAYS all in it."""
    assert proc.returncode == status, f"exit {proc.returncode}, wanted {status}:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("ctr2svc: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    line = errors[0]
    assert "(hint: " in line and line.endswith(")"), line
    for fragment in says:
        assert fragment in line, f"{fragment!r} not in: {line}"
    return line


def run_cli(
    *args: str | Path, cache: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctr2svc", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "CTR2SVC_CACHE_DIR": str(cache), **(env or {})},
        cwd=REPO,
        timeout=600,
        check=False,
    )


# --------------------------------------------------------------------------------------------------
# Packages and keys


@dataclass(frozen=True)
class Built:
    """hello-svc in every format: v1, v1 again with other bytes (another env), v2 and v3."""

    v1: dict[str, Path]
    v1_other: dict[str, Path]
    v2: dict[str, Path]
    v3: dict[str, Path]


@pytest.fixture(scope="module")
def built(ctr2svc: Cli, integration_host: None, tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("hardening-packages")
    sets: dict[str, dict[str, Path]] = {}
    for label, extra in (
        ("v1", ["--version", "1.0"]),
        ("v1_other", ["--version", "1.0", "-e", "VARIANT=other"]),
        ("v2", ["--version", "2.0"]),
        ("v3", ["--version", "3.0"]),
    ):
        sets[label] = {}
        for fmt in FORMATS:
            out = ctr2svc("build", HELLO, "--format", fmt, *extra, "-o", work / label)
            sets[label][fmt] = Path(out.stdout.strip())
    for fmt in FORMATS:
        assert sets["v1"][fmt].name == sets["v1_other"][fmt].name
        assert sets["v1"][fmt].read_bytes() != sets["v1_other"][fmt].read_bytes()
    return Built(**sets)


@dataclass(frozen=True)
class Keys:
    home: Path  # holds KEY, no passphrase
    locked: Path  # holds LOCKED_KEY behind a passphrase no agent has: it cannot sign in batch mode
    apk: Path  # PEM RSA key


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    base = tmp_path_factory.mktemp("hardening-keys")
    homes = {KEY: (base / "gnupg", ""), LOCKED_KEY: (base / "locked", "s3cret")}
    for uid, (home, passphrase) in homes.items():
        home.mkdir(mode=0o700)
        subprocess.run(
            ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", passphrase,
             "--quick-gen-key", f"test <{uid}>", "ed25519", "sign", "never"],
            env={**os.environ, "GNUPGHOME": str(home)}, check=True, capture_output=True,
        )  # fmt: skip
    subprocess.run(["openssl", "genrsa", "-out", base / "ops.rsa", "2048"], check=True, capture_output=True)
    yield Keys(base / "gnupg", base / "locked", base / "ops.rsa")
    for home, _ in homes.values():
        subprocess.run(
            ["gpgconf", "--homedir", home, "--kill", "gpg-agent"], check=False, capture_output=True
        )


def signed(keys: Keys) -> list[str | Path]:
    return ["--sign-key", KEY, "--gnupghome", keys.home, "--apk-key", keys.apk]


@pytest.fixture
def repo(ctr2svc: Cli, built: Built, keys: Keys, tmp_path: Path) -> Path:
    """A signed repository holding v1 in every format."""
    path = tmp_path / "repo"
    ctr2svc("repo", "add", path, *built.v1.values(), *signed(keys))
    return path


def in_repo(repo: Path, package: Path) -> Path:
    fmt = package.suffix[1:]
    return repo / "apk" / "x86_64" / package.name if fmt == "apk" else repo / fmt / package.name


# --------------------------------------------------------------------------------------------------
# 1. The same name and version with other bytes


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_version_other_bytes_is_refused(
    ctr2svc: Cli, built: Built, keys: Keys, repo: Path, fmt: str, tmp_path: Path
) -> None:
    before = snapshot(repo)
    new, old = built.v1_other[fmt], in_repo(repo, built.v1[fmt])
    # As built, and renamed: a package is what its control data says, not its file name.
    renamed = tmp_path / f"renamed.{fmt}"
    shutil.copyfile(new, renamed)
    for given in (new, renamed):
        proc = ctr2svc("repo", "add", repo, given, *signed(keys), check=False)
        line = error_line(proc, 2, str(given), str(old), "ctr2svc build --version", "ctr2svc update")
        assert "differ" in line
        assert snapshot(repo) == before, given


@pytest.mark.parametrize("fmt", FORMATS)
def test_clash_within_one_call_is_refused(
    ctr2svc: Cli, built: Built, keys: Keys, repo: Path, fmt: str, tmp_path: Path
) -> None:
    """Two packages of one call that clash with each other: refused before anything is written."""
    other = tmp_path / "other" / built.v1_other[fmt].name
    other.parent.mkdir()
    shutil.copyfile(built.v1_other[fmt], other)
    fresh = tmp_path / "fresh"
    proc = ctr2svc("repo", "add", fresh, built.v2[fmt], built.v1[fmt], other, *signed(keys), check=False)
    error_line(proc, 2, str(other), str(built.v1[fmt]), "differ", "ctr2svc build --version")
    assert not fresh.exists()
    # Into a repository that has neither v2 nor the clashing pair's version... it has v1: still refused.
    before = snapshot(repo)
    proc = ctr2svc("repo", "add", repo, built.v2[fmt], other, *signed(keys), check=False)
    error_line(proc, 2, str(other), str(in_repo(repo, built.v1[fmt])))
    assert snapshot(repo) == before


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_bytes_again_is_a_no_op(
    ctr2svc: Cli, built: Built, keys: Keys, repo: Path, fmt: str, tmp_path: Path
) -> None:
    before = snapshot(repo)
    copy = tmp_path / "copy" / built.v1[fmt].name
    copy.parent.mkdir()
    shutil.copyfile(built.v1[fmt], copy)
    for given in ([built.v1[fmt]], [built.v1[fmt], copy], [in_repo(repo, built.v1[fmt])]):
        proc = ctr2svc("repo", "add", repo, *given, *signed(keys))
        assert "already in the repository" in proc.stderr and "nothing to do" in proc.stderr, proc.stderr
        assert proc.stdout.strip() == ""
        assert snapshot(repo) == before
    # Beside a new version: that one is added, the known one left alone.
    proc = ctr2svc("repo", "add", repo, built.v1[fmt], built.v2[fmt], *signed(keys))
    assert proc.stdout.split() == [str(in_repo(repo, built.v2[fmt]))]
    assert in_repo(repo, built.v2[fmt]).read_bytes() == built.v2[fmt].read_bytes()


# --------------------------------------------------------------------------------------------------
# 2. A publish that fails half-way changes nothing


def stand_in(directory: Path, name: str) -> Path:
    """A stand-in for NAME that fails as a broken install would: the real tool cannot be made to fail
    on a good repository otherwise."""
    directory.mkdir(exist_ok=True)
    script = directory / name
    script.write_text(f"#!/bin/sh\necho '{name}: simulated failure' >&2\nexit 1\n")
    script.chmod(0o755)
    return directory


def _with(keys: Keys, **changes: str | Path) -> list[str | Path]:
    """The signing options, some replaced."""
    given: dict[str, str | Path] = {"--sign-key": KEY, "--gnupghome": keys.home, "--apk-key": keys.apk}
    given.update({f"--{k.replace('_', '-')}": v for k, v in changes.items()})
    return [x for pair in given.items() for x in pair]


# case: (options, stand-in tool or None, status, words in the line)
PUBLISH_FAILURES: dict[str, tuple[Callable[[Keys], list[str | Path]], str | None, int, list[str]]] = {
    "unknown gpg key": (
        lambda k: _with(k, sign_key="nobody@example.com"),
        None,
        2,
        ["'nobody@example.com'", "no secret key"],
    ),
    "gpg key behind a passphrase": (
        lambda k: _with(k, sign_key=LOCKED_KEY, gnupghome=k.locked),
        None,
        5,
        ["could not sign", LOCKED_KEY],
    ),
    "missing gnupghome": (lambda k: _with(k, gnupghome="/nonexistent/gnupg"), None, 2, ["gnupghome"]),
    "apk key not a key": (
        lambda k: _with(k, apk_key="README.md"),
        None,
        2,
        ["README.md", "not a PEM private key"],
    ),
    "createrepo_c fails": (_with, "createrepo_c", 4, ["createrepo_c", "index the rpm repository"]),
    "apt-ftparchive fails": (_with, "apt-ftparchive", 4, ["apt-ftparchive", "apt"]),
}


@pytest.mark.parametrize("case", sorted(PUBLISH_FAILURES))
def test_failed_publish_leaves_the_repository_as_it_was(
    cache_dir: Path, built: Built, keys: Keys, repo: Path, case: str, tmp_path: Path
) -> None:
    make_options, failing_tool, status, says = PUBLISH_FAILURES[case]
    env = {}
    if failing_tool:
        env["PATH"] = f"{stand_in(tmp_path / 'bin', failing_tool)}:{os.environ['PATH']}"
    before = snapshot(repo)
    # --keep 1: a publish that went through would also prune v1.
    args = ["repo", "add", repo, *built.v2.values(), "--keep", "1", *make_options(keys)]
    proc = run_cli(*args, cache=cache_dir, env=env)
    error_line(proc, status, *says)
    assert snapshot(repo) == before, f"{case}: the repository changed"
    # The control: the same command with working tools and keys publishes and prunes.
    good = run_cli("repo", "add", repo, *built.v2.values(), "--keep", "1", *signed(keys), cache=cache_dir)
    assert good.returncode == 0, good.stderr
    assert not in_repo(repo, built.v1["deb"]).exists() and in_repo(repo, built.v2["deb"]).exists()
    assert not (repo / ".ctr2svc-staging").exists()


def test_failed_first_publish_creates_nothing(cache_dir: Path, built: Built, tmp_path: Path) -> None:
    fresh = tmp_path / "new-repo"
    env = {"PATH": f"{stand_in(tmp_path / 'bin', 'createrepo_c')}:{os.environ['PATH']}"}
    proc = run_cli("repo", "add", fresh, *built.v1.values(), cache=cache_dir, env=env)
    error_line(proc, 4, "createrepo_c")
    assert not fresh.exists()


def test_leftovers_of_a_killed_run_are_cleared(ctr2svc: Cli, built: Built, keys: Keys, repo: Path) -> None:
    """A run killed outright (SIGKILL) leaves its staging directory; the next one, holding the lock,
    removes it and publishes."""
    leftover = repo / ".ctr2svc-staging" / "deb"
    leftover.mkdir(parents=True)
    (leftover / "Packages").write_text("half an index\n")
    ctr2svc("repo", "add", repo, built.v2["deb"], *signed(keys))
    assert not (repo / ".ctr2svc-staging").exists()
    assert "Version: 2.0" in (repo / "deb" / "Packages").read_text()


# --------------------------------------------------------------------------------------------------
# 3. Two writers at once


def test_concurrent_adds_wait_for_each_other(cache_dir: Path, built: Built, keys: Keys, repo: Path) -> None:
    """Two real `repo add` processes while a third party holds the lock: both wait, say so, and then
    both publish; the index names every version (without the lock, the last writer's index would
    lose the other's package)."""
    lock = repo / ".ctr2svc.lock"
    env = {**os.environ, "CTR2SVC_CACHE_DIR": str(cache_dir)}
    with lock.open("a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        jobs = [
            subprocess.Popen(
                [sys.executable, "-m", "ctr2svc", "repo", "add", repo, package, *signed(keys)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=REPO,
            )
            for package in (built.v2["deb"], built.v3["deb"])
        ]
        # Both are blocked on the lock (the kernel's list of locks shows three holders or waiters).
        deadline = time.monotonic() + 60
        inode = str(lock.stat().st_ino)
        while time.monotonic() < deadline:
            waiting = [ln for ln in Path("/proc/locks").read_text().splitlines() if f":{inode} " in ln]
            if len(waiting) >= 3:
                break
            assert all(job.poll() is None for job in jobs), "a writer did not wait for the lock"
            time.sleep(0.1)
        else:
            raise AssertionError("the writers never waited for the lock")
        assert all(job.poll() is None for job in jobs)
        fcntl.flock(holder, fcntl.LOCK_UN)
    results = [job.communicate(timeout=300) for job in jobs]
    for job, (_, err) in zip(jobs, results, strict=True):
        assert job.returncode == 0, err
        assert "waiting for another ctr2svc" in err, err
    listing = (repo / "deb" / "Packages").read_text()
    versions = sorted(line.split(": ")[1] for line in listing.splitlines() if line.startswith("Version: "))
    assert versions == ["1.0", "2.0", "3.0"], listing
    assert sorted(p.name for p in (repo / "deb").glob("*.deb")) == sorted(
        p.name for p in (built.v1["deb"], built.v2["deb"], built.v3["deb"])
    )


# --------------------------------------------------------------------------------------------------
# 4. Inputs that are not packages


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def half(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


# case: (file name, bytes from the packages, words in the line)
CORRUPT: dict[str, tuple[str, Callable[[Built], bytes], list[str]]] = {
    "truncated deb": ("x.deb", lambda b: half(b.v2["deb"]), ["not a valid .deb package", "truncated"]),
    "truncated rpm": ("x.rpm", lambda b: half(b.v2["rpm"]), ["not a valid .rpm package", "truncated"]),
    "truncated apk": ("x.apk", lambda b: half(b.v2["apk"]), ["not a valid .apk package", "truncated"]),
    "deb cut in its header": ("x.deb", lambda b: b.v2["deb"].read_bytes()[:100], ["not a valid .deb"]),
    "random deb": ("x.deb", lambda b: os.urandom(4096), ["not a valid .deb package", "not a package"]),
    "random rpm": ("x.rpm", lambda b: os.urandom(4096), ["not a valid .rpm package", "not a package"]),
    "random apk": ("x.apk", lambda b: os.urandom(4096), ["not a valid .apk package", "not a package"]),
    "empty": ("x.deb", lambda b: b"", ["not a valid .deb package", "empty"]),
    "text": ("x.rpm", lambda b: b"hello\n", ["not a valid .rpm package"]),
    "deb named .rpm": (
        "x.rpm",
        lambda b: b.v2["deb"].read_bytes(),
        ["is a .deb package", "rename it to x.deb"],
    ),
    "rpm named .deb": ("x.deb", lambda b: b.v2["rpm"].read_bytes(), ["is a .rpm package", "x.rpm"]),
    "apk named .deb": ("x.deb", lambda b: b.v2["apk"].read_bytes(), ["is a .apk package", "x.apk"]),
    "gzip named .apk": ("x.apk", lambda b: gzip.compress(b"hello"), ["not a valid .apk package"]),
    "ar, not a deb": ("x.deb", lambda b: _ar([("notes.txt", b"hi\n")]), ["not a Debian package"]),
    "deb with damaged control": (
        "x.deb",
        lambda b: _ar([("debian-binary", b"2.0\n"), ("control.tar.gz", b"junk"), ("data.tar.gz", b"junk")]),
        ["not a valid .deb package", "cannot read its control data"],
    ),
    "deb without Version": (
        "x.deb",
        lambda b: _ar(
            [
                ("debian-binary", b"2.0\n"),
                ("control.tar.gz", _tar_gz({"./control": b"Package: x\nArchitecture: all\n"})),
                ("data.tar.gz", _tar_gz({})),
            ]
        ),
        ["not a valid .deb package", "control data"],
    ),
    "apk without .PKGINFO": ("x.apk", lambda b: _tar_gz({"hello": b"hi"}), ["has no .PKGINFO"]),
    "hidden file name": (".x.deb", lambda b: b.v2["deb"].read_bytes(), ["cannot start with a dot"]),
    "unknown suffix": ("x.txt", lambda b: b.v2["deb"].read_bytes(), ["is not a .deb, .rpm or .apk file"]),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_input_is_refused_before_anything_is_written(
    ctr2svc: Cli, built: Built, keys: Keys, repo: Path, case: str, tmp_path: Path
) -> None:
    name, make, says = CORRUPT[case]
    bad = tmp_path / "dist" / name
    bad.parent.mkdir()
    bad.write_bytes(make(built))
    before = snapshot(repo)
    # A good package first: it is not added either.
    proc = ctr2svc("repo", "add", repo, built.v2["deb"], bad, *signed(keys), check=False)
    line = error_line(proc, 2, str(bad), *says)
    for raw in ("dpkg-deb:", "rpm:", "error: ", "zlib", "Error -3", "failed (exit"):
        assert raw not in line.removeprefix("ctr2svc: error: "), f"raw tool text in: {line}"
    assert snapshot(repo) == before
    # The tools' own words are there for --debug.
    if case == "deb with damaged control":
        debug = ctr2svc("--debug", "repo", "add", repo, bad, check=False)
        assert "dpkg-deb" in debug.stderr and debug.returncode == 2


def test_corrupt_package_inside_the_repository(ctr2svc: Cli, built: Built, keys: Keys, repo: Path) -> None:
    """Someone else's junk in REPO/deb: named, with a hint to remove it, and nothing written."""
    junk = repo / "deb" / "junk.deb"
    junk.write_bytes(b"not a package")
    before = snapshot(repo)
    proc = ctr2svc("repo", "add", repo, built.v2["deb"], *signed(keys), check=False)
    line = error_line(proc, 2, str(junk), "not a valid .deb package")
    assert "remove it from" in line
    assert snapshot(repo) == before


# --------------------------------------------------------------------------------------------------
# Other odd inputs to repo add


def test_odd_repository_arguments(ctr2svc: Cli, built: Built, keys: Keys, repo: Path, tmp_path: Path) -> None:
    before = snapshot(repo)
    for keep in ("0", "-1"):
        proc = ctr2svc("repo", "add", repo, built.v2["deb"], "--keep", keep, check=False)
        error_line(proc, 2, f"--keep {keep}", "empty the repository")
    # A file where a format's directory should be.
    rpm_dir = repo / "rpm"
    shutil.move(rpm_dir, tmp_path / "rpm-aside")
    rpm_dir.write_text("in the way\n")
    middle = snapshot(repo)
    proc = ctr2svc("repo", "add", repo, built.v2["rpm"], *signed(keys), check=False)
    error_line(proc, 2, str(rpm_dir), "not a directory")
    assert snapshot(repo) == middle
    rpm_dir.unlink()
    shutil.move(tmp_path / "rpm-aside", rpm_dir)
    assert snapshot(repo) == before


def test_repository_is_a_file(ctr2svc: Cli, built: Built, tmp_path: Path) -> None:
    target = tmp_path / "repo"
    target.write_text("a file\n")
    proc = ctr2svc("repo", "add", target, built.v1["deb"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert target.read_text() == "a file\n"
    error_line(proc, 2, str(target), "not a directory")


def test_read_only_repository(ctr2svc: Cli, built: Built, keys: Keys, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", size="16m") as mount:
        repo = mount / "repo"
        ctr2svc("repo", "add", repo, *built.v1.values(), *signed(keys))
        subprocess.run(["mount", "-o", "remount,ro", mount], check=True)
        before = snapshot(repo)
        proc = ctr2svc("repo", "add", repo, *built.v2.values(), *signed(keys), check=False)
        error_line(proc, 2, "not writable", str(repo))
        assert snapshot(repo) == before
        proc = ctr2svc("repo", "add", mount / "new", built.v2["deb"], check=False)
        error_line(proc, 2, "not writable")


def test_full_repository_disk(ctr2svc: Cli, built: Built, keys: Keys, tmp_path: Path) -> None:
    """The new package does not fit: nothing of it (or of its staging) stays."""
    size = sum(p.stat().st_size for p in built.v1.values())
    with tmpfs(tmp_path / "small", size=f"{size // 1024 + 600}k") as mount:
        repo = mount / "repo"
        ctr2svc("repo", "add", repo, *built.v1.values(), *signed(keys))
        before = snapshot(repo)
        proc = ctr2svc("repo", "add", repo, *built.v2.values(), *signed(keys), check=False)
        error_line(proc, 5, "no space left")
        assert snapshot(repo) == before


# --------------------------------------------------------------------------------------------------
# 5, 6. Project files


def write_project(path: Path, images: list[str], head: str = "") -> Path:
    path.write_text(head + "".join(f"\n[[image]]\n{body}\n" for body in images))
    return path


# case: (file content (bytes) or image tables, words in the line)
PROJECTS: dict[str, tuple[bytes | list[str], list[str]]] = {
    "same image twice": (
        ['ref = "127.0.0.1:1/a/valkey:9"', 'ref = "127.0.0.1:1/a/valkey:9"'],
        ["image 1 and image 2 are the same image", "remove one"],
    ),
    "derived names clash": (
        [
            'ref = "127.0.0.1:1/a/valkey:9"',
            'ref = "127.0.0.1:1/b/kv:1"',
            'ref = "127.0.0.1:1/other/valkey:8"',
        ],
        [
            "image 1 (127.0.0.1:1/a/valkey:9) and image 3 (127.0.0.1:1/other/valkey:8) "
            "both make valkey-svc (deb)",
            'set name = "',
        ],
    ),
    "explicit name clashes with a derived one": (
        [
            'ref = "127.0.0.1:1/valkey:9"\nformats = ["deb", "rpm"]',
            'ref = "127.0.0.1:1/kv:1"\nname = "valkey-svc"\nformats = ["rpm"]',
        ],
        ["both make valkey-svc (rpm)", "name = "],
    ),
    "a format twice": (
        ['ref = "127.0.0.1:1/valkey:9"\nformats = ["deb", "deb"]'],
        ["format deb is listed twice"],
    ),
    "no formats": (['ref = "127.0.0.1:1/valkey:9"\nformats = []'], ["formats is empty"]),
    "bad name": (
        ['ref = "127.0.0.1:1/valkey:9"\nname = "Valkey_Svc"'],
        ["[[image]] 1", "Valkey_Svc", "name = "],
    ),
    "bad reference": (['ref = "UPPER/Case::x"'], ["[[image]] 1"]),
    "not UTF-8": (
        b'output = "dist"\n# caf\xe9\n[[image]]\nref = "127.0.0.1:1/valkey:9"\n',
        ["not UTF-8", "line 2", "0xe9"],
    ),
    "UTF-16": ('[[image]]\nref = "127.0.0.1:1/valkey:9"\n'.encode("utf-16"), ["not UTF-8", "line 1"]),
    "not TOML": (b'[[image]]\nref = "127.0.0.1:1/valkey:9\n', ["not valid TOML", "line 2"]),
    "binary": (os.urandom(64).replace(b"\xff", b"\xfe") + b"\xff", ["ctr2svc.toml"]),
    "image is not an array of tables": (
        b'image = "127.0.0.1:1/valkey:9"\n',
        ["image must be an array of tables"],
    ),
    "repo is not a table": (
        b'repo = "/srv/repo"\n[[image]]\nref = "127.0.0.1:1/v:9"\n',
        ["repo must be a table"],
    ),
    "keep 0": (b'[repo]\nkeep = 0\n[[image]]\nref = "127.0.0.1:1/v:9"\n', ["keep = 0 would empty"]),
    "keep true": (b'[repo]\nkeep = true\n[[image]]\nref = "127.0.0.1:1/v:9"\n', ["keep must be an int"]),
    "output not a string": (
        b'output = 5\n[[image]]\nref = "127.0.0.1:1/v:9"\n',
        ["output must be a non-empty string"],
    ),
    "no images": (b'output = "dist"\n', ["no [[image]] tables"]),
}


@pytest.mark.parametrize("command", ["build", "update"])
@pytest.mark.parametrize("case", sorted(PROJECTS))
def test_bad_project_file(ctr2svc: Cli, command: str, case: str, tmp_path: Path) -> None:
    content, says = PROJECTS[case]
    path = tmp_path / "ctr2svc.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_project(path, content, head='output = "dist"\n[repo]\npath = "repo"\n')
    before = snapshot(tmp_path)
    proc = ctr2svc(command, "-c", path, check=False)
    error_line(proc, 2, str(path), *says)
    assert snapshot(tmp_path) == before  # no output, no repository


def test_same_name_in_different_formats_is_fine(ctr2svc: Cli, tmp_path: Path) -> None:
    """The control for the clash check: one name as a .deb from one image and an .rpm from another is
    two packages, and the project builds."""
    path = write_project(
        tmp_path / "ctr2svc.toml",
        [f'ref = "{HELLO}"\nformats = ["deb"]', f'ref = "{HELLO}"\nformats = ["rpm"]\nenv = {{ X = "1" }}'],
        head='output = "dist"\n',
    )
    proc = ctr2svc("build", "-c", path)
    assert sorted(Path(p).name for p in proc.stdout.split()) == [
        "hello-svc-1.0-1.x86_64.rpm",
        "hello-svc_1.0_amd64.deb",
    ]


def test_missing_project_file(ctr2svc: Cli, tmp_path: Path) -> None:
    for command in ("build", "update"):
        proc = ctr2svc(command, "-c", tmp_path / "nope.toml", check=False)
        error_line(proc, 2, str(tmp_path / "nope.toml"), "No such file")


def test_project_file_is_a_directory(ctr2svc: Cli, tmp_path: Path) -> None:
    proc = ctr2svc("build", "-c", tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    error_line(proc, 2, str(tmp_path), "is a directory")


# --------------------------------------------------------------------------------------------------
# update with a damaged state file or repository


@pytest.fixture
def hello_project(registry: Registry, keys: Keys, tmp_path: Path) -> Path:
    ref = registry.push(f"oci:{REPO / 'examples/hello'}:1.0", "itest/hardening-hello", "1.0")
    return write_project(
        tmp_path / "ctr2svc.toml",
        [f'ref = "{ref}"\nname = "hh-svc"\nformats = ["deb", "rpm"]'],
        head=f'output = "dist"\n[repo]\npath = "repo"\nsign_key = "{KEY}"\ngnupghome = "{keys.home}"\n',
    )


STATES: dict[str, bytes | None] = {
    "not JSON": b"{not json",
    "not UTF-8": b"\xff\xfe{}",
    "a list": b"[1, 2]",
    "damaged entries": json.dumps({"hh-svc deb": "x", "hh-svc rpm": {"digest": 5}}).encode(),
    "deleted": None,
}


@pytest.mark.parametrize("case", sorted(STATES))
def test_update_with_a_damaged_state_file(ctr2svc: Cli, hello_project: Path, case: str) -> None:
    """The state is lost or damaged: update warns, rebuilds, and publishes versions above what the
    repository has (the same version with other bytes would be refused), exit 0."""
    repo = hello_project.parent / "repo"
    ctr2svc("update", "-c", hello_project)
    state_file = repo / "ctr2svc-state.json"
    content = STATES[case]
    if content is None:
        state_file.unlink()
    else:
        state_file.write_bytes(content)
    proc = ctr2svc("update", "-c", hello_project)
    assert "Traceback" not in proc.stderr
    if content is not None:
        assert "warning:" in proc.stderr and str(state_file) in proc.stderr, proc.stderr
    names = sorted(Path(p).name for p in proc.stdout.split())
    assert names == ["hh-svc-1.0-2.x86_64.rpm", "hh-svc_1.0-1_amd64.deb"], proc.stderr
    state = json.loads(state_file.read_text())
    assert {v["version"] for v in state.values()} == {"1.0-1", "1.0-2"}
    # And now it is current again.
    again = ctr2svc("update", "-c", hello_project)
    assert again.stdout.strip() == "" and again.stderr.count("unchanged") == 2


def test_update_with_a_state_file_that_is_a_directory(ctr2svc: Cli, hello_project: Path) -> None:
    repo = hello_project.parent / "repo"
    ctr2svc("update", "-c", hello_project)
    (repo / "ctr2svc-state.json").unlink()
    (repo / "ctr2svc-state.json").mkdir()
    before = snapshot(hello_project.parent)
    proc = ctr2svc("update", "-c", hello_project, check=False)
    error_line(proc, 2, "ctr2svc-state.json", "is a directory")
    assert snapshot(hello_project.parent) == before


def test_update_into_a_repository_that_is_a_file(ctr2svc: Cli, hello_project: Path) -> None:
    (hello_project.parent / "repo").write_text("a file\n")
    before = snapshot(hello_project.parent)
    proc = ctr2svc("update", "-c", hello_project, check=False)
    error_line(proc, 2, "repo", "not a directory")
    assert snapshot(hello_project.parent) == before


def test_update_with_a_fixed_version_refuses_only_that_image(
    ctr2svc: Cli, registry: Registry, hello_project: Path, tmp_path: Path
) -> None:
    """`version` fixed in the project while the tag moved: that image's packages would replace the
    published ones with other bytes; they fail (exit 6), the repository keeps what it had."""
    text = hello_project.read_text().replace(
        'formats = ["deb", "rpm"]', 'formats = ["deb", "rpm"]\nversion = "1.0"'
    )
    hello_project.write_text(text)
    ctr2svc("update", "-c", hello_project)
    repo = hello_project.parent / "repo"
    # The same tag, another image (another env makes other bytes under the same version).
    hello_project.write_text(text.replace('version = "1.0"', 'version = "1.0"\nenv = { X = "2" }'))
    state = json.loads((repo / "ctr2svc-state.json").read_text())
    for record in state.values():
        record["digest"] = "sha256:" + "0" * 64  # as if the tag had moved
    (repo / "ctr2svc-state.json").write_text(json.dumps(state))
    before = snapshot(repo)
    proc = ctr2svc("update", "-c", hello_project, check=False)
    assert proc.returncode == 6, proc.stderr
    assert "Traceback" not in proc.stderr and "differ" in proc.stderr
    assert snapshot(repo) == before
