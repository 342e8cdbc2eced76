"""The build pipeline: options -> resolve and pull -> unpack -> plan -> patch -> render -> pack.

Each stage is a plain function taking what the previous ones produced; `build()` calls them in order.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ctr2svc import log, naming, package
from ctr2svc.build.generate import Generated, generate
from ctr2svc.build.layerpack import LayerPacker, place
from ctr2svc.build.workspace import output_lock, workspace
from ctr2svc.distribution import record
from ctr2svc.distribution.record import BuildResult
from ctr2svc.errors import UsageError
from ctr2svc.image import registry, skopeo
from ctr2svc.image.cache import ImageCache, default_cache_dir
from ctr2svc.options.build_options import BuildOptions
from ctr2svc.options.checks import check_package_options
from ctr2svc.run import find_tool


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
    skopeo.limits()
    for tool, reason in (("skopeo", "pull images"), ("umoci", "unpack images"), ("nfpm", "build packages")):
        find_tool(tool, reason)


def _existing_parent(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def pull_options(opts: BuildOptions) -> skopeo.PullOptions:
    arch, variant = naming.split_platform(opts.arch or naming.host_oci_arch())
    return skopeo.PullOptions(arch, variant, opts.creds, opts.authfile, opts.tls_verify, skopeo.limits())


def build(opts: BuildOptions) -> BuildResult:
    check_options(opts)
    cache = ImageCache(opts.cache_dir or default_cache_dir())
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
    cache: ImageCache,
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
