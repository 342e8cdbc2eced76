"""The typed data the pipeline passes between stages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from ctr2svc.reference import ImageReference


class PackageFormat(StrEnum):
    DEB = "deb"


@dataclass(frozen=True)
class ImageConfig:
    """What the image declares (the OCI image config), as far as a service cares."""

    architecture: str
    os: str
    variant: str | None = None
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    user: str = ""
    working_dir: str = ""
    volumes: tuple[str, ...] = ()
    exposed_ports: tuple[str, ...] = ()
    stop_signal: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    created: str | None = None
    healthcheck: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ImageConfig:
        cfg = doc.get("config") or {}
        return cls(
            architecture=doc.get("architecture", ""),
            os=doc.get("os", ""),
            variant=doc.get("variant") or None,
            entrypoint=tuple(cfg.get("Entrypoint") or ()),
            cmd=tuple(cfg.get("Cmd") or ()),
            env=tuple(cfg.get("Env") or ()),
            user=cfg.get("User") or "",
            working_dir=cfg.get("WorkingDir") or "",
            volumes=tuple(sorted(cfg.get("Volumes") or {})),
            exposed_ports=tuple(sorted(cfg.get("ExposedPorts") or {})),
            stop_signal=cfg.get("StopSignal") or None,
            labels=dict(cfg.get("Labels") or {}),
            created=doc.get("created"),
            healthcheck=cfg.get("Healthcheck"),
        )

    @property
    def platform(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


@dataclass(frozen=True)
class ResolvedImage:
    """An image pulled into the cache, pinned to the digest of its platform manifest."""

    reference: ImageReference
    # Digest of the manifest for our platform, as the source served it: what gets pinned.
    digest: str
    # Digest of the multi-arch index the tag pointed to, when there was one.
    index_digest: str | None
    config: ImageConfig
    # Where the image sits in the local cache, as an umoci/skopeo "oci:" reference.
    cache_ref: str

    @property
    def pinned(self) -> str:
        """REPO@DIGEST for remote images, the local reference plus digest otherwise."""
        if self.reference.is_remote:
            return str(self.reference.pinned(self.digest))
        return f"{self.reference.skopeo()}@{self.digest}"


@dataclass(frozen=True)
class Volume:
    """An image VOLUME: where it is in the container, where its data lives on the host."""

    container_path: str
    host_path: str
    # Owner and mode of the directory as the image ships it; a new volume starts like that.
    uid: int
    gid: int
    mode: int
    # The image has content at this path that a new volume is seeded with, as Docker does.
    seed: bool


@dataclass(frozen=True)
class Layout:
    """Where an installed service keeps things on the host. One place decides every path."""

    name: str
    version: str
    prefix: str = "/opt/containers"

    @property
    def image_dir(self) -> str:
        # Versioned, so a new version unpacks beside the running one; the restart switches.
        return f"{self.prefix}/{self.name}/{self.version}"

    @property
    def rootfs(self) -> str:
        return f"{self.image_dir}/rootfs"

    @property
    def data_dir(self) -> str:
        return f"/var/lib/{self.name}"

    @property
    def volumes_dir(self) -> str:
        return f"{self.data_dir}/volumes"

    @property
    def overlay_dir(self) -> str:
        return f"{self.data_dir}/overlay"

    @property
    def state_dir(self) -> str:
        return f"/run/{self.name}"

    @property
    def merged_root(self) -> str:
        return f"{self.state_dir}/rootfs"

    @property
    def helper(self) -> str:
        return f"/usr/libexec/{self.name}/service"

    @property
    def unit_name(self) -> str:
        return f"{self.name}.service"

    @property
    def unit_path(self) -> str:
        return f"/lib/systemd/system/{self.unit_name}"

    def volume_host_path(self, container_path: str) -> str:
        # The container path kept as-is below volumes/: readable, and two volumes can never collide.
        relative = PurePosixPath(container_path).relative_to("/")
        return f"{self.volumes_dir}/{relative}" if str(relative) != "." else f"{self.volumes_dir}/_root"


@dataclass(frozen=True)
class ServiceSpec:
    """Everything decided about the service before anything is rendered or packed."""

    name: str
    version: str
    arch: str  # the package format's spelling (amd64, arm64, armhf, ...)
    description: str
    layout: Layout
    image: ResolvedImage
    args: tuple[str, ...]
    uid: int
    gid: int
    stop_signal: str
    stop_timeout: int
    volumes: tuple[Volume, ...]
    maintainer: str
    homepage: str | None = None
    license: str | None = None
