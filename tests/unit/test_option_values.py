"""Issue 22, the checks themselves: values that used to pass and then fail in a tool or on the host are
refused where options become BuildOptions (project and compose files reach it without click's option
types), image quirks a service can live with are mended, and the registry limits come from the
environment. The real builds, runs and hanging registries are in tests/integration/test_hostile_values.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from ctr2svc import metadata
from ctr2svc.errors import ImageError, ToolFailed, UsageError
from ctr2svc.image import skopeo, skopeo_errors
from ctr2svc.image.cache import ImageCache, default_cache_dir
from ctr2svc.image.reference import parse
from ctr2svc.options.build_options import BuildOptions
from ctr2svc.options.request import RunAs, resolve
from ctr2svc.service.plan import image_volumes, image_working_dir, resolve_user

REF = parse("oci:examples/hello:1.0")


def options(**given: Any) -> BuildOptions:
    return BuildOptions(reference=REF, **given)


# What a project file or compose file may give (click bounds the same options on the command line).
OUT_OF_RANGE = [
    ({"stop_timeout": 0}, "--stop-timeout 0 is out of range: it goes from 1 to 3600"),
    ({"stop_timeout": 3601}, "--stop-timeout 3601 is out of range"),
    ({"stop_timeout": True}, "--stop-timeout True is out of range"),
    ({"pids_limit": -1}, "--pids-limit -1 is negative"),
    ({"pids_limit": 4194305}, "--pids-limit 4194305 is out of range: it goes from 0 to 4194304"),
    ({"ready_port": 0}, "--ready-port 0 is out of range"),
    ({"ready_port": 65536}, "--ready-port 65536 is out of range: it goes from 1 to 65535"),
    ({"health_interval": 0}, "--health-interval 0 is out of range"),
    ({"health_interval": 86401}, "--health-interval 86401 is out of range"),
    ({"health_retries": 10001}, "--health-retries 10001 is out of range"),
    ({"health_timeout": 10**9}, "health timeout 1000000000 is out of range"),
    ({"health_start_period": -1}, "health start period -1 is out of range"),
    ({"memory": "6291455"}, "--memory '6291455' is out of range: it goes from 6M"),
    ({"memory": "0.9B"}, "is out of range"),
    ({"memory": "8388608T"}, "--memory '8388608T' is out of range"),
    ({"cpus": 0.009}, "--cpus 0.009 is out of range: the smallest CPU limit is 0.01"),
    ({"user": "4294967295"}, "4294967295 is out of range: user and group ids go from 0 to 4294967294"),
    ({"user": "app:4294967295"}, "4294967295 is out of range"),
]


@pytest.mark.parametrize(("given", "says"), OUT_OF_RANGE, ids=[str(g) for g, _ in OUT_OF_RANGE])
def test_numbers_out_of_range_are_refused(given: dict[str, Any], says: str) -> None:
    with pytest.raises(UsageError) as info:
        resolve(options(**given))
    assert says in info.value.brief, info.value.brief
    assert info.value.hint


@pytest.mark.parametrize(
    "given",
    [
        {"stop_timeout": 1},
        {"stop_timeout": 3600},
        {"pids_limit": 0},
        {"pids_limit": 4194304},
        {"ready_port": 65535},
        {"memory": "6M"},
        {"memory": "8388607T"},
        {"cpus": 0.01},
        {"cpus": 4096},
        {"health_interval": 86400, "health_retries": 10000},
        {"user": "4294967294:4294967294"},
    ],
)
def test_numbers_at_the_limits_are_accepted(given: dict[str, Any]) -> None:
    resolve(options(**given))


@pytest.mark.parametrize(
    ("what", "path", "data", "says"),
    [
        ("--volume", "/", False, "the container's root cannot be a mount point"),
        ("--volume", "/proc", False, "/proc is the kernel's process file system"),
        ("--volume", "/proc/sys/net", False, "/proc is"),
        ("--volume", "/sys", False, "/sys is the kernel's sysfs"),
        ("--volume", "/dev", False, "/dev is where runc provides"),
        ("--volume", "/dev/", False, "/dev is where runc provides"),
        ("--volume", "data", False, "is not absolute"),
        ("--volume", "/a/../proc", False, "has a '.' or '..' component"),
        ("--volume", "/a/./b", False, "has a '.' or '..' component"),
        ("volume", "/sys/fs/cgroup", True, "/sys is"),
        ("volume", "/dev/shm", True, "/dev is"),
    ],
)
def test_mount_points_runc_cannot_use_are_refused(what: str, path: str, data: bool, says: str) -> None:
    with pytest.raises(UsageError) as info:
        metadata.container_path(what, path, "e.g. /data", data=data)
    assert says in info.value.brief and info.value.brief.startswith(what), info.value.brief


@pytest.mark.parametrize("path", ["/data", "/dev/shm", "/dev/fuse", "/sys/fs/cgroup", "/procfs", "/devices"])
def test_binds_below_sys_and_dev_stay_possible(path: str) -> None:
    # A bind mount below /dev or /sys is how a device or the cgroup tree is passed in (runc allows it).
    assert metadata.container_path("--volume", path, "e.g. /data") == path


def test_every_way_to_mount_uses_the_rule() -> None:
    for given in (
        {"volumes": ("/srv:/proc",)},
        {"tmpfs": ("/proc/x:size=1m",), "read_only": True},
        {"volume_paths": ("/dev/data",)},
        {"volume_paths": ("/",)},
    ):
        with pytest.raises(UsageError, match=r"runc|root"):
            resolve(options(**given))


def test_image_volumes_runc_cannot_mount_are_left_out() -> None:
    kept = image_volumes(
        ("/", "/proc", "/dev/", "/sys/kernel/x", "/data", "/data/../../var/lib/x", "/devices")
    )
    assert kept == ["/data", "/var/lib/x", "/devices"]


@pytest.mark.parametrize(
    ("declared", "used"),
    [("", None), ("/srv/app", None), ("srv/app", "/srv/app"), ("./x/../y/", "/y"), ("..", "/")],
)
def test_a_relative_working_dir_is_relative_to_the_root(declared: str, used: str | None) -> None:
    assert image_working_dir(declared) == used


def as_user(text: str) -> RunAs:
    """--user TEXT as the request carries it (the image is what the test is about)."""
    user = resolve(options(user=text)).user
    assert user is not None
    return user


def rootfs(tmp_path: Path, passwd: str, group: str = "root:x:0:\n") -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(passwd)
    (tmp_path / "etc" / "group").write_text(group)
    return tmp_path


def test_users_the_image_describes_badly(tmp_path: Path) -> None:
    root = rootfs(
        tmp_path,
        "odd:x:abc:def::/:/bin/sh\nbig:x:99999999999:0::/:/bin/sh\nnogid:x:5:x::/:/bin/sh\n",
        "root:x:0:\nwide:x:99999999999:\n",
    )
    with pytest.raises(ImageError, match=r"gives 'odd' the id 'abc', which is not a number"):
        resolve_user(as_user("odd"), root)
    with pytest.raises(ImageError, match=r"gives 'big' the id '99999999999'"):
        resolve_user(as_user("big"), root)
    with pytest.raises(ImageError, match=r"/etc/group gives 'wide'"):
        resolve_user(as_user("0:wide"), root)
    # A primary group that is no number: root's, as before (and as Docker does for unknown users).
    assert resolve_user(as_user("nogid"), root) == (5, 0)
    # Digits of other scripts are not numbers here (int() would take them).
    with pytest.raises(ImageError, match="has no user"):
        resolve_user(as_user("\u0663"), root)


@pytest.mark.parametrize(
    ("env", "limits"),
    [
        ({}, skopeo.Limits(60, 120, 14400)),
        ({"CTR2SVC_REGISTRY_TIMEOUT": "5"}, skopeo.Limits(5, 120, 14400)),
        (
            {"CTR2SVC_PULL_STALL_TIMEOUT": " 30 ", "CTR2SVC_PULL_TIMEOUT": "604800"},
            skopeo.Limits(60, 30, 604800),
        ),
        ({"CTR2SVC_PULL_TIMEOUT": ""}, skopeo.Limits()),
    ],
)
def test_limits_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], limits: skopeo.Limits
) -> None:
    for variable in skopeo.LIMIT_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert skopeo.limits() == limits


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "30s", "604801", "\u0663", "soon"])
def test_limits_that_are_not_seconds_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CTR2SVC_PULL_STALL_TIMEOUT", value)
    with pytest.raises(UsageError, match=r"CTR2SVC_PULL_STALL_TIMEOUT=.* is not a number of seconds from 1"):
        skopeo.limits()


@pytest.mark.parametrize(
    ("go", "plain"),
    [
        (
            'Get "https://r:5000/v2/": net/http: TLS handshake timeout',
            "TLS handshake timeout (GET https://r:5000/v2/)",
        ),
        (
            'Get "http://r:5/v2/": dial tcp 127.0.0.1:5: connect: connection refused',
            "connect: connection refused (GET http://r:5/v2/)",
        ),
        (
            'reading blob sha256:ab: Get "https://r/v2/a/blobs/sha256:ab": '
            "read tcp 10.0.0.1:4444->10.0.0.2:443: read: connection reset by peer",
            "reading blob sha256:ab: read: connection reset by peer (GET https://r/v2/a/blobs/sha256:ab)",
        ),
        ('malformed HTTP status code "THERE"', "malformed HTTP status code 'THERE'"),
        ("manifest unknown: manifest unknown", "manifest unknown: manifest unknown"),
    ],
)
def test_go_error_chains_in_plain_words(go: str, plain: str) -> None:
    assert skopeo_errors.plain_words(go) == plain


# skopeo 1.9.3's output for a server on 127.0.0.1 that accepts and never completes a TLS handshake,
# with --tls-verify=true (recorded here: reproducing it costs 20 s of skopeo's own retries).
TLS_TIMEOUT = (
    'time="2026-12-06T19:52:18Z" level=fatal msg="Error parsing image name '
    '\\"docker://127.0.0.1:43275/app:1.0\\": '
    'pinging container registry 127.0.0.1:43275: Get \\"https://127.0.0.1:43275/v2/\\": net/http: TLS '
    'handshake timeout"\n'
)


def test_a_tls_handshake_timeout_in_ctr2svc_words() -> None:
    ref = parse("127.0.0.1:43275/app:1.0")
    failed = ToolFailed("skopeo failed", tool="skopeo", returncode=1, stderr=TLS_TIMEOUT, command="skopeo")
    error = skopeo_errors.skopeo_error(failed, ref, skopeo.PullOptions("amd64", tls_verify=True))
    assert isinstance(error, ImageError)
    assert error.brief == (
        "registry 127.0.0.1:43275 accepted the connection but did not complete a TLS handshake (it timed out)"
    )
    assert error.hint and "--no-tls-verify" in error.hint


def test_relative_paths_become_absolute_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    opts = options(cache_dir=Path("cache"), authfile=Path("auth.json"), output_dir=Path("out"))
    assert opts.cache_dir == tmp_path / "cache"
    assert opts.authfile == tmp_path / "auth.json"
    # The output directory stays as given: the paths printed for the user are relative to where they are.
    assert opts.output_dir == Path("out")
    assert dataclasses.replace(opts, name="x-svc").cache_dir == tmp_path / "cache"
    assert BuildOptions(reference=REF).cache_dir is None


def test_the_default_cache_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CTR2SVC_CACHE_DIR", "cache")
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("CTR2SVC_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # A relative XDG_CACHE_HOME is invalid by the XDG spec, and ignored.
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "ctr2svc"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "ctr2svc"


def test_a_cache_path_with_a_colon_is_refused(tmp_path: Path) -> None:
    # skopeo and umoci are given the cache as DIR:TAG and split at the first ':'.
    cache = ImageCache(tmp_path / "a:b" / "cache")
    with pytest.raises(UsageError, match=r"has a ':' in its path") as info:
        cache.ensure()
    assert info.value.hint and "--cache-dir" in info.value.hint
    assert not (tmp_path / "a:b").exists()


@pytest.mark.parametrize("key", ["entrypoint", "cmd"])
def test_a_nul_in_the_command_is_refused(key: str) -> None:
    with pytest.raises(UsageError, match=f"--{key} holds a NUL character"):
        resolve(options(**{key: ("/bin/sh", "-c", "a\0b")}))


@pytest.mark.parametrize("entrypoint", [(), ("",)])
def test_an_empty_entrypoint_without_cmd_is_refused(entrypoint: tuple[str, ...]) -> None:
    # `--entrypoint ""` (or "''"): no entrypoint, and a new one drops the image's Cmd.
    with pytest.raises(UsageError, match="an empty --entrypoint leaves nothing to run"):
        resolve(options(entrypoint=entrypoint))
    resolve(options(entrypoint=entrypoint, cmd=("/bin/server",)))
