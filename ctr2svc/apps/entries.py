"""What a many-image run works on, however it was written: a Project of ImageEntry's (a project file's
[[image]] tables, or a compose file's services) and, for a compose file, its Application. project.py
and compose.py make them; `build -c` and `update` (distribution/update.py) and the application
package (stack.py) take them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctr2svc.apps.compose_build import ImageBuild
from ctr2svc.distribution.indexes import ApkKey, Signing
from ctr2svc.distribution.repo import DEFAULT_KEEP
from ctr2svc.model import PackageFormat
from ctr2svc.options.build_options import BuildOptions
from ctr2svc.options.request import BuildRequest


@dataclass(frozen=True)
class ServicePlan:
    """One service of a compose application."""

    service: str  # compose's name
    options: BuildOptions  # as the file's keys map onto them
    request: BuildRequest  # checked: what the service's package is built from
    build: ImageBuild | None = None  # how its image is built first, when the file builds it


@dataclass(frozen=True)
class Application:
    """A compose application: its services, and its own package (NAME-stack) that starts them all."""

    name: str  # the project name
    path: Path  # the compose file
    stack: str  # the application package (and target) name
    services: tuple[ServicePlan, ...]  # in start order: each after those it depends on

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(str(s.options.name) for s in self.services)


@dataclass(frozen=True)
class ImageEntry:
    """One image of a project: a project file's [[image]] table with [defaults] applied, or a compose
    file's service."""

    number: int
    settings: Mapping[str, Any]
    # A compose file's service: its options as ctr2svc/apps/compose.py mapped them (settings has ref, name).
    preset: BuildOptions | None = None
    # A compose service the file builds (build:): its image is built before it is located or pulled.
    build: ImageBuild | None = None

    @property
    def ref(self) -> str:
        return str(self.settings["ref"])

    @property
    def formats(self) -> tuple[PackageFormat, ...]:
        return tuple(PackageFormat(f) for f in self.settings.get("formats", ["deb"]))

    @property
    def name(self) -> str | None:
        """The explicit package name, if the project gives one."""
        name = self.settings.get("name")
        return str(name) if name else None

    def label(self) -> str:
        return self.name or self.ref


@dataclass(frozen=True)
class Project:
    """The images of a project file or a compose file, where their packages go and where they are
    published."""

    path: Path
    output_dir: Path
    images: list[ImageEntry]
    repo: Path | None = None
    keep: int = DEFAULT_KEEP
    signing: Signing | None = None
    apk_key: ApkKey | None = None
    cache_dir: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # A compose file's application: its package is built and published after its services'.
    application: Application | None = None
