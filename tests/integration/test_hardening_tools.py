"""Issue 13, the tools' side: credentials kept out of sight, no tool outliving a killed build, every
skopeo and umoci failure told in ctr2svc's words, and no traceback for a cache that cannot be used.

All with the real tools and a real registry (htpasswd auth for the credentials). Each failure is one
line with the documented exit status, no `level=fatal`, no traceback, nothing in the output directory,
and a cache with no broken entry (no half blob, no index entry whose blobs are missing, no work dir).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ctr2svc.image.cache import ImageCache
from tests.conftest import Cli
from tests.support.faults import Job, SlowProxy, all_entries, tmpfs
from tests.support.images import build_image, install_busybox, put_file, service_image
from tests.support.registry import Registry, free_port, start_registry

pytestmark = pytest.mark.integration

BIG_MB = 16
MANY_DIRS, MANY_FILES = 100, 250
Json = dict[str, Any]
PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:999:999:app:/data:/bin/sh\n"  # noqa: S105
GROUP = "root:x:0:\napp:x:999:\n"


# --------------------------------------------------------------------------------------------------
# Images


def _populate_users(root: Path) -> None:
    install_busybox(root)
    put_file(root, "etc/passwd", PASSWD)
    put_file(root, "etc/group", GROUP)


def _populate_big(root: Path) -> None:
    install_busybox(root)
    # Incompressible: pulling it through a slow link and packing it with xz take a while.
    put_file(root, "srv/noise.bin", os.urandom(BIG_MB * 1024 * 1024))


def _populate_many(root: Path) -> None:
    install_busybox(root)
    # Many small files: umoci takes seconds to unpack them, long enough to be caught at it.
    many = root / "srv" / "many"
    for d in range(MANY_DIRS):
        sub = many / f"{d:03}"
        sub.mkdir(parents=True)
        for f in range(MANY_FILES):
            (sub / f"{f:03}").write_bytes(b"x" * 64)


def _reblob(layout: Path, data: bytes) -> tuple[str, int]:
    hexdigest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / hexdigest).write_bytes(data)
    return f"sha256:{hexdigest}", len(data)


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def mutated(source: Path, dest: Path, tag: str, change: Callable[[Path, Json, Json], None]) -> str:
    """A copy of the layout SOURCE holding only TAG, its manifest and config changed by CHANGE (which
    may add blobs); digests are recomputed, so only what CHANGE did is wrong with it."""
    shutil.copytree(source, dest)
    index = json.loads((dest / "index.json").read_text())
    index["manifests"] = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    desc = index["manifests"][0]
    manifest = json.loads(_blob(dest, desc["digest"]).read_bytes())
    config = json.loads(_blob(dest, manifest["config"]["digest"]).read_bytes())
    change(dest, manifest, config)
    manifest["config"]["digest"], manifest["config"]["size"] = _reblob(dest, json.dumps(config).encode())
    desc["digest"], desc["size"] = _reblob(dest, json.dumps(manifest).encode())
    (dest / "index.json").write_text(json.dumps(index))
    return f"oci:{dest}:{tag}"


def _garbage_layer(layout: Path, manifest: Json, config: Json) -> None:
    """A layer whose digest is right but whose bytes are no gzip'd tar: the image itself is broken."""
    digest, size = _reblob(layout, os.urandom(4096))
    manifest["layers"].append(
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size}
    )
    config["rootfs"]["diff_ids"].append(digest)


def _helm_chart(layout: Path, manifest: Json, config: Json) -> None:
    """An OCI artifact that is not a container image (as `helm push` writes)."""
    manifest["config"]["mediaType"] = "application/vnd.cncf.helm.config.v1+json"
    for layer in manifest["layers"]:
        layer["mediaType"] = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"


def _missing_blob(layout: Path, manifest: Json, config: Json) -> None:
    _blob(layout, manifest["layers"][-1]["digest"]).unlink()


def _flipped_blob(layout: Path, manifest: Json, config: Json) -> None:
    blob = _blob(layout, manifest["layers"][-1]["digest"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))


@dataclass
class Images:
    reg: Registry
    auth: Registry
    local: dict[str, str] = field(default_factory=dict)
    remote: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def hard_registry(tmp_path_factory: pytest.TempPathFactory, integration_host: None) -> Iterator[Registry]:
    with start_registry(tmp_path_factory.mktemp("hardening-registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def images(
    hard_registry: Registry, auth_registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Images:
    work = tmp_path_factory.mktemp("hardening-images")
    svc = service_image(work / "svc", "1.0", port=free_port(), version_text="hardening")
    layout = work / "svc"
    out = Images(hard_registry, auth_registry)
    out.local["svc"] = svc
    out.local["nobody2"] = build_image(
        work / "users", "nobody2", _populate_users, cmd=["/bin/sh"], user="nobody2"
    )
    out.local["nogroup"] = build_image(
        work / "users", "nogroup", _populate_users, cmd=["/bin/sh"], user="app:nogroup"
    )
    out.local["garbage"] = mutated(layout, work / "garbage", "1.0", _garbage_layer)
    out.local["helm"] = mutated(layout, work / "helm", "1.0", _helm_chart)
    out.local["missing-blob"] = mutated(layout, work / "missing-blob", "1.0", _missing_blob)
    out.local["flipped-blob"] = mutated(layout, work / "flipped-blob", "1.0", _flipped_blob)
    (work / "not-a-layout").mkdir()
    (work / "not-a-layout" / "README").write_text("no index.json here\n")
    out.local["not-a-layout"] = f"oci:{work / 'not-a-layout'}:1.0"
    (work / "layout-file").write_text("a file\n")
    out.local["layout-file"] = f"oci:{work / 'layout-file'}:1.0"
    (work / "text.tar").write_text("hello, not a tar\n")
    (work / "zeros.tar").write_bytes(b"\0" * 10240)
    out.local["oci-archive-text"] = f"oci-archive:{work / 'text.tar'}:1.0"
    out.local["docker-archive-zeros"] = f"docker-archive:{work / 'zeros.tar'}"
    out.local["docker-archive-text"] = f"docker-archive:{work / 'text.tar'}"
    out.local["missing-dir"] = f"oci:{work / 'nowhere'}:1.0"
    out.local["missing-tag"] = f"oci:{layout}:9.9"
    out.remote["svc"] = hard_registry.push(svc, "hard/svc", "1.0")
    out.remote["helm"] = hard_registry.push(out.local["helm"], "hard/chart", "1.0")
    out.remote["auth-svc"] = auth_registry.push(svc, "hard/svc", "1.0")
    big = build_image(work / "big", "1.0", _populate_big, cmd=["/bin/busybox", "sleep", "1000"])
    out.remote["auth-big"] = auth_registry.push(big, "hard/big", "1.0")
    out.remote["big"] = hard_registry.push(big, "hard/big", "1.0")
    many = build_image(work / "many", "1.0", _populate_many, cmd=["/bin/busybox", "sleep", "1000"])
    out.remote["many"] = hard_registry.push(many, "hard/many", "1.0")
    return out


# --------------------------------------------------------------------------------------------------
# What a failure must (not) leave


def broken_cache_entries(cache: Path) -> list[str]:
    """What a later build could trip over: half-written blobs, index entries whose blobs are missing,
    work directories of finished builds."""
    problems = []
    layout = cache / "oci"
    problems += [f"partial blob {p.name}" for p in layout.glob("*put-blob*")] if layout.exists() else []
    index_path = layout / "index.json"
    if index_path.exists():
        for desc in json.loads(index_path.read_text()).get("manifests", []):
            manifest_blob = _blob(layout, desc["digest"])
            if not manifest_blob.is_file():
                problems.append(f"manifest {desc['digest']} missing")
                continue
            manifest = json.loads(manifest_blob.read_bytes())
            for blob in [manifest["config"], *manifest["layers"]]:
                if not _blob(layout, blob["digest"]).is_file():
                    problems.append(f"blob {blob['digest']} of {desc['digest']} missing")
    if (cache / "work").exists():
        problems += [f"left in work/: {p}" for p in all_entries(cache / "work")]
    return problems


def check_error(proc: subprocess.CompletedProcess[str], out: Path, status: int, says: str, hint: str) -> str:
    """One error line, the last, matching SAYS and HINT (regexes); STATUS; no tool wrapper or
    traceback; nothing in OUT. Returns the line."""
    assert proc.returncode == status, f"exit {proc.returncode}, wanted {status}:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("ctr2svc: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    line = errors[0]
    assert "level=fatal" not in line and "time=" not in line and "\u2a2f" not in line, line
    assert '\\"' not in line, f"Go quoting left in: {line}"
    problem, _, given_hint = line.partition(" (hint: ")
    assert re.search(says, problem), f"{says!r} not in: {line}"
    assert given_hint and re.search(hint, given_hint), f"hint {hint!r} not in: {line}"
    if out.exists():
        assert all_entries(out) == [], f"left in the output directory: {all_entries(out)}"
    return line


# --------------------------------------------------------------------------------------------------
# Servers that are not registries


@pytest.fixture(scope="module")
def not_registries() -> Iterator[dict[str, str]]:
    """An HTTP server that is no registry (404 for /v2/) and a TCP port that closes every connection."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    closer = socket.create_server(("127.0.0.1", 0))

    def close_all() -> None:
        while True:
            try:
                conn, _ = closer.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=close_all, daemon=True).start()
    try:
        yield {"web": f"127.0.0.1:{web.server_address[1]}", "closer": f"127.0.0.1:{closer.getsockname()[1]}"}
    finally:
        web.shutdown()
        web.server_close()
        closer.close()


# --------------------------------------------------------------------------------------------------
# 3. Every failure in ctr2svc's words

ZERO = "sha256:" + "0" * 64

# (case id, args builder, exit status, problem regex, hint regex)
CASES: list[tuple[str, Callable[[Images, dict[str, str]], list[str]], int, str, str]] = [
    # Registries
    ("unknown-tag", lambda i, n: [f"{i.reg.host}/hard/svc:9.9"], 3,
     r"not found in registry .*has no tag '9\.9'", r"use one of its tags: 1\.0"),
    ("unknown-repository", lambda i, n: [f"{i.reg.host}/hard/nothing:1.0"], 3,
     r"not found in registry .*no repository 'hard/nothing'", r"skopeo list-tags"),
    ("unknown-digest", lambda i, n: [f"{i.reg.host}/hard/svc@{ZERO}"], 3,
     rf"has no manifest {ZERO}", r"check the digest"),
    ("connection-refused", lambda i, n: [f"127.0.0.1:{free_port()}/app:1.0"], 3,
     r"cannot reach registry 127\.0\.0\.1:\d+: connection refused", r"running"),
    ("dns-name-unknown", lambda i, n: ["registry.ctr2svc-test.invalid/app:1.0"], 3,
     r"registry\.ctr2svc-test\.invalid does not resolve", r"DNS"),
    ("https-to-http-registry", lambda i, n: [i.remote["svc"], "--tls-verify"], 3,
     r"speaks plain HTTP, not HTTPS", r"--no-tls-verify"),
    ("not-a-registry-http", lambda i, n: [f"{n['web']}/app:1.0"], 3,
     r"does not answer as a container registry \(GET /v2/ gave 404", r"address and port"),
    ("not-a-registry-https", lambda i, n: [f"{n['web']}/app:1.0", "--tls-verify"], 3,
     r"speaks plain HTTP, not HTTPS", r"--no-tls-verify"),
    ("connection-closed", lambda i, n: [f"{n['closer']}/app:1.0"], 3,
     r"closed the connection without answering", r"address and port"),
    ("auth-required", lambda i, n: [i.remote["auth-svc"]], 3,
     r"requires credentials", r"--creds USER:PASSWORD"),
    ("auth-wrong", lambda i, n: [i.remote["auth-svc"], "--creds", "tester:not-the-password"], 3,
     r"refused the credentials", r"--creds"),
    ("artifact-in-registry", lambda i, n: [i.remote["helm"]], 3,
     r"is not a container image: its config is of type application/vnd\.cncf\.helm\.config", r"container"),
    # Local images
    ("oci-dir-missing", lambda i, n: [i.local["missing-dir"]], 3, r"does not exist", r"path"),
    ("oci-not-a-layout", lambda i, n: [i.local["not-a-layout"]], 3,
     r"is not an OCI image layout: it has no index\.json", r"skopeo copy"),
    ("oci-layout-is-a-file", lambda i, n: [i.local["layout-file"]], 3,
     r"is a file, not an OCI layout directory", r"oci-archive:"),
    ("oci-tag-missing", lambda i, n: [i.local["missing-tag"]], 3,
     r"tag '9\.9' not found in oci image", r"use one of its tags: 1\.0"),
    ("oci-blob-missing", lambda i, n: [i.local["missing-blob"]], 3,
     r"is incomplete: a blob its manifest names is missing \(sha256:", r"copy the image"),
    ("oci-blob-corrupt", lambda i, n: [i.local["flipped-blob"]], 3,
     r"is corrupt: its content does not match its digest", r"damaged"),
    ("oci-artifact", lambda i, n: [i.local["helm"]], 3,
     r"is not a container image: its config is of type application/vnd\.cncf\.helm", r"container image"),
    ("oci-archive-not-a-tar", lambda i, n: [i.local["oci-archive-text"]], 3,
     r"is not an oci-archive", r"oci-archive:|docker-archive:"),
    ("docker-archive-corrupt", lambda i, n: [i.local["docker-archive-zeros"]], 3,
     r"is not a docker-archive", r"docker save"),
    ("docker-archive-not-a-tar", lambda i, n: [i.local["docker-archive-text"]], 3,
     r"is not a docker-archive", r"docker save"),
    # umoci
    ("image-user-missing", lambda i, n: [i.local["nobody2"]], 3,
     r"""the image's User "nobody2" is not in its /etc/passwd, so it cannot run as that user""",
     r"pass --user UID\[:GID\] with a number"),
    ("image-group-missing", lambda i, n: [i.local["nogroup"]], 3,
     r"""the image's User "app:nogroup" names the group "nogroup", which is not in its /etc/group""",
     r"--user UID:GID"),
    ("layer-not-a-tar", lambda i, n: [i.local["garbage"]], 3,
     r"layer [0-9a-f]{12} (is not a valid tar archive|is corrupt: it does not decompress)", r"rebuild it"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "status", "says", "hint"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_failure_in_ctr2svc_words(
    ctr2svc: Cli,
    images: Images,
    not_registries: dict[str, str],
    args: Callable[[Images, dict[str, str]], list[str]],
    status: int,
    says: str,
    hint: str,
    tmp_path: Path,
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "o"
    out.mkdir()
    proc = ctr2svc("build", *args(images, not_registries), "--cache-dir", cache, "-o", out, check=False)
    check_error(proc, out, status, says, hint)
    assert broken_cache_entries(cache) == []


def test_unmapped_skopeo_failure_is_unwrapped(ctr2svc: Cli, images: Images, tmp_path: Path) -> None:
    """A failure no rule knows (here: an oci-archive that is a directory) still loses skopeo's log
    wrapper and Go quoting; the line names the image and skopeo's own reason."""
    directory = tmp_path / "dir.tar"
    directory.mkdir()
    (tmp_path / "o").mkdir()
    proc = ctr2svc("build", f"oci-archive:{directory}:1.0", "-o", tmp_path / "o", check=False)
    line = check_error(proc, tmp_path / "o", 3, str(directory), r".")
    assert "Error parsing image name" not in line, line


def test_missing_image_user_hint_works(ctr2svc: Cli, images: Images, tmp_path: Path) -> None:
    """The hint of image-user-missing: with a numeric --user the same image builds."""
    proc = ctr2svc("build", images.local["nobody2"], "--user", "999:999", "-o", tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr


def test_layer_damaged_in_the_cache(ctr2svc: Cli, images: Images, tmp_path: Path) -> None:
    """A cached layer changed on disk after skopeo verified it: the build says so, drops the layer, and
    the next build downloads it again and succeeds."""
    cache = tmp_path / "cache"
    first = ctr2svc("build", images.remote["svc"], "--cache-dir", cache, "-o", tmp_path / "a")
    assert first.returncode == 0
    layout = cache / "oci"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]).read_bytes())
    layer = _blob(layout, manifest["layers"][-1]["digest"])
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer.write_bytes(bytes(data))
    # Another option, so the build record does not short-cut the unpack.
    out = tmp_path / "b"
    out.mkdir()
    proc = ctr2svc(
        "build", images.remote["svc"], "--name", "other-svc", "--cache-dir", cache, "-o", out, check=False
    )
    check_error(proc, out, 3, r"a layer in the image cache was damaged since it was pulled", r"build again")
    assert not layer.exists()
    # The entry stays in index.json (rewriting it under the shared lock of an unpack would race with
    # other builds), but without its layer the cache no longer counts it: the next build pulls again.
    digest = f"sha256:{index['manifests'][0]['annotations']['org.opencontainers.image.ref.name']}"
    assert ImageCache(cache).manifest(digest) is None
    assert [p for p in broken_cache_entries(cache) if not p.startswith("blob ")] == []
    again = ctr2svc("build", images.remote["svc"], "--name", "other-svc", "--cache-dir", cache, "-o", out)
    assert Path(again.stdout.strip()).is_file()


# --------------------------------------------------------------------------------------------------
# 4. Caches that cannot be used: exit 2 naming --cache-dir, never a traceback


@contextlib.contextmanager
def read_only_cache(tmp_path: Path, populated: bool) -> Iterator[Path]:
    """A cache on a file system mounted read-only (modes do not stop root; a read-only mount does)."""
    mount = tmp_path / "ro"
    with tmpfs(mount, size="4m") as path:
        if populated:
            (path / "oci").mkdir()
            (path / "lock").write_text("")
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path


@pytest.mark.parametrize("command", ["build", "inspect"])
@pytest.mark.parametrize(
    "kind", ["read-only", "read-only-populated", "read-only-missing-sub", "file", "under-a-file"]
)
def test_unusable_cache(ctr2svc: Cli, command: str, kind: str, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    with contextlib.ExitStack() as stack:
        if kind.startswith("read-only"):
            root = stack.enter_context(read_only_cache(tmp_path, populated=kind == "read-only-populated"))
            cache = root / "sub" if kind == "read-only-missing-sub" else root
        else:
            (tmp_path / "file").write_text("not a directory\n")
            cache = tmp_path / "file" if kind == "file" else tmp_path / "file" / "sub"
        extra: list[str | Path] = ["-o", out] if command == "build" else []
        proc = ctr2svc(command, "oci:examples/hello:1.0", "--cache-dir", cache, *extra, check=False)
    check_error(proc, out, 2, rf"the image cache {re.escape(str(cache))} ", r"--cache-dir")


# --------------------------------------------------------------------------------------------------
# 1. Credentials


def process_tree(root: int) -> list[int]:
    """ROOT and every descendant of it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_text = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat_text[stat_text.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


@dataclass
class Watch:
    """Samples every cmdline and environ of a build's process tree until it ends."""

    secrets: list[bytes]
    seen: list[str] = field(default_factory=list)
    authfiles: dict[str, tuple[int, int, bytes]] = field(default_factory=dict)
    commands: set[str] = field(default_factory=set)

    def sample(self, root: int, include_root: bool) -> None:
        for pid in process_tree(root):
            if pid == root and not include_root:
                continue
            for what in ("cmdline", "environ"):
                try:
                    data = Path(f"/proc/{pid}/{what}").read_bytes()
                except OSError:
                    continue
                for secret in self.secrets:
                    if secret in data:
                        shown = data.replace(b"\0", b" ")[:300]
                        self.seen.append(f"{what} of {pid}: {shown!r}")
                if what == "cmdline":
                    argv = data.decode(errors="replace").split("\0")
                    self.commands.add(Path(argv[0]).name)
                    for i, arg in enumerate(argv[:-1]):
                        if arg.endswith("authfile") and argv[i + 1] not in self.authfiles:
                            self._note_authfile(argv[i + 1])

    def _note_authfile(self, path: str) -> None:
        try:
            mode = Path(path).stat().st_mode
            parent = Path(path).parent.stat().st_mode
            self.authfiles[path] = (stat.S_IMODE(mode), stat.S_IMODE(parent), Path(path).read_bytes())
        except OSError:
            pass


def _secrets(password: str, user: str = "tester") -> list[bytes]:
    pair = f"{user}:{password}".encode()
    return [password.encode(), base64.b64encode(pair)]


@pytest.mark.parametrize("outcome", ["built", "wrong-password", "sigterm"])
def test_credentials_never_in_the_open(images: Images, cache_dir: Path, outcome: str, tmp_path: Path) -> None:
    """A throttled pull from the htpasswd registry with --creds and -v: while it runs, no cmdline or
    environ in ctr2svc's process tree holds the password (ctr2svc's own from the moment its first step
    line appears: before that Python is still starting, the window --authfile avoids), skopeo gets a
    0600 auth file in a 0700 directory, gone after the build; -v's output, the cache and the output
    directory never hold the password."""
    password = "s3cret" if outcome != "wrong-password" else "Wr0ng-Passw0rd"
    assert images.auth.password == "s3cret"  # noqa: S105 - the auth_registry fixture's
    cache, out = tmp_path / "cache", tmp_path / "o"
    out.mkdir()
    watch = Watch(_secrets(password))
    port = int(images.auth.host.rsplit(":", 1)[1])
    with SlowProxy(port, rate=3e6) as proxy:
        ref = images.remote["auth-big"].replace(images.auth.host, proxy.host)
        job = Job(["-v", "build", ref, "--creds", f"tester:{password}", "--cache-dir", cache, "-o", out])
        try:
            while job.proc.poll() is None:
                watch.sample(job.proc.pid, include_root=job.saw("\u2023 "))
                if outcome == "sigterm" and proxy.sent > 2_000_000 and "skopeo" in watch.commands:
                    os.kill(job.proc.pid, signal.SIGTERM)
                    break
                time.sleep(0.01)
            status = job.finish()
            out_text = job.stdout
        finally:
            job.close()
    output = job.stderr + out_text
    expected = {"built": 0, "wrong-password": 3, "sigterm": 143}[outcome]
    assert status == expected, output
    assert watch.seen == [], "\n".join(watch.seen)
    assert "skopeo" in watch.commands, watch.commands
    assert watch.authfiles, "skopeo was never seen with an auth file"
    for path, (mode, parent_mode, content) in watch.authfiles.items():
        assert mode == 0o600 and parent_mode == 0o700, (path, oct(mode), oct(parent_mode))
        assert (
            json.loads(content)["auths"][proxy.host]["auth"]
            == base64.b64encode(f"tester:{password}".encode()).decode()
        )
        assert not Path(path).exists(), f"auth file {path} left after the build"
    for secret in watch.secrets:
        assert secret.decode() not in output, f"{secret!r} in ctr2svc's output:\n{output}"
    assert "--authfile" in output, "-v should show skopeo's command lines"
    for place in (cache, out):
        for written in place.rglob("*"):
            if written.is_file() and not written.is_symlink():
                data = written.read_bytes()
                assert not any(s in data for s in watch.secrets), f"the password is in {written}"
    if outcome == "wrong-password":
        # With -v skopeo's full output follows the error line.
        errors = [line for line in output.splitlines() if line.startswith("ctr2svc: error:")]
        assert len(errors) == 1 and "refused the credentials" in errors[0], output
        assert broken_cache_entries(cache) == []
    if outcome == "sigterm":
        assert not (cache / "work").exists() or all_entries(cache / "work") == []


# --------------------------------------------------------------------------------------------------
# 2. No tool outlives a build killed with SIGKILL


def processes_using(path: Path) -> list[str]:
    """'PID ARGV' of every process whose command line mentions PATH (skopeo, umoci and nfpm all get
    paths inside the cache or its work directory)."""
    found = []
    needle = str(path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            argv = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name} {argv[:200]}")
    return found


def _tool_running(tool: str, cache: Path) -> Callable[[], bool]:
    def check() -> bool:
        return any(line.split(" ", 2)[1].endswith(tool) for line in processes_using(cache))

    return check


@pytest.mark.parametrize("step", ["pull", "unpack", "pack"])
def test_kill_9_leaves_no_tool_running(ctr2svc: Cli, images: Images, step: str, tmp_path: Path) -> None:
    """kill -9 of ctr2svc in the middle of skopeo (a throttled pull), umoci (25,000 small files) or
    nfpm (xz over an incompressible layer): within two seconds no process mentions the cache any more,
    and the next build with the same cache succeeds."""
    cache, out = tmp_path / "cache", tmp_path / "o"
    out.mkdir()
    port = int(images.reg.host.rsplit(":", 1)[1])
    with SlowProxy(port, rate=3e6 if step == "pull" else None) as proxy:
        image = images.remote["many" if step == "unpack" else "big"]
        ref = image.replace(images.reg.host, proxy.host)
        job = Job(["build", ref, "--compression", "xz", "--cache-dir", cache, "-o", out])
        try:
            tool = {"pull": "skopeo", "unpack": "umoci", "pack": "nfpm"}[step]
            deadline = time.monotonic() + 120
            while not _tool_running(tool, cache)() or (
                tool == "umoci" and not any("unpack" in p for p in processes_using(cache))
            ):
                assert job.proc.poll() is None and time.monotonic() < deadline, (
                    f"never saw {tool} running:\n" + job.stderr
                )
                time.sleep(0.002)
            if step == "pull":
                assert proxy.sent < BIG_MB * 1_000_000, "the pull was over before the kill"
            os.kill(job.proc.pid, signal.SIGKILL)
            job.proc.wait(timeout=10)
            deadline = time.monotonic() + 2
            while processes_using(cache) and time.monotonic() < deadline:
                time.sleep(0.05)
            left = processes_using(cache)
        finally:
            job.close()
        assert left == [], f"still running after ctr2svc was killed with SIGKILL: {left}"
        proxy.rate = None
        again = ctr2svc("build", ref, "--cache-dir", cache, "-o", tmp_path / "retry", check=False)
    assert again.returncode == 0, again.stderr
    assert Path(again.stdout.strip()).is_file()
    assert all_entries(out) == []
