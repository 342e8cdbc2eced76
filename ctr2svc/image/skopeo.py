"""How ctr2svc runs skopeo: its policy, credentials and TLS arguments, and the time limits every registry
step has (a registry that accepts the connection and then answers nothing fails the build instead of
holding it).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ctr2svc import log
from ctr2svc.errors import ImageError, ToolError, ToolFailed, UsageError
from ctr2svc.image.reference import ImageReference
from ctr2svc.image.trust import DEFAULT_POLICY, SYSTEM_POLICY


@dataclass(frozen=True)
class Limits:
    """How long the network may take: every registry step has a limit, so a registry that accepts the
    connection and then answers nothing (or a byte a minute) fails the build instead of holding it."""

    # Seconds for one request that downloads no layer: a manifest, the tags of a repository.
    request: int = 60
    # Seconds a pull may go without receiving STALL_BYTES more: a slow but moving pull goes on.
    stall: int = 120
    # Seconds one pull may take in all, however it progresses.
    pull: int = 4 * 3600


# The environment variables that change the limits (docs/usage.md, "Time limits").
LIMIT_VARIABLES = {
    "request": "CTR2SVC_REGISTRY_TIMEOUT",
    "stall": "CTR2SVC_PULL_STALL_TIMEOUT",
    "pull": "CTR2SVC_PULL_TIMEOUT",
}

MAX_LIMIT = 7 * 24 * 3600

# Less than this in a whole stall period is a stall: a trickle of a byte every few seconds is no pull.
STALL_BYTES = 1024

# What skopeo's own --command-timeout has to say before ctr2svc's backstop stops it.
GRACE = 30


def limits() -> Limits:
    """The limits, with the environment's changes; a value that is not a number of seconds is refused."""
    values: dict[str, int] = {}
    for field_name, variable in LIMIT_VARIABLES.items():
        text = os.environ.get(variable, "").strip()
        if not text:
            continue
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_LIMIT):
            raise UsageError(
                f"{variable}={text[:20]!r} is not a number of seconds from 1 to {MAX_LIMIT}",
                hint=f"set whole seconds, e.g. {variable}={getattr(Limits, field_name) * 2}, or unset it",
            )
        values[field_name] = int(text)
    return Limits(**values)


@dataclass(frozen=True)
class PullOptions:
    arch: str
    variant: str | None = None
    creds: str | None = None
    authfile: Path | None = None
    # None: verify TLS except for registries on loopback, which Docker also treats as insecure.
    tls_verify: bool | None = None
    limits: Limits = Limits()
    # --policy (None: /etc/containers/policy.json, else trust.DEFAULT_POLICY) and --registries-d.
    policy: Path | None = None
    registries_d: Path | None = None


def _is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def policy_args(workdir: Path, opts: PullOptions) -> list[str]:
    """skopeo's global options for the signature policy: the one the build names, the system's, or,
    where the host has none, podman's default written into WORKDIR (without one skopeo refuses to run)."""
    lookaside = ["--registries.d", str(opts.registries_d)] if opts.registries_d is not None else []
    if opts.policy is not None:
        return [*lookaside, "--policy", str(opts.policy)]
    if SYSTEM_POLICY.exists():
        return lookaside
    policy = workdir / "policy.json"
    try:
        policy.write_text(json.dumps(DEFAULT_POLICY))
    except OSError as exc:
        raise ToolError(
            f"cannot write skopeo's policy file into {workdir}: {exc.strerror}",
            hint="check free space and permissions of the image cache, or point --cache-dir elsewhere",
        ) from exc
    log.debug(f"{SYSTEM_POLICY} is missing: using a policy that accepts any image ({policy})")
    return [*lookaside, "--policy", str(policy)]


@contextlib.contextmanager
def auth_file(ref: ImageReference, opts: PullOptions, workdir: Path) -> Iterator[Path | None]:
    """--creds as a containers-auth.json file only we can read, for the duration of the skopeo calls.

    On skopeo's command line the password would show in `ps` and /proc/PID/cmdline, and in --debug's
    command lines. The file lives in a fresh 0700 directory inside the build's own work directory and
    is removed on the way out (errors and SIGTERM included; after a SIGKILL the next build removes the
    dead build's work directory, and with it the file). Without --creds, the user's --authfile (or
    none) is used as it is.
    """
    if not (ref.is_remote and opts.creds):
        yield opts.authfile if ref.is_remote else None
        return
    secret = base64.b64encode(opts.creds.encode()).decode()
    doc = json.dumps({"auths": {ref.registry or "": {"auth": secret}}})
    try:
        private = Path(tempfile.mkdtemp(prefix="auth-", dir=workdir))
        path = private / "auth.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(doc)
    except OSError as exc:
        raise ToolError(
            f"cannot write the credentials for skopeo into {workdir}: {exc.strerror}",
            hint="check free space and permissions of the image cache, or point --cache-dir elsewhere",
        ) from exc
    try:
        yield path
    finally:
        shutil.rmtree(private, ignore_errors=True)


def source_args(ref: ImageReference, opts: PullOptions, prefix: str, auth: Path | None) -> list[str]:
    """Auth file and TLS flags for skopeo; prefix is '' for inspect and 'src-' for copy."""
    if not ref.is_remote:
        return []
    args: list[str] = []
    tls = opts.tls_verify
    if tls is None:
        tls = not _is_loopback(ref.registry or "")
        if not tls:
            log.debug(f"{ref.registry} is on loopback: not requiring TLS (as Docker does)")
    args.append(f"--{prefix}tls-verify={'true' if tls else 'false'}")
    if auth is not None:
        args += [f"--{prefix}authfile", str(auth)]
    return args


def command_timeout(seconds: int) -> list[str]:
    """skopeo's own deadline for a whole command (a global option, before the subcommand)."""
    return ["--command-timeout", f"{seconds}s"]


def deadline_passed(exc: ToolFailed) -> bool:
    """skopeo stopped by its --command-timeout (Go's context deadline)."""
    return "context deadline exceeded" in exc.stderr


def timed_out(
    ref: ImageReference, step: str, seconds: float, limit: str, exc: ToolError, *, stalled: bool = False
) -> ImageError:
    """A registry that took too long, in ctr2svc's words: which registry, which step, which limit."""
    variable = LIMIT_VARIABLES[limit]
    where = f"registry {ref.registry}" if ref.is_remote else f"{ref.transport} image {ref.name}"
    if stalled:
        brief = f"{where} sent less than {STALL_BYTES} bytes in {seconds:.0f}s while {step} of {ref}"
        hint = (
            f"check the registry and the network; if they are only slow, allow longer with {variable}=SECONDS"
        )
    else:
        brief = f"{where} did not answer within {seconds:.0f}s while {step} of {ref}"
        if limit == "pull":
            brief = f"pulling {ref} from {where} did not finish within {seconds:.0f}s"
        hint = f"check that the registry is up and reachable; allow longer with {variable}=SECONDS"
    return ImageError(brief, hint=hint, details=exc.details)
