"""The options of one build as an entry point gives them: the command line, a project file, a compose
file's service. Nothing here is checked yet: ctr2svc.options.request checks them, once.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ctr2svc.errors import UsageError
from ctr2svc.image.reference import ImageReference
from ctr2svc.model import InitSystem, PackagedFile, PackageFormat
from ctr2svc.service import runtime_config

DEFAULT_STOP_TIMEOUT = 30
DEFAULT_MAINTAINER = "ctr2svc <root@localhost>"


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """A build's options in the command line's terms, as given (compose's settings too); resolve()
    in ctr2svc.options.request makes them a BuildRequest."""

    reference: ImageReference
    format: PackageFormat = PackageFormat.DEB
    init: InitSystem | None = None  # None: the format's usual init (systemd; OpenRC for apk)
    output_dir: Path = Path()
    name: str | None = None
    version: str | None = None
    arch: str | None = None  # OCI spelling, e.g. amd64 or arm/v7; None means the host's
    creds: str | None = None
    authfile: Path | None = None
    policy: Path | None = None  # the containers signature policy (None: the system's)
    registries_d: Path | None = None  # skopeo's registries.d: where signatures are found
    tls_verify: bool | None = None
    cache_dir: Path | None = None
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    stop_signal: str | None = None
    stop_timeout: int = DEFAULT_STOP_TIMEOUT
    # None: DEBEMAIL/DEBFULLNAME as dch takes them, else the image's authors label, else the default
    maintainer: str | None = None
    compression: str | None = None  # None: the format's default
    user: str | None = None
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    pids_limit: int = runtime_config.DEFAULT_PIDS_LIMIT
    env: tuple[str, ...] = ()  # KEY=VALUE defaults for /etc/NAME/env
    volumes: tuple[str, ...] = ()  # HOST:CONTAINER[:ro|rw] for /etc/NAME/mounts
    memory: str | None = None  # 512M, 2G, bytes
    cpus: float | None = None
    ready_port: int | None = None
    health_cmd: str | None = None  # a shell command, as docker run --health-cmd; "none" disables
    health_interval: int | None = None
    health_retries: int | None = None
    runtime: str = "runc"
    # auto: a pipe for the container's stdout/stderr when the image opens /dev/stdout or /dev/stderr.
    stdio: str = "auto"
    activation: str = "distro"  # what a first install does: see options.values.activation
    # flat: one package holds the flattened root; shared: one package per image layer besides it.
    layers: str = "flat"
    # The version must sort above this one (ctr2svc update: a new digest of an unchanged tag).
    min_version: str | None = None
    # Signs the package: an armored OpenPGP secret key (deb, rpm) or a PEM RSA private key (apk).
    sign_key_file: Path | None = None
    sign_key_name: str | None = None  # apk: the public key's file name in /etc/apk/keys
    # host: the host's network; private: the service's own namespace on the ctr2svc bridge (netavark).
    network: str = "host"
    # host: root in the container is root on the host; auto: a user namespace with its own id range.
    userns: str = "host"
    publish: tuple[str, ...] = ()  # [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp] for /etc/NAME/ports
    # What compose applications need (ctr2svc/apps/compose.py; systemd only). The defaults change nothing.
    working_dir: str | None = None  # the process's working directory instead of the image's
    read_only: bool = False  # the container's root read-only
    tmpfs: tuple[str, ...] = ()  # PATH[:OPTIONS], as `docker run --tmpfs`
    restart: str | None = None  # compose's no|always|on-failure|unless-stopped; None: on-failure
    requires: tuple[str, ...] = ()  # ctr2svc services this one needs and starts after (Requires=)
    wants: tuple[str, ...] = ()  # ctr2svc services this one starts after when they are there (Wants=)
    stack: str | None = None  # the application's target (NAME.target) that starts and stops it
    oneshot: bool = False  # runs to completion (others wait for it to finish) instead of staying up
    ready_health: bool = False  # the start is done once the health check passes
    labels: tuple[str, ...] = ()  # KEY=VALUE annotations of the runtime config
    init_process: bool = False  # tini as the container's PID 1, as `docker run --init`
    files: tuple[PackagedFile, ...] = ()  # files packaged below /etc/NAME and mounted into the container
    volume_paths: tuple[str, ...] = ()  # container paths that get a data directory, as image VOLUMEs do
    aliases: tuple[str, ...] = ()  # more names the other services reach this one by (private network)
    application_network: str = ""  # a compose application's own network ("": the ctr2svc network)
    health_test: tuple[str, ...] | None = None  # the health check's argv, instead of the image's
    health_timeout: int | None = None
    health_start_period: int | None = None

    def __post_init__(self) -> None:
        # Absolute from here on: later steps run tools in other directories (the overlay of shared layers
        # is mounted from inside the cache), where a relative path would name something else. The
        # output directory stays as given: the paths printed for the user are relative to where they are.
        for name in ("cache_dir", "authfile", "sign_key_file", "policy", "registries_d"):
            path = getattr(self, name)
            if path is not None and not path.is_absolute():
                object.__setattr__(self, name, path.absolute())


def shell_words(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise UsageError(f"cannot split {text!r} into words: {exc}", hint="check the quoting") from exc
