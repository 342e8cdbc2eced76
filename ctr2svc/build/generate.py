"""The image unpacked (flat by umoci, or shared layer by layer), the service planned on its root, and its
files rendered: everything a package is made of, before packing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctr2svc import log
from ctr2svc.errors import ImageError
from ctr2svc.image import bundle, layers, layerstore, layertar
from ctr2svc.image.bundle import Bundle, RootfsScan
from ctr2svc.image.cache import ImageCache
from ctr2svc.image.config import ResolvedImage
from ctr2svc.model import ServiceSpec, SharedLayer
from ctr2svc.options.request import BuildRequest
from ctr2svc.service import runtime_config, units
from ctr2svc.service.plan import plan_service


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
    extracted: tuple[layerstore.Extracted, ...] = ()


def generate(
    request: BuildRequest,
    cache: ImageCache,
    image: ResolvedImage,
    work: Path,
    on_layer: Callable[[layerstore.Extracted], None] | None = None,
) -> Generated:
    """Unpack the cached image in work/ and produce the service's files and runtime config."""
    if request.layers == "shared":
        return generate_shared(request, cache, image, work, on_layer)
    with log.step("Unpacking the image"), cache.locked(exclusive=False):
        manifest = cache.manifest(image.digest) or {}
        count = len(manifest.get("layers", []))
        if count:
            # By the rules shared layers are unpacked with: umoci gets only what passes them.
            layertar.check_image(layers.image_layers(manifest, cache.config(manifest)), cache.blob_path)
        unpacked = bundle.unpack(
            image.cache_ref, work / "bundle", count, user=request.user.text if request.user else None
        )
    scan = bundle.scan(unpacked.rootfs)
    spec = plan_service(request, image, unpacked, scan)
    return _service_files(spec, unpacked, scan)


def _service_files(
    spec: ServiceSpec, unpacked: Bundle, scan: RootfsScan, extracted: tuple[layerstore.Extracted, ...] = ()
) -> Generated:
    with log.step(f"Writing the service files for {spec.name} {spec.version}"):
        config = runtime_config.patch(unpacked.config, spec)
        key = hashlib.sha256(f"{spec.version}\0{json.dumps(config, sort_keys=True)}".encode()).hexdigest()
        files = units.service_files(spec, scan, key[:16])
        scripts = units.package_scripts(spec)
    return Generated(spec, unpacked, scan, config, files, scripts, extracted)


def unpack_layers(
    cache: ImageCache,
    image: ResolvedImage,
    on_layer: Callable[[layerstore.Extracted], None] | None = None,
) -> tuple[layerstore.Extracted, ...]:
    """The image's layer packages' contents, unpacked into the layer cache unless already there.
    ON_LAYER gets each one as soon as it is there (the packer starts on it while the next unpacks)."""
    manifest = cache.manifest(image.digest)
    if manifest is None:
        raise ImageError(
            f"image {image.reference} is no longer in the cache", hint="build again: it will be pulled"
        )
    units_ = layers.plan(layers.image_layers(manifest, cache.config(manifest)))
    store = layerstore.LayerStore(cache.root)
    bundle.require_root()
    done = []
    stack = layerstore.Stack()
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
    request: BuildRequest,
    cache: ImageCache,
    image: ResolvedImage,
    work: Path,
    on_layer: Callable[[layerstore.Extracted], None] | None = None,
) -> Generated:
    """Shared layers: the service is planned on a read-only overlay of the image's unpacked layers,
    which is the root the service will see."""
    extracted = unpack_layers(cache, image, on_layer)
    with layerstore.merged_view(extracted, work / "view") as root:
        config = bundle.runtime_config(
            image.cache_ref, root, work / "config.json", user=request.user.text if request.user else None
        )
        unpacked = Bundle(work, config, root=root)
        scan = bundle.scan(root, layer=True)
        # What the layers hold that no package can: device nodes, FIFOs, sockets (as a flat build says).
        scan.skipped = [item for x in extracted for item in x.scan.skipped]
        bundle.warn_skipped(scan.skipped)
        spec = plan_service(request, image, unpacked, scan)
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
