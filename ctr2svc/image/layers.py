"""Shared layers: which layer packages an image makes. Each is unpacked and cached by layerstore.py.

A layer is content-addressed and never changes, which is what a package with a fixed version is: the
layer's files become a package (`ctr2svc-layer-<12 hex of its diff_id>`) that every service built on
it shares, and the service mounts its image's layers as overlayfs lower layers at start.

The kernel caps the lower layers of one overlay mount (500) and the mount options at a page (4096
bytes). Past MAX_LAYERS (100: about 2 KiB of options on the host) the bottom layers of an image are
merged into one, named by the chain ID of the layers it holds (the OCI image spec's content address
of a stack of layers), so that images sharing that base share the merged layer too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ctr2svc.errors import ImageError, UsageError

PACKAGE_PREFIX = "ctr2svc-layer-"
# Every layer package has this version: its name already says which content it holds. A future
# change of how a layer is installed raises it, and service packages then ask for the new one.
PACKAGE_VERSION = "1"
INSTALL_DIR = "/opt/containers/layers"
MAX_LAYERS = 100


def max_layers() -> int:
    """MAX_LAYERS, or $CTR2SVC_MAX_LAYERS (at least 2), which tests use to merge small images."""
    text = os.environ.get("CTR2SVC_MAX_LAYERS", "").strip()
    if not text:
        return MAX_LAYERS
    if not text.isdigit() or not 2 <= int(text) <= MAX_LAYERS:
        raise UsageError(
            f"CTR2SVC_MAX_LAYERS={text!r} is not a number from 2 to {MAX_LAYERS}",
            hint="unset it, or set a number of lower layers such as 50",
        )
    return int(text)


@dataclass(frozen=True)
class Layer:
    """One layer as the image's manifest and config name it."""

    digest: str  # of the blob as stored (compressed)
    diff_id: str  # of the uncompressed tar: what the layer *is*
    media_type: str
    size: int  # compressed bytes

    @property
    def label(self) -> str:
        """How messages name it: the first 12 hex digits of its diff_id, as its package name does."""
        return self.diff_id[7:19]


def chain_id(diff_ids: Sequence[str]) -> str:
    """The OCI image spec's ChainID of a stack of layers (bottom first)."""
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain


@dataclass(frozen=True)
class Unit:
    """What one layer package holds: one layer, or the bottom layers of a tall image merged."""

    layers: tuple[Layer, ...]

    @property
    def id(self) -> str:
        return self.layers[0].diff_id if len(self.layers) == 1 else chain_id([x.diff_id for x in self.layers])

    @property
    def hex(self) -> str:
        return self.id.split(":", 1)[1]

    @property
    def short(self) -> str:
        return self.hex[:12]

    @property
    def package(self) -> str:
        return PACKAGE_PREFIX + self.short

    @property
    def merged(self) -> bool:
        return len(self.layers) > 1

    @property
    def install_dir(self) -> str:
        return f"{INSTALL_DIR}/{self.short}"


def image_layers(manifest: dict[str, Any], config: dict[str, Any]) -> list[Layer]:
    """The image's layers, bottom first, each with the diff_id its config records."""
    try:
        descriptors = manifest["layers"]
        diff_ids = config["rootfs"]["diff_ids"]
        if len(descriptors) != len(diff_ids):
            raise ValueError
        layers = [
            Layer(str(d["digest"]), str(diff), str(d.get("mediaType", "")), int(d.get("size", 0)))
            for d, diff in zip(descriptors, diff_ids, strict=True)
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ImageError(
            "the image's config does not list one diff_id per layer of its manifest",
            hint="rebuild the image with a standard tool (docker, buildah)",
        ) from exc
    for layer in layers:
        algorithm, _, hexpart = layer.diff_id.partition(":")
        if algorithm != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
            raise ImageError(
                f"the image's config lists a diff_id that is not a sha256 digest: {layer.diff_id[:80]!r}",
                hint="rebuild the image with a standard tool (docker, buildah)",
            )
    if not layers:
        raise ImageError("the image has no layers", hint="build it with --layers flat")
    return layers


def plan(layers: Sequence[Layer], limit: int | None = None) -> list[Unit]:
    """The image's layer packages, bottom first: one per layer, the bottom ones merged past the limit.

    A layer that comes again higher up the stack (the empty layer of a `RUN` that changed nothing, say)
    is kept only there: overlayfs refuses one directory twice among its lower layers, and the higher
    copy defines every path the lower one does, deletions included, so the root is the same.
    """
    limit = limit or max_layers()
    topmost = {layer.diff_id: index for index, layer in enumerate(layers)}
    layers = [layer for index, layer in enumerate(layers) if topmost[layer.diff_id] == index]
    if len(layers) <= limit:
        return [Unit((layer,)) for layer in layers]
    cut = len(layers) - limit + 1
    return [Unit(tuple(layers[:cut])), *(Unit((layer,)) for layer in layers[cut:])]
