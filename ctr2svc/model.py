"""The typed data the pipeline passes between stages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from ctr2svc.image.config import ResolvedImage, bad_config


class PackageFormat(StrEnum):
    DEB = "deb"
    RPM = "rpm"
    APK = "apk"

    @property
    def default_init(self) -> InitSystem:
        # Alpine boots OpenRC; Debian/Ubuntu and the RPM distributions boot systemd.
        return InitSystem.OPENRC if self is PackageFormat.APK else InitSystem.SYSTEMD

    @property
    def inits(self) -> tuple[InitSystem, ...]:
        """The init systems a package of this format can be made for."""
        return {
            PackageFormat.DEB: (InitSystem.SYSTEMD, InitSystem.OPENRC),  # Debian packages openrc too
            PackageFormat.RPM: (InitSystem.SYSTEMD,),
            PackageFormat.APK: (InitSystem.OPENRC,),
        }[self]


class InitSystem(StrEnum):
    SYSTEMD = "systemd"
    OPENRC = "openrc"


@dataclass(frozen=True)
class PackageVersion:
    """A package version split into the fields the formats store separately."""

    format: PackageFormat
    version: str  # upstream part
    release: str | None = None  # Debian revision, RPM release, apk "rN"
    epoch: int | None = None

    @property
    def full(self) -> str:
        """As the package manager prints it (dpkg -l, rpm -q, apk info)."""
        text = f"{self.version}-{self.release}" if self.release else self.version
        return f"{self.epoch}:{text}" if self.epoch is not None else text

    @property
    def in_file_name(self) -> str:
        # File names leave the epoch out (Debian and RPM conventions alike).
        return f"{self.version}-{self.release}" if self.release else self.version


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
    # Debian keeps units in /lib (usrmerge makes it the same place); RPM distributions in /usr/lib.
    unit_dir: str = "/lib/systemd/system"

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
    def libexec(self) -> str:
        return f"/usr/libexec/{self.name}"

    @property
    def helper(self) -> str:
        return f"{self.libexec}/service"

    @property
    def service_env(self) -> str:
        # The helper's data: what differs between services (ctr2svc/runtime).
        return f"{self.libexec}/service.env"

    @property
    def config_awk(self) -> str:
        return f"{self.libexec}/config.awk"

    @property
    def network_awk(self) -> str:
        return f"{self.libexec}/network.awk"

    @property
    def idmap_program(self) -> str:
        # Idmapped mounts of shared layers for a user namespace (ctr2svc/runtime/idmap.pl).
        return f"{self.libexec}/idmap.pl"

    @property
    def config_dir(self) -> str:
        # The admin's settings, applied at each start and kept across upgrades.
        return f"/etc/{self.name}"

    @property
    def unit_name(self) -> str:
        return f"{self.name}.service"

    @property
    def unit_path(self) -> str:
        return f"{self.unit_dir}/{self.unit_name}"

    @property
    def init_script(self) -> str:
        return f"/etc/init.d/{self.name}"

    @property
    def preset_path(self) -> str:
        return f"/usr/lib/systemd/system-preset/50-{self.name}.preset"

    def volume_host_path(self, container_path: str) -> str:
        # The container path kept as-is below volumes/: readable, and two volumes can never collide.
        relative = PurePosixPath(container_path).relative_to("/")
        return f"{self.volumes_dir}/{relative}" if str(relative) != "." else f"{self.volumes_dir}/_root"


@dataclass(frozen=True)
class BindMount:
    """An extra bind mount (--volume HOST:CONTAINER[:ro|rw]), a line of /etc/NAME/mounts."""

    source: str
    destination: str
    mode: str = "ro"


@dataclass(frozen=True)
class PortMapping:
    """A published port (--publish [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]), a line of /etc/NAME/ports."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""  # empty: every address of the host

    def __str__(self) -> str:
        ip = f"{self.host_ip}:" if self.host_ip else ""
        return f"{ip}{self.host_port}:{self.container_port}/{self.protocol}"


@dataclass(frozen=True)
class TmpfsMount:
    """A tmpfs in the container (compose's `tmpfs:`): empty at every start, in memory."""

    destination: str
    options: tuple[str, ...] = ()  # mount options besides the defaults: size=64m, mode=1777


@dataclass(frozen=True)
class PackagedFile:
    """A file the package installs and mounts into the container (a compose application's files from
    beside the compose file, its secrets and configs): below /etc/NAME the admin's to change, kept on
    upgrade (config); below /usr/share/NAME the package's, replaced on upgrade."""

    source: str  # where it was read on the build machine, for messages
    dest: str  # where it is installed on the host
    target: str  # where the container sees it
    content: str | bytes  # bytes: not UTF-8 text (an image, a font), packaged as it is
    mode: int = 0o644
    read_only: bool = True
    config: bool = True  # a conffile (deb), %config(noreplace) (rpm)


@dataclass(frozen=True)
class Resources:
    """Packaged resource limits (--memory, --cpus); an admin changes them in a unit drop-in."""

    memory: int | None = None  # bytes
    cpus: float | None = None


# The longest a health check's timings may be, and the most failures in a row: beyond them the unit's
# timer and start timeout would be lines systemd cannot parse (and a check once a day is none).
MAX_HEALTH_SECONDS = 86400
MAX_HEALTH_RETRIES = 10_000  # the helper compares it in shell arithmetic (options/ranges.py)


@dataclass(frozen=True)
class HealthCheck:
    """A Docker HEALTHCHECK (or --health-cmd): run inside the container, restart after RETRIES failures."""

    command: tuple[str, ...]  # argv to exec in the container
    interval: int = 30  # seconds, Docker's defaults
    timeout: int = 30
    retries: int = 3
    start_period: int = 0

    @classmethod
    def from_image(cls, doc: Mapping[str, Any] | None) -> HealthCheck | None:
        """From the image config's Healthcheck (durations in nanoseconds; Test is CMD, CMD-SHELL or NONE)."""
        if not doc or not doc.get("Test"):
            return None
        test = doc["Test"]
        numbers = ("Interval", "Timeout", "StartPeriod", "Retries")
        if (
            not isinstance(test, list)
            or not all(isinstance(word, str) for word in test)
            or not all(isinstance(doc.get(k) or 0, int) and (doc.get(k) or 0) >= 0 for k in numbers)
        ):
            raise bad_config("has a HEALTHCHECK that is not a list of strings with whole-number timings")
        if test[0] == "CMD-SHELL" and len(test) == 2:
            command: tuple[str, ...] = ("/bin/sh", "-c", test[1])
        elif test[0] == "CMD" and len(test) > 1:
            command = tuple(test[1:])
        else:  # NONE, or nothing runnable
            return None

        def seconds(key: str, default: int) -> int:
            # An image's timings are its author's: clamped, as no option can replace all of them.
            value = doc.get(key) or 0
            return min(MAX_HEALTH_SECONDS, max(1, round(value / 1e9))) if value else default

        return cls(
            command,
            seconds("Interval", 30),
            seconds("Timeout", 30),
            min(MAX_HEALTH_RETRIES, int(doc.get("Retries") or 3)),
            seconds("StartPeriod", 0) if doc.get("StartPeriod") else 0,
        )


@dataclass(frozen=True)
class Security:
    """How far the container is locked down (Docker's defaults unless the build says otherwise)."""

    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    pids_limit: int = 4096  # 0: no limit


@dataclass(frozen=True)
class SharedLayer:
    """A layer package the service's root is mounted from (--layers shared)."""

    id: str  # the layer's diff_id, or the chain ID of the bottom layers merged into one package
    package: str  # ctr2svc-layer-<12 hex>
    directory: str  # where it is installed, /opt/containers/layers/<12 hex>
    diff_ids: tuple[str, ...]  # the image layers it holds, bottom first
    size: int  # bytes of its files unpacked


@dataclass(frozen=True)
class ServiceSpec:
    """Everything decided about the service before anything is rendered or packed."""

    name: str
    version: str  # the whole version as the format writes it (9.0.0, 9.0.0-1, 9.0.0-r0)
    arch: str  # Debian's spelling (amd64, arm64, armhf, ...); naming maps it for other formats
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
    format: PackageFormat = PackageFormat.DEB
    init: InitSystem = InitSystem.SYSTEMD
    security: Security = field(default_factory=Security)
    # --user as given (NAME, UID or UID:GID); None keeps the image's User.
    user: str | None = None
    # How many of args are the entrypoint (the admin's args file replaces the rest).
    entrypoint_n: int = 0
    env: tuple[str, ...] = ()  # --env defaults, written to /etc/NAME/env
    mounts: tuple[BindMount, ...] = ()
    resources: Resources = field(default_factory=Resources)
    health: HealthCheck | None = None
    ready_port: int | None = None  # the start counts as done once something listens here
    runtime: str = "runc"  # runc or crun (same command line), or nspawn (systemd-nspawn --oci-bundle)
    homepage: str | None = None
    license: str | None = None
    # How the container's stdout and stderr reach the journal (systemd): "journal", its socket itself,
    # or "pipe", through a pipe and a relay process, for images that open /dev/stdout or /dev/stderr.
    stdio: str = "journal"
    # What a first install does: "start" (enable and start), "preset" (rpm: systemctl preset, no start)
    # or "manual" (neither). options.values.activation decides it from --activation and the format.
    activation: str = "start"
    # Shared layers, bottom first: the root is mounted from these packages. Empty: the package holds
    # the flattened root itself.
    layers: tuple[SharedLayer, ...] = ()
    # "host": the host's network, as `docker run --network host`. "private": a network namespace on the
    # ctr2svc bridge (netavark), with these ports published (the defaults of /etc/NAME/ports).
    network: str = "host"
    publish: tuple[PortMapping, ...] = ()
    # What compose applications need (ctr2svc build --compose); the defaults change nothing.
    working_dir: str | None = None  # the process's working directory instead of the image's
    read_only: bool = False  # the container's root read-only (volumes and tmpfs mounts stay writable)
    tmpfs: tuple[TmpfsMount, ...] = ()
    restart: str = "on-failure"  # systemd's Restart=
    # Other ctr2svc services, by name: this one starts after them and needs them (Requires=, and the
    # package depends on theirs), or only starts after them when they are there (Wants=).
    requires: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()
    # The application's target (NAME.target) the service is part of and enabled by.
    stack: str | None = None
    # Runs to completion instead of staying up (Type=oneshot): what others wait for to finish.
    oneshot: bool = False
    # The start counts as done once the health check passes (others wait for a healthy service).
    ready_health: bool = False
    annotations: tuple[tuple[str, str], ...] = ()  # added to the runtime config's annotations
    init_process: bool = False  # tini as the container's PID 1, as `docker run --init`
    files: tuple[PackagedFile, ...] = ()
    aliases: tuple[str, ...] = ()  # more names the other services reach this one by (private network)
    # The compose application whose own network the service is on ("": the host's ctr2svc network).
    application_network: str = ""
    # "host": the container's root is the host's root. "auto": a user namespace of its own, with 65536
    # host ids allocated at install (ctr2svc/runtime/userns.sh); /etc/NAME/userns may say otherwise.
    userns: str = "host"

    @property
    def package_depends(self) -> tuple[str, ...]:
        """What the package depends on for the compose features: the services it needs, tini."""
        tini = ("tini-static" if self.format is PackageFormat.RPM else "tini",) if self.init_process else ()
        return (*self.requires, *tini)

    @property
    def wanted_by(self) -> str:
        return f"{self.stack}.target" if self.stack else "multi-user.target"

    @property
    def private_network(self) -> bool:
        return self.network == "private"

    @property
    def userns_depends(self) -> tuple[str, ...]:
        """A user namespace over shared layers mounts them idmapped with perl (ctr2svc/runtime/idmap.pl):
        Essential in Debian (perl-base), a package of its own elsewhere."""
        if self.userns != "auto" or not self.layers or self.format is PackageFormat.DEB:
            return ()
        return ("perl",)

    @property
    def network_depends(self) -> tuple[str, ...]:
        """What a private network needs on the target besides the helper's usual tools: netavark (which
        drives iptables, in its nftables flavour on current distributions), aardvark-dns for the
        services' names, ip(8) for the namespace and ss(8) to name who holds a taken port."""
        if not self.private_network:
            return ()
        iproute = "iproute" if self.format is PackageFormat.RPM else "iproute2"
        return ("netavark", "aardvark-dns", "iptables", iproute)
