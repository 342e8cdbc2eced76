"""Options and reporting that several commands share: -q/-v, the options that shape a package (build,
inspect) and how they become BuildOptions, and the table of a many-image run (build -c, update).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ctr2svc import completion, log
from ctr2svc.distribution import summary
from ctr2svc.distribution.summary import Outcome, table
from ctr2svc.errors import PartialFailure
from ctr2svc.image.reference import parse
from ctr2svc.model import InitSystem, PackageFormat
from ctr2svc.options.build_options import DEFAULT_MAINTAINER, DEFAULT_STOP_TIMEOUT, BuildOptions, shell_words
from ctr2svc.options.values import ACTIVATION_MODES, USERNS_MODES
from ctr2svc.service.runtime_config import DEFAULT_PIDS_LIMIT


def _quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    # --debug wins over --quiet whichever comes first, and wherever each is written.
    if value and log.STATE.verbosity < 1:
        log.set_verbosity(-1)


def _debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        log.set_verbosity(1)


def verbosity_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """-q and -v, accepted before the command (`ctr2svc -q build`) and after it (`ctr2svc build -q`)."""
    quiet = click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_quiet,
        help="Print only warnings and errors.",
    )
    debug = click.option(
        "-v",
        "--debug",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_debug,
        help="Show every external command and its output.",
    )
    return quiet(debug(command))


# Options that shape the package: `build` takes them, and `inspect --generated` to show their effect.
PACKAGE_OPTIONS = [
    click.option(
        "-f",
        "--format",
        "fmt",
        type=click.Choice([f.value for f in PackageFormat]),
        default="deb",
        show_default=True,
        help="Package format: deb (Debian/Ubuntu), rpm (Fedora/RHEL/SUSE) or apk (Alpine).",
    ),
    click.option(
        "--init",
        "init",
        type=click.Choice([i.value for i in InitSystem]),
        help="Init system to integrate with (default: systemd; openrc for apk; deb can do either).",
    ),
    click.option("--name", help="Package and service name (default: the image's last path part + '-svc')."),
    click.option(
        "--version", "pkg_version", help="Package version (default: derived from the tag; see docs/usage.md)."
    ),
    click.option(
        "--arch",
        help="Platform to take from a multi-arch image, e.g. arm64 or arm/v7 (default: this host's).",
    ),
    click.option("--creds", metavar="USER[:PASSWORD]", help="Registry credentials."),
    click.option(
        "--authfile",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        help="Registry auth file, as written by `skopeo login` or `docker login`.",
    ),
    click.option(
        "--policy",
        type=click.Path(path_type=Path, dir_okay=False),
        help="The containers signature policy the image must satisfy (containers-policy.json(5); "
        "default: /etc/containers/policy.json, as podman and skopeo). skopeo verifies the signatures.",
    ),
    click.option(
        "--registries-d",
        type=click.Path(path_type=Path, file_okay=False),
        help="Where skopeo finds signatures: a registries.d directory (containers-registries.d(5); "
        "default: /etc/containers/registries.d).",
    ),
    click.option(
        "--tls-verify/--no-tls-verify",
        default=None,
        help="Require HTTPS and valid certificates (default: yes, except for registries on loopback).",
    ),
    click.option(
        "--cache-dir", type=click.Path(path_type=Path), help="Image cache (default: ~/.cache/ctr2svc)."
    ),
    click.option("--entrypoint", help="Replace the image's entrypoint (a shell-quoted command line)."),
    click.option("--cmd", help="Replace the image's command (a shell-quoted argument list)."),
    click.option(
        "--stop-signal", help="Signal that stops the service (default: the image's STOPSIGNAL or SIGTERM)."
    ),
    click.option(
        "--stop-timeout",
        type=click.IntRange(1, 3600),
        default=DEFAULT_STOP_TIMEOUT,
        show_default=True,
        help="Seconds to wait after the stop signal before killing.",
    ),
    click.option(
        "--maintainer",
        help="Package maintainer, 'Full Name <address>' [default: DEBFULLNAME <DEBEMAIL> as dch takes them,"
        f" else the image's authors label, else {DEFAULT_MAINTAINER}]",
    ),
    click.option(
        "--compression",
        type=click.Choice(["zstd", "gzip", "xz", "none"]),
        help="Payload compression (default: zstd; gzip for apk). A zstd .deb needs dpkg >= 1.21.18 "
        "(Debian 12, Ubuntu 21.10 and later), a zstd .rpm rpm >= 4.14 (RHEL 8, Fedora 31 and later).",
    ),
    click.option(
        "--user", help="Run as USER[:GROUP] (names from the image's /etc/passwd) instead of its User."
    ),
    click.option(
        "--cap-add",
        multiple=True,
        metavar="CAP",
        shell_complete=completion.capabilities,
        help="Grant a capability beyond Docker's defaults (repeatable).",
    ),
    click.option(
        "--cap-drop",
        multiple=True,
        metavar="CAP",
        shell_complete=completion.capabilities_or_all,
        help="Remove a capability, or ALL of them (repeatable).",
    ),
    click.option(
        "--privileged",
        is_flag=True,
        help="All capabilities, no seccomp filter, nothing masked in /proc and /sys. Avoid.",
    ),
    click.option(
        "--pids-limit",
        type=click.IntRange(0),
        default=DEFAULT_PIDS_LIMIT,
        show_default=True,
        help="Most processes and threads the container may have (0: no limit).",
    ),
    click.option(
        "-e", "--env", multiple=True, metavar="KEY=VALUE", help="Default environment (/etc/NAME/env)."
    ),
    click.option(
        "--volume",
        multiple=True,
        metavar="HOST:CONTAINER[:ro|rw]",
        help="Default extra bind mount (/etc/NAME/mounts); image VOLUMEs need none.",
    ),
    click.option("--memory", metavar="SIZE", help="Memory limit, e.g. 512M (MemoryMax= in the unit)."),
    click.option("--cpus", type=float, help="CPU limit in CPUs, e.g. 1.5 (CPUQuota= in the unit)."),
    click.option(
        "--network",
        type=click.Choice(["host", "private"]),
        default="host",
        show_default=True,
        help="host: the service uses the host's network. private: its own network namespace on the "
        "ctr2svc bridge (netavark), reachable by name from the other private services, with the "
        "--publish'ed ports forwarded from the host.",
    ),
    click.option(
        "--userns",
        type=click.Choice(USERNS_MODES),
        default="host",
        show_default=True,
        help="host: root in the container is root on the host. auto: the service runs in a user "
        "namespace of its own, with 65536 host ids allocated at install (/etc/NAME/userns).",
    ),
    click.option(
        "-p",
        "--publish",
        multiple=True,
        metavar="[IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]",
        help="Forward a host port to the container (--network private; repeatable; /etc/NAME/ports).",
    ),
    click.option(
        "--ready-port",
        type=click.IntRange(1, 65535),
        help="The start counts as done once the service listens on this TCP port.",
    ),
    click.option(
        "--health-cmd",
        metavar="SHELL-COMMAND",
        help="Health check run inside the container (default: the image's HEALTHCHECK; 'none' disables).",
    ),
    click.option(
        "--health-interval", type=click.IntRange(1), metavar="SECONDS", help="Seconds between checks."
    ),
    click.option(
        "--health-retries",
        type=click.IntRange(1),
        metavar="N",
        help="Failures in a row that restart the service.",
    ),
    click.option(
        "--runtime",
        default="runc",
        show_default=True,
        help="OCI runtime the service runs with: runc, crun or nspawn (the package depends on it).",
    ),
    click.option(
        "--layers",
        type=click.Choice(["flat", "shared"]),
        default="flat",
        show_default=True,
        help="flat: one package holds the image's whole root. shared: one package per image layer "
        "beside the service package, shared by every service built on that layer.",
    ),
    click.option(
        "--activation",
        type=click.Choice(ACTIVATION_MODES),
        default="distro",
        show_default=True,
        help="What a first install does. distro: each distribution's rule (.deb: enable and start, as "
        "Debian does; .rpm: systemctl preset, no start, as Fedora does; .apk: nothing, as Alpine does). "
        "start: enabled and running in every format. manual: neither; the admin enables it.",
    ),
    click.option(
        "--stdio",
        type=click.Choice(["auto", "journal", "pipe"]),
        default="auto",
        show_default=True,
        help="systemd: the container's stdout/stderr straight on the journal's socket (no extra process), or "
        "through a pipe and a relay process, as Docker does, for images that open /dev/stdout or "
        "/dev/stderr (auto: when the image shows it does).",
    ),
]


# build and update: a compose file's files from outside its directory, named one by one.
allow_outside_option = click.option(
    "--allow-outside",
    multiple=True,
    metavar="PATH",
    type=click.Path(path_type=Path),
    help="With a compose file: a file or directory outside the file's own that its secrets, configs, "
    "env_files or bind mounts may package from this machine (repeatable).",
)


# build and update: an image for a compose service instead of the one its file names or builds.
image_option = click.option(
    "--image",
    "images",
    multiple=True,
    metavar="SERVICE=REF",
    help="With a compose file: package REF (a registry reference or oci:DIR:TAG, ...) as SERVICE's "
    "image instead of the file's image: or build: (repeatable).",
)


def package_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(PACKAGE_OPTIONS):
        command = option(command)
    return command


def build_options(image: str, **given: Any) -> BuildOptions:
    """BuildOptions from the command line's values (click names them as BuildOptions does, or nearly)."""
    entrypoint, cmd = given.pop("entrypoint", None), given.pop("cmd", None)
    init = given.pop("init", None)
    return BuildOptions(
        reference=parse(image),
        format=PackageFormat(given.pop("fmt", "deb")),
        init=InitSystem(init) if init else None,
        version=given.pop("pkg_version", None),
        volumes=given.pop("volume", ()),
        entrypoint=shell_words(entrypoint) if entrypoint is not None else None,
        cmd=shell_words(cmd) if cmd is not None else None,
        **given,
    )


def report(outcomes: list[Outcome], action: str, *, as_json: bool = False) -> None:
    click.echo(table(outcomes), err=True)
    if as_json:
        click.echo(summary.dumps([summary.outcome(outcome) for outcome in outcomes]))
    for outcome in outcomes:
        if outcome.result is not None and not as_json:
            click.echo(str(outcome.result.path))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise PartialFailure(
            f"{len(failed)} of {len(outcomes)} packages could not be {action}",
            hint="the table above says why; the others are done",
        )
