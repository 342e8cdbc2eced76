"""Proof that the test-support helpers build real images, push them, and that they run under runc."""

import contextlib
import dataclasses
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.images import (
    APP_GID,
    APP_UID,
    BUSYBOX,
    MEDIA_INDEX,
    REF_NAME,
    ToolError,
    build_image,
    descriptor,
    docker_archive,
    image_config,
    install_busybox,
    is_index_source,
    manifest,
    mode_of,
    multiarch_image,
    noentry_image,
    oci_archive,
    patch_bundle_for_test,
    put_file,
    run,
    service_image,
    split_oci_source,
    unpack,
)
from tests.support.registry import Registry, free_port, start_registry

VERSION = "svc-test 1.2.3"
HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello"


def skopeo_json(*args: str) -> Any:
    return json.loads(run(["skopeo", "--insecure-policy", *args]).stdout)


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http://127.0.0.1 only)
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# ------------------------------------------------------------------------------------------------
# Without tools


def test_split_oci_source() -> None:
    assert split_oci_source("oci:/a/b:1.0") == (Path("/a/b"), "1.0")
    assert split_oci_source("oci:rel/dir") == (Path("rel/dir"), None)
    with pytest.raises(ValueError, match="not an oci"):
        split_oci_source("docker://x/y:z")


def test_is_index_source_reads_index_json(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": MEDIA_INDEX,
                        "digest": "sha256:aa",
                        "size": 1,
                        "annotations": {REF_NAME: "m"},
                    },
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:bb",
                        "size": 1,
                        "annotations": {REF_NAME: "s"},
                    },
                ],
            }
        )
    )
    assert is_index_source(f"oci:{tmp_path}:m")
    assert not is_index_source(f"oci:{tmp_path}:s")
    assert not is_index_source("docker-archive:/x.tar")
    with pytest.raises(KeyError):
        is_index_source(f"oci:{tmp_path}:missing")


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


# ------------------------------------------------------------------------------------------------
# Fixtures (root + real tools)


@pytest.fixture(scope="module")
def service_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def service_src(tmp_path_factory: pytest.TempPathFactory, service_port: int) -> str:
    return service_image(
        tmp_path_factory.mktemp("svc") / "layout", "1.0", port=service_port, version_text=VERSION
    )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("reg"))
    yield reg
    reg.stop()


# ------------------------------------------------------------------------------------------------
# Images


@pytest.mark.integration
def test_service_image_config(service_src: str, service_port: int) -> None:
    layout, tag = split_oci_source(service_src)
    cfg = image_config(layout, tag)
    assert cfg["architecture"] == "amd64"
    assert cfg["os"] == "linux"
    c = cfg["config"]
    assert "User" not in c or c["User"] == ""
    assert c["Entrypoint"] == ["/usr/local/bin/entrypoint.sh"]
    assert c["Cmd"] == ["serve"]
    assert c["Volumes"] == {"/data": {}}
    assert c["ExposedPorts"] == {f"{service_port}/tcp": {}}
    assert f"PORT={service_port}" in c["Env"]
    assert f"APP_VERSION={VERSION}" in c["Env"]
    assert c["StopSignal"] == "SIGTERM"
    assert c["WorkingDir"] == "/data"


@pytest.mark.integration
def test_service_image_files(service_src: str, tmp_path: Path) -> None:
    rootfs = unpack(service_src, tmp_path / "bundle") / "rootfs"
    sh, bb = (rootfs / "bin/sh").lstat(), (rootfs / "bin/busybox").lstat()
    assert sh.st_ino == bb.st_ino and bb.st_nlink >= 2
    assert (rootfs / "bin/httpd").readlink() == Path("busybox")
    assert (rootfs / "var/run").readlink() == Path("../run")
    suid = (rootfs / "usr/bin/suidprobe").lstat()
    assert mode_of(rootfs / "usr/bin/suidprobe") == 0o4755 and (suid.st_uid, suid.st_gid) == (0, 0)
    assert mode_of(rootfs / "tmp") == 0o1777
    assert mode_of(rootfs / "root") == 0o700
    assert mode_of(rootfs / "var/spool/app") == 0o2770
    for rel, mode in [("home/app/owned.txt", 0o640), ("var/lib/app", 0o750), ("home/app", 0o750)]:
        st = (rootfs / rel).lstat()
        assert (st.st_uid, st.st_gid, mode_of(rootfs / rel)) == (APP_UID, APP_GID, mode), rel
    passwd = (rootfs / "etc/passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in passwd] == ["root", "app"]
    assert "app:x:999:999:app:/data:/bin/sh" in passwd
    assert VERSION in (rootfs / "www/index.html").read_text()
    for cgi in ("put", "get", "whoami", "env"):
        assert mode_of(rootfs / "www/cgi-bin" / cgi) == 0o755


@pytest.mark.integration
def test_noentry_image_has_no_entrypoint_or_cmd(tmp_path: Path) -> None:
    src = noentry_image(tmp_path / "layout", "bare")
    layout, tag = split_oci_source(src)
    c = image_config(layout, tag)["config"]
    assert not c.get("Entrypoint") and not c.get("Cmd")
    raw = skopeo_json("inspect", "--config", src)["config"]
    assert not raw.get("Entrypoint") and not raw.get("Cmd")
    # What a packager sees after unpacking such an image: umoci fills in a default of its own.
    spec = json.loads((unpack(src, tmp_path / "b") / "config.json").read_text())
    assert spec["process"]["args"] == ["sh"]


@pytest.mark.integration
def test_build_image_applies_every_setting(tmp_path: Path) -> None:
    def populate(root: Path) -> None:
        install_busybox(root)
        put_file(root, "etc/motd", "hi\n")

    layout = tmp_path / "layout"
    src = build_image(
        layout,
        "all",
        populate,
        entrypoint=["/bin/sh", "-c"],
        cmd=["echo $A", "x y"],
        user="1000:1000",
        env={"A": "1", "B": "two words=x"},
        volumes=["/data", "/cache"],
        exposed_ports=["80/tcp", "53/udp"],
        stop_signal="SIGQUIT",
        workdir="/srv",
        labels={"a.b": "c d"},
        arch="arm64",
    )
    # A second tag in the same layout must not disturb the first.
    noentry_image(layout, "other")
    cfg = image_config(layout, "all")
    c = cfg["config"]
    assert cfg["architecture"] == "arm64"
    assert c["Entrypoint"] == ["/bin/sh", "-c"] and c["Cmd"] == ["echo $A", "x y"]
    assert c["User"] == "1000:1000"
    assert c["Env"] == ["A=1", "B=two words=x"]
    assert c["Volumes"] == {"/data": {}, "/cache": {}}
    assert c["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert (c["StopSignal"], c["WorkingDir"], c["Labels"]) == ("SIGQUIT", "/srv", {"a.b": "c d"})
    assert skopeo_json("inspect", "--override-arch", "arm64", src)["Architecture"] == "arm64"
    # Rebuilding a tag replaces it.
    build_image(layout, "all", populate, cmd=["true"])
    assert image_config(layout, "all")["config"].get("Entrypoint") is None
    assert image_config(layout, "other")["config"].get("Cmd") is None


# ------------------------------------------------------------------------------------------------
# Running the service image under runc


def _runc_state(cid: str) -> str:
    proc = subprocess.run(["runc", "state", cid], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return "gone"
    status: str = json.loads(proc.stdout)["status"]
    return status


@contextlib.contextmanager
def _container(bundle: Path, log: Path) -> Iterator[str]:
    cid = f"ctr2svc-support-{uuid.uuid4().hex[:12]}"
    try:
        with log.open("wb") as fh:
            # --detach hands runc's stdio to the container: a file, never a pipe we would wait on.
            subprocess.run(
                ["runc", "run", "--detach", "--bundle", str(bundle), cid],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=fh,
                check=True,
                timeout=60,
            )
        yield cid
    finally:
        subprocess.run(["runc", "delete", "--force", cid], capture_output=True, check=False)


def _wait_http(url: str, log: Path, timeout: float = 15) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return http_get(url, timeout=1)
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} never answered; container log:\n{log.read_text()}") from None
            time.sleep(0.1)


def _stop_with_term(cid: str, log: Path) -> float:
    """runc kill TERM, then the seconds until the container stopped; runc delete afterwards."""
    assert _runc_state(cid) == "running", log.read_text()
    t0 = time.monotonic()
    run(["runc", "kill", cid, "TERM"])
    while _runc_state(cid) == "running" and time.monotonic() - t0 < 5:
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    assert _runc_state(cid) == "stopped", log.read_text()
    run(["runc", "delete", cid])
    assert _runc_state(cid) == "gone"
    return elapsed


def _uids(cid: str) -> set[str]:
    """Real uids of the container's processes (from /proc: ps would print host user names)."""
    uids = set()
    for pid in json.loads(run(["runc", "ps", "--format", "json", cid]).stdout):
        status = Path(f"/proc/{pid}/status").read_text()
        uids.add(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
    return uids


@pytest.mark.integration
def test_service_image_runs_under_runc(service_src: str, service_port: int, tmp_path: Path) -> None:
    bundle = unpack(service_src, tmp_path / "bundle")
    data = tmp_path / "data"
    data.mkdir()
    (data / "preexisting").write_text("root-owned before start\n")
    patch_bundle_for_test(bundle, binds={"/data": data})
    log = tmp_path / "container.log"
    base = f"http://127.0.0.1:{service_port}"
    with _container(bundle, log) as cid:
        status, body = _wait_http(f"{base}/", log)
        assert status == 200 and VERSION in body

        assert http_get(f"{base}/cgi-bin/put?k=v") == (200, "ok\n")
        assert http_get(f"{base}/cgi-bin/get?k") == (200, "v")
        assert http_get(f"{base}/cgi-bin/get?nope")[0] == 404
        assert http_get(f"{base}/cgi-bin/get?..")[0] == 400
        assert http_get(f"{base}/cgi-bin/whoami") == (200, "999:999\n")
        env = http_get(f"{base}/cgi-bin/env")[1]
        assert f"APP_VERSION={VERSION}" in env and f"PORT={service_port}" in env
        # Every process dropped to app, PID 1 included.
        assert _uids(cid) == {str(APP_UID)}

        st = (data / "k").stat()
        assert (st.st_uid, st.st_gid) == (APP_UID, APP_GID)
        assert (data / "k").read_text() == "v"
        # The root entrypoint ran and its find/chown handed everything in /data to app.
        assert (data / ".entrypoint-ran").read_text().strip() == "entrypoint ran as 0:0"
        for name in (".entrypoint-ran", "preexisting"):
            assert (data / name).stat().st_uid == APP_UID, name
        assert data.stat().st_uid == APP_UID

        elapsed = _stop_with_term(cid, log)
        assert elapsed < 2, f"stopping on SIGTERM took {elapsed:.1f}s"


# ------------------------------------------------------------------------------------------------
# examples/hello


@pytest.mark.integration
def test_example_hello_layout_runs(tmp_path: Path) -> None:
    src = f"oci:{HELLO}:1.0"
    info = skopeo_json("inspect", src)
    assert info["Architecture"] == "amd64"
    assert info["Labels"]["org.opencontainers.image.licenses"] == "GPL-2.0-only"
    c = skopeo_json("inspect", "--config", src)["config"]
    assert (c["User"], c["ExposedPorts"], c["Volumes"]) == ("www", {"8080/tcp": {}}, {"/data": {}})
    assert "PORT=8080" in c["Env"]
    assert run(["umoci", "gc", "--layout", HELLO]).returncode == 0 and _blob_names(HELLO) == _referenced(
        HELLO
    )

    bundle = unpack(src, tmp_path / "bundle")
    # Port 8080 may be taken on a test box; the image honours $PORT. umoci's own caps are enough.
    port = free_port()
    patch_bundle_for_test(bundle, env={"PORT": str(port)}, caps=None)
    log = tmp_path / "hello.log"
    with _container(bundle, log) as cid:
        status, body = _wait_http(f"http://127.0.0.1:{port}/", log)
        assert status == 200 and "Hello from ctr2svc" in body
        assert _uids(cid) == {"101"}
        elapsed = _stop_with_term(cid, log)
        assert elapsed < 2, f"stopping on SIGTERM took {elapsed:.1f}s"


def _blob_names(layout: Path) -> set[str]:
    return {p.name for p in (layout / "blobs" / "sha256").iterdir()}


def _referenced(layout: Path) -> set[str]:
    man_digest = descriptor(layout, "1.0")["digest"]
    man = manifest(layout, "1.0")
    digests = [man_digest, man["config"]["digest"], *(layer["digest"] for layer in man["layers"])]
    return {d.removeprefix("sha256:") for d in digests}


@pytest.mark.integration
def test_build_hello_regenerates_the_committed_layout(tmp_path: Path) -> None:
    out = tmp_path / "hello"
    run([HELLO.parent / "build-hello.sh", out], timeout=120)
    assert skopeo_json("inspect", f"oci:{out}:1.0")["Labels"]["org.opencontainers.image.version"] == "1.0"
    committed = unpack(f"oci:{HELLO}:1.0", tmp_path / "committed") / "rootfs/bin/busybox"
    if committed.read_bytes() != BUSYBOX.read_bytes():
        pytest.skip("host busybox differs from the committed one: only reproducible with the same binary")
    assert (out / "index.json").read_bytes() == (HELLO / "index.json").read_bytes()
    assert _blob_names(out) == _blob_names(HELLO)


# ------------------------------------------------------------------------------------------------
# Registry


@pytest.mark.integration
def test_push_and_inspect(registry: Registry, service_src: str, service_port: int) -> None:
    ref = registry.push(service_src, "test/service", "1.0")
    assert ref == f"{registry.host}/test/service:1.0"
    info = skopeo_json("inspect", "--tls-verify=false", f"docker://{ref}")
    assert info["Architecture"] == "amd64"
    assert f"PORT={service_port}" in info["Env"] and f"APP_VERSION={VERSION}" in info["Env"]
    assert info["Labels"]["org.opencontainers.image.version"] == VERSION
    c = skopeo_json("inspect", "--tls-verify=false", "--config", f"docker://{ref}")["config"]
    assert c.get("User", "") == ""
    assert c["ExposedPorts"] == {f"{service_port}/tcp": {}}
    assert c["Volumes"] == {"/data": {}}


@pytest.mark.integration
def test_registry_with_auth(tmp_path: Path) -> None:
    src = noentry_image(tmp_path / "layout", "x")
    with start_registry(tmp_path / "reg", auth=("tester", "s3cret")) as reg:
        assert (reg.username, reg.password) == ("tester", "s3cret")
        ref = reg.push(src, "auth/bare", "x")
        info = skopeo_json("inspect", "--tls-verify=false", "--creds", "tester:s3cret", f"docker://{ref}")
        assert info["Architecture"] == "amd64"
        with pytest.raises(ToolError, match=r"(?i)unauthorized|authentication required"):
            dataclasses.replace(reg, password="wrong").push(src, "auth/bare", "y")  # noqa: S106
        with pytest.raises(ToolError, match=r"(?i)unauthorized|authentication required"):
            skopeo_json("inspect", "--tls-verify=false", "--creds", "tester:wrong", f"docker://{ref}")
        with pytest.raises(ToolError, match=r"(?i)unauthorized|authentication required"):
            skopeo_json("inspect", "--tls-verify=false", "--no-creds", f"docker://{ref}")
    assert reg._proc is None


def test_start_registry_failure_reports_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake-registry"
    fake.write_text("#!/bin/sh\necho 'level=fatal msg=\"boom: cannot serve\"' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr("tests.support.registry.REGISTRY_BIN", str(fake))
    with pytest.raises(ToolError, match=r"(?s)exited with 1.*boom: cannot serve"):
        start_registry(tmp_path / "reg")


@pytest.mark.integration
def test_multiarch_index(registry: Registry, tmp_path: Path) -> None:
    src = multiarch_image(tmp_path / "layout", "multi", arches=["amd64", "arm64"])
    assert is_index_source(src)
    ref = registry.push(src, "test/multi", "1")
    raw = skopeo_json("inspect", "--tls-verify=false", "--raw", f"docker://{ref}")
    assert raw["mediaType"] == MEDIA_INDEX
    platforms = {(m["platform"]["os"], m["platform"]["architecture"]) for m in raw["manifests"]}
    assert platforms == {("linux", "amd64"), ("linux", "arm64")}
    for arch in ("arm64", "amd64"):
        info = skopeo_json("inspect", "--tls-verify=false", "--override-arch", arch, f"docker://{ref}")
        assert info["Architecture"] == arch
        assert info["Labels"]["ctr2svc.test.arch"] == arch
    # The per-arch manifests stay tagged in the layout, and a later build there keeps the index intact.
    noentry_image(tmp_path / "layout", "later")
    assert skopeo_json("inspect", "--override-arch", "arm64", src)["Architecture"] == "arm64"


@pytest.mark.integration
def test_archives(service_src: str, tmp_path: Path) -> None:
    darc = docker_archive(service_src, tmp_path / "svc-docker.tar", "example.test/svc:1.0")
    assert darc == f"docker-archive:{tmp_path / 'svc-docker.tar'}"
    assert skopeo_json("inspect", darc)["Labels"]["org.opencontainers.image.version"] == VERSION
    oarc = oci_archive(service_src, tmp_path / "svc-oci.tar", "1.0")
    assert oarc == f"oci-archive:{tmp_path / 'svc-oci.tar'}"
    assert skopeo_json("inspect", "--config", oarc)["config"]["Cmd"] == ["serve"]
