"""The build pipeline: options -> resolve and pull -> unpack -> plan -> patch -> render -> pack.

Each stage is a plain function taking what the previous ones produced; `build()` calls them in order.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import posixpath
import re
import shlex
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctr2svc import log, metadata, naming, package
from ctr2svc.distribution import record
from ctr2svc.distribution.record import BuildResult
from ctr2svc.errors import ImageError, UsageError
from ctr2svc.image import bundle, layers, layertar, registry
from ctr2svc.image.bundle import Bundle, Kind, RootfsScan
from ctr2svc.image.reference import ImageReference
from ctr2svc.model import (
    MAX_HEALTH_RETRIES,
    MAX_HEALTH_SECONDS,
    BindMount,
    HealthCheck,
    InitSystem,
    Layout,
    PackagedFile,
    PackageFormat,
    ResolvedImage,
    Resources,
    Security,
    ServiceSpec,
    SharedLayer,
    TmpfsMount,
    Volume,
)
from ctr2svc.run import find_tool, halted
from ctr2svc.service import network, runtime_config, units

DEFAULT_STOP_TIMEOUT = 30
DEFAULT_MAINTAINER = "ctr2svc <root@localhost>"
SIGNALS = {s.name for s in signal.Signals}


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    reference: ImageReference
    format: PackageFormat = PackageFormat.DEB
    init: InitSystem | None = None  # None: the format's usual init (systemd; OpenRC for apk)
    output_dir: Path = Path()
    name: str | None = None
    version: str | None = None
    arch: str | None = None  # OCI spelling, e.g. amd64 or arm/v7; None means the host's
    creds: str | None = None
    authfile: Path | None = None
    tls_verify: bool | None = None
    cache_dir: Path | None = None
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    stop_signal: str | None = None
    stop_timeout: int = DEFAULT_STOP_TIMEOUT
    maintainer: str = DEFAULT_MAINTAINER
    compression: str | None = None  # None: the format's default
    user: str | None = None
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    pids_limit: int = runtime_config.DEFAULT_PIDS_LIMIT
    env: tuple[str, ...] = ()  # KEY=VALUE defaults for /etc/NAME/env
    volumes: tuple[str, ...] = ()  # HOST:CONTAINER[:ro|rw] for /etc/NAME/mounts
    memory: str | None = None  # 512M, 2G, bytes
    cpus: float | None = None
    ready_port: int | None = None
    health_cmd: str | None = None  # a shell command, as docker run --health-cmd; "none" disables
    health_interval: int | None = None
    health_retries: int | None = None
    runtime: str = "runc"
    # auto: a pipe for the container's stdout/stderr when the image opens /dev/stdout or /dev/stderr.
    stdio: str = "auto"
    # flat: one package holds the flattened root; shared: one package per image layer besides it.
    layers: str = "flat"
    # The version must sort above this one (ctr2svc update: a new digest of an unchanged tag).
    min_version: str | None = None
    # Signs the package: an armored OpenPGP secret key (deb, rpm) or a PEM RSA private key (apk).
    sign_key_file: Path | None = None
    sign_key_name: str | None = None  # apk: the public key's file name in /etc/apk/keys
    # host: the host's network; private: the service's own namespace on the ctr2svc bridge (netavark).
    network: str = "host"
    publish: tuple[str, ...] = ()  # [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp] for /etc/NAME/ports
    # What compose applications need (ctr2svc/apps/compose.py; systemd only). The defaults change nothing.
    working_dir: str | None = None  # the process's working directory instead of the image's
    read_only: bool = False  # the container's root read-only
    tmpfs: tuple[str, ...] = ()  # PATH[:OPTIONS], as `docker run --tmpfs`
    restart: str | None = None  # compose's no|always|on-failure|unless-stopped; None: on-failure
    requires: tuple[str, ...] = ()  # ctr2svc services this one needs and starts after (Requires=)
    wants: tuple[str, ...] = ()  # ctr2svc services this one starts after when they are there (Wants=)
    stack: str | None = None  # the application's target (NAME.target) that starts and stops it
    oneshot: bool = False  # runs to completion (others wait for it to finish) instead of staying up
    ready_health: bool = False  # the start is done once the health check passes
    labels: tuple[str, ...] = ()  # KEY=VALUE annotations of the runtime config
    init_process: bool = False  # tini as the container's PID 1, as `docker run --init`
    files: tuple[PackagedFile, ...] = ()  # files packaged below /etc/NAME and mounted into the container
    volume_paths: tuple[str, ...] = ()  # container paths that get a data directory, as image VOLUMEs do
    aliases: tuple[str, ...] = ()  # more names the other services reach this one by (private network)
    application_network: str = ""  # a compose application's own network ("": the ctr2svc network)
    health_test: tuple[str, ...] | None = None  # the health check's argv, instead of the image's
    health_timeout: int | None = None
    health_start_period: int | None = None

    def __post_init__(self) -> None:
        # Absolute from here on: later steps run tools in other directories (the overlay of shared layers
        # is mounted from inside the cache), where a relative path would name something else. The
        # output directory stays as given: the paths printed for the user are relative to where they are.
        for name in ("cache_dir", "authfile", "sign_key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_absolute():
                object.__setattr__(self, name, path.absolute())

    @property
    def init_system(self) -> InitSystem:
        return self.init or self.format.default_init

    @property
    def payload_compression(self) -> str:
        return self.compression or package.COMPRESSIONS[self.format][0]


def check_options(opts: BuildOptions) -> None:
    """Everything that can be checked before any download: fail fast, write nothing."""
    check_package_options(opts)
    out = opts.output_dir
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} is not a directory", hint="pass a directory with -o")
    probe = out if out.exists() else _existing_parent(out)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"output directory {out} is not writable", hint="pass a writable directory with -o")
    registry.check_transport(opts.reference)
    registry.limits()
    for tool, reason in (("skopeo", "pull images"), ("umoci", "unpack images"), ("nfpm", "build packages")):
        find_tool(tool, reason)


def check_package_options(opts: BuildOptions) -> None:
    """The options that shape the package, each on its own and in combination."""
    if opts.name is not None:
        naming.check_package_name(opts.name, opts.format)
    fmt = opts.format
    if opts.init_system not in fmt.inits:
        raise UsageError(
            f"{fmt} packages cannot target {opts.init_system}",
            hint=f"use --init {' or --init '.join(fmt.inits)} with --format {fmt}",
        )
    if opts.payload_compression not in package.COMPRESSIONS[fmt]:
        raise UsageError(
            f"{fmt} packages cannot use {opts.payload_compression} compression",
            hint=f"use --compression {' or '.join(package.COMPRESSIONS[fmt])} with --format {fmt}",
        )
    if opts.version is not None:
        naming.parse_version(fmt, opts.version)
    security(opts)
    check_runtime(opts.runtime)
    if opts.layers not in LAYER_MODES:
        raise UsageError(f"unknown --layers {opts.layers!r}", hint="use --layers flat or --layers shared")
    if opts.layers == "shared":
        layers.max_layers()
    if opts.stdio not in STDIO_MODES:
        raise UsageError(f"unknown --stdio {opts.stdio!r}", hint="use --stdio auto, journal or pipe")
    if opts.sign_key_file is not None:
        check_sign_key(opts.format, opts.sign_key_file)
    env_defaults(opts.env)
    bind_mounts(opts.volumes)
    network.publish(opts.network, opts.publish)
    resources(opts)
    check_ranges(opts)
    if opts.user is not None:
        metadata.check_one_line("--user", opts.user, "e.g. --user 999:999")
        _split_user(opts.user)
    if opts.entrypoint in ((), ("",)) and not opts.cmd:
        raise UsageError(
            "an empty --entrypoint leaves nothing to run: a new entrypoint drops the image's Cmd, as with "
            "docker run",
            hint="pass the command to run with --cmd as well",
        )
    for what, words in (("--entrypoint", opts.entrypoint), ("--cmd", opts.cmd)):
        if any("\0" in word for word in words or ()):
            # runc cannot pass a NUL on to the process and refuses to start; a project file can hold one.
            raise UsageError(f"{what} holds a NUL character", hint="write the command without it")
    if opts.arch is not None:
        arch, variant = naming.split_platform(opts.arch)
        naming.format_arch(fmt, naming.deb_arch(arch, variant))
    if opts.stop_signal is not None:
        normalize_signal(opts.stop_signal)
    metadata.maintainer(opts.maintainer)
    package.source_date_epoch()
    if opts.sign_key_name is not None:
        metadata.file_name(
            "--sign-key-name", opts.sign_key_name, "name the public key's file, e.g. ops.rsa.pub"
        )
    check_compose_options(opts)


# What each number may be, with why: beyond these the value passes into the unit or config.json and
# fails on the host (systemd ignores the line, runc or the kernel refuses it).
MAX_STOP_TIMEOUT = 3600  # an hour: systemd would wait that long for a stop; longer is a hung service
MAX_PIDS = 4194304  # the kernel's PID_MAX_LIMIT: pids.max takes nothing larger
MIN_MEMORY = 6 * 1024**2  # Docker's minimum: less and the container dies of OOM as it starts
MAX_MEMORY = 2**63 - 1  # runc's memory limit is a signed 64-bit number of bytes
MIN_CPUS = 0.01  # the kernel's smallest CFS quota, 1 ms per 100 ms period (Docker's minimum too)
MAX_CPUS = 4096


def _in_range(what: str, value: int | None, low: int, high: int, hint: str) -> None:
    # bool is an int to Python, and a project file's `true` is no number of seconds.
    if value is not None and (isinstance(value, bool) or not low <= value <= high):
        raise UsageError(f"{what} {value} is out of range: it goes from {low} to {high}", hint=hint)


def check_ranges(opts: BuildOptions) -> None:
    """The numbers the CLI's option types bound, bounded again for project and compose files, which
    reach BuildOptions without them."""
    _in_range("--stop-timeout", opts.stop_timeout, 1, MAX_STOP_TIMEOUT, "e.g. --stop-timeout 30")
    _in_range("--pids-limit", opts.pids_limit, 0, MAX_PIDS, "e.g. --pids-limit 4096 (0: no limit)")
    _in_range("--ready-port", opts.ready_port, 1, 65535, "e.g. --ready-port 8080")
    for what, value in (
        ("--health-interval", opts.health_interval),
        ("health timeout", opts.health_timeout),
    ):
        _in_range(what, value, 1, MAX_HEALTH_SECONDS, "e.g. 30 (seconds)")
    _in_range("health start period", opts.health_start_period, 0, MAX_HEALTH_SECONDS, "e.g. 30 (seconds)")
    _in_range("--health-retries", opts.health_retries, 1, MAX_HEALTH_RETRIES, "e.g. --health-retries 3")


# compose's restart policies -> systemd's Restart=. systemd has no "unless-stopped": a service an admin
# stops stays stopped until started again, which is what "unless-stopped" means under Docker too.
RESTART = {"no": "no", "always": "always", "on-failure": "on-failure", "unless-stopped": "always"}


def _compose_only(opts: BuildOptions) -> list[str]:
    """The compose-only settings OPTS uses, by name."""
    defaults = BuildOptions(reference=opts.reference)
    names = (
        "working_dir", "read_only", "tmpfs", "restart", "requires", "wants", "stack", "oneshot",
        "ready_health", "labels", "init_process", "files", "volume_paths", "aliases",
    )  # fmt: skip
    return [n for n in names if getattr(opts, n) != getattr(defaults, n)]


def check_compose_options(opts: BuildOptions) -> None:
    used = _compose_only(opts)
    if not used:
        return
    if opts.init_system is not InitSystem.SYSTEMD:
        raise UsageError(
            f"{', '.join(used)}: compose applications run under systemd only, not {opts.init_system}",
            hint="build them with --format deb or rpm and --init systemd",
        )
    if opts.working_dir is not None:
        metadata.check_one_line("working_dir", opts.working_dir, "e.g. /srv/app")
        if not opts.working_dir.startswith("/"):
            raise UsageError(f"working directory {opts.working_dir!r} is not absolute", hint="e.g. /srv/app")
        if ".." in opts.working_dir.split("/"):
            raise UsageError(f"working directory {opts.working_dir!r} has a '..'", hint="e.g. /srv/app")
    tmpfs_mounts(opts.tmpfs)
    restart_policy(opts)
    for label in opts.labels:
        metadata.check_one_line("label", label, "a label is one line")
        if "=" not in label or label.startswith(runtime_config.ANNOTATION_PREFIX):
            raise UsageError(
                f"label {label!r} is not KEY=VALUE, or uses ctr2svc's own prefix",
                hint=f"e.g. com.example.role=web ({runtime_config.ANNOTATION_PREFIX}.* keys are ctr2svc's)",
            )
    for path in opts.volume_paths:
        metadata.container_path("volume", path, "e.g. /var/lib/postgresql/data", data=True)
    for packaged in opts.files:
        if packaged.target:
            metadata.container_path("file", packaged.target, "mount it at a path such as /etc/app/app.conf")


def restart_policy(opts: BuildOptions) -> str:
    """systemd's Restart= for OPTS: compose's policy mapped, ctr2svc's on-failure when none is given."""
    given = opts.restart
    if given is None:
        return "no" if opts.oneshot else "on-failure"
    if given not in RESTART:
        raise UsageError(
            f"unknown restart policy {given!r}", hint="use no, always, on-failure or unless-stopped"
        )
    if opts.oneshot and RESTART[given] == "always":
        raise UsageError(
            f"restart: {given} on a service that others wait to complete (service_completed_successfully)",
            hint='use restart: "no" or on-failure: a service that must finish cannot restart for ever',
        )
    return RESTART[given]


def tmpfs_mounts(texts: tuple[str, ...]) -> tuple[TmpfsMount, ...]:
    """PATH[:OPTIONS] each, as `docker run --tmpfs` (Docker's defaults nosuid, nodev, noexec go first)."""
    mounts = []
    for text in texts:
        metadata.check_one_line("tmpfs", text, "e.g. /run:size=64m")
        path, _, options = text.partition(":")
        opts = tuple(o for o in options.split(",") if o)
        if not path.startswith("/") or any(c.isspace() or c in '"' for c in text):
            raise UsageError(f"tmpfs {text!r} is not PATH[:OPTIONS]", hint="e.g. /run:size=64m,mode=0755")
        metadata.container_path("tmpfs", path, "e.g. /run:size=64m")
        mounts.append(TmpfsMount(path, opts))
    return tuple(mounts)


def _existing_parent(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def normalize_signal(value: str, source: str = "") -> str:
    """SIGNAME for a signal name or number; source names the image when the image declared it."""
    text = value.strip().upper()
    if text.isdigit():
        try:
            return signal.Signals(int(text)).name
        except ValueError:
            pass
    name = text if text.startswith("SIG") else f"SIG{text}"
    if name not in SIGNALS:
        if source:
            raise ImageError(
                f"{source} declares an unknown STOPSIGNAL {metadata.one_line(value, 40)!r}",
                hint="pass --stop-signal with a signal name such as SIGTERM or SIGQUIT",
            )
        raise UsageError(
            f"unknown stop signal {value!r}", hint="use a signal name such as SIGTERM or SIGQUIT"
        )
    return name


def _capability(name: str) -> str:
    text = name.strip().upper()
    cap = text if text.startswith("CAP_") else f"CAP_{text}"
    if cap not in runtime_config.ALL_CAPABILITIES:
        raise UsageError(
            f"unknown capability {name!r}",
            hint="use a name from capabilities(7) such as NET_ADMIN or CAP_SYS_TIME",
        )
    return cap


def security(opts: BuildOptions) -> Security:
    drop_all = any(c.strip().upper() in ("ALL", "CAP_ALL") for c in opts.cap_drop)
    add = tuple(dict.fromkeys(_capability(c) for c in opts.cap_add))
    if drop_all:
        drop = tuple(c for c in runtime_config.ALL_CAPABILITIES if c not in add)
    else:
        drop = tuple(dict.fromkeys(_capability(c) for c in opts.cap_drop))
    if opts.pids_limit < 0:
        raise UsageError(f"--pids-limit {opts.pids_limit} is negative", hint="pass 0 for no limit")
    return Security(cap_add=add, cap_drop=drop, privileged=opts.privileged, pids_limit=opts.pids_limit)


# KEY=VALUE, as Docker takes it: any name without "=" (elasticsearch's discovery.type, for one), but one
# that a line of /etc/NAME/env can hold (templates/config.awk.j2): no blanks, no "#" first (a comment).
_ENV = re.compile(r"^[^=\s#][^=\s]*=")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)


def env_defaults(env: tuple[str, ...]) -> tuple[str, ...]:
    for item in env:
        if not _ENV.match(item):
            raise UsageError(f"--env {item!r} is not KEY=VALUE", hint="e.g. --env LOG_LEVEL=debug")
        # One line of /etc/NAME/env each: a newline would start a variable the user did not write.
        metadata.check_one_line("--env", item, "a value is one line; put longer text in a file")
    return env


def bind_mounts(volumes: tuple[str, ...]) -> tuple[BindMount, ...]:
    mounts = []
    for text in volumes:
        metadata.check_one_line("--volume", text, "e.g. --volume /srv/certs:/certs:ro")
        parts = text.split(":")
        mode = parts.pop() if len(parts) == 3 else "ro"
        if len(parts) != 2 or mode not in ("ro", "rw") or not all(p.startswith("/") for p in parts):
            raise UsageError(
                f"--volume {text!r} is not HOST_PATH:CONTAINER_PATH[:ro|rw]",
                hint="e.g. --volume /srv/certs:/certs:ro",
            )
        if any(c.isspace() for c in text):
            raise UsageError(f"--volume {text!r} has white space", hint="use paths without spaces")
        metadata.container_path("--volume", parts[1], "e.g. --volume /srv/certs:/certs:ro")
        mounts.append(BindMount(parts[0], parts[1], mode))
    return tuple(mounts)


def resources(opts: BuildOptions) -> Resources:
    memory = None
    if opts.memory is not None:
        match = _SIZE.match(opts.memory.strip())
        if not match or float(match.group(1)) <= 0:
            raise UsageError(
                f"--memory {opts.memory!r} is not a size", hint="e.g. --memory 512M or --memory 2G"
            )
        memory = int(float(match.group(1)) * 1024 ** "BKMGT".index((match.group(2) or "B").upper()))
        if not MIN_MEMORY <= memory <= MAX_MEMORY:
            raise UsageError(
                f"--memory {opts.memory!r} is out of range: it goes from 6M to {MAX_MEMORY // 1024**4}T",
                hint="e.g. --memory 512M or --memory 2G",
            )
    if opts.cpus is not None and not (math.isfinite(opts.cpus) and 0 < opts.cpus <= MAX_CPUS):
        raise UsageError(
            f"--cpus {opts.cpus} is not a number of CPUs above 0", hint="e.g. --cpus 0.5 or --cpus 2"
        )
    if opts.cpus is not None and opts.cpus < MIN_CPUS:
        raise UsageError(
            f"--cpus {opts.cpus} is out of range: the smallest CPU limit is {MIN_CPUS} (1% of a CPU)",
            hint="e.g. --cpus 0.05 or --cpus 2",
        )
    return Resources(memory, opts.cpus)


def check_sign_key(fmt: PackageFormat, path: Path) -> None:
    try:
        head = path.read_text(errors="replace")[:4096]
    except OSError as exc:
        raise UsageError(
            f"cannot read the signing key {path}: {exc.strerror}", hint="check the path"
        ) from exc
    if fmt is PackageFormat.APK:
        if "PRIVATE KEY-----" not in head:
            raise UsageError(
                f"{path} is not a PEM RSA private key, which apk packages are signed with",
                hint="make one with: openssl genrsa -out KEY.rsa 2048",
            )
    elif "BEGIN PGP PRIVATE KEY BLOCK" not in head:
        raise UsageError(
            f"{path} is not an armored OpenPGP secret key, which {fmt} packages are signed with",
            hint="export one with: gpg --armor --export-secret-keys KEYID > key.asc",
        )


RUNTIMES = ("runc", "crun")
LAYER_MODES = ("flat", "shared")
STDIO_MODES = ("auto", "journal", "pipe")
# Names by which a process reaches its own stdout or stderr again: opening them needs a pipe or a file,
# and fails (ENXIO) on the journal's socket.
_STDIO_PATHS = ("/dev/stdout", "/dev/stderr", "/proc/self/fd/1", "/proc/self/fd/2", "/dev/fd/1", "/dev/fd/2")
_STDIO_TEXT = re.compile(rb"/dev/std(?:out|err)\b|/proc/self/fd/[12]\b|/dev/fd/[12]\b")
# Text files read for those names: the entrypoint script and configuration, not every binary.
_STDIO_SCAN_LIMIT = 256 * 1024
_DEFAULT_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def stdio_mode(opts: BuildOptions, scan: RootfsScan, rootfs: Path, args: tuple[str, ...]) -> tuple[str, str]:
    """(journal or pipe, why) for the container's stdout and stderr under systemd.

    The journal's socket costs no process, so it is the choice unless the image shows it reopens its
    output: a log file linked to /dev/stdout (nginx, httpd), those names in its command line, in its
    entrypoint script or in its configuration under /etc (php-fpm's error_log = /proc/self/fd/2).
    """
    if opts.stdio != "auto":
        return opts.stdio, f"--stdio {opts.stdio}"
    for entry in scan.entries:
        if entry.kind is Kind.SYMLINK and entry.target in _STDIO_PATHS:
            return "pipe", f"/{entry.path} links to {entry.target}"
    for arg in args:
        if _STDIO_TEXT.search(arg.encode()):
            return "pipe", f"its command line names {arg!r}"
    candidates = [e for e in scan.entries if e.kind is Kind.FILE and e.path.startswith("etc/")]
    if args:
        # The entrypoint as the container's PATH would find it (Docker's default PATH).
        dirs = ("",) if args[0].startswith("/") else _DEFAULT_PATH
        for found in (scan.find(f"{d}/{args[0]}") for d in dirs):
            if found is not None and found.kind is Kind.FILE:
                candidates.insert(0, found)
                break
    for entry in candidates:
        path = rootfs / entry.path
        try:
            if path.stat().st_size > _STDIO_SCAN_LIMIT:
                continue
            head = path.read_bytes()
        except OSError:
            continue
        if b"\0" in head[:1024]:
            continue  # a binary: its strings say nothing about what it opens
        if _STDIO_TEXT.search(head):
            return "pipe", f"/{entry.path} names /dev/stdout, /dev/stderr or /proc/self/fd"
    return "journal", "the image does not reopen its output"


def check_runtime(runtime: str) -> str:
    if runtime == "nspawn":
        # See docs/service.md: nspawn's OCI mode wants machined over D-Bus and has no detached mode or
        # `exec`, which the unit, the health check and the admin tools rely on.
        raise UsageError(
            "--runtime nspawn is not supported: systemd-nspawn --oci-bundle cannot run detached or exec "
            "into the container",
            hint="use --runtime runc or --runtime crun",
        )
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}", hint="use --runtime runc or --runtime crun")
    return runtime


def health_check(opts: BuildOptions, declared: Mapping[str, Any] | None) -> HealthCheck | None:
    """The image's HEALTHCHECK, replaced or switched off by --health-cmd, tuned by --health-*."""
    if opts.health_cmd is not None and opts.health_cmd.strip().lower() == "none":
        return None
    check = HealthCheck.from_image(declared)
    if opts.health_cmd is not None:
        check = HealthCheck(("/bin/sh", "-c", opts.health_cmd))
    if opts.health_test is not None:
        # compose's healthcheck: a new test keeps the image's timings unless it gives its own.
        check = dataclasses.replace(check or HealthCheck(()), command=opts.health_test)
    if check is None:
        return None
    return dataclasses.replace(
        check,
        interval=opts.health_interval or check.interval,
        retries=opts.health_retries or check.retries,
        timeout=opts.health_timeout or check.timeout,
        start_period=opts.health_start_period if opts.health_start_period is not None else check.start_period,
    )


# The kernel's largest user and group id: (uid_t)-1 is the "no change" of setresuid(2), and runc's
# config.json has no room beyond 32 bits.
MAX_ID = 2**32 - 2


def _numeric(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _split_user(text: str) -> tuple[str, str | None]:
    user, sep, group = text.partition(":")
    if not user or (sep and not group):
        raise UsageError(
            f"--user {text!r} is not USER, UID, USER:GROUP or UID:GID", hint="e.g. --user 999:999"
        )
    for part in (user, group):
        if _numeric(part) and int(part) > MAX_ID:
            raise UsageError(
                f"--user {text!r}: {part} is out of range: user and group ids go from 0 to {MAX_ID}",
                hint="e.g. --user 999:999",
            )
    return user, group or None


def _lookup(rootfs: Path, table: str, key: str) -> list[str] | None:
    """The /etc/passwd or /etc/group line of the image for a name or number."""
    # Read as the container reads it: a link to /etc/passwd means the image's, not this host's.
    content = bundle.image_file(rootfs, f"etc/{table}")
    if content is None:
        return None
    for line in content.decode(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and (fields[0] == key or fields[2] == key):
            return fields
    return None


def _id_field(fields: list[str], index: int, table: str) -> int:
    """A numeric field of an /etc/passwd or /etc/group line of the image, checked."""
    text = fields[index] if len(fields) > index else ""
    if not _numeric(text) or int(text) > MAX_ID:
        raise ImageError(
            f"the image's /etc/{table} gives {fields[0]!r} the id {text[:20]!r}, which is not a number "
            f"from 0 to {MAX_ID}",
            hint="pass a numeric --user such as 1000:1000",
        )
    return int(text)


def resolve_user(text: str, rootfs: Path) -> tuple[int, int]:
    """--user as the image would run it: names looked up in the image's own passwd and group files."""
    user, group = _split_user(text)
    entry = _lookup(rootfs, "passwd", user)
    if _numeric(user):
        uid = int(user)
    elif entry is not None:
        uid = _id_field(entry, 2, "passwd")
    else:
        raise ImageError(
            f"the image has no user {user!r} in /etc/passwd", hint="pass a numeric --user such as 1000:1000"
        )
    if group is None:
        # As Docker: the user's primary group, or root's group for a number the image does not know.
        if entry is not None and len(entry) > 3 and _numeric(entry[3]):
            return uid, _id_field(entry, 3, "passwd")
        return uid, 0
    if _numeric(group):
        return uid, int(group)
    found = _lookup(rootfs, "group", group)
    if found is None:
        raise ImageError(
            f"the image has no group {group!r} in /etc/group",
            hint="pass a numeric group, e.g. --user 1000:1000",
        )
    return uid, _id_field(found, 2, "group")


@contextlib.contextmanager
def workspace(cache_root: Path) -> Iterator[Path]:
    # Beside the cache rather than in /tmp: a rootfs can be large and /tmp is often memory.
    base = cache_root / "work"
    try:
        base.mkdir(parents=True, exist_ok=True)
        _remove_orphans(base)
        path = Path(tempfile.mkdtemp(prefix=f"build-{os.getpid()}-", dir=base))
    except OSError as exc:
        raise UsageError(
            f"cannot make a work directory in {base}: {exc.strerror}",
            hint="point --cache-dir (or CTR2SVC_CACHE_DIR) at a writable directory with free space",
        ) from exc
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _remove_orphans(base: Path) -> None:
    """Work directories of builds that were killed (SIGKILL, power loss) before they could clean up."""
    for stale in base.glob("build-*-*"):
        pid = stale.name.split("-")[1]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        log.debug(f"removing {stale}, left by a build that did not finish")
        shutil.rmtree(stale, ignore_errors=True)


def plan_service(opts: BuildOptions, image: ResolvedImage, unpacked: Bundle, scan: RootfsScan) -> ServiceSpec:
    cfg = image.config
    fmt = opts.format
    name = opts.name or naming.check_package_name(naming.default_package_name(image.reference.basename), fmt)
    version = (
        naming.parse_version(fmt, opts.version)
        if opts.version is not None
        else naming.default_version(fmt, image.reference.tag, image.digest, cfg.created)
    ).full
    if opts.min_version is not None and opts.version is None:
        version = naming.above(fmt, version, opts.min_version)
    arch = naming.deb_arch(cfg.architecture or "amd64", cfg.variant)
    naming.format_arch(fmt, arch)  # refuses an architecture the format has no name for
    unit_dir = "/usr/lib/systemd/system" if fmt is PackageFormat.RPM else "/lib/systemd/system"
    layout = Layout(name, version, unit_dir=unit_dir)
    entrypoint = opts.entrypoint if opts.entrypoint is not None else cfg.entrypoint
    # An entrypoint of one empty word is none, as `docker run --entrypoint ""` and Docker's builder
    # (`ENTRYPOINT [""]`) mean it; runc would try to run "" instead.
    entrypoint = () if entrypoint == ("",) else entrypoint
    # As with `docker run --entrypoint`, a new entrypoint drops the image's Cmd.
    cmd = opts.cmd if opts.cmd is not None else (() if opts.entrypoint is not None else cfg.cmd)
    args = (*entrypoint, *cmd)
    if args and not args[0]:
        given = opts.entrypoint is not None or opts.cmd is not None
        raise (UsageError if given else ImageError)(
            f"the command to run, {shlex.join(args)[:60]}, starts with an empty word: there is no program "
            "to run",
            hint="pass the program to run with --entrypoint, e.g. --entrypoint /usr/bin/server",
        )
    entrypoint_n = len(entrypoint)
    if opts.init_process and args:
        # As `docker run --init`: tini (the host's static build, mounted read-only) is PID 1, reaps
        # zombies and passes signals on; the entrypoint runs below it.
        args = (runtime_config.INIT_PATH, "--", *args)
        entrypoint_n += 2
    if not args:
        raise ImageError(
            f"image {image.reference} has no Entrypoint or Cmd, so there is nothing to run",
            hint="pass the command to run with --cmd, e.g. --cmd '/usr/bin/server --port 8080'",
        )
    stdio, why = stdio_mode(opts, scan, unpacked.rootfs, args)
    if stdio == "pipe" and opts.init_system is InitSystem.SYSTEMD:
        log.info(f"  stdout/stderr through a pipe and a relay process: {why}")
    published = network.publish(opts.network, opts.publish)
    if opts.network == "private":
        ports = ", ".join(str(p) for p in published) or "none"
        exposed = f" (the image exposes {', '.join(cfg.exposed_ports)})" if cfg.exposed_ports else ""
        log.info(f"  private network, published ports: {ports}{exposed}")
    if opts.user is not None:
        uid, gid = resolve_user(opts.user, unpacked.rootfs)
    else:
        user = unpacked.config.get("process", {}).get("user", {})
        uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    volumes = tuple(
        _volume(layout, path, scan, uid, gid)
        for path in dict.fromkeys(
            [*image_volumes(cfg.volumes), *(metadata.volume_path(v) for v in opts.volume_paths)]
        )
    )
    health = health_check(opts, cfg.healthcheck) if not opts.oneshot else None
    if opts.ready_health and health is None:
        raise UsageError(
            f"{name}: another service waits for it to be healthy (service_healthy), but it has no health "
            f"check: image {image.reference} has no HEALTHCHECK and none is given",
            hint="give it a healthcheck: in the compose file, or wait for service_started",
        )
    labels = cfg.labels
    # Labels are the image author's text: one line, no control characters, and no "$" that nfpm would
    # expand; URLs and licenses only when they are what they claim to be.
    title = metadata.one_line(labels.get("org.opencontainers.image.title") or "") or image.reference.basename
    summary = metadata.summary(
        labels.get("org.opencontainers.image.description") or f"{title} container image"
    )
    return ServiceSpec(
        name=name,
        version=version,
        arch=arch,
        description=f"{summary} (as a service)",
        layout=layout,
        image=image,
        args=args,
        uid=uid,
        gid=gid,
        stop_signal=normalize_signal(opts.stop_signal)
        if opts.stop_signal
        else normalize_signal(cfg.stop_signal or "SIGTERM", f"image {image.reference}"),
        stop_timeout=opts.stop_timeout,
        volumes=volumes,
        maintainer=metadata.maintainer(opts.maintainer),
        format=fmt,
        init=opts.init_system,
        security=security(opts),
        user=opts.user,
        entrypoint_n=entrypoint_n,
        env=env_defaults(opts.env),
        resources=resources(opts),
        health=health,
        ready_port=opts.ready_port,
        runtime=opts.runtime,
        stdio=stdio,
        network=opts.network,
        publish=published,
        homepage=metadata.homepage(labels.get("org.opencontainers.image.url"), "url")
        or metadata.homepage(labels.get("org.opencontainers.image.source"), "source"),
        license=metadata.license_expression(labels.get("org.opencontainers.image.licenses")),
        **{**option_fields(opts), "working_dir": opts.working_dir or image_working_dir(cfg.working_dir)},
    )


def image_volumes(declared: tuple[str, ...]) -> list[str]:
    """The image's VOLUMEs that get a data directory, cleaned; one where nothing can be mounted (the
    root, /proc, /sys, /dev) is left out with a warning: runc could not start the container with it."""
    kept = []
    for path in (metadata.volume_path(v) for v in declared):
        problem = metadata.mount_point_problem(path, data=True)
        if problem:
            log.warn(f"leaving out the image's VOLUME {path}: {problem}")
        else:
            kept.append(path)
    return kept


def image_working_dir(declared: str) -> str | None:
    """The image's WorkingDir when it needs ctr2svc's help, else None (umoci's config has it). runc
    refuses a relative one; Docker runs it relative to the root, and so does the service."""
    if not declared or declared.startswith("/"):
        return None
    absolute = posixpath.normpath("/" + declared).replace("//", "/")
    log.info(f"  the image's WorkingDir {declared!r} is relative: the service runs in {absolute}")
    return absolute


def option_fields(opts: BuildOptions) -> dict[str, Any]:
    """The ServiceSpec fields that follow from the options alone, whatever the image (compose's keys,
    mostly): one place, which the compose goldens use too."""
    return {
        "mounts": (
            *bind_mounts(opts.volumes),
            *(BindMount(f.dest, f.target, "ro" if f.read_only else "rw") for f in opts.files if f.target),
        ),
        "working_dir": opts.working_dir,
        "read_only": opts.read_only,
        "tmpfs": tmpfs_mounts(opts.tmpfs),
        "restart": restart_policy(opts),
        "requires": opts.requires,
        "wants": opts.wants,
        "stack": opts.stack,
        "oneshot": opts.oneshot,
        "ready_health": opts.ready_health,
        "annotations": tuple((key, value) for key, _, value in (x.partition("=") for x in opts.labels)),
        "init_process": opts.init_process,
        "files": opts.files,
        "aliases": opts.aliases,
        "application_network": opts.application_network,
    }


def _volume(layout: Layout, path: str, scan: RootfsScan, uid: int, gid: int) -> Volume:
    container_path = "/" + path.strip("/")
    entry = scan.find(container_path)
    if entry is not None and entry.kind is Kind.DIR:
        prefix = entry.path + "/"
        seed = any(e.path.startswith(prefix) for e in scan.entries)
        return Volume(
            container_path, layout.volume_host_path(container_path), entry.uid, entry.gid, entry.mode, seed
        )
    # Not in the image: Docker creates it owned by root; the service's user is the more useful owner.
    return Volume(container_path, layout.volume_host_path(container_path), uid, gid, 0o755, False)


def pull_options(opts: BuildOptions) -> registry.PullOptions:
    arch, variant = naming.split_platform(opts.arch or naming.host_oci_arch())
    return registry.PullOptions(arch, variant, opts.creds, opts.authfile, opts.tls_verify, registry.limits())


@dataclass(frozen=True)
class Generated:
    """Everything a package is made of, before packing: also what `inspect --generated` shows."""

    spec: ServiceSpec
    bundle: Bundle
    scan: RootfsScan
    config: dict[str, Any]  # the patched runtime config
    files: list[units.GeneratedFile]
    scripts: dict[str, str]
    # Shared layers: the image's layers unpacked in the cache, bottom first.
    extracted: tuple[layers.Extracted, ...] = ()


def generate(
    opts: BuildOptions,
    cache: registry.ImageCache,
    image: ResolvedImage,
    work: Path,
    on_layer: Callable[[layers.Extracted], None] | None = None,
) -> Generated:
    """Unpack the cached image in work/ and produce the service's files and runtime config."""
    if opts.layers == "shared":
        return generate_shared(opts, cache, image, work, on_layer)
    with log.step("Unpacking the image"), cache.locked(exclusive=False):
        manifest = cache.manifest(image.digest) or {}
        count = len(manifest.get("layers", []))
        if count:
            # By the rules shared layers are unpacked with: umoci gets only what passes them.
            layertar.check_image(layers.image_layers(manifest, cache.config(manifest)), cache.blob_path)
        unpacked = bundle.unpack(image.cache_ref, work / "bundle", count, user=opts.user)
    scan = bundle.scan(unpacked.rootfs)
    spec = plan_service(opts, image, unpacked, scan)
    return _service_files(spec, unpacked, scan)


def _service_files(
    spec: ServiceSpec, unpacked: Bundle, scan: RootfsScan, extracted: tuple[layers.Extracted, ...] = ()
) -> Generated:
    with log.step(f"Writing the service files for {spec.name} {spec.version}"):
        config = runtime_config.patch(unpacked.config, spec)
        key = hashlib.sha256(f"{spec.version}\0{json.dumps(config, sort_keys=True)}".encode()).hexdigest()
        files = units.service_files(spec, scan, key[:16])
        scripts = units.package_scripts(spec)
    return Generated(spec, unpacked, scan, config, files, scripts, extracted)


def unpack_layers(
    cache: registry.ImageCache,
    image: ResolvedImage,
    on_layer: Callable[[layers.Extracted], None] | None = None,
) -> tuple[layers.Extracted, ...]:
    """The image's layer packages' contents, unpacked into the layer cache unless already there.
    ON_LAYER gets each one as soon as it is there (the packer starts on it while the next unpacks)."""
    manifest = cache.manifest(image.digest)
    if manifest is None:
        raise ImageError(
            f"image {image.reference} is no longer in the cache", hint="build again: it will be pulled"
        )
    units_ = layers.plan(layers.image_layers(manifest, cache.config(manifest)))
    store = layers.LayerStore(cache.root)
    bundle.require_root()
    done = []
    stack = layers.Stack()
    with log.step(f"Unpacking the image's {len(units_)} layers"), cache.locked(exclusive=False):
        store.remove_orphans()
        for number, unit in enumerate(units_, 1):
            found = store.cached(unit)
            what = f"{len(unit.layers)} layers merged" if unit.merged else "layer"
            if found is None:
                log.info(f"  {number}/{len(units_)} {unit.short}: unpacking ({what})")
                found = store.extract(unit, cache.blob_path)
            else:
                log.info(f"  {number}/{len(units_)} {unit.short}: already unpacked ({what})")
            stack.add(found)
            done.append(found)
            if on_layer is not None:
                on_layer(found)
    return tuple(done)


def generate_shared(
    opts: BuildOptions,
    cache: registry.ImageCache,
    image: ResolvedImage,
    work: Path,
    on_layer: Callable[[layers.Extracted], None] | None = None,
) -> Generated:
    """Shared layers: the service is planned on a read-only overlay of the image's unpacked layers,
    which is the root the service will see."""
    extracted = unpack_layers(cache, image, on_layer)
    with layers.merged_view(extracted, work / "view") as root:
        config = bundle.runtime_config(image.cache_ref, root, work / "config.json", user=opts.user)
        unpacked = Bundle(work, config, root=root)
        scan = bundle.scan(root, layer=True)
        # What the layers hold that no package can: device nodes, FIFOs, sockets (as a flat build says).
        scan.skipped = [item for x in extracted for item in x.scan.skipped]
        bundle.warn_skipped(scan.skipped)
        spec = plan_service(opts, image, unpacked, scan)
        shared = tuple(
            SharedLayer(
                x.unit.id,
                x.unit.package,
                x.unit.install_dir,
                tuple(layer.diff_id for layer in x.unit.layers),
                x.scan.file_bytes,
            )
            for x in extracted
        )
        spec = dataclasses.replace(spec, layers=shared)
        return _service_files(spec, unpacked, scan, extracted)


@contextlib.contextmanager
def output_lock(cache_root: Path, opts: BuildOptions) -> Iterator[None]:
    """One build at a time of one package name and format into one output directory.

    Without it two builds of one image into one directory both succeed and one reports the sha256 of a
    file the other has replaced. The second waits, then finds the first one's record: "up to date".
    """
    name = opts.name or naming.default_package_name(opts.reference.basename)
    key = hashlib.sha256(f"{opts.output_dir.absolute()}\0{name}\0{opts.format}".encode()).hexdigest()
    locks = cache_root / "locks"
    try:
        locks.mkdir(exist_ok=True)
        handle = (locks / f"{key[:32]}.lock").open("a+")
    except OSError as exc:
        raise UsageError(
            f"cannot lock {locks}: {exc.strerror}",
            hint="point --cache-dir (or CTR2SVC_CACHE_DIR) at a writable directory",
        ) from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"  waiting for another build of {name} ({opts.format}) into {opts.output_dir}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build(opts: BuildOptions) -> BuildResult:
    check_options(opts)
    cache = registry.ImageCache(opts.cache_dir or registry.default_cache_dir())
    cache.ensure()
    with output_lock(cache.root, opts), workspace(cache.root) as work:
        with log.step(f"Resolving {opts.reference}"):
            pull = pull_options(opts)
            located = registry.locate(opts.reference, pull, work)
            build_key = record.key(opts, located.digest)
            done = record.lookup(cache.root, build_key)
            if done is not None:
                log.info(f"  {located.digest}: unchanged, and so are the options")
                return dataclasses.replace(
                    done,
                    path=opts.output_dir / done.path.name,
                    layer_files=tuple(str(opts.output_dir / Path(p).name) for p in done.layer_files),
                )
            image = registry.resolve(opts.reference, pull, cache, work, located)
            log.info(f"  {image.pinned} ({image.config.platform})")
        with LayerPacker(opts, cache, image, work) as packer:
            made = generate(opts, cache, image, work, packer.submit if opts.layers == "shared" else None)
            return _pack(opts, cache, made, work, packer, build_key)


def _pack(
    opts: BuildOptions,
    cache: registry.ImageCache,
    made: Generated,
    work: Path,
    packer: LayerPacker,
    build_key: str,
) -> BuildResult:
    """Pack the service package; with shared layers, wait for the layer packages and place them all."""
    spec = made.spec
    with log.step(f"Packing {package.filename(spec)}"):
        inputs = package.PackageInputs(
            spec,
            made.bundle.rootfs,
            made.scan,
            made.config,
            made.files,
            made.scripts,
            opts.payload_compression,
            opts.sign_key_file,
            opts.sign_key_name,
        )
        staging = work / "package"
        staging.mkdir()
        opts.output_dir.mkdir(parents=True, exist_ok=True)
        if made.extracted:
            # Placed beside the service package only once every package is made.
            path = package.pack(inputs, staging, work)
            layer_packages, built = packer.finish()
            placed = tuple(str(place(p, opts.output_dir)) for p in layer_packages)
            path = package.publish(path, opts.output_dir, move=True)
        else:
            path = package.pack(inputs, staging, opts.output_dir)
            placed, built = (), ()
    result = BuildResult.of(path, spec, made.scan.skipped, placed, built)
    record.save(cache.root, build_key, result)
    return result


def layer_package_key(layer: package.LayerPackage) -> str:
    """What a cached layer package depends on besides the layer: format, options, the code."""
    doc = {
        "id": layer.extracted.unit.id,
        "format": str(layer.format),
        "arch": layer.arch,
        "compression": layer.compression,
        "maintainer": layer.maintainer,
        "sign_key": (
            hashlib.sha256(layer.sign_key_file.read_bytes()).hexdigest() if layer.sign_key_file else None
        ),
        "sign_key_name": layer.sign_key_name,
        "code": record.code_digest(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


class LayerPacker:
    """Builds the image's layer packages that the layer cache does not have yet, in worker threads as
    the layers are unpacked: nfpm compresses one layer while the next one unpacks."""

    def __init__(
        self, opts: BuildOptions, cache: registry.ImageCache, image: ResolvedImage, work: Path
    ) -> None:
        cfg = image.config
        name = opts.name or naming.default_package_name(image.reference.basename)
        # apk signatures name the public key; a key name that defaults to the service's would make each
        # service's copy of a shared layer a different package.
        key_name = ""
        if opts.sign_key_file is not None and opts.format is PackageFormat.APK:
            key_name = opts.sign_key_name or f"{name}.rsa.pub"
        self.options = (
            opts.format,
            naming.deb_arch(cfg.architecture or "amd64", cfg.variant),
            opts.payload_compression,
            metadata.maintainer(opts.maintainer),
            opts.sign_key_file,
            key_name,
        )
        self.store = layers.LayerStore(cache.root)
        self.work = work
        self.paths: list[Path] = []
        self.built: list[str] = []
        self.jobs: list[concurrent.futures.Future[None]] = []
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1))

    def __enter__(self) -> LayerPacker:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None:
            # Interrupted or failed: the nfpm runs of the workers must not go on after us, nor start.
            self.pool.shutdown(wait=False, cancel_futures=True)
            with halted():
                self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, extracted: layers.Extracted) -> None:
        layer = package.LayerPackage(extracted, *self.options)
        final = (
            self.store.path(extracted.unit)
            / "packages"
            / layer_package_key(layer)
            / package.layer_filename(layer)
        )
        self.paths.append(final)
        if not final.is_file():
            self.built.append(extracted.unit.package)
            self.jobs.append(self.pool.submit(self._build, layer, final))

    def _build(self, layer: package.LayerPackage, final: Path) -> None:
        staging = self.work / f"layer-{layer.extracted.unit.hex}"
        staging.mkdir()
        built = package.pack_layer(layer, staging)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        shutil.move(built, temp)
        temp.replace(final)

    def finish(self) -> tuple[list[Path], tuple[str, ...]]:
        """The cached layer package files, bottom first, and the names of those built now."""
        reused = len(self.paths) - len(self.built)
        what = f"{len(self.built)} layer package(s)" + (f", {reused} already built" if reused else "")
        with log.step(f"Packing {what}"):
            for job in self.jobs:
                job.result()  # its error, if it failed
        return self.paths, tuple(self.built)


def place(cached: Path, output_dir: Path) -> Path:
    """A cached layer package in the output directory: left alone when it is already there, else
    hard-linked (no copy) or copied, atomically."""
    final = output_dir / cached.name
    with contextlib.suppress(OSError):
        if cached.samefile(final):
            return final
    temp = output_dir / f".{cached.name}.partial-{os.getpid()}"
    try:
        temp.unlink(missing_ok=True)
        os.link(cached, temp)
        temp.replace(final)
        return final
    except OSError:
        temp.unlink(missing_ok=True)
    return package.publish(cached, output_dir)


def shell_words(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise UsageError(f"cannot split {text!r} into words: {exc}", hint="check the quoting") from exc
