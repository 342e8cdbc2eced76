"""Each option's value parsed on its own: what a word means (a signal, a capability, a size, a mount),
or one line naming the option and the fix. ctr2svc.options.request calls them, once per build.
"""

from __future__ import annotations

import math
import re
import signal
from pathlib import Path

from ctr2svc import metadata
from ctr2svc.errors import ImageError, UsageError
from ctr2svc.model import BindMount, PackageFormat, Resources, Security, TmpfsMount
from ctr2svc.options.ranges import MAX_CPUS, MAX_ID, MAX_MEMORY, MIN_CPUS, MIN_MEMORY
from ctr2svc.service import runtime_config

SIGNALS = {s.name for s in signal.Signals}
# nspawn: systemd-nspawn --oci-bundle in the foreground under the unit (ctr2svc/service/nspawn.py).
RUNTIMES = ("runc", "crun", "nspawn")
LAYER_MODES = ("flat", "shared")
STDIO_MODES = ("auto", "journal", "pipe")
ACTIVATION_MODES = ("distro", "start", "manual")
USERNS_MODES = ("host", "auto")


def userns_mode(given: str) -> str:
    """--userns: "host" (the container's root is the host's) or "auto" (a user namespace of its own)."""
    if given not in USERNS_MODES:
        raise UsageError(f"unknown --userns {given!r}", hint="use --userns auto or --userns host")
    return given


def activation(fmt: PackageFormat, given: str) -> str:
    """What a first install does with the service, as the package scripts see it: "start" (enable and
    start it, Debian's rule: installed means running), "preset" (rpm: `systemctl preset`, which lets the
    distribution's and the admin's presets decide whether it is enabled, and start nothing: Fedora's
    %systemd_post), "manual" (neither: Alpine's rule, where the admin runs rc-update). GIVEN is
    --activation: distro picks the rule of the distributions that use FMT."""
    if given not in ACTIVATION_MODES:
        raise UsageError(f"unknown --activation {given!r}", hint="use --activation distro, start or manual")
    if given != "distro":
        return given
    return {PackageFormat.DEB: "start", PackageFormat.RPM: "preset", PackageFormat.APK: "manual"}[fmt]


# compose's restart policies -> systemd's Restart=. systemd has no "unless-stopped": a service an admin
# stops stays stopped until started again, which is what "unless-stopped" means under Docker too.
RESTART = {"no": "no", "always": "always", "on-failure": "on-failure", "unless-stopped": "always"}


def restart_policy(given: str | None, oneshot: bool) -> str:
    """systemd's Restart= for compose's policy GIVEN, ctr2svc's on-failure when none is given; ONESHOT:
    a service others wait to complete."""
    if given is None:
        return "no" if oneshot else "on-failure"
    if given not in RESTART:
        raise UsageError(
            f"unknown restart policy {given!r}", hint="use no, always, on-failure or unless-stopped"
        )
    if oneshot and RESTART[given] == "always":
        raise UsageError(
            f"restart: {given} on a service that others wait to complete (service_completed_successfully)",
            hint='use restart: "no" or on-failure: a service that must finish cannot restart for ever',
        )
    return RESTART[given]


def tmpfs_mounts(texts: tuple[str, ...]) -> tuple[TmpfsMount, ...]:
    """PATH[:OPTIONS] each, as `docker run --tmpfs` (Docker's defaults nosuid, nodev, noexec go first)."""
    mounts = []
    for text in texts:
        metadata.check_one_line("tmpfs", text, "e.g. /run:size=64m")
        path, _, options = text.partition(":")
        opts = tuple(o for o in options.split(",") if o)
        if not path.startswith("/") or any(c.isspace() or c in '"' for c in text):
            raise UsageError(f"tmpfs {text!r} is not PATH[:OPTIONS]", hint="e.g. /run:size=64m,mode=0755")
        metadata.container_path("tmpfs", path, "e.g. /run:size=64m")
        mounts.append(TmpfsMount(path, opts))
    return tuple(mounts)


def normalize_signal(value: str, source: str = "") -> str:
    """SIGNAME for a signal name or number; source names the image when the image declared it."""
    text = value.strip().upper()
    if text.isdigit():
        try:
            return signal.Signals(int(text)).name
        except ValueError:
            pass
    name = text if text.startswith("SIG") else f"SIG{text}"
    if name not in SIGNALS:
        if source:
            raise ImageError(
                f"{source} declares an unknown STOPSIGNAL {metadata.one_line(value, 40)!r}",
                hint="pass --stop-signal with a signal name such as SIGTERM or SIGQUIT",
            )
        raise UsageError(
            f"unknown stop signal {value!r}", hint="use a signal name such as SIGTERM or SIGQUIT"
        )
    return name


def _capability(name: str) -> str:
    text = name.strip().upper()
    cap = text if text.startswith("CAP_") else f"CAP_{text}"
    if cap not in runtime_config.ALL_CAPABILITIES:
        raise UsageError(
            f"unknown capability {name!r}",
            hint="use a name from capabilities(7) such as NET_ADMIN or CAP_SYS_TIME",
        )
    return cap


def security(
    cap_add: tuple[str, ...], cap_drop: tuple[str, ...], privileged: bool, pids_limit: int
) -> Security:
    drop_all = any(c.strip().upper() in ("ALL", "CAP_ALL") for c in cap_drop)
    add = tuple(dict.fromkeys(_capability(c) for c in cap_add))
    if drop_all:
        drop = tuple(c for c in runtime_config.ALL_CAPABILITIES if c not in add)
    else:
        drop = tuple(dict.fromkeys(_capability(c) for c in cap_drop))
    if pids_limit < 0:
        raise UsageError(f"--pids-limit {pids_limit} is negative", hint="pass 0 for no limit")
    return Security(cap_add=add, cap_drop=drop, privileged=privileged, pids_limit=pids_limit)


# KEY=VALUE, as Docker takes it: any name without "=" (elasticsearch's discovery.type, for one), but one
# that a line of /etc/NAME/env can hold (templates/config.awk.j2): no blanks, no "#" first (a comment).
_ENV = re.compile(r"^[^=\s#][^=\s]*=")

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)


def env_defaults(env: tuple[str, ...]) -> tuple[str, ...]:
    for item in env:
        if not _ENV.match(item):
            raise UsageError(f"--env {item!r} is not KEY=VALUE", hint="e.g. --env LOG_LEVEL=debug")
        # One line of /etc/NAME/env each: a newline would start a variable the user did not write.
        metadata.check_one_line("--env", item, "a value is one line; put longer text in a file")
    return env


def bind_mounts(volumes: tuple[str, ...]) -> tuple[BindMount, ...]:
    mounts = []
    for text in volumes:
        metadata.check_one_line("--volume", text, "e.g. --volume /srv/certs:/certs:ro")
        parts = text.split(":")
        mode = parts.pop() if len(parts) == 3 else "ro"
        if len(parts) != 2 or mode not in ("ro", "rw") or not all(p.startswith("/") for p in parts):
            raise UsageError(
                f"--volume {text!r} is not HOST_PATH:CONTAINER_PATH[:ro|rw]",
                hint="e.g. --volume /srv/certs:/certs:ro",
            )
        if any(c.isspace() for c in text):
            raise UsageError(f"--volume {text!r} has white space", hint="use paths without spaces")
        metadata.container_path("--volume", parts[1], "e.g. --volume /srv/certs:/certs:ro")
        mounts.append(BindMount(parts[0], parts[1], mode))
    return tuple(mounts)


def resources(memory_text: str | None, cpus: float | None) -> Resources:
    memory = None
    if memory_text is not None:
        match = _SIZE.match(memory_text.strip())
        if not match or float(match.group(1)) <= 0:
            raise UsageError(
                f"--memory {memory_text!r} is not a size", hint="e.g. --memory 512M or --memory 2G"
            )
        memory = int(float(match.group(1)) * 1024 ** "BKMGT".index((match.group(2) or "B").upper()))
        if not MIN_MEMORY <= memory <= MAX_MEMORY:
            raise UsageError(
                f"--memory {memory_text!r} is out of range: it goes from 6M to {MAX_MEMORY // 1024**4}T",
                hint="e.g. --memory 512M or --memory 2G",
            )
    if cpus is not None and not (math.isfinite(cpus) and 0 < cpus <= MAX_CPUS):
        raise UsageError(f"--cpus {cpus} is not a number of CPUs above 0", hint="e.g. --cpus 0.5 or --cpus 2")
    if cpus is not None and cpus < MIN_CPUS:
        raise UsageError(
            f"--cpus {cpus} is out of range: the smallest CPU limit is {MIN_CPUS} (1% of a CPU)",
            hint="e.g. --cpus 0.05 or --cpus 2",
        )
    return Resources(memory, cpus)


def check_sign_key(fmt: PackageFormat, path: Path) -> None:
    try:
        head = path.read_text(errors="replace")[:4096]
    except OSError as exc:
        raise UsageError(
            f"cannot read the signing key {path}: {exc.strerror}", hint="check the path"
        ) from exc
    if fmt is PackageFormat.APK:
        if "PRIVATE KEY-----" not in head:
            raise UsageError(
                f"{path} is not a PEM RSA private key, which apk packages are signed with",
                hint="make one with: openssl genrsa -out KEY.rsa 2048",
            )
    elif "BEGIN PGP PRIVATE KEY BLOCK" not in head:
        raise UsageError(
            f"{path} is not an armored OpenPGP secret key, which {fmt} packages are signed with",
            hint="export one with: gpg --armor --export-secret-keys KEYID > key.asc",
        )


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise UsageError(
            f"unknown runtime {runtime!r}", hint="use --runtime runc, --runtime crun or --runtime nspawn"
        )
    return runtime


def numeric(text: str) -> bool:
    return text.isascii() and text.isdigit()


def split_user(text: str) -> tuple[str, str | None]:
    user, sep, group = text.partition(":")
    if not user or (sep and not group):
        raise UsageError(
            f"--user {text!r} is not USER, UID, USER:GROUP or UID:GID", hint="e.g. --user 999:999"
        )
    for part in (user, group):
        if numeric(part) and int(part) > MAX_ID:
            raise UsageError(
                f"--user {text!r}: {part} is out of range: user and group ids go from 0 to {MAX_ID}",
                hint="e.g. --user 999:999",
            )
    return user, group or None
