"""The service helper: one shell program, the same bytes in every package, and the data it reads.

The helper's parts live beside this file, one concern each (mount, config, addresses, network, health,
lifecycle); `program()` joins them into the one file a package installs as /usr/libexec/NAME/service.
What differs between services is not code: `service_env()` writes it as shell-quoted values into
service.env, which the helper reads at each call. A fix to the helper is a change here, the same for
every service, and testable on its own (tests/runtime).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from functools import cache
from pathlib import Path, PurePosixPath

from ctr2svc import __version__
from ctr2svc.image.layers import INSTALL_DIR
from ctr2svc.model import ServiceSpec
from ctr2svc.service import network, rollback, runtime_config

HERE = Path(__file__).resolve().parent
# In the order the program needs them: the head reads service.env, main dispatches.
PARTS = ("head.sh", "base.sh", "mount.sh", "userns.sh", "config.sh", "ipam.sh", "network.sh", "health.sh",
         "nspawn.sh", "lifecycle.sh", "snapshot.sh", "rollback.sh", "main.sh")  # fmt: skip
AWK_PROGRAMS = ("config.awk", "network.awk")
# And a perl one: idmapped mounts of shared layers for a user namespace (userns.sh).
IDMAP_PROGRAM = "idmap.pl"


@cache
def program() -> str:
    """The helper as a package installs it."""
    # Each part names its shell for shellcheck, which the joined program does once, in its first line.
    parts = ((HERE / part).read_text().removeprefix("# shellcheck shell=sh\n") for part in PARTS)
    return "#!/bin/sh\n" + "\n".join(parts)


def library() -> str:
    """The helper's functions without its command line, for a shell to source (tests/runtime)."""
    parts = ((HERE / part).read_text().removeprefix("# shellcheck shell=sh\n") for part in PARTS[:-1])
    return "\n".join(parts)


def snapshot_part() -> str:
    """snapshot.sh, for the preinst, which runs before the package's helper is unpacked."""
    return (HERE / "snapshot.sh").read_text().removeprefix("# shellcheck shell=sh\n")


@cache
def awk_program(name: str) -> str:
    return (HERE / name).read_text()


def _words(items: Iterable[object]) -> str:
    # A list for the helper's `eval "set -- $LIST"`: each item one shell word, whatever it holds.
    return " ".join(shlex.quote(str(item)) for item in items)


def service_values(
    spec: ServiceSpec, render_key: str, root_mode: int, root_uid: int, root_gid: int
) -> dict[str, str]:
    """What the helper needs to know about SPEC, by the names its parts use."""
    layout = spec.layout
    net = network.for_service(spec.application_network)
    aliases = tuple(dict.fromkeys((*network.aliases(spec.name), *spec.aliases)))
    health = spec.health
    volumes = [
        (v.host_path, v.container_path, v.uid, v.gid, f"{v.mode:04o}", "yes" if v.seed else "no")
        for v in spec.volumes
    ]
    layers = [(PurePosixPath(x.directory).name, x.id, x.package) for x in spec.layers]
    return {
        "GENERATOR": f"ctr2svc {__version__}",
        "NAME": spec.name,
        "IMAGE_DIR": layout.image_dir,
        "STATE_DIR": layout.state_dir,
        "DATA_DIR": layout.data_dir,
        "VOLUMES_DIR": layout.volumes_dir,
        "OVERLAY_DIR": layout.overlay_dir,
        "ROOT": layout.merged_root,
        "CONFIG_DIR": layout.config_dir,
        "RUNTIME": spec.runtime,
        "STOP_SIGNAL": spec.stop_signal,
        "STOP_TIMEOUT": str(spec.stop_timeout),
        "STDIO": spec.stdio,
        "ENTRYPOINT_N": str(spec.entrypoint_n),
        # Names the packaged runtime config: the bundle is written again only when it changed.
        "RENDER_KEY": render_key,
        "ROOT_MODE": f"{root_mode:04o}",
        "ROOT_UID": str(root_uid),
        "ROOT_GID": str(root_gid),
        "VOLUMES": _words(item for volume in volumes for item in volume),
        # Shared layers, bottom first; the overlay's lower directories top first, as overlayfs wants
        # them, relative to LAYERS_DIR, which keeps the mount options short (a page at most) for images
        # with many layers. LOWER is empty when the package holds the root itself.
        "LAYERS_DIR": INSTALL_DIR,
        "LAYERS": _words(item for layer in layers for item in layer),
        "LOWER": ":".join(f"{directory}/rootfs" for directory, _, _ in reversed(layers)),
        # The package's network; /etc/NAME/network (the admin's) may say otherwise.
        "NETWORK": spec.network,
        # The package's user namespace mode (host or auto); /etc/NAME/userns (the admin's) may say otherwise.
        "USERNS": spec.userns,
        "NETNS": PurePosixPath(runtime_config.netns_path(spec.name)).name,
        "NETWORK_NAME": net.name,
        "NETWORK_ID": net.id,
        "BRIDGE": net.bridge,
        # The network's /24 (its first three numbers); empty when the host gives one out at the first start.
        "SUBNET_PREFIX": net.prefix,
        "SUBNET_CANDIDATES": " ".join(f"10.89.{n}" for n in network.APPLICATION_SUBNETS),
        "CONTAINER_ID": network.container_id(spec.name),
        "ALIASES": " ".join(aliases),
        "HEALTH_CMD": _words(health.command) if health else "",
        # Upgrades that roll back (rollback.sh): where the packaged files are, and where a rollback
        # keeps its state and the previous version's.
        "READY_PORT": str(spec.ready_port or ""),
        "LIBEXEC": layout.libexec,
        "UNIT_PATH": rollback.kept_path(spec),
        "INIT": spec.init.value,
        "ROLLBACK_DIR": rollback.state_dir(layout),
        "PREVIOUS_DIR": rollback.previous_dir(layout),
        "HEALTH_TIMEOUT": str(health.timeout) if health else "",
        "HEALTH_RETRIES": str(health.retries) if health else "",
    }


def service_env(values: dict[str, str]) -> str:
    """service.env: KEY='value' lines, each value a shell-quoted literal (data, never code)."""
    lines = [
        f"# What the service helper of {values['NAME']} needs to know, written by {values['GENERATOR']}.",
        "# Data only: each line is NAME='value'. Changes here are lost on upgrade: the admin's settings are",
        f"# in {values['CONFIG_DIR']}.",
    ]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
