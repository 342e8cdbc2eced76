"""The build pipeline: options -> resolve and pull -> unpack -> plan -> patch -> render -> pack.

Each stage is a plain function taking what the previous ones produced; `build()` calls them in order.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ctr2svc import log
from ctr2svc.build.workspace import output_lock, workspace
from ctr2svc.distribution import record
from ctr2svc.distribution.record import BuildResult
from ctr2svc.errors import UsageError
from ctr2svc.image import registry, skopeo, trust
from ctr2svc.image.cache import ImageCache, default_cache_dir
from ctr2svc.options.request import BuildRequest
from ctr2svc.package import naming
from ctr2svc.run import find_tool

if TYPE_CHECKING:
    from ctr2svc.build.generate import Generated
    from ctr2svc.build.layerpack import LayerPacker


def preflight(request: BuildRequest) -> None:
    """What the build needs of this machine, checked before any download (the options were checked as
    they became the request): fail fast, write nothing."""
    out = request.output_dir
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} is not a directory", hint="pass a directory with -o")
    probe = out if out.exists() else _existing_parent(out)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"output directory {out} is not writable", hint="pass a writable directory with -o")
    registry.check_transport(request.reference)
    skopeo.limits()
    find_tool("skopeo", "pull images", checked=False)


def preflight_build() -> None:
    """The tools' versions, and the tools building needs besides skopeo, checked once the build record
    says the package is not up to date, before any download: an up-to-date package runs none of
    them but one manifest request (and spends no time asking them their versions)."""
    for tool, reason in (("skopeo", "pull images"), ("umoci", "unpack images"), ("nfpm", "build packages")):
        find_tool(tool, reason)


def _existing_parent(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def pull_options(request: BuildRequest) -> skopeo.PullOptions:
    """How the image stage pulls for REQUEST: its platform (this host's unless --arch), credentials, TLS and
    the time limits of the environment."""
    arch, variant = (
        (request.arch, request.variant) if request.arch else naming.split_platform(naming.host_oci_arch())
    )
    return skopeo.PullOptions(
        arch,
        variant,
        request.creds,
        request.authfile,
        request.tls_verify,
        skopeo.limits(),
        request.policy,
        request.registries_d,
    )


def build(request: BuildRequest) -> BuildResult:
    preflight(request)
    cache = ImageCache(request.cache_dir or default_cache_dir())
    cache.ensure()
    with output_lock(cache.root, request), workspace(cache.root) as work:
        with log.step(f"Resolving {request.reference}"):
            pull = pull_options(request)
            policy = trust.load(request.policy)
            located = registry.locate(request.reference, pull, work)
            checked = trust.requirement(
                policy, request.reference, registry.pinned_reference(request.reference, located)
            )
            # The requirement and the keys it trusts are part of the build: under a new policy the
            # image is verified (and packaged) again.
            build_key = record.key(request, located.digest, checked.record(located.digest))
            done = record.lookup(cache.root, build_key)
            if done is not None:
                log.info(f"  {located.digest}: unchanged, and so are the options")
                return dataclasses.replace(
                    done,
                    path=request.output_dir / done.path.name,
                    layer_files=tuple(str(request.output_dir / Path(p).name) for p in done.layer_files),
                )
            preflight_build()
            image = registry.resolve(request.reference, pull, cache, work, located, checked)
            log.info(f"  {image.pinned} ({image.config.platform})")
        # The build's own code, imported only now: an up-to-date package has returned above.
        from ctr2svc.build.generate import generate
        from ctr2svc.build.layerpack import LayerPacker

        with LayerPacker(request, cache, image, work) as packer:
            made = generate(
                request, cache, image, work, packer.submit if request.layers == "shared" else None
            )
            return _pack(request, cache, made, work, packer, build_key)


def _pack(
    request: BuildRequest,
    cache: ImageCache,
    made: Generated,
    work: Path,
    packer: LayerPacker,
    build_key: str,
) -> BuildResult:
    """Pack the service package; with shared layers, wait for the layer packages and place them all."""
    from ctr2svc.build.layerpack import place
    from ctr2svc.package import nfpm, service_package

    spec = made.spec
    with log.step(f"Packing {service_package.filename(spec)}"):
        inputs = service_package.PackageInputs(
            spec,
            made.bundle.rootfs,
            made.scan,
            made.config,
            made.files,
            made.scripts,
            request.compression,
            request.sign_key_file,
            request.sign_key_name,
        )
        staging = work / "package"
        staging.mkdir()
        request.output_dir.mkdir(parents=True, exist_ok=True)
        if made.extracted:
            # Placed beside the service package only once every package is made.
            path = service_package.pack(inputs, staging, work)
            layer_packages, built = packer.finish()
            placed = tuple(str(place(p, request.output_dir)) for p in layer_packages)
            path = nfpm.publish(path, request.output_dir, move=True)
        else:
            path = service_package.pack(inputs, staging, request.output_dir)
            placed, built = (), ()
    result = BuildResult.of(path, spec, made.scan.skipped, placed, built)
    record.save(cache.root, build_key, result)
    return result
