"""Shared layers' packages: built in worker threads as the layers are unpacked, cached by what they
depend on, and placed beside the service package.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

from ctr2svc import log
from ctr2svc.distribution import record
from ctr2svc.image import layerstore
from ctr2svc.image.cache import ImageCache
from ctr2svc.image.config import ResolvedImage
from ctr2svc.model import PackageFormat
from ctr2svc.options.build_options import DEFAULT_MAINTAINER
from ctr2svc.options.request import BuildRequest
from ctr2svc.package import layer_package, naming, nfpm
from ctr2svc.run import halted


def layer_package_key(layer: layer_package.LayerPackage) -> str:
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

    def __init__(self, request: BuildRequest, cache: ImageCache, image: ResolvedImage, work: Path) -> None:
        cfg = image.config
        name = request.name or naming.default_package_name(image.reference.basename)
        # apk signatures name the public key; a key name that defaults to the service's would make each
        # service's copy of a shared layer a different package.
        key_name = ""
        if request.sign_key_file is not None and request.format is PackageFormat.APK:
            key_name = request.sign_key_name or f"{name}.rsa.pub"
        self.options = (
            request.format,
            naming.deb_arch(cfg.architecture or "amd64", cfg.variant),
            request.compression,
            # Not the image's label: a layer is shared by images with other authors.
            request.maintainer or DEFAULT_MAINTAINER,
            request.sign_key_file,
            key_name,
        )
        self.store = layerstore.LayerStore(cache.root)
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

    def submit(self, extracted: layerstore.Extracted) -> None:
        layer = layer_package.LayerPackage(extracted, *self.options)
        final = (
            self.store.path(extracted.unit)
            / "packages"
            / layer_package_key(layer)
            / layer_package.layer_filename(layer)
        )
        self.paths.append(final)
        if not final.is_file():
            self.built.append(extracted.unit.package)
            self.jobs.append(self.pool.submit(self._build, layer, final))

    def _build(self, layer: layer_package.LayerPackage, final: Path) -> None:
        staging = self.work / f"layer-{layer.extracted.unit.hex}"
        staging.mkdir()
        built = layer_package.pack_layer(layer, staging)
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
    return nfpm.publish(cached, output_dir)
