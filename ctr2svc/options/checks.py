"""Everything about the options that can be checked before any download: each value, the ranges of the
numbers, and the combinations (a format's init systems and compressions, compose's settings).
"""

from __future__ import annotations

from ctr2svc import metadata, naming, package
from ctr2svc.errors import UsageError
from ctr2svc.image import layers
from ctr2svc.model import MAX_HEALTH_RETRIES, MAX_HEALTH_SECONDS, InitSystem
from ctr2svc.options.build_options import BuildOptions
from ctr2svc.options.values import (
    LAYER_MODES,
    STDIO_MODES,
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
)
from ctr2svc.service import network, runtime_config


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
        split_user(opts.user)
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
