"""Issue 22: values that passed ctr2svc's checks and then failed in a tool or on the host, image config
defects told in umoci's or Go's words (exit 4), registries that hang a build for ever, and a relative
--cache-dir that broke --layers shared.

Everything runs the real ctr2svc with the real tools: refusals are one line with the documented exit
status, no traceback, nothing in the output directory and no broken cache entry; what is accepted at
the limits is built by nfpm, and the image quirks ctr2svc now copes with are installed with dpkg and
run with runc as the unit runs them. The hanging registries are Python servers in this process
(tests/support/faults.py), with the limits set to a few seconds so the tests stay short.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.integration.test_hardening_tools import broken_cache_entries, check_error, mutated
from tests.support.faults import HangingServer, SlowProxy, StallingProxy, all_entries
from tests.support.images import build_image, install_busybox, layered_image, put_dir, put_file
from tests.support.registry import Registry, free_port

from .helpers import dpkg_installed, purge, sh

pytestmark = pytest.mark.integration

Json = dict[str, Any]
PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:999:999:app:/data:/bin/sh\n"  # noqa: S105
GROUP = "root:x:0:\napp:x:999:\n"
MAX_EPOCH = 2**32 - 1


def _populate(root: Path) -> None:
    install_busybox(root)
    put_file(root, "etc/passwd", PASSWD)
    put_file(root, "etc/group", GROUP)
    put_dir(root, "srv/app")
    put_dir(root, "srv/out")


def _set(key: str, value: Any) -> Callable[[Path, Json, Json], None]:
    """A change for mutated(): config.KEY (or the top-level KEY, for created) set to VALUE."""

    def change(layout: Path, manifest: Json, config: Json) -> None:
        (config if key == "created" else config["config"])[key] = value

    return change


def raw_config(source: Path, dest: Path, data: bytes) -> str:
    """A copy of the one-image layout SOURCE whose config blob is DATA, byte for byte (mutated() writes
    JSON; this writes anything)."""
    shutil.copytree(source, dest)
    index = json.loads((dest / "index.json").read_text())
    desc = index["manifests"][0]

    def put(blob: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(blob).hexdigest()
        (dest / "blobs" / "sha256" / digest).write_bytes(blob)
        return f"sha256:{digest}", len(blob)

    manifest = json.loads((dest / "blobs" / "sha256" / desc["digest"].split(":")[1]).read_bytes())
    manifest["config"]["digest"], manifest["config"]["size"] = put(data)
    desc["digest"], desc["size"] = put(json.dumps(manifest).encode())
    (dest / "index.json").write_text(json.dumps(index))
    tag = desc["annotations"]["org.opencontainers.image.ref.name"]
    return f"oci:{dest}:{tag}"


# Image config defects: (id, change, problem regex, hint regex). Each was exit 4 with umoci's text
# ("parsing image.Config.Env: ...", "uids and gids must be in range", Go's time layout) or a Python
# traceback ("internal error"), or built a package runc refuses to start (the NUL).
CONFIG_DEFECTS: list[tuple[str, Callable[[Path, Json, Json], None], str, str]] = [
    ("env-without-equals", _set("Env", ["PATH=/bin", "JUSTNAME"]), r"Env entry that has no '=': 'JUSTNAME'",
     r"NAME=VALUE"),
    ("env-empty-name", _set("Env", ["PATH=/bin", "=x"]), r"Env entry that has an empty name", r"NAME=VALUE"),
    ("env-nul", _set("Env", ["A=b\0c"]), r"Env entry that holds a NUL character", r"NAME=VALUE"),
    ("user-2^32-1", _set("User", "4294967295"), r"User '4294967295' is out of range: .* 0 to 2147483647",
     r"rebuild the image"),
    ("user-2^31", _set("User", "2147483648"), r"User '2147483648' is out of range", r"rebuild"),
    ("user-negative", _set("User", "-1"), r"User '-1' is out of range", r"rebuild"),
    ("user-white-space", _set("User", " 1000"), r"User ' 1000' has white space", r"rebuild"),
    ("group-out-of-range", _set("User", "0:99999999999"), r"User '0:99999999999' is out of range",
     r"rebuild"),
    ("created-word", _set("created", "yesterday"), r"created time that is not an RFC 3339 time: 'yesterday'",
     r"rebuild"),
    ("created-empty", _set("created", ""), r"created time that is not an RFC 3339 time: ''", r"rebuild"),
    ("created-no-zone", _set("created", "2024-01-01T00:00:00"), r"not an RFC 3339 time", r"rebuild"),
    ("created-feb-30", _set("created", "2024-02-30T00:00:00Z"), r"not an RFC 3339 time", r"rebuild"),
    ("created-year-10000", _set("created", "10000-01-01T00:00:00Z"), r"not an RFC 3339 time", r"rebuild"),
    ("labels-not-strings", _set("Labels", {"a": 1}), r"config.Labels that are not all strings", r"rebuild"),
    # runc cannot pass a NUL on, nor run a program named "": each started on the host and failed there.
    ("cmd-nul", _set("Cmd", ["/bin/busybox", "sle\0ep"]), r"config.Cmd that holds a NUL character",
     r"rebuild"),
    ("workdir-nul", _set("WorkingDir", "/srv\0"), r"config.WorkingDir that holds a NUL", r"rebuild"),
    ("cmd-empty-word", _set("Cmd", ["", "x"]), r"the command to run, '' x, starts with an empty word",
     r"--entrypoint"),
]  # fmt: skip

RAW_DEFECTS: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("not-json", lambda good: b"{nope", r"the image's config is not valid JSON"),
    ("utf8-bom", lambda good: b"\xef\xbb\xbf" + good, r"starts with a byte order mark"),
    ("utf16", lambda good: good.decode().encode("utf-16"), r"starts with a byte order mark"),
    ("array", lambda good: b"[]", r"the image's config is not a JSON object"),
    ("nested-too-deeply", lambda good: b"[" * 100_000 + b"]" * 100_000, r"nested too deeply"),
]


@pytest.fixture(scope="module")
def base(integration_host: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small busybox image's layout; its one tag is 1.0."""
    work = tmp_path_factory.mktemp("hostile-base")
    build_image(work / "base", "1.0", _populate, cmd=["/bin/busybox", "sleep", "1000"])
    return work / "base"


@pytest.fixture(scope="module")
def defects(base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("hostile-defects")
    refs = {case: mutated(base, work / case, "1.0", change) for case, change, *_ in CONFIG_DEFECTS}
    good = json.dumps(json.loads(_config_bytes(base))).encode()
    for case, make, _ in RAW_DEFECTS:
        refs[case] = raw_config(base, work / case, make(good))
    latin1 = good.replace(
        b'"config": {', b'"config": {"Labels": {"org.opencontainers.image.title": "caf\xe9"}, '
    )
    refs["latin1"] = raw_config(base, work / "latin1", latin1)
    return refs


def _config_bytes(layout: Path) -> bytes:
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    data: bytes = (blobs / manifest["config"]["digest"].split(":")[1]).read_bytes()
    return data


def build(
    ctr2svc_env: dict[str, str] | None, *args: str | Path, cwd: Path = REPO, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m ctr2svc build ARGS` with extra environment, from CWD (this checkout's code either way)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(ctr2svc_env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ctr2svc", "build", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


# --------------------------------------------------------------------------------------------------
# 1. Values that passed the checks and failed in a tool or on the host: refused at the boundary

LONG_VERSION = "1." + "0" * 159  # 161 characters
REFUSED_OPTIONS: list[tuple[str, list[str], str, str]] = [
    # systemd refuses "+" in unit names; the package name is the unit's.
    ("name-plus", ["--name", "c++svc"], r"'c\+\+svc' is not a valid Debian package name and systemd unit "
     r"name.*"
     r"systemd refuses it", r"--name cppsvc"),
    ("name-plus-rpm", ["--name", "c++svc", "--format", "rpm"], r"not a valid rpm package name and systemd",
     r"--name cppsvc"),
    ("name-plus-apk", ["--name", "c++svc", "--format", "apk"], r"not a valid apk package name and systemd",
     r"--name cppsvc"),
    ("name-ctr2svc", ["--name", "ctr2svc"], r"'ctr2svc' is reserved: it is the name of ctr2svc's own package",
     r"--name my-ctr2svc"),
    ("name-layer", ["--name", "ctr2svc-layer-0123456789ab"], r"reserved: .*ctr2svc's layer packages",
     r"--name "),
    ("name-64", ["--name", "a" * 64], r"has 64 characters, more than the 63", r"shorter --name"),
    ("version-161", ["--version", LONG_VERSION], r"has 161 characters as deb writes it, more than the 160",
     r"--version"),
    ("version-161-rpm", ["--format", "rpm", "--version", LONG_VERSION], r"more than the 160", r"--version"),
    # dpkg: "epoch in version is too big"; nfpm for rpm: Go's "strconv.ParseUint: ... value out of range".
    ("epoch-too-big", ["--version", "2147483648:1.0"], r"epoch of version '2147483648:1\.0' is larger than "
     r"2147483647", r"--version 1:2\.0"),
    ("epoch-too-big-rpm", ["--format", "rpm", "--version", "99999999999:1.0"], r"is larger than 2147483647",
     r"--version"),
    ("entrypoint-empty", ["--entrypoint", "''"], r"an empty --entrypoint leaves nothing to run", r"--cmd"),
    ("volume-at-root", ["--volume", "/srv:/"], r"--volume '/': the container's root cannot be a mount point",
     r"--volume /srv/certs:/certs"),
    ("volume-at-proc", ["--volume", "/srv:/proc"], r"/proc is the kernel's process file system", r"--volume"),
    ("volume-in-proc", ["--volume", "/srv:/proc/sys/kernel"], r"/proc is the kernel's", r"--volume"),
    ("volume-at-sys", ["--volume", "/srv:/sys"], r"/sys is the kernel's sysfs", r"--volume"),
    ("volume-at-dev", ["--volume", "/srv:/dev:rw"], r"/dev is where runc provides", r"--volume"),
    ("volume-dotdot", ["--volume", "/srv:/data/../proc"], r"has a '\.' or '\.\.' component", r"--volume"),
    ("volume-relative", ["--volume", "/srv:data"], r"is not HOST_PATH:CONTAINER_PATH", r"--volume"),
    ("memory-1-byte", ["--memory", "1"], r"--memory '1' is out of range: it goes from 6M", r"--memory 512M"),
    ("memory-half-byte", ["--memory", "0.5"], r"--memory '0.5' is out of range", r"--memory 512M"),
    ("memory-beyond-int64", ["--memory", "9999999T"], r"--memory '9999999T' is out of range", r"--memory"),
    ("cpus-tiny", ["--cpus", "0.001"], r"--cpus 0.001 is out of range: the smallest CPU limit is 0.01",
     r"--cpus 0.05"),
    ("pids-beyond-kernel", ["--pids-limit", "4194305"], r"--pids-limit 4194305 is out of range: .* 4194304",
     r"--pids-limit 4096"),
    ("health-interval", ["--health-interval", "86401"], r"--health-interval 86401 is out of range", r"30"),
    ("health-retries", ["--health-retries", "10001"], r"--health-retries 10001 is out of range", r"3"),
    ("user-2^32-1", ["--user", "4294967295"], r"--user '4294967295': 4294967295 is out of range: .*294",
     r"--user 999:999"),
    ("group-huge", ["--user", "0:99999999999"], r"99999999999 is out of range", r"--user 999:999"),
]  # fmt: skip

REFUSED_ENVIRONMENT: list[tuple[str, dict[str, str], str, str]] = [
    ("sde-2^32", {"SOURCE_DATE_EPOCH": "4294967296"}, r"SOURCE_DATE_EPOCH=4294967296 is later than the "
     r"packages can store \(at most 4294967295", r"1700000000"),
    ("sde-year-3million", {"SOURCE_DATE_EPOCH": "100000000000000"}, r"later than the packages can store",
     r"1700000000"),
    ("sde-negative", {"SOURCE_DATE_EPOCH": "-1"}, r"SOURCE_DATE_EPOCH='-1' is not a number of seconds",
     r"unset"),
    ("sde-word", {"SOURCE_DATE_EPOCH": "now"}, r"'now' is not a number of seconds", r"unset"),
    ("sde-arabic-digits", {"SOURCE_DATE_EPOCH": "\u0661\u0662\u0663"}, r"is not a number of seconds",
     r"unset"),
    ("registry-timeout-word", {"CTR2SVC_REGISTRY_TIMEOUT": "soon"}, r"CTR2SVC_REGISTRY_TIMEOUT='soon' is not "
     r"a "
     r"number of seconds from 1 to 604800", r"CTR2SVC_REGISTRY_TIMEOUT=120"),
    ("registry-timeout-0", {"CTR2SVC_REGISTRY_TIMEOUT": "0"}, r"is not a number of seconds", r"unset"),
    ("stall-fraction", {"CTR2SVC_PULL_STALL_TIMEOUT": "1.5"}, r"CTR2SVC_PULL_STALL_TIMEOUT='1.5'", r"unset"),
    ("pull-timeout-huge", {"CTR2SVC_PULL_TIMEOUT": "99999999"}, r"CTR2SVC_PULL_TIMEOUT='99999999'", r"unset"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "says", "hint"), [c[1:] for c in REFUSED_OPTIONS], ids=[c[0] for c in REFUSED_OPTIONS]
)
def test_option_refused_before_anything_is_pulled(
    base: Path, args: list[str], says: str, hint: str, tmp_path: Path
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "o"
    out.mkdir()
    proc = build(None, f"oci:{base}:1.0", *args, "--cache-dir", cache, "-o", out)
    check_error(proc, out, 2, says, hint)
    assert not (cache / "oci").exists(), "refused only after the pull"


@pytest.mark.parametrize(
    ("env", "says", "hint"), [c[1:] for c in REFUSED_ENVIRONMENT], ids=[c[0] for c in REFUSED_ENVIRONMENT]
)
def test_environment_refused_before_anything_is_pulled(
    base: Path, env: dict[str, str], says: str, hint: str, tmp_path: Path
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "o"
    out.mkdir()
    proc = build(env, f"oci:{base}:1.0", "--cache-dir", cache, "-o", out)
    check_error(proc, out, 2, says, hint)
    assert not (cache / "oci").exists(), "refused only after the pull"


def test_project_values_the_file_check_passes_fail_their_image(base: Path, tmp_path: Path) -> None:
    """A project file reaches BuildOptions without click's option types; its loader bounds the plain
    numbers (options/ranges.py's LIMITS), and what needs more than a range (a size, a mount point, an
    epoch, a CPU limit below the kernel's smallest quota) is checked where the options become a
    BuildRequest: the image with such a value fails in the table, the others are built."""
    images = [
        ("good-svc", ""),
        ("mem-svc", 'memory = "1"'),
        ("cpu-svc", "cpus = 0.001"),
        ("proc-svc", 'volumes = ["/srv:/proc"]'),
        ("epoch-svc", 'version = "2147483648:1.0"'),
    ]
    (tmp_path / "ctr2svc.toml").write_text(
        "".join(
            f'[[image]]\nref = "oci:{base}:1.0"\nname = "{n}"\nlayers = "flat"\n{x}\n\n' for n, x in images
        )
    )
    proc = build({"CTR2SVC_CACHE_DIR": str(tmp_path / "cache")}, "-c", tmp_path / "ctr2svc.toml")
    assert proc.returncode == 6, proc.stderr
    assert "Traceback" not in proc.stderr
    for says in (
        "--memory '1' is out of range: it goes from 6M",
        "--cpus 0.001 is out of range: the smallest CPU limit is 0.01",
        "--volume '/proc': /proc is the kernel's process file system",
        "epoch of version '2147483648:1.0' is larger than 2147483647",
    ):
        assert says in proc.stderr, proc.stderr
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == ["good-svc_1.0_amd64.deb"]


@pytest.mark.parametrize("fmt", ["deb", "rpm", "apk"])
def test_the_longest_name_and_version_build(base: Path, fmt: str, tmp_path: Path) -> None:
    """A 63-character name and a version of 160 characters as the format writes it are accepted, and
    nfpm writes the package: the limits fit the file name (below 255 bytes)."""
    name = "n" * 59 + "-svc"
    version = "1." + "0" * (158 if fmt == "deb" else 155)  # rpm adds "-1", apk "-r0"
    out = tmp_path / "o"
    proc = build(None, f"oci:{base}:1.0", "--format", fmt, "--name", name, "--version", version,
                 "--cache-dir", tmp_path / "cache", "-o", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    package = Path(proc.stdout.strip())
    assert package.is_file() and len(package.name.encode()) <= 255, package.name
    assert name in package.name and version in package.name


def test_image_times_beyond_2106_are_clamped_in_the_rpm(base: Path, tmp_path: Path) -> None:
    """An image created in 9999 (or SOURCE_DATE_EPOCH at the limit) gives an rpm whose times fit its
    32-bit fields: before, the directories' times were the image's 253402300799, which rpm cannot store."""
    far = mutated(base, tmp_path / "far", "1.0", _set("created", "9999-12-31T23:59:59Z"))
    for label, env, ref in (
        ("created", None, far),
        ("sde", {"SOURCE_DATE_EPOCH": str(MAX_EPOCH)}, f"oci:{base}:1.0"),
    ):
        out = tmp_path / label
        proc = build(env, ref, "--format", "rpm", "--cache-dir", tmp_path / "cache", "-o", out)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        rpm = Path(proc.stdout.strip())
        times = sh("rpm", "-qp", "--qf", "[%{FILEMTIMES}\n]%{BUILDTIME}\n", rpm).stdout.split()
        assert times and max(int(t) for t in times) == MAX_EPOCH, (label, sorted(set(times))[-3:])


# --------------------------------------------------------------------------------------------------
# 2. Image config defects: exit 3 in ctr2svc's words


@pytest.mark.parametrize(
    ("case", "says", "hint"),
    [(c[0], c[2], c[3]) for c in CONFIG_DEFECTS] + [(c[0], c[2], r"rebuild the image") for c in RAW_DEFECTS],
    ids=[c[0] for c in CONFIG_DEFECTS] + [c[0] for c in RAW_DEFECTS],
)
def test_image_config_defect_is_an_image_error(
    defects: dict[str, str], case: str, says: str, hint: str, tmp_path: Path
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "o"
    out.mkdir()
    proc = build(None, defects[case], "--cache-dir", cache, "-o", out)
    line = check_error(proc, out, 3, says, hint)
    assert "internal error" not in line and "umoci" not in line, line
    assert broken_cache_entries(cache) == []


def test_a_config_that_is_not_utf8_is_read_as_go_reads_it(defects: dict[str, str], tmp_path: Path) -> None:
    """A Latin-1 label: umoci (Go) reads the byte as U+FFFD, and so does ctr2svc (it was a traceback)."""
    proc = build(None, defects["latin1"], "--cache-dir", tmp_path / "cache", "-o", tmp_path)
    assert proc.returncode == 0, proc.stderr
    description = sh("dpkg-deb", "-f", proc.stdout.strip(), "Description").stdout
    assert "caf\ufffd" in description, description


# --------------------------------------------------------------------------------------------------
# 3. Image quirks a service can live with: built, installed and run

QUIRKY = "quirky-svc"
SCRIPT = (
    "pwd > /srv/out/cwd; "
    "/bin/busybox grep -q '^proc /proc proc' /proc/mounts && echo proc > /srv/out/proc; "
    "test -c /dev/null && echo dev > /srv/out/dev; "
    "exec /bin/busybox sleep 1000"
)


@pytest.fixture
def quirky(base: Path, tmp_path: Path) -> Iterator[Path]:
    """An image with a relative WorkingDir, VOLUMEs at /, /proc, /dev and in /sys beside a real one,
    and an Entrypoint of one empty word; it writes where it runs and what it sees to its volume."""

    def change(layout: Path, manifest: Json, config: Json) -> None:
        config["config"].update(
            WorkingDir="srv/app",
            Volumes={"/": {}, "/proc": {}, "/dev": {}, "/sys/kernel/x": {}, "/srv/out": {}},
            # One empty word is no entrypoint, as Docker reads it (runc would run "").
            Entrypoint=[""],
            Cmd=["/bin/busybox", "sh", "-c", SCRIPT],
        )

    ref = mutated(base, tmp_path / "quirky", "1.0", change)
    purge(QUIRKY)
    proc = build(None, ref, "--name", QUIRKY, "--cache-dir", tmp_path / "cache", "-o", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    for volume in ("/", "/proc", "/dev", "/sys/kernel/x"):
        assert f"warning: leaving out the image's VOLUME {volume}: " in proc.stderr, proc.stderr
    assert "the image's WorkingDir 'srv/app' is relative: the service runs in /srv/app" in proc.stderr
    try:
        yield Path(proc.stdout.strip())
    finally:
        helper = Path(f"/usr/libexec/{QUIRKY}/service")
        if helper.exists():
            sh(helper, "stop", check=False)
        purge(QUIRKY)


def test_relative_workdir_and_runtime_volumes_run(quirky: Path, tmp_path: Path) -> None:
    """runc refused the relative cwd and the program "" at every start, and the VOLUMEs became mounts
    over the root, /proc and /dev (or a tmpfs umoci put there); now the service starts in /srv/app,
    runs the Cmd, with the real /proc and /dev, and keeps its one real volume."""
    config = json.loads(_config_json(quirky, tmp_path))
    assert config["process"]["cwd"] == "/srv/app"
    assert config["process"]["args"][:2] == ["/bin/busybox", "sh"]
    destinations = [m["destination"] for m in config["mounts"]]
    assert "/" not in destinations and "/sys/kernel/x" not in destinations
    assert [m["type"] for m in config["mounts"] if m["destination"] == "/proc"] == ["proc"]
    assert [m["type"] for m in config["mounts"] if m["destination"] == "/dev"] == ["tmpfs"]
    assert [m["source"] for m in config["mounts"] if m["destination"] == "/dev"] == ["tmpfs"]

    sh("dpkg", "-i", quirky)
    assert dpkg_installed(QUIRKY)
    helper = f"/usr/libexec/{QUIRKY}/service"
    out = Path(f"/var/lib/{QUIRKY}/volumes/srv/out")
    sh(helper, "prepare")
    with (tmp_path / "journal.log").open("ab") as log:
        subprocess.run([helper, "start"], stdout=log, stderr=log, check=True, timeout=60)
    deadline = time.monotonic() + 20
    while not (out / "dev").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (out / "cwd").read_text() == "/srv/app\n", (tmp_path / "journal.log").read_text()
    assert (out / "proc").read_text() == "proc\n"
    assert (out / "dev").read_text() == "dev\n"
    assert not Path(f"/var/lib/{QUIRKY}/volumes/_root").exists()
    assert not Path(f"/var/lib/{QUIRKY}/volumes/proc").exists()


def _config_json(deb: Path, tmp: Path) -> str:
    root = tmp / "extracted"
    sh("dpkg-deb", "-x", deb, root)
    found = list(root.glob(f"opt/containers/{QUIRKY}/*/config.json"))
    assert len(found) == 1, found
    return found[0].read_text()


# --------------------------------------------------------------------------------------------------
# 4. A relative --cache-dir with --layers shared


def test_relative_cache_dir_with_shared_layers(base: Path, tmp_path: Path) -> None:
    """The overlay of a two-layer image is mounted from inside the cache: with a relative --cache-dir its
    layer links and mount point named nothing (mount failed, exit 4). Paths are absolute from the start."""

    def top(root: Path) -> None:
        put_file(root, "srv/top.txt", "top\n")

    two = tmp_path / "two"
    layered_image(two, "1.0", [_populate, top], cmd=["/bin/busybox", "sleep", "1000"])
    work = tmp_path / "here"
    work.mkdir()
    proc = build(None, f"oci:{two}:1.0", "--layers", "shared", "--cache-dir", "cache", "-o", "out", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "out/two-svc_1.0_amd64.deb"
    assert len(list((work / "out").glob("ctr2svc-layer-*.deb"))) == 2
    assert (work / "cache" / "layers").is_dir()
    assert all_entries(work / "cache" / "work") == []


def test_relative_cache_dir_from_the_environment(base: Path, tmp_path: Path) -> None:
    """The same through CTR2SVC_CACHE_DIR, which did not go through BuildOptions."""

    def top(root: Path) -> None:
        put_file(root, "srv/top.txt", "top\n")

    layered_image(tmp_path / "two", "1.0", [_populate, top], cmd=["/bin/busybox", "sleep", "1000"])
    work = tmp_path / "here"
    work.mkdir()
    proc = build({"CTR2SVC_CACHE_DIR": "cache"}, f"oci:{tmp_path / 'two'}:1.0", "--layers", "shared",
                 "-o", "out", cwd=work)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (work / "cache" / "layers").is_dir()


def test_a_cache_dir_with_a_colon(base: Path, tmp_path: Path) -> None:
    """skopeo and umoci are given the cache as DIR:TAG: with a ':' in DIR the pull went elsewhere and
    the build said 'skopeo reported success but ... is not complete' (exit 3). Now exit 2, at once."""
    out = tmp_path / "o"
    out.mkdir()
    proc = build(None, f"oci:{base}:1.0", "--cache-dir", tmp_path / "a:b", "-o", out)
    check_error(proc, out, 2, r"has a ':' in its path, which skopeo and umoci take for the start of a tag",
                r"--cache-dir")  # fmt: skip
    assert not (tmp_path / "a:b").exists()


# --------------------------------------------------------------------------------------------------
# 5. Registries that hang: every network step has a limit, and says which one ran out


@pytest.fixture(scope="module")
def pushed(registry: Registry, base: Path) -> str:
    """The base image in the registry, with a 2 MB layer on top so a slow pull takes seconds."""

    def noise(root: Path) -> None:
        put_file(root, "srv/noise.bin", os.urandom(2 * 1024 * 1024))

    big = base.parent / "big"
    shutil.copytree(base, big)
    layered_image(big, "big", [noise], base="1.0", cmd=["/bin/busybox", "sleep", "1000"])
    return registry.push(f"oci:{big}:big", "hostile/big", "1.0")


def _timed(env: dict[str, str], *args: str | Path) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    proc = build(env, *args, timeout=120)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("mode", ["silent", "trickle", "api-only"])
def test_a_registry_that_never_answers(mode: str, tmp_path: Path) -> None:
    """Accepts the connection, then sends nothing, or an HTTP answer a byte every 2 s, or answers the
    API check and then nothing: skopeo waited for ever. With CTR2SVC_REGISTRY_TIMEOUT=3 the build stops
    within seconds, naming the registry, the step and the variable."""
    out = tmp_path / "o"
    out.mkdir()
    with HangingServer(mode) as server:
        proc, took = _timed({"CTR2SVC_REGISTRY_TIMEOUT": "3"}, f"{server.host}/app:1.0",
                            "--cache-dir", tmp_path / "cache", "-o", out)  # fmt: skip
        assert server.accepted >= 1
    check_error(proc, out, 3, rf"registry {server.host} did not answer within 3s while reading the manifest "
                rf"of {server.host}/app:1\.0", r"CTR2SVC_REGISTRY_TIMEOUT=SECONDS")  # fmt: skip
    assert took < 30, took


@pytest.mark.parametrize("trickle", [None, 0.5], ids=["stalled", "trickled"])
def test_a_pull_that_stalls_in_a_layer(
    registry: Registry, pushed: str, trickle: float | None, tmp_path: Path
) -> None:
    """The manifest arrives, then a blob stops after 512 bytes (or goes on a byte every half second):
    less than 1 KiB in CTR2SVC_PULL_STALL_TIMEOUT=3 seconds stops the pull: exit 3, nothing written,
    no half blob in the cache, no skopeo left."""
    cache, out = tmp_path / "cache", tmp_path / "o"
    out.mkdir()
    port = int(registry.host.rsplit(":", 1)[1])
    with StallingProxy(port, keep=512, trickle=trickle) as proxy:
        ref = pushed.replace(registry.host, proxy.host)
        proc, took = _timed({"CTR2SVC_PULL_STALL_TIMEOUT": "3"}, ref, "--cache-dir", cache, "-o", out)
        assert proxy.blob_requests >= 1
    check_error(proc, out, 3, rf"registry {proxy.host} sent less than 1024 bytes in 3s while pulling the "
                rf"layers of {proxy.host}/hostile/big:1\.0",
                r"CTR2SVC_PULL_STALL_TIMEOUT=SECONDS")  # fmt: skip
    assert took < 40, took
    assert broken_cache_entries(cache) == []
    assert not any("skopeo" in line for line in _processes(cache)), _processes(cache)


def test_a_slow_pull_that_progresses_is_not_stopped(registry: Registry, pushed: str, tmp_path: Path) -> None:
    """At 250 KB/s the 2 MB layer takes about 8 s, longer than the stall limit of 2 s: it arrives all
    the same, as the bytes keep coming."""
    port = int(registry.host.rsplit(":", 1)[1])
    with SlowProxy(port, rate=250_000) as proxy:
        ref = pushed.replace(registry.host, proxy.host)
        proc, took = _timed({"CTR2SVC_PULL_STALL_TIMEOUT": "2"}, ref, "--cache-dir", tmp_path / "c",
                            "-o", tmp_path / "o")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert took > 3, f"the pull was not slow ({took:.1f}s): the test proves nothing"


def test_a_pull_past_its_total_limit(registry: Registry, pushed: str, tmp_path: Path) -> None:
    """Progressing, but slower than CTR2SVC_PULL_TIMEOUT allows in all: stopped, naming the limit."""
    cache, out = tmp_path / "cache", tmp_path / "o"
    out.mkdir()
    port = int(registry.host.rsplit(":", 1)[1])
    with SlowProxy(port, rate=100_000) as proxy:
        ref = pushed.replace(registry.host, proxy.host)
        proc, took = _timed({"CTR2SVC_PULL_TIMEOUT": "3"}, ref, "--cache-dir", cache, "-o", out)
    check_error(proc, out, 3, rf"pulling {proxy.host}/hostile/big:1\.0 from registry {proxy.host} did not "
                r"finish within 3s", r"CTR2SVC_PULL_TIMEOUT=SECONDS")  # fmt: skip
    assert took < 40, took
    assert broken_cache_entries(cache) == []


def _processes(path: Path) -> list[str]:
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmdline:
                found.append(cmdline.replace(b"\0", b" ").decode(errors="replace")[:200])
    return found


def test_go_transport_errors_in_ctr2svc_words(tmp_path: Path) -> None:
    """A server that answers the API check with something that is not HTTP: Go's quoted chain
    (`Get "http://…/v2/": net/http: HTTP/1.x transport connection broken: malformed HTTP status code
    "THERE"`) becomes one line in ctr2svc's words, with the request after the reason."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    host = f"127.0.0.1:{listener.getsockname()[1]}"

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HELLO THERE\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    out = tmp_path / "o"
    out.mkdir()
    try:
        proc = build(None, f"{host}/app:1.0", "--cache-dir", tmp_path / "cache", "-o", out)
    finally:
        listener.close()
    line = check_error(proc, out, 3, rf"{host} does not answer as a container registry: its answer is not",
                       r"address and port")  # fmt: skip
    assert '"' not in line and "net/http" not in line and f"(GET http://{host}/v2/)" in line, line


def test_free_port_is_refused_quickly(tmp_path: Path) -> None:
    """The limits change nothing for a registry that is simply not there: refused at once."""
    out = tmp_path / "o"
    out.mkdir()
    proc, took = _timed({"CTR2SVC_REGISTRY_TIMEOUT": "3"}, f"127.0.0.1:{free_port()}/app:1.0",
                        "--cache-dir", tmp_path / "cache", "-o", out)  # fmt: skip
    check_error(proc, out, 3, r"cannot reach registry 127\.0\.0\.1:\d+: connection refused", r"running")
    assert took < 20, took
