"""The build pipeline: options -> resolve and pull -> unpack -> plan -> patch -> render -> pack.

Each stage is a plain function taking what the previous ones produced; `build()` calls them in order.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ctr2svc import bundle, log, naming, package, registry, runtime_config, units
from ctr2svc.bundle import Bundle, Kind, RootfsScan
from ctr2svc.errors import ImageError, UsageError
from ctr2svc.model import Layout, PackageFormat, ResolvedImage, ServiceSpec, Volume
from ctr2svc.reference import ImageReference
from ctr2svc.run import find_tool

DEFAULT_STOP_TIMEOUT = 30
SIGNALS = {s.name for s in signal.Signals}


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    reference: ImageReference
    format: PackageFormat = PackageFormat.DEB
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
    maintainer: str = "ctr2svc <root@localhost>"
    compression: str = "zstd"


@dataclass(frozen=True)
class BuildResult:
    path: Path
    spec: ServiceSpec
    skipped: list[tuple[str, str]]


def check_options(opts: BuildOptions) -> None:
    """Everything that can be checked before any download: fail fast, write nothing."""
    if opts.name is not None:
        naming.check_package_name(opts.name)
    if opts.version is not None:
        naming.check_version(opts.version)
    if opts.stop_signal is not None:
        normalize_signal(opts.stop_signal)
    out = opts.output_dir
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} is not a directory", hint="pass a directory with -o")
    probe = out if out.exists() else _existing_parent(out)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"output directory {out} is not writable", hint="pass a writable directory with -o")
    registry.check_transport(opts.reference)
    for tool, reason in (("skopeo", "pull images"), ("umoci", "unpack images"), ("nfpm", "build packages")):
        find_tool(tool, reason)


def _existing_parent(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def normalize_signal(value: str) -> str:
    text = value.strip().upper()
    if text.isdigit():
        try:
            return signal.Signals(int(text)).name
        except ValueError:
            pass
    name = text if text.startswith("SIG") else f"SIG{text}"
    if name not in SIGNALS:
        raise UsageError(
            f"unknown stop signal {value!r}", hint="use a signal name such as SIGTERM or SIGQUIT"
        )
    return name


@contextlib.contextmanager
def workspace(cache_root: Path) -> Iterator[Path]:
    # Beside the cache rather than in /tmp: a rootfs can be large and /tmp is often memory.
    base = cache_root / "work"
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="build-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def plan_service(opts: BuildOptions, image: ResolvedImage, unpacked: Bundle, scan: RootfsScan) -> ServiceSpec:
    cfg = image.config
    name = opts.name or naming.check_package_name(naming.default_package_name(image.reference.basename))
    version = opts.version or naming.check_version(
        naming.version_from_tag(image.reference.tag, image.digest, cfg.created)
    )
    layout = Layout(name, version)
    entrypoint = opts.entrypoint if opts.entrypoint is not None else cfg.entrypoint
    # As with `docker run --entrypoint`, a new entrypoint drops the image's Cmd.
    cmd = opts.cmd if opts.cmd is not None else (() if opts.entrypoint is not None else cfg.cmd)
    args = (*entrypoint, *cmd)
    if not args:
        raise ImageError(
            f"image {image.reference} has no Entrypoint or Cmd, so there is nothing to run",
            hint="pass the command to run with --cmd, e.g. --cmd '/usr/bin/server --port 8080'",
        )
    user = unpacked.config.get("process", {}).get("user", {})
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    volumes = tuple(_volume(layout, path, scan, uid, gid) for path in cfg.volumes)
    title = cfg.labels.get("org.opencontainers.image.title") or image.reference.basename
    summary = cfg.labels.get("org.opencontainers.image.description") or f"{title} container image"
    return ServiceSpec(
        name=name,
        version=version,
        arch=naming.deb_arch(cfg.architecture or "amd64", cfg.variant),
        description=f"{summary} (as a service)",
        layout=layout,
        image=image,
        args=args,
        uid=uid,
        gid=gid,
        stop_signal=normalize_signal(opts.stop_signal or cfg.stop_signal or "SIGTERM"),
        stop_timeout=opts.stop_timeout,
        volumes=volumes,
        maintainer=opts.maintainer,
        homepage=cfg.labels.get("org.opencontainers.image.url")
        or cfg.labels.get("org.opencontainers.image.source"),
        license=cfg.labels.get("org.opencontainers.image.licenses"),
    )


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


def build(opts: BuildOptions) -> BuildResult:
    check_options(opts)
    cache = registry.ImageCache(opts.cache_dir or registry.default_cache_dir())
    cache.ensure()
    arch, variant = naming.split_platform(opts.arch or naming.host_oci_arch())
    with workspace(cache.root) as work:
        with log.step(f"Resolving {opts.reference}"):
            pull = registry.PullOptions(arch, variant, opts.creds, opts.authfile, opts.tls_verify)
            image = registry.resolve(opts.reference, pull, cache, work)
            log.info(f"  {image.pinned} ({image.config.platform})")
        with log.step("Unpacking the image"), cache.locked(exclusive=False):
            unpacked = bundle.unpack(image.cache_ref, work / "bundle")
        scan = bundle.scan(unpacked.rootfs)
        spec = plan_service(opts, image, unpacked, scan)
        with log.step(f"Writing the service files for {spec.name} {spec.version}"):
            config = runtime_config.patch(unpacked.config, spec)
            generated = units.service_files(spec, scan)
            scripts = units.deb_scripts(spec)
        with log.step(f"Packing {package.filename(spec, opts.format)}"):
            inputs = package.PackageInputs(
                spec, unpacked.rootfs, scan, config, generated, scripts, opts.compression
            )
            staging = work / "package"
            staging.mkdir()
            opts.output_dir.mkdir(parents=True, exist_ok=True)
            path = package.pack(inputs, opts.format, staging, opts.output_dir)
    return BuildResult(path, spec, scan.skipped)


def shell_words(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise UsageError(f"cannot split {text!r} into words: {exc}", hint="check the quoting") from exc
