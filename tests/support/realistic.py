"""Realistic test images made from real Debian 12 packages, shaped like the official images people run.

One ``mmdebstrap --variant=minbase`` tree (docs, man pages and locales left out by dpkg path-excludes)
is the base layer every image shares; each image adds one layer: its Debian packages installed with
apt in a chroot of that tree, then its files (entrypoints and configuration written the way the
official images do it) and a few commands. umoci turns them into OCI layouts with Docker-style
config (Entrypoint, Cmd, User, StopSignal, Volumes, ExposedPorts, Env, WorkingDir, Healthcheck).

Builds are cached under ``${CTR2SVC_TEST_CACHE:-/var/cache/ctr2svc-tests}/images/``: the base under a
key hashing its build script and package list, every image under a key hashing the base key and its
own spec. A build runs under a file lock in a temporary directory renamed into place when complete,
like the VM disk (tests/vm/vmhost.py). Needs root, mmdebstrap, umoci, unshare and Debian's mirror
(``CTR2SVC_DEBIAN_MIRROR``, default http://deb.debian.org/debian; the security archive from
``CTR2SVC_DEBIAN_SECURITY_MIRROR``).

    source = build("nginx")           # 'oci:/var/cache/ctr2svc-tests/images/nginx-<key>/layout:latest'
    SPECS["nginx"].port               # where it listens
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .images import MEDIA_MANIFEST, REF_NAME, _blob, _read_index, _write_blob, descriptor, put_file, run

log = logging.getLogger(__name__)

TAG = "latest"
#: Part of every cache key: bump it when the Python build steps below change (the scripts and the specs
#: are hashed themselves).
BUILDER_VERSION = "1"
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: dpkg options of the base tree (kept in it, so that apt in the image layers honours them too).
DPKG_EXCLUDES: tuple[str, ...] = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/groff/*",
)

# mmdebstrap the base tree into $1 and keep apt's package lists in $2 (the image itself gets none,
# like Debian's official images); the mirrors follow.
BASE_SH = r"""
tree=$1 lists=$2 mirror=$3 security=$4
shift 4
dpkgopts=()
for opt in "$@"; do dpkgopts+=("--dpkgopt=$opt"); done
mmdebstrap --mode=root --variant=minbase --format=directory "${dpkgopts[@]}" \
    --customize-hook="cp -a \"\$1/var/lib/apt/lists/.\" $(printf %q "$lists")/" \
    bookworm "$tree" \
    "deb $mirror bookworm main" "deb $mirror bookworm-updates main" "deb $security bookworm-security main"
# What a container runtime provides at run time, not part of an image.
rm -f "$tree/etc/hostname" "$tree/etc/resolv.conf"
: >"$tree/etc/machine-id"
"""

# Runs in a private mount namespace: installs packages $4... into the tree $1 with apt in a chroot,
# the package lists from $2 and a shared download cache $3; $PRE runs in the chroot first.
INSTALL_SH = r"""
root=$1 lists=$2 archives=$3
shift 3
mount --make-rprivate /
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mkdir -p "$archives"
mount --bind "$lists" "$root/var/lib/apt/lists"
mount --bind "$archives" "$root/var/cache/apt/archives"
had_resolv=no
[ -e "$root/etc/resolv.conf" ] && had_resolv=yes
touch "$root/etc/resolv.conf"
mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
if [ -n "${PRE:-}" ]; then
    chroot "$root" /bin/sh -euc "$PRE"
fi
if [ $# -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends \
        -o Dpkg::Use-Pty=0 "$@"
fi
umount "$root/etc/resolv.conf" "$root/var/cache/apt/archives" "$root/var/lib/apt/lists" "$root/proc"
umount -R "$root/dev"
[ "$had_resolv" = yes ] || rm -f "$root/etc/resolv.conf"
rm -f "$root/usr/sbin/policy-rc.d" "$root/var/log/dpkg.log" "$root/var/log/alternatives.log"
rm -rf "$root"/var/log/apt/* "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
    "$root/var/cache/ldconfig/aux-cache"
"""


@dataclass(frozen=True)
class Health:
    test: tuple[str, ...]
    interval_s: int = 5
    timeout_s: int = 3
    retries: int = 3


@dataclass(frozen=True)
class Spec:
    """One realistic image: Debian packages on the shared base, files, commands, Docker config."""

    name: str
    packages: tuple[str, ...] = ()
    pre: str = ""  # shell run in the chroot before apt (e.g. create the service user with a fixed id)
    files: tuple[tuple[str, str, int], ...] = ()  # (path, content, mode), written after apt
    post: str = ""  # shell run in the chroot after the files are in place
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str | None = None
    env: tuple[tuple[str, str], ...] = (("PATH", DEBIAN_PATH),)
    volumes: tuple[str, ...] = ()
    port: int | None = None
    stop_signal: str | None = None
    workdir: str | None = None
    health: Health | None = None
    # What the log shows once the image's STOPSIGNAL made it shut down (checked by the tests).
    stop_message: str = ""
    # What the log shows once it serves.
    ready_message: str = ""
    description: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def stop_signal_name(self) -> str:
        return self.stop_signal or "SIGTERM"


# --------------------------------------------------------------------------------------------------
# The images

NGINX_PORT = 28080
POSTGRES_PORT = 25432
REDIS_PORT = 26379
HTTPD_PORT = 28081
PYAPP_PORT = 28082

NGINX_ENTRYPOINT = r"""#!/bin/sh
# As nginx's official /docker-entrypoint.sh: runs the /docker-entrypoint.d scripts, then the command.
set -e
if [ "$1" = nginx ] || [ "$1" = nginx-debug ]; then
    for f in /docker-entrypoint.d/*.sh; do
        [ -x "$f" ] && "$f"
    done
    echo "$0: Configuration complete; ready for start up"
fi
exec "$@"
"""

NGINX_SITE = f"""server {{
    listen {NGINX_PORT} default_server;
    root /usr/share/nginx/html;
    index index.html;
    location / {{
        try_files $uri $uri/ =404;
    }}
}}
"""

POSTGRES_ENTRYPOINT = r"""#!/bin/sh
# The docker-library/postgres entrypoint's pattern, short: as root, create and hand PGDATA and the
# socket directory to postgres, then re-run as postgres (gosu); initdb on first start; exec the server.
set -eu
if [ "${1#-}" != "$1" ]; then
    set -- postgres "$@"
fi
if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA"
    find "$PGDATA" \! -user postgres -exec chown postgres '{}' +
    chmod 00700 "$PGDATA"
    mkdir -p /var/run/postgresql
    find /var/run/postgresql \! -user postgres -exec chown postgres '{}' +
    chmod 03775 /var/run/postgresql
    exec gosu postgres "$0" "$@"
fi
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    # The official image with POSTGRES_HOST_AUTH_METHOD=trust: no password anywhere.
    initdb --username=postgres --auth=trust -E UTF8 --no-locale -D "$PGDATA"
    printf '\nhost all all all trust\n' >>"$PGDATA/pg_hba.conf"
    printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
    echo
    echo 'PostgreSQL init process complete; ready for start up.'
    echo
fi
exec "$@"
"""

REDIS_ENTRYPOINT = r"""#!/bin/sh
# As the official redis/valkey entrypoint: as root, give the data dir to redis and drop privileges
# with gosu; then exec the server.
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
    set -- redis-server "$@"
fi
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec gosu redis "$0" "$@"
fi
um="$(umask)"
if [ "$um" = 0022 ]; then
    umask 0077
fi
exec "$@"
"""

HTTPD_CONF = f"""ServerRoot "/usr/local/apache2"
Listen {HTTPD_PORT}
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule mime_module /usr/lib/apache2/modules/mod_mime.so
LoadModule dir_module /usr/lib/apache2/modules/mod_dir.so
User daemon
Group daemon
ServerName localhost
ServerAdmin you@example.com
PidFile logs/httpd.pid
DefaultRuntimeDir logs
DocumentRoot "/usr/local/apache2/htdocs"
<Directory />
    AllowOverride none
    Require all denied
</Directory>
<Directory "/usr/local/apache2/htdocs">
    Require all granted
</Directory>
DirectoryIndex index.html
ErrorLog /proc/self/fd/2
LogLevel info
LogFormat "%h %l %u %t \\"%r\\" %>s %b" common
CustomLog /proc/self/fd/1 common
TypesConfig /etc/mime.types
"""

HTTPD_FOREGROUND = r"""#!/bin/sh
# As the official httpd image's httpd-foreground.
set -e
rm -f /usr/local/apache2/logs/httpd.pid
exec httpd -d /usr/local/apache2 -f conf/httpd.conf -DFOREGROUND "$@"
"""

PYAPP = r"""import http.server
import os
import signal
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from python as {os.getuid()}:{os.getgid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def stop(signum, frame):
    print(f"stopping on {signal.Signals(signum).name}", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
port = int(os.environ["PORT"])
print(f"serving on port {port} as {os.getuid()}:{os.getgid()}", flush=True)
http.server.ThreadingHTTPServer(("", port), Handler).serve_forever()
"""

MULTI_APP = r"""#!/bin/sh
# A long-running shell service on plain Debian: a heartbeat in one volume, says which signal stops it.
case "${1:-run}" in
health)
    test -f /srv/data/heartbeat
    ;;
run)
    for sig in TERM INT QUIT HUP USR1; do
        # shellcheck disable=SC2064 # the signal's name goes in now, on purpose
        trap "echo stopping on SIG$sig; exit 0" "$sig"
    done
    echo "app started as $(id -u):$(id -g) in $(pwd)"
    while :; do
        date +%s >/srv/data/heartbeat
        sleep 1 &
        wait $!
    done
    ;;
*)
    exec "$@"
    ;;
esac
"""

SPECS: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec(
            name="nginx",
            description="Debian's nginx as the official image runs it: logs linked to /dev/stdout and "
            "/dev/stderr, master as root, workers as www-data, daemon off, STOPSIGNAL SIGQUIT",
            packages=("nginx-light",),
            files=(
                ("/docker-entrypoint.sh", NGINX_ENTRYPOINT, 0o755),
                ("/etc/nginx/sites-available/default", NGINX_SITE, 0o644),
                ("/usr/share/nginx/html/index.html", "conformance nginx\n", 0o644),
            ),
            post="mkdir -p /docker-entrypoint.d\n"
            "ln -sf /dev/stdout /var/log/nginx/access.log\n"
            "ln -sf /dev/stderr /var/log/nginx/error.log\n"
            # The official image logs at notice: its shutdown shows in the log.
            "sed -i 's|error_log /var/log/nginx/error.log;|error_log /var/log/nginx/error.log notice;|'"
            " /etc/nginx/nginx.conf\n"
            "grep -q 'error.log notice' /etc/nginx/nginx.conf\n",
            entrypoint=("/docker-entrypoint.sh",),
            cmd=("nginx", "-g", "daemon off;"),
            port=NGINX_PORT,
            stop_signal="SIGQUIT",
            ready_message="Configuration complete; ready for start up",
            stop_message="gracefully shutting down",
        ),
        Spec(
            name="postgres",
            description="Debian's PostgreSQL 15 with the docker-library entrypoint pattern (chown PGDATA "
            "as root, gosu to postgres, initdb on first start), STOPSIGNAL SIGINT",
            pre="groupadd -r postgres --gid=999\n"
            "useradd -r -g postgres --uid=999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres\n"
            "mkdir -p /var/lib/postgresql\nchown -R postgres:postgres /var/lib/postgresql\n",
            packages=("postgresql-15", "gosu"),
            files=(("/usr/local/bin/docker-entrypoint.sh", POSTGRES_ENTRYPOINT, 0o755),),
            # The package's own cluster is not the image's: the entrypoint makes one in PGDATA.
            post="rm -rf /var/lib/postgresql/15 /etc/postgresql/15\n"
            "mkdir -p /var/run/postgresql && chown -R postgres:postgres /var/run/postgresql"
            " && chmod 3777 /var/run/postgresql\n"
            "mkdir -p /var/lib/postgresql/data && chown postgres:postgres /var/lib/postgresql/data"
            " && chmod 1777 /var/lib/postgresql/data\n",
            entrypoint=("docker-entrypoint.sh",),
            cmd=("postgres",),
            env=(
                ("PATH", f"/usr/lib/postgresql/15/bin:{DEBIAN_PATH}"),
                ("PGDATA", "/var/lib/postgresql/data"),
                ("PGPORT", str(POSTGRES_PORT)),
            ),
            volumes=("/var/lib/postgresql/data",),
            port=POSTGRES_PORT,
            stop_signal="SIGINT",
            ready_message="database system is ready to accept connections",
            stop_message="received fast shutdown request",
        ),
        Spec(
            name="redis",
            description="Debian's redis-server with the official entrypoint pattern (chown /data, gosu)",
            pre="groupadd -r -g 999 redis\nuseradd -r -g redis -u 999 redis\n",
            packages=("redis-server", "gosu"),
            files=(("/usr/local/bin/docker-entrypoint.sh", REDIS_ENTRYPOINT, 0o755),),
            post="mkdir /data && chown redis:redis /data\n",
            entrypoint=("docker-entrypoint.sh",),
            cmd=("redis-server", "--port", str(REDIS_PORT), "--protected-mode", "no"),
            volumes=("/data",),
            workdir="/data",
            port=REDIS_PORT,
            ready_message="Ready to accept connections",
            stop_message="Received SIGTERM scheduling shutdown",
        ),
        Spec(
            name="httpd",
            description="Debian's apache2-bin laid out as the official httpd image: logs to "
            "/proc/self/fd/1 and 2, children as daemon, STOPSIGNAL SIGWINCH",
            packages=("apache2-bin", "media-types"),
            files=(
                ("/usr/local/apache2/conf/httpd.conf", HTTPD_CONF, 0o644),
                (
                    "/usr/local/apache2/htdocs/index.html",
                    "<html><body><h1>It works!</h1></body></html>\n",
                    0o644,
                ),
                ("/usr/local/bin/httpd-foreground", HTTPD_FOREGROUND, 0o755),
            ),
            post="mkdir -p /usr/local/apache2/bin /usr/local/apache2/logs\n"
            "ln -s /usr/sbin/apache2 /usr/local/apache2/bin/httpd\n",
            cmd=("httpd-foreground",),
            env=(("PATH", f"/usr/local/apache2/bin:{DEBIAN_PATH}"), ("HTTPD_PREFIX", "/usr/local/apache2")),
            workdir="/usr/local/apache2",
            port=HTTPD_PORT,
            stop_signal="SIGWINCH",
            ready_message="resuming normal operations",
            stop_message="caught SIGWINCH, shutting down gracefully",
        ),
        Spec(
            name="pyapp",
            description="a Python web app (http.server) on a slim Python base, USER 10001 without a "
            "passwd entry",
            packages=("python3",),
            files=(("/app/server.py", PYAPP, 0o644),),
            cmd=("python3", "/app/server.py"),
            user="10001",
            env=(("PATH", DEBIAN_PATH), ("PYTHONUNBUFFERED", "1"), ("PORT", str(PYAPP_PORT))),
            workdir="/app",
            port=PYAPP_PORT,
            ready_message=f"serving on port {PYAPP_PORT} as 10001:0",
            stop_message="stopping on SIGTERM",
        ),
        Spec(
            name="debian",
            description="plain Debian 12 (its /var/run and /var/lock links) with a shell service, "
            "several VOLUMEs (seeded, one owned by uid 1000) and a HEALTHCHECK",
            files=(
                ("/usr/local/bin/app", MULTI_APP, 0o755),
                ("/srv/data/seed.txt", "seeded from the image\n", 0o644),
            ),
            post="mkdir -p /srv/cache/sub /var/log/app\n"
            "echo cached >/srv/cache/sub/item\n"
            "chown -R 1000:1000 /srv/cache && chmod 0750 /srv/cache\n",
            entrypoint=("/usr/local/bin/app",),
            cmd=("run",),
            volumes=("/srv/data", "/srv/cache", "/var/log/app"),
            workdir="/srv",
            health=Health(("CMD", "/usr/local/bin/app", "health")),
            ready_message="app started as 0:0 in /srv",
            stop_message="stopping on SIGTERM",
        ),
    )
}


# --------------------------------------------------------------------------------------------------
# Cache


def cache_root() -> Path:
    return Path(os.environ.get("CTR2SVC_TEST_CACHE") or "/var/cache/ctr2svc-tests") / "images"


def mirrors() -> tuple[str, str]:
    return (
        os.environ.get("CTR2SVC_DEBIAN_MIRROR") or "http://deb.debian.org/debian",
        os.environ.get("CTR2SVC_DEBIAN_SECURITY_MIRROR") or "http://deb.debian.org/debian-security",
    )


def _hash(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def base_key() -> str:
    # Mirrors are not part of the key: any Debian mirror gives the same archive.
    return _hash("base", BUILDER_VERSION, BASE_SH, *DPKG_EXCLUDES)


def image_key(name: str) -> str:
    spec = asdict(SPECS[name])
    return _hash("image", base_key(), INSTALL_SH, json.dumps(spec, sort_keys=True, default=str))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_tree(path: Path) -> None:
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def _cached(final: Path, build: Any) -> Path:
    """FINAL if complete, else build(tmp) under a lock and rename tmp into place."""
    done = final / "complete"
    if done.exists():
        return final
    with _locked(final.parent / f"{final.name}.lock"):
        if done.exists():
            return final
        for stale in final.parent.glob(f".build-{final.name}-*"):
            _remove_tree(stale)
        if final.exists():
            _remove_tree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=final.parent))
        started = time.monotonic()
        build(tmp)
        (tmp / "build-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
        (tmp / "complete").write_text("")
        tmp.rename(final)
    return final


def build_seconds(path: Path) -> float | None:
    try:
        return float((path / "build-seconds").read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# Building


def _bash(
    script: str,
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 1800,
    prefix: tuple[str, ...] = (),
) -> None:
    argv = [*prefix, "bash", "-euo", "pipefail", "-c", script, "build", *map(str, args)]
    full_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=full_env, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"image build step timed out after {timeout}s") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError(f"image build step failed (exit {proc.returncode}):\n{tail}")


def _build_base(tmp: Path) -> None:
    tree, lists = tmp / "tree", tmp / "lists"
    lists.mkdir()
    _bash(BASE_SH, tree, lists, *mirrors(), *DPKG_EXCLUDES)
    layout = tmp / "layout"
    run(["umoci", "init", "--layout", layout])
    run(["umoci", "new", "--image", f"{layout}:base"])
    bundle = tmp / "bundle"
    run(["umoci", "unpack", "--image", f"{layout}:base", bundle])
    # The whole tree as the one base layer (cp -a keeps owners, modes, links and hard links).
    run(["cp", "-a", f"{tree}/.", f"{bundle}/rootfs/"], timeout=600)
    (bundle / "rootfs").chmod(0o755)
    run(["umoci", "repack", "--image", f"{layout}:base", bundle], timeout=900)
    _remove_tree(bundle)
    _remove_tree(tree)


def base() -> Path:
    """The cached base: an OCI layout (tag 'base') and apt's package lists for the image layers."""
    return _cached(cache_root() / f"base-{base_key()}", _build_base)


def _set_health(layout: Path, tag: str, health: Health) -> None:
    """umoci cannot set a HEALTHCHECK: rewrite the config blob, the manifest and the index entry."""
    desc = descriptor(layout, tag)
    man = json.loads(_blob(layout, desc["digest"]))
    config = json.loads(_blob(layout, man["config"]["digest"]))
    config.setdefault("config", {})["Healthcheck"] = {
        "Test": list(health.test),
        "Interval": health.interval_s * 10**9,
        "Timeout": health.timeout_s * 10**9,
        "Retries": health.retries,
    }
    body = json.dumps(config).encode()
    man["config"] = {**man["config"], "digest": _write_blob(layout, body), "size": len(body)}
    mbody = json.dumps(man).encode()
    index = _read_index(layout)
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get(REF_NAME) == tag:
            entry.update(mediaType=MEDIA_MANIFEST, digest=_write_blob(layout, mbody), size=len(mbody))
    (layout / "index.json").write_text(json.dumps(index))


def _build_image(spec: Spec, tmp: Path) -> None:
    base_dir = base()
    layout = tmp / "layout"
    run(["cp", "-a", base_dir / "layout", layout])
    image = f"{layout}:{TAG}"
    run(["umoci", "tag", "--image", f"{layout}:base", TAG])
    run(["umoci", "rm", "--image", f"{layout}:base"])
    bundle = tmp / "bundle"
    run(["umoci", "unpack", "--image", image, bundle], timeout=600)
    rootfs = bundle / "rootfs"
    if spec.packages or spec.pre:
        _bash(
            INSTALL_SH,
            rootfs,
            base_dir / "lists",
            cache_root() / "apt-archives",
            *spec.packages,
            env={"PRE": spec.pre},
            prefix=("unshare", "-m", "--"),
        )
    for path, content, mode in spec.files:
        put_file(rootfs, path, content, mode=mode)
    if spec.post:
        run(["chroot", rootfs, "/bin/sh", "-euc", spec.post])
    run(["umoci", "repack", "--image", image, bundle], timeout=900)
    _remove_tree(bundle)

    argv: list[str | Path] = ["umoci", "config", "--image", image, "--architecture", "amd64", "--os", "linux"]
    argv.append("--clear=config.env")
    argv += [f"--config.env={k}={v}" for k, v in spec.env]
    argv.append("--clear=config.entrypoint")
    argv += [f"--config.entrypoint={a}" for a in spec.entrypoint]
    argv.append("--clear=config.cmd")
    argv += [f"--config.cmd={a}" for a in spec.cmd]
    if spec.user is not None:
        argv.append(f"--config.user={spec.user}")
    argv += [f"--config.volume={v}" for v in spec.volumes]
    if spec.port is not None:
        argv.append(f"--config.exposedports={spec.port}/tcp")
    if spec.stop_signal is not None:
        argv.append(f"--config.stopsignal={spec.stop_signal}")
    if spec.workdir is not None:
        argv.append(f"--config.workingdir={spec.workdir}")
    argv.append(f"--config.label=org.opencontainers.image.title=conformance-{spec.name}")
    run(argv)
    if spec.health is not None:
        _set_health(layout, TAG, spec.health)
    run(["umoci", "gc", "--layout", layout])


def build(name: str) -> str:
    """The image NAME of SPECS (built on first use), as a skopeo source 'oci:DIR:TAG'."""
    if os.geteuid() != 0:
        raise RuntimeError("building the realistic images needs root (mmdebstrap, chroot, umoci)")
    spec = SPECS[name]
    path = _cached(cache_root() / f"{name}-{image_key(name)}", lambda tmp: _build_image(spec, tmp))
    return f"oci:{path / 'layout'}:{TAG}"


def image_dir(name: str) -> Path:
    return cache_root() / f"{name}-{image_key(name)}"


def missing_requirements() -> list[str]:
    missing = [
        f"program {p}" for p in ("mmdebstrap", "umoci", "unshare", "chroot") if shutil.which(p) is None
    ]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


if __name__ == "__main__":  # python -m tests.support.realistic [NAME...]: build (or show) the images
    import sys

    logging.basicConfig(level=logging.INFO)
    for wanted in sys.argv[1:] or list(SPECS):
        t0 = time.monotonic()
        src = build(wanted)
        print(f"{wanted}: {src} ({time.monotonic() - t0:.1f}s)", flush=True)
