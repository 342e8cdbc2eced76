"""Planning the service: the checked options (a BuildRequest) and the unpacked image decided into a
ServiceSpec (name, version, command, user, volumes, health check, stdio...), before anything is
rendered or packed. What is checked here needs the image: its names, its command, its user database.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctr2svc import log, metadata
from ctr2svc.errors import ImageError, UsageError
from ctr2svc.image import bundle
from ctr2svc.image.bundle import Bundle, Kind, RootfsScan
from ctr2svc.image.config import ResolvedImage
from ctr2svc.model import HealthCheck, InitSystem, Layout, PackageFormat, ServiceSpec, Volume
from ctr2svc.options.build_options import DEFAULT_MAINTAINER
from ctr2svc.options.ranges import MAX_ID
from ctr2svc.options.request import BuildRequest, HealthSettings, RunAs
from ctr2svc.options.values import normalize_signal, numeric
from ctr2svc.package import naming
from ctr2svc.service import runtime_config

# Names by which a process reaches its own stdout or stderr again: opening them needs a pipe or a file,
# and fails (ENXIO) on the journal's socket.
_STDIO_PATHS = ("/dev/stdout", "/dev/stderr", "/proc/self/fd/1", "/proc/self/fd/2", "/dev/fd/1", "/dev/fd/2")

_STDIO_TEXT = re.compile(rb"/dev/std(?:out|err)\b|/proc/self/fd/[12]\b|/dev/fd/[12]\b")

# Text files read for those names: the entrypoint script and configuration, not every binary.
_STDIO_SCAN_LIMIT = 256 * 1024

_DEFAULT_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def stdio_mode(given: str, scan: RootfsScan, rootfs: Path, args: tuple[str, ...]) -> tuple[str, str]:
    """(journal or pipe, why) for the container's stdout and stderr under systemd.

    The journal's socket costs no process, so it is the choice unless the image shows it reopens its
    output: a log file linked to /dev/stdout (nginx, httpd), those names in its command line, in its
    entrypoint script or in its configuration under /etc (php-fpm's error_log = /proc/self/fd/2).
    """
    if given != "auto":
        return given, f"--stdio {given}"
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


def health_check(given: HealthSettings, declared: Mapping[str, Any] | None) -> HealthCheck | None:
    """The image's HEALTHCHECK, replaced or switched off by --health-cmd, tuned by --health-*."""
    if given.disabled:
        return None
    check = HealthCheck.from_image(declared)
    if given.command is not None:
        check = HealthCheck(given.command)
    if given.test is not None:
        # compose's healthcheck: a new test keeps the image's timings unless it gives its own.
        check = dataclasses.replace(check or HealthCheck(()), command=given.test)
    if check is None:
        return None
    return dataclasses.replace(
        check,
        interval=given.interval or check.interval,
        retries=given.retries or check.retries,
        timeout=given.timeout or check.timeout,
        start_period=given.start_period if given.start_period is not None else check.start_period,
    )


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
    if not numeric(text) or int(text) > MAX_ID:
        raise ImageError(
            f"the image's /etc/{table} gives {fields[0]!r} the id {text[:20]!r}, which is not a number "
            f"from 0 to {MAX_ID}",
            hint="pass a numeric --user such as 1000:1000",
        )
    return int(text)


def resolve_user(run_as: RunAs, rootfs: Path) -> tuple[int, int]:
    """--user as the image would run it: names looked up in the image's own passwd and group files."""
    user, group = run_as.user, run_as.group
    entry = _lookup(rootfs, "passwd", user)
    if numeric(user):
        uid = int(user)
    elif entry is not None:
        uid = _id_field(entry, 2, "passwd")
    else:
        raise ImageError(
            f"the image has no user {user!r} in /etc/passwd", hint="pass a numeric --user such as 1000:1000"
        )
    if group is None:
        # As Docker: the user's primary group, or root's group for a number the image does not know.
        if entry is not None and len(entry) > 3 and numeric(entry[3]):
            return uid, _id_field(entry, 3, "passwd")
        return uid, 0
    if numeric(group):
        return uid, int(group)
    found = _lookup(rootfs, "group", group)
    if found is None:
        raise ImageError(
            f"the image has no group {group!r} in /etc/group",
            hint="pass a numeric group, e.g. --user 1000:1000",
        )
    return uid, _id_field(found, 2, "group")


def plan_service(
    request: BuildRequest, image: ResolvedImage, unpacked: Bundle, scan: RootfsScan
) -> ServiceSpec:
    cfg = image.config
    fmt = request.format
    name = request.name or naming.check_package_name(
        naming.default_package_name(image.reference.basename), fmt
    )
    version = (
        request.version or naming.default_version(fmt, image.reference.tag, image.digest, cfg.created)
    ).full
    if request.min_version is not None and request.version is None:
        version = naming.above(fmt, version, request.min_version)
    arch = naming.deb_arch(cfg.architecture or "amd64", cfg.variant)
    naming.format_arch(fmt, arch)  # refuses an architecture the format has no name for
    unit_dir = "/usr/lib/systemd/system" if fmt is PackageFormat.RPM else "/lib/systemd/system"
    layout = Layout(name, version, unit_dir=unit_dir)
    entrypoint = request.entrypoint if request.entrypoint is not None else cfg.entrypoint
    # An entrypoint of one empty word is none, as `docker run --entrypoint ""` and Docker's builder
    # (`ENTRYPOINT [""]`) mean it; runc would try to run "" instead.
    entrypoint = () if entrypoint == ("",) else entrypoint
    # As with `docker run --entrypoint`, a new entrypoint drops the image's Cmd.
    cmd = request.cmd if request.cmd is not None else (() if request.entrypoint is not None else cfg.cmd)
    args = (*entrypoint, *cmd)
    if args and not args[0]:
        given = request.entrypoint is not None or request.cmd is not None
        raise (UsageError if given else ImageError)(
            f"the command to run, {shlex.join(args)[:60]}, starts with an empty word: there is no program "
            "to run",
            hint="pass the program to run with --entrypoint, e.g. --entrypoint /usr/bin/server",
        )
    entrypoint_n = len(entrypoint)
    if request.init_process and args:
        # As `docker run --init`: tini (the host's static build, mounted read-only) is PID 1, reaps
        # zombies and passes signals on; the entrypoint runs below it.
        args = (runtime_config.INIT_PATH, "--", *args)
        entrypoint_n += 2
    if not args:
        raise ImageError(
            f"image {image.reference} has no Entrypoint or Cmd, so there is nothing to run",
            hint="pass the command to run with --cmd, e.g. --cmd '/usr/bin/server --port 8080'",
        )
    stdio, why = stdio_mode(request.stdio, scan, unpacked.rootfs, args)
    if stdio == "pipe" and request.init is InitSystem.SYSTEMD:
        log.info(f"  stdout/stderr through a pipe and a relay process: {why}")
    if request.network == "private":
        ports = ", ".join(str(p) for p in request.publish) or "none"
        exposed = f" (the image exposes {', '.join(cfg.exposed_ports)})" if cfg.exposed_ports else ""
        log.info(f"  private network, published ports: {ports}{exposed}")
    if request.user is not None:
        uid, gid = resolve_user(request.user, unpacked.rootfs)
    else:
        user = unpacked.config.get("process", {}).get("user", {})
        uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    volumes = tuple(
        _volume(layout, path, scan, uid, gid)
        for path in dict.fromkeys([*image_volumes(cfg.volumes), *request.volume_paths])
    )
    health = health_check(request.health, cfg.healthcheck) if not request.oneshot else None
    if request.ready_health and health is None:
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
        stop_signal=request.stop_signal
        or normalize_signal(cfg.stop_signal or "SIGTERM", f"image {image.reference}"),
        stop_timeout=request.stop_timeout,
        volumes=volumes,
        maintainer=request.maintainer
        or metadata.maintainer_from_label(labels.get("org.opencontainers.image.authors"))
        or DEFAULT_MAINTAINER,
        format=fmt,
        init=request.init,
        security=request.security,
        user=request.user.text if request.user else None,
        entrypoint_n=entrypoint_n,
        env=request.env,
        resources=request.resources,
        health=health,
        ready_port=request.ready_port,
        runtime=request.runtime,
        stdio=stdio,
        activation=request.activation,
        network=request.network,
        userns=request.userns,
        publish=request.publish,
        homepage=metadata.homepage(labels.get("org.opencontainers.image.url"), "url")
        or metadata.homepage(labels.get("org.opencontainers.image.source"), "source"),
        license=metadata.license_expression(labels.get("org.opencontainers.image.licenses")),
        **{
            **option_fields(request),
            "working_dir": request.working_dir or image_working_dir(cfg.working_dir),
        },
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


def option_fields(request: BuildRequest) -> dict[str, Any]:
    """The ServiceSpec fields that follow from the options alone, whatever the image (compose's keys,
    mostly): one place, which the compose goldens use too."""
    names = (
        "mounts", "working_dir", "read_only", "tmpfs", "restart", "requires", "wants", "stack", "oneshot",
        "ready_health", "annotations", "init_process", "files", "aliases", "application_network",
    )  # fmt: skip
    return {name: getattr(request, name) for name in names}


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
