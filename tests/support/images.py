"""Build small OCI test images with the real tools (umoci, skopeo), from the host's static busybox.

Every builder returns a skopeo source string such as ``oci:/tmp/x/layout:tag``. Building needs root:
the layers carry real owners (uid 999 files, a setuid root file), which needs lchown on unpack/populate.
"""

import gzip
import hashlib
import io
import json
import os
import random
import shlex
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"

APP_UID = 999
APP_GID = 999
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Platform variants as Docker Hub indexes carry them; skopeo --override-arch must cope with these.
_VARIANTS = {"arm64": "v8", "arm": "v7"}


class ToolError(RuntimeError):
    """A test tool (umoci, skopeo, runc, ...) failed; the message carries its stderr."""


def run(
    argv: Sequence[str | Path], *, timeout: float | None = 300, input: str | None = None
) -> "subprocess.CompletedProcess[str]":
    args = [str(a) for a in argv]
    try:
        return subprocess.run(args, check=True, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.CalledProcessError as e:
        output = "\n".join(x.strip() for x in (e.stderr or "", e.stdout or "") if x.strip())
        raise ToolError(f"{shlex.join(args)} exited with {e.returncode}:\n{output}") from e
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise ToolError(f"{shlex.join(args)} timed out after {timeout}s:\n{err.strip()}") from e


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ToolError("building test images needs root (umoci unpack/repack with real owners)")


# --------------------------------------------------------------------------------------------------
# Layout reading


def split_oci_source(source: str) -> tuple[Path, str | None]:
    """'oci:DIR[:TAG]' -> (DIR, TAG). skopeo splits at the first colon after the transport too."""
    if not source.startswith("oci:"):
        raise ValueError(f"not an oci: source: {source}")
    rest = source.removeprefix("oci:")
    path, _, tag = rest.partition(":")
    return Path(path), tag or None


def _blob(layout: Path, digest: str) -> bytes:
    algo, _, hexdigest = digest.partition(":")
    return (layout / "blobs" / algo / hexdigest).read_bytes()


def _write_blob(layout: Path, data: bytes) -> str:
    hexdigest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / hexdigest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"sha256:{hexdigest}"


def _read_index(layout: Path) -> dict[str, Any]:
    index: dict[str, Any] = json.loads((layout / "index.json").read_text())
    return index


def descriptor(layout: Path, tag: str | None) -> dict[str, Any]:
    """The index.json descriptor for TAG (or the only one, when TAG is None)."""
    manifests: list[dict[str, Any]] = _read_index(layout).get("manifests", [])
    if tag is None:
        if len(manifests) != 1:
            raise ValueError(f"{layout}: {len(manifests)} manifests and no tag given")
        return manifests[0]
    for desc in manifests:
        if desc.get("annotations", {}).get(REF_NAME) == tag:
            return desc
    raise KeyError(f"{layout}: no tag {tag!r}")


def is_index_source(source: str) -> bool:
    """True when an 'oci:' source names an image index (needs skopeo copy --all to keep every platform)."""
    if not source.startswith("oci:"):
        return False
    layout, tag = split_oci_source(source)
    return descriptor(layout, tag).get("mediaType") == MEDIA_INDEX


def manifest(layout: Path, tag: str | None) -> dict[str, Any]:
    desc = descriptor(layout, tag)
    data: dict[str, Any] = json.loads(_blob(layout, desc["digest"]))
    return data


def image_config(layout: Path, tag: str | None) -> dict[str, Any]:
    """The OCI image config blob (architecture, os, config.{Entrypoint,Cmd,User,...}) of a single-arch tag."""
    man = manifest(layout, tag)
    if man.get("mediaType") == MEDIA_INDEX or "manifests" in man:
        raise ValueError(f"{layout}:{tag} is an image index, not one image")
    data: dict[str, Any] = json.loads(_blob(layout, man["config"]["digest"]))
    return data


# --------------------------------------------------------------------------------------------------
# Rootfs helpers for populate callbacks


def put_file(
    root: Path, rel: str, content: str | bytes, *, mode: int = 0o644, uid: int = 0, gid: int = 0
) -> Path:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    # chown clears setuid/setgid bits, so the mode goes on last.
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def put_dir(root: Path, rel: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Path:
    path = root / rel.lstrip("/")
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    # mkdir is subject to the umask; chmod is not (1777 and 2770 need this).
    path.chmod(mode)
    return path


def install_busybox(root: Path, *, symlinks: Sequence[str] = (), hardlinks: Sequence[str] = ("sh",)) -> None:
    """/bin/busybox from the host (static), plus applets in /bin as hardlinks or relative symlinks."""
    bindir = put_dir(root, "bin")
    target = bindir / "busybox"
    shutil.copyfile(BUSYBOX, target)
    target.chmod(0o755)
    for name in hardlinks:
        os.link(target, bindir / name)
    for name in symlinks:
        (bindir / name).symlink_to("busybox")


# --------------------------------------------------------------------------------------------------
# Builders


# One layer of layered_image: a function that changes the rootfs (umoci repack records the change,
# deletions as whiteouts), or a ready tar file added as it is (for opaque directories, which umoci
# never writes).
LayerStep = Callable[[Path], None] | Path


def build_image(
    layout: Path,
    tag: str,
    populate: Callable[[Path], None],
    **config: Any,
) -> str:
    """umoci new + unpack + populate(rootfs) + repack + config. Returns 'oci:LAYOUT:TAG'.

    An existing TAG in LAYOUT is replaced by a fresh image; other tags stay.
    An empty entrypoint/cmd (None or []) means none at all in the image config.
    """
    return layered_image(layout, tag, [populate], **config)


def layered_image(
    layout: Path,
    tag: str,
    steps: Sequence[LayerStep],
    *,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    volumes: Sequence[str] = (),
    exposed_ports: Sequence[str] = (),
    stop_signal: str | None = None,
    workdir: str | None = None,
    labels: Mapping[str, str] | None = None,
    arch: str = "amd64",
    os_name: str = "linux",
    base: str | None = None,
) -> str:
    """An image with one layer per step (bottom first). Returns 'oci:LAYOUT:TAG'.

    BASE names another tag of LAYOUT to start from (its layers, byte for byte, as `FROM` gives them):
    images built from one base share its layers' digests only so. Rebuilding a step gives new
    digests (new file times)."""
    _require_root()
    layout = layout.absolute()
    if not layout.exists():
        layout.parent.mkdir(parents=True, exist_ok=True)
        run(["umoci", "init", "--layout", layout])
    image = f"{layout}:{tag}"
    if base is not None:
        run(["umoci", "tag", "--image", f"{layout}:{base}", tag])
    else:
        run(["umoci", "new", "--image", image])
    for step in steps:
        if isinstance(step, Path):
            run(["umoci", "raw", "add-layer", "--image", image, step])
            continue
        # The bundle lives next to the layout: same filesystem, and the caller's directory gets cleaned up.
        scratch = Path(tempfile.mkdtemp(prefix=f".bundle-{tag}-", dir=layout.parent))
        try:
            bundle = scratch / "bundle"
            run(["umoci", "unpack", "--image", image, bundle])
            step(bundle / "rootfs")
            run(["umoci", "repack", "--image", image, bundle])
        finally:
            shutil.rmtree(scratch)

    argv: list[str | Path] = ["umoci", "config", "--image", image, "--architecture", arch, "--os", os_name]
    # `umoci new` starts with neither, but clearing makes "None means absent" hold even if that changes.
    if entrypoint:
        argv += [f"--config.entrypoint={a}" for a in entrypoint]
    else:
        argv.append("--clear=config.entrypoint")
    if cmd:
        argv += [f"--config.cmd={a}" for a in cmd]
    else:
        argv.append("--clear=config.cmd")
    if user is not None:
        argv.append(f"--config.user={user}")
    argv += [f"--config.env={k}={v}" for k, v in (env or {}).items()]
    argv += [f"--config.volume={v}" for v in volumes]
    argv += [f"--config.exposedports={p}" for p in exposed_ports]
    if stop_signal is not None:
        argv.append(f"--config.stopsignal={stop_signal}")
    if workdir is not None:
        argv.append(f"--config.workingdir={workdir}")
    argv += [f"--config.label={k}={v}" for k, v in (labels or {}).items()]
    run(argv)
    # Replaced tags leave their old blobs behind.
    run(["umoci", "gc", "--layout", layout])
    return f"oci:{layout}:{tag}"


ENTRYPOINT_SH = r"""#!/bin/sh
# Behaves like valkey's docker-entrypoint.sh: started as root, it hands /data to the app user, then
# drops privileges and re-runs itself as that user.
set -eu
if [ "$(id -u)" = 0 ]; then
    echo "entrypoint ran as $(id -u):$(id -g)" > /data/.entrypoint-ran
    find /data \! -user app -exec chown app '{}' +
    # Debian's busybox setpriv has no --reuid/--regid; busybox su changes uid, gid and groups and
    # execs in place (no fork), which is what gosu/setpriv do for valkey.
    exec su -s /bin/sh app -c 'exec "$0" "$@"' "$0" "$@"
fi
if [ "${1:-}" != serve ]; then
    exec "$@"
fi
# busybox httpd has no SIGTERM handler, and PID 1 of a pid namespace ignores signals it does not
# handle: keep this shell as PID 1 to turn SIGTERM into a prompt exit.
echo "${APP_VERSION:-service} serving on port $PORT as $(id -u):$(id -g)"
httpd -f -v -p "$PORT" -h /www &
child=$!
# Says which signal stopped it, so tests can check that the image's STOPSIGNAL is the one sent.
stop() {
    echo "stopping on $1"
    kill -TERM "$child" 2>/dev/null || true
    wait "$child" || true
    exit 0
}
trap 'stop SIGTERM' TERM
trap 'stop SIGINT' INT
trap 'stop SIGQUIT' QUIT
wait "$child"
"""

_CGI_HEADER = r"printf 'Content-Type: text/plain\r\n\r\n'"
_CGI_KEY_CHECK = r"""case "$key" in
    ''|.|..|*[!A-Za-z0-9._-]*)
        printf 'Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nbad key\n'
        exit 0 ;;
esac
"""

CGI_SCRIPTS = {
    # GET /cgi-bin/put?KEY=VALUE writes VALUE (not URL-decoded) to /data/KEY.
    "put": "#!/bin/sh\n"
    + r"""case "$QUERY_STRING" in
    *=*) ;;
    *) printf 'Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nusage: put?key=value\n'; exit 0 ;;
esac
key=${QUERY_STRING%%=*}
value=${QUERY_STRING#*=}
"""
    + _CGI_KEY_CHECK
    + r"""if printf '%s' "$value" > "/data/$key" 2>/dev/null; then
    printf 'Content-Type: text/plain\r\n\r\nok\n'
else
    printf 'Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\n'
    printf 'cannot write /data/%s as uid %s\n' "$key" "$(id -u)"
fi
""",
    # GET /cgi-bin/get?KEY returns /data/KEY's content, 404 when absent.
    "get": "#!/bin/sh\n"
    + "key=$QUERY_STRING\n"
    + _CGI_KEY_CHECK
    + r"""if [ -f "/data/$key" ]; then
    printf 'Content-Type: text/plain\r\n\r\n'
    cat "/data/$key"
else
    printf 'Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno such key\n'
fi
""",
    "whoami": "#!/bin/sh\n" + _CGI_HEADER + '\necho "$(id -u):$(id -g)"\n',
    "env": "#!/bin/sh\n" + _CGI_HEADER + "\nenv\n",
}

SERVICE_APPLETS = [
    *("cat", "chown", "cut", "dd", "echo", "env", "false", "find", "grep", "head", "httpd", "id"),
    *("kill", "ls", "mkdir", "printf", "ps", "rm", "sed", "setpriv", "sleep", "stat", "su", "test"),
    *("touch", "true", "unshare", "wc"),
]

ETC_PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:999:999:app:/data:/bin/sh\n"  # noqa: S105
ETC_GROUP = "root:x:0:\napp:x:999:\n"


def _populate_service(root: Path, version_text: str) -> None:
    install_busybox(root, symlinks=SERVICE_APPLETS, hardlinks=("sh",))
    put_file(root, "etc/passwd", ETC_PASSWD)
    put_file(root, "etc/group", ETC_GROUP)
    put_dir(root, "tmp", mode=0o1777)
    put_dir(root, "root", mode=0o700)
    put_dir(root, "run")
    (root / "var").mkdir(mode=0o755)
    (root / "var/run").symlink_to("../run")
    put_dir(root, "data")
    put_dir(root, "home/app", mode=0o750, uid=APP_UID, gid=APP_GID)
    put_file(root, "home/app/owned.txt", "owned by app\n", mode=0o640, uid=APP_UID, gid=APP_GID)
    put_dir(root, "var/lib/app", mode=0o750, uid=APP_UID, gid=APP_GID)
    put_dir(root, "var/spool/app", mode=0o2770, uid=APP_UID, gid=APP_GID)
    put_dir(root, "usr/bin")
    put_file(root, "usr/bin/suidprobe", "#!/bin/sh\necho suidprobe\n", mode=0o4755)
    put_file(root, "usr/local/bin/entrypoint.sh", ENTRYPOINT_SH, mode=0o755)
    put_file(root, "www/index.html", f"{version_text}\n")
    for name, script in CGI_SCRIPTS.items():
        put_file(root, f"www/cgi-bin/{name}", script, mode=0o755)


def service_image(
    layout: Path, tag: str, *, port: int, version_text: str, stop_signal: str = "SIGTERM"
) -> str:
    """The valkey-like test service: root entrypoint chowns /data, drops to app (999:999), serves HTTP.

    Endpoints on PORT: / (index.html = version_text), /cgi-bin/put?k=v, /cgi-bin/get?k,
    /cgi-bin/whoami ('999:999'), /cgi-bin/env. It prints "VERSION_TEXT serving on port PORT as UID:GID"
    when it starts and "stopping on SIGNAL" when SIGTERM, SIGINT or SIGQUIT stops it.
    """
    return build_image(
        layout,
        tag,
        lambda root: _populate_service(root, version_text),
        entrypoint=["/usr/local/bin/entrypoint.sh"],
        cmd=["serve"],
        env={"PATH": DEFAULT_PATH, "PORT": str(port), "APP_VERSION": version_text},
        volumes=["/data"],
        exposed_ports=[f"{port}/tcp"],
        stop_signal=stop_signal,
        workdir="/data",
        labels={
            "org.opencontainers.image.title": "ctr2svc-test-service",
            "org.opencontainers.image.version": version_text,
        },
    )


def _populate_busybox_only(root: Path) -> None:
    install_busybox(root, hardlinks=("sh",))


def noentry_image(layout: Path, tag: str) -> str:
    """busybox only, no Entrypoint and no Cmd (umoci's runtime config then falls back to args ['sh'])."""
    return build_image(layout, tag, _populate_busybox_only, entrypoint=None, cmd=None)


def multiarch_image(layout: Path, tag: str, *, arches: Sequence[str]) -> str:
    """An image index under TAG with one manifest per arch (each also tagged TAG-ARCH).

    umoci cannot write an index, so it is written here; push it with skopeo copy --all.
    """
    if not arches:
        raise ValueError("arches must not be empty")
    layout = layout.absolute()
    entries: list[dict[str, Any]] = []
    for arch in arches:
        arch_tag = f"{tag}-{arch}"
        build_image(
            layout,
            arch_tag,
            _populate_busybox_only,
            # Same busybox binary for every arch: only the metadata is under test.
            cmd=["/bin/busybox", "echo", arch],
            env={"PATH": DEFAULT_PATH},
            labels={"ctr2svc.test.arch": arch},
            arch=arch,
        )
        desc = descriptor(layout, arch_tag)
        platform: dict[str, str] = {"architecture": arch, "os": "linux"}
        if arch in _VARIANTS:
            platform["variant"] = _VARIANTS[arch]
        entries.append(
            {
                "mediaType": desc["mediaType"],
                "digest": desc["digest"],
                "size": desc["size"],
                "platform": platform,
            }
        )
    body = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries}).encode()
    digest = _write_blob(layout, body)
    index = _read_index(layout)
    others = [d for d in index.get("manifests", []) if d.get("annotations", {}).get(REF_NAME) != tag]
    others.append(
        {"mediaType": MEDIA_INDEX, "digest": digest, "size": len(body), "annotations": {REF_NAME: tag}}
    )
    index["manifests"] = others
    (layout / "index.json").write_text(json.dumps(index))
    return f"oci:{layout}:{tag}"


# --------------------------------------------------------------------------------------------------
# Other transports


def _copy(source: str, dest: str, *, all_images: bool | None) -> None:
    if all_images is None:
        all_images = is_index_source(source)
    argv = ["skopeo", "--insecure-policy", "copy"]
    if all_images:
        argv.append("--all")
    run([*argv, source, dest])


def docker_archive(source: str, path: Path, ref: str) -> str:
    """What `docker save REF` would produce. Returns 'docker-archive:PATH' (one image, no ref needed)."""
    path = path.absolute()
    path.unlink(missing_ok=True)  # skopeo refuses to append to an existing docker-archive
    # docker-archive holds one image: from an index skopeo picks the host's platform.
    _copy(source, f"docker-archive:{path}:{ref}", all_images=False)
    return f"docker-archive:{path}"


def oci_archive(source: str, path: Path, tag: str, *, all_images: bool | None = None) -> str:
    """An OCI layout in a tar file. Returns 'oci-archive:PATH' (it holds one tag, so none is needed)."""
    path = path.absolute()
    path.unlink(missing_ok=True)
    _copy(source, f"oci-archive:{path}:{tag}", all_images=all_images)
    return f"oci-archive:{path}"


# --------------------------------------------------------------------------------------------------
# Running an unpacked image under runc in tests


def unpack(source: str, bundle: Path) -> Path:
    """umoci unpack an 'oci:' source into BUNDLE (as root, real owners). Returns BUNDLE."""
    layout, tag = split_oci_source(source)
    image = f"{layout}:{tag}" if tag else str(layout)
    run(["umoci", "unpack", "--image", image, bundle])
    return bundle


TEST_CAPS = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETGID",
    "CAP_SETUID",
]


def patch_bundle_for_test(
    bundle: Path,
    *,
    binds: Mapping[str, Path] | None = None,
    env: Mapping[str, str] | None = None,
    caps: Sequence[str] | None = TEST_CAPS,
    host_network: bool = True,
) -> dict[str, Any]:
    """Make umoci's config.json runnable by `runc run` from a test: no terminal, the host network,
    BINDS (container path -> host dir) replacing umoci's tmpfs volume mounts, CAPS (None keeps
    umoci's three), extra ENV."""
    path = bundle / "config.json"
    spec: dict[str, Any] = json.loads(path.read_text())
    process = spec["process"]
    process["terminal"] = False
    if caps is not None:
        for kind in ("bounding", "effective", "permitted"):
            process.setdefault("capabilities", {})[kind] = list(caps)
    if env:
        keep = [e for e in process.get("env", []) if e.partition("=")[0] not in env]
        process["env"] = keep + [f"{k}={v}" for k, v in env.items()]
    linux = spec["linux"]
    if host_network:
        linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
    binds = binds or {}
    mounts = [m for m in spec["mounts"] if m["destination"] not in binds]
    for dest, src in binds.items():
        mounts.append({"destination": dest, "type": "bind", "source": str(src), "options": ["rbind", "rw"]})
    spec["mounts"] = mounts
    path.write_text(json.dumps(spec, indent=2))
    return spec


def mode_of(path: Path) -> int:
    """Permission bits including setuid/setgid/sticky, without following symlinks."""
    return stat.S_IMODE(path.lstat().st_mode)


def layered_service_image(layout: Path, tag: str, *, port: int, version_text: str) -> str:
    """service_image() in two layers, for shared-layer packages: the service itself at the bottom, the
    same for every tag of LAYOUT (built once, as a FROM base), and its index page on top."""
    config: dict[str, Any] = {
        "entrypoint": ["/usr/local/bin/entrypoint.sh"],
        "cmd": ["serve"],
        "env": {"PATH": DEFAULT_PATH, "PORT": str(port), "APP_VERSION": version_text},
        "volumes": ["/data"],
        "exposed_ports": [f"{port}/tcp"],
        "stop_signal": "SIGTERM",
        "workdir": "/data",
    }
    base = "service-base"
    if not (layout / "index.json").exists() or base not in {
        d.get("annotations", {}).get(REF_NAME) for d in _read_index(layout)["manifests"]
    }:
        layered_image(layout, base, [lambda root: _populate_service(root, "base")], **config)

    def top(root: Path) -> None:
        put_file(root, "www/index.html", f"{version_text}\n")

    return layered_image(layout, tag, [top], base=base, **config)


WEB_ENTRYPOINT = r"""#!/bin/sh
# Serves /www on port 80 and on 9090 (HTTP_PORT and SECOND_PORT say otherwise); SIGTERM stops both
# (PID 1 ignores signals it does not handle).
httpd -f -p "${HTTP_PORT:-80}" -h /www &
a=$!
httpd -f -p "${SECOND_PORT:-9090}" -h /www &
b=$!
trap 'kill $a $b; exit 0' TERM
wait
"""


def web_image(layout: Path, tag: str, text: str) -> str:
    """A web server on ports 80 and 9090 answering TEXT, with busybox's wget, nslookup and ip for
    looking around from inside (the network tests)."""

    def populate(root: Path) -> None:
        applets = ("cat", "echo", "hostname", "httpd", "kill", "nslookup", "sleep", "wget", "ip")
        install_busybox(root, symlinks=applets)
        put_dir(root, "tmp", mode=0o1777)
        put_dir(root, "etc")
        put_file(root, "www/index.html", f"{text}\n")
        put_file(root, "entrypoint.sh", WEB_ENTRYPOINT, mode=0o755)

    return build_image(
        layout,
        tag,
        populate,
        entrypoint=["/entrypoint.sh"],
        env={"PATH": DEFAULT_PATH},
        exposed_ports=["80/tcp"],
    )


# --------------------------------------------------------------------------------------------------
# Crafted images: layers no build tool would write, as a hostile image's author writes them


MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


def tar_member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes = b"",
    *,
    link: str = "",
    mode: int | None = None,
    uid: int = 0,
    gid: int = 0,
    size: int | None = None,
    mtime: float = 1_700_000_000,
) -> tuple[tarfile.TarInfo, bytes]:
    """One member of a crafted tar: NAME exactly as given (no normalising), of KIND (a tarfile type),
    with DATA for a regular file, LINK for a link. SIZE overrides the header's size field."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode if mode is not None else (0o755 if kind == tarfile.DIRTYPE else 0o644)
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    info.linkname = link
    info.size = (
        size if size is not None else (len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0)
    )
    return info, data


def tar_bytes(members: Sequence[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A tar of MEMBERS in that order, duplicates and all (tarfile writes what it is given)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def tar_exact(members: Sequence[tuple[tarfile.TarInfo, bytes]]) -> tuple[bytes, bytes]:
    """(the members' blocks, the end-of-archive marker): a tar with no padding after its two zero
    blocks, so that a test can cut it or add to it at an exact place. Data must not end in zeros."""
    whole = tar_bytes(members)
    body = whole.rstrip(b"\0")
    body += b"\0" * (-len(body) % tarfile.BLOCKSIZE)
    return body, b"\0" * (2 * tarfile.BLOCKSIZE)


def busybox_layer() -> bytes:
    """A bottom layer: the host's static busybox as /bin/busybox and /bin/sh (a hard link), /tmp."""
    return tar_bytes(
        [
            tar_member("bin/", tarfile.DIRTYPE),
            tar_member("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755),
            tar_member("bin/sh", tarfile.LNKTYPE, link="bin/busybox"),
            tar_member("tmp/", tarfile.DIRTYPE, mode=0o1777),
        ]
    )


@dataclass(frozen=True)
class RawLayer:
    """One layer of crafted_image: TAR as its config's diff_id describes it, stored COMPRESSED (gzip,
    zstd or none). BLOB replaces the stored bytes (a corrupt or cut stream); DIFF_ID the config's
    digest of the uncompressed tar."""

    tar: bytes
    compression: str = "gzip"
    blob: bytes | None = None
    diff_id: str | None = None

    def stored(self) -> bytes:
        if self.blob is not None:
            return self.blob
        if self.compression == "gzip":
            return gzip.compress(self.tar, mtime=0)
        if self.compression == "zstd":
            return run_bytes(["zstd", "-q", "-c"], self.tar)
        return self.tar


def run_bytes(argv: Sequence[str], data: bytes) -> bytes:
    proc = subprocess.run(list(argv), input=data, capture_output=True, check=True, timeout=120)
    return proc.stdout


def crafted_image(
    layout: Path,
    tag: str,
    layers: Sequence[bytes | RawLayer],
    *,
    cmd: Sequence[str] = ("/bin/sh",),
    user: str | None = None,
) -> str:
    """An OCI image written blob by blob, with LAYERS (bottom first; bytes are a gzip layer) exactly
    as given: no tool reads, fixes or refuses them on the way. Returns 'oci:LAYOUT:TAG'."""
    layout = layout.absolute()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    raws = [x if isinstance(x, RawLayer) else RawLayer(x) for x in layers]
    descriptors = []
    for raw in raws:
        data = raw.stored()
        descriptors.append(
            {
                "mediaType": MEDIA_LAYER[raw.compression],
                "digest": _write_blob(layout, data),
                "size": len(data),
            }
        )
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": list(cmd), "Env": [f"PATH={DEFAULT_PATH}"], **({"User": user} if user else {})},
        "rootfs": {
            "type": "layers",
            "diff_ids": [x.diff_id or "sha256:" + hashlib.sha256(x.tar).hexdigest() for x in raws],
        },
    }
    config_bytes = json.dumps(config).encode()
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {
                "mediaType": MEDIA_CONFIG,
                "digest": _write_blob(layout, config_bytes),
                "size": len(config_bytes),
            },
            "layers": descriptors,
        }
    ).encode()
    digest = _write_blob(layout, body)
    index: dict[str, Any] = (
        _read_index(layout) if (layout / "index.json").exists() else {"schemaVersion": 2, "manifests": []}
    )
    others = [d for d in index["manifests"] if d.get("annotations", {}).get(REF_NAME) != tag]
    others.append(
        {"mediaType": MEDIA_MANIFEST, "digest": digest, "size": len(body), "annotations": {REF_NAME: tag}}
    )
    index["manifests"] = others
    (layout / "index.json").write_text(json.dumps(index))
    return f"oci:{layout}:{tag}"


def generated_files(count: int, links: int = 3) -> Callable[[Path], None]:
    """A layer step: COUNT files of 1 MiB under /srv/generated, each half random bytes (which no
    compressor shrinks) and half zeros, seeded so that every run writes the same bytes, and hard links
    to the first LINKS of them."""

    def populate(root: Path) -> None:
        where = root / "srv" / "generated"
        where.mkdir(parents=True)
        rng = random.Random(24)  # noqa: S311 - test data, not secrets
        for number in range(count):
            (where / f"{number:04}.bin").write_bytes(rng.randbytes(1 << 19) + bytes(1 << 19))
        for number in range(links):
            os.link(where / f"{number:04}.bin", where / f"link-{number}.bin")

    return populate


# The versions of rollback_image: 1.0 writes its data file and serves it, 2.0 rewrites it and exits 1
# (a migration that breaks the start), 3.0 serves it (the fixed version).
ROLLBACK_VERSIONS = ("1.0", "2.0", "3.0")


def rollback_image(layout: Path, version: str, port: int) -> str:
    """The service of the upgrades-that-roll-back tests (tests/vm/test_rollback.py,
    tests/integration/test_apk_rollback.py): busybox httpd serving the volume /data on PORT."""
    # sh as PID 1 with httpd as its child: busybox httpd as PID 1 ignores SIGTERM.
    serve = f"""trap 'kill "$pid"; exit 0' TERM INT
httpd -f -p {port} -h /data & pid=$!
wait "$pid"
"""
    script = {
        "1.0": '[ -f /data/index.html ] || echo "written by 1.0" >/data/index.html\n' + serve,
        "2.0": 'echo "migrated by 2.0" >/data/index.html\necho "2.0: cannot start" >&2\nexit 1\n',
        "3.0": serve,
    }[version]

    def populate(root: Path) -> None:
        install_busybox(root, hardlinks=("sh", "httpd"))
        put_file(root, "/serve.sh", "#!/bin/sh\n" + script, mode=0o755)
        (root / "data").mkdir()

    return build_image(
        layout, version, populate, entrypoint=["/serve.sh"], volumes=["/data"], env={"PATH": "/bin"}
    )
