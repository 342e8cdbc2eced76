"""The options of one build, checked once and parsed into what the stages take.

Every entry point (the command line, a project file, a compose file's service) makes BuildOptions in
its own terms and calls resolve() once, before anything is pulled or written: each value on its own,
the ranges of the numbers, and the combinations (a format's init systems and compressions, compose's
settings). A refusal is one line naming the option and the fix. The stages then take the BuildRequest,
whose values are already what they mean (capabilities, bytes, mounts, ports, a signal's name), and
check nothing of the options again.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from ctr2svc import metadata
from ctr2svc.errors import UsageError
from ctr2svc.image import layers, trust
from ctr2svc.image.reference import ImageReference
from ctr2svc.model import (
    BindMount,
    InitSystem,
    PackagedFile,
    PackageFormat,
    PackageVersion,
    PortMapping,
    Resources,
    Security,
    TmpfsMount,
)
from ctr2svc.options.build_options import BuildOptions
from ctr2svc.options.ranges import check_ranges
from ctr2svc.options.values import (
    LAYER_MODES,
    STDIO_MODES,
    activation,
    bind_mounts,
    check_runtime,
    check_sign_key,
    env_defaults,
    normalize_signal,
    resources,
    restart_policy,
    security,
    split_user,
    tmpfs_mounts,
    userns_mode,
)
from ctr2svc.package import naming, nfpm
from ctr2svc.service import network, runtime_config


@dataclass(frozen=True)
class RunAs:
    """--user: USER or UID, with GROUP or GID if given. Names are looked up in the image (plan)."""

    text: str  # as given: the package's records and messages show it so
    user: str
    group: str | None = None


@dataclass(frozen=True)
class HealthSettings:
    """What the options say of the health check; the image's HEALTHCHECK gives the rest (plan)."""

    disabled: bool = False  # --health-cmd none, compose's `disable`
    command: tuple[str, ...] | None = None  # --health-cmd: a new check, with Docker's timings
    test: tuple[str, ...] | None = None  # compose's test: a new command, keeping the image's timings
    interval: int | None = None
    timeout: int | None = None
    retries: int | None = None
    start_period: int | None = None


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    """One build's options, checked: what the stages take. Made by resolve() only."""

    reference: ImageReference
    format: PackageFormat
    init: InitSystem  # the format's usual one when none was given
    compression: str  # the format's default when none was given
    output_dir: Path
    name: str | None  # None: named after the image
    version: PackageVersion | None  # None: from the image's tag
    min_version: str | None  # the version must sort above this one (update)
    arch: str | None  # OCI spelling (amd64, arm); None: this host's
    variant: str | None
    creds: str | None
    authfile: Path | None
    policy: Path | None
    registries_d: Path | None
    tls_verify: bool | None
    cache_dir: Path | None
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    stop_signal: str | None  # SIGNAME; None: the image's STOPSIGNAL, else SIGTERM
    stop_timeout: int
    maintainer: str | None  # None: the image's authors label, else DEFAULT_MAINTAINER
    user: RunAs | None
    security: Security
    env: tuple[str, ...]  # KEY=VALUE defaults for /etc/NAME/env
    mounts: tuple[BindMount, ...]  # --volume's, then the packaged files mounted where they go
    resources: Resources
    network: str
    userns: str
    publish: tuple[PortMapping, ...]
    ready_port: int | None
    health: HealthSettings
    runtime: str
    stdio: str
    activation: str  # start, preset or manual: options.values.activation
    layers: str
    sign_key_file: Path | None
    sign_key_name: str | None
    # What compose applications need (ctr2svc/apps/compose.py; systemd only). The defaults change nothing.
    working_dir: str | None
    read_only: bool
    tmpfs: tuple[TmpfsMount, ...]
    restart: str  # systemd's Restart=
    requires: tuple[str, ...]
    wants: tuple[str, ...]
    stack: str | None
    oneshot: bool
    ready_health: bool
    annotations: tuple[tuple[str, str], ...]  # compose's labels
    init_process: bool
    files: tuple[PackagedFile, ...]
    volume_paths: tuple[str, ...]  # cleaned, as image VOLUMEs are
    aliases: tuple[str, ...]
    application_network: str


def resolve(opts: BuildOptions) -> BuildRequest:
    """OPTS checked, each on its own and in combination, and parsed; the first problem raises."""
    fmt = opts.format
    name = naming.check_package_name(opts.name, fmt) if opts.name is not None else None
    init = opts.init or fmt.default_init
    if init not in fmt.inits:
        raise UsageError(
            f"{fmt} packages cannot target {init}",
            hint=f"use --init {' or --init '.join(fmt.inits)} with --format {fmt}",
        )
    compression = opts.compression or nfpm.COMPRESSIONS[fmt][0]
    if compression not in nfpm.COMPRESSIONS[fmt]:
        raise UsageError(
            f"{fmt} packages cannot use {compression} compression",
            hint=f"use --compression {' or '.join(nfpm.COMPRESSIONS[fmt])} with --format {fmt}",
        )
    version = naming.parse_version(fmt, opts.version) if opts.version is not None else None
    confined = security(opts.cap_add, opts.cap_drop, opts.privileged, opts.pids_limit)
    runtime = check_runtime(opts.runtime)
    if runtime == "nspawn" and init is not InitSystem.SYSTEMD:
        raise UsageError(
            "--runtime nspawn needs systemd: nspawn runs in the foreground under a systemd unit",
            hint="use --init systemd with --runtime nspawn, or --runtime runc for OpenRC",
        )
    if runtime == "nspawn" and opts.userns == "auto":
        raise UsageError(
            "--userns auto is not supported with --runtime nspawn: the user namespace is made for runc",
            hint="use --runtime runc with --userns auto, or --userns host with --runtime nspawn",
        )
    if opts.layers not in LAYER_MODES:
        raise UsageError(f"unknown --layers {opts.layers!r}", hint="use --layers flat or --layers shared")
    if opts.layers == "shared":
        layers.max_layers()
    if opts.stdio not in STDIO_MODES:
        raise UsageError(f"unknown --stdio {opts.stdio!r}", hint="use --stdio auto, journal or pipe")
    if opts.sign_key_file is not None:
        check_sign_key(fmt, opts.sign_key_file)
    env = env_defaults(opts.env)
    binds = bind_mounts(opts.volumes)
    published = network.publish(opts.network, opts.publish)
    limits = resources(opts.memory, opts.cpus)
    check_ranges(
        stop_timeout=opts.stop_timeout,
        pids_limit=opts.pids_limit,
        ready_port=opts.ready_port,
        health_interval=opts.health_interval,
        health_timeout=opts.health_timeout,
        health_start_period=opts.health_start_period,
        health_retries=opts.health_retries,
    )
    run_as = None
    if opts.user is not None:
        metadata.check_one_line("--user", opts.user, "e.g. --user 999:999")
        run_as = RunAs(opts.user, *split_user(opts.user))
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
    arch = variant = None
    if opts.arch is not None:
        arch, variant = naming.split_platform(opts.arch)
        naming.format_arch(fmt, naming.deb_arch(arch, variant))
    stop_signal = normalize_signal(opts.stop_signal) if opts.stop_signal is not None else None
    maintainer = (
        metadata.maintainer(opts.maintainer)
        if opts.maintainer is not None
        else metadata.maintainer_from_environment(os.environ)
    )
    nfpm.source_date_epoch()
    if opts.sign_key_name is not None:
        metadata.file_name(
            "--sign-key-name", opts.sign_key_name, "name the public key's file, e.g. ops.rsa.pub"
        )
    # A policy that cannot be read or parsed fails here, before any registry is asked.
    trust.load(opts.policy)
    if opts.registries_d is not None and not opts.registries_d.is_dir():
        raise UsageError(
            f"--registries-d {opts.registries_d} is not a directory",
            hint="name a directory of registries.d YAML files (containers-registries.d(5))",
        )
    compose = _compose_settings(opts, init)
    return BuildRequest(
        reference=opts.reference,
        format=fmt,
        init=init,
        compression=compression,
        output_dir=opts.output_dir,
        name=name,
        version=version,
        min_version=opts.min_version,
        arch=arch,
        variant=variant,
        creds=opts.creds,
        authfile=opts.authfile,
        policy=opts.policy,
        registries_d=opts.registries_d,
        tls_verify=opts.tls_verify,
        cache_dir=opts.cache_dir,
        entrypoint=opts.entrypoint,
        cmd=opts.cmd,
        stop_signal=stop_signal,
        stop_timeout=opts.stop_timeout,
        maintainer=maintainer,
        user=run_as,
        security=confined,
        env=env,
        mounts=(
            *binds,
            *(BindMount(f.dest, f.target, "ro" if f.read_only else "rw") for f in opts.files if f.target),
        ),
        resources=limits,
        network=opts.network,
        userns=userns_mode(opts.userns),
        publish=published,
        ready_port=opts.ready_port,
        health=HealthSettings(
            disabled=opts.health_cmd is not None and opts.health_cmd.strip().lower() == "none",
            command=("/bin/sh", "-c", opts.health_cmd) if opts.health_cmd is not None else None,
            test=opts.health_test,
            interval=opts.health_interval,
            timeout=opts.health_timeout,
            retries=opts.health_retries,
            start_period=opts.health_start_period,
        ),
        runtime=runtime,
        stdio=opts.stdio,
        activation=activation(fmt, opts.activation),
        layers=opts.layers,
        sign_key_file=opts.sign_key_file,
        sign_key_name=opts.sign_key_name,
        **compose,
    )


class _ComposeFields(TypedDict):
    working_dir: str | None
    read_only: bool
    tmpfs: tuple[TmpfsMount, ...]
    restart: str
    requires: tuple[str, ...]
    wants: tuple[str, ...]
    stack: str | None
    oneshot: bool
    ready_health: bool
    annotations: tuple[tuple[str, str], ...]
    init_process: bool
    files: tuple[PackagedFile, ...]
    volume_paths: tuple[str, ...]
    aliases: tuple[str, ...]
    application_network: str


# The settings only compose files give (BuildOptions' defaults change nothing).
COMPOSE_ONLY = (
    "working_dir", "read_only", "tmpfs", "restart", "requires", "wants", "stack", "oneshot",
    "ready_health", "labels", "init_process", "files", "volume_paths", "aliases",
)  # fmt: skip


def _compose_settings(opts: BuildOptions, init: InitSystem) -> _ComposeFields:
    """The BuildRequest fields of compose's settings, checked when OPTS uses any of them."""
    defaults = BuildOptions(reference=opts.reference)
    used = [n for n in COMPOSE_ONLY if getattr(opts, n) != getattr(defaults, n)]
    if used:
        if init is not InitSystem.SYSTEMD:
            raise UsageError(
                f"{', '.join(used)}: compose applications run under systemd only, not {init}",
                hint="build them with --format deb or rpm and --init systemd",
            )
        if opts.working_dir is not None:
            metadata.check_one_line("working_dir", opts.working_dir, "e.g. /srv/app")
            if not opts.working_dir.startswith("/"):
                raise UsageError(
                    f"working directory {opts.working_dir!r} is not absolute", hint="e.g. /srv/app"
                )
            if ".." in opts.working_dir.split("/"):
                raise UsageError(f"working directory {opts.working_dir!r} has a '..'", hint="e.g. /srv/app")
    tmpfs = tmpfs_mounts(opts.tmpfs)
    restart = restart_policy(opts.restart, opts.oneshot)
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
    return {
        "working_dir": opts.working_dir,
        "read_only": opts.read_only,
        "tmpfs": tmpfs,
        "restart": restart,
        "requires": opts.requires,
        "wants": opts.wants,
        "stack": opts.stack,
        "oneshot": opts.oneshot,
        "ready_health": opts.ready_health,
        "annotations": tuple((key, value) for key, _, value in (x.partition("=") for x in opts.labels)),
        "init_process": opts.init_process,
        "files": opts.files,
        "volume_paths": tuple(metadata.volume_path(v) for v in opts.volume_paths),
        "aliases": opts.aliases,
        "application_network": opts.application_network,
    }


def with_floor(request: BuildRequest, min_version: str | None) -> BuildRequest:
    """REQUEST whose version must sort above MIN_VERSION (update: a new digest of an unchanged tag)."""
    return dataclasses.replace(request, min_version=min_version)
