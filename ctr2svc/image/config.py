"""The image config as the OCI image spec types it, checked as umoci and runc will read it, and the
image a build works on once it is pulled (ResolvedImage).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ctr2svc.errors import ImageError
from ctr2svc.image.reference import ImageReference


def bad_config(problem: str) -> ImageError:
    return ImageError(
        f"the image's config {problem}", hint="rebuild the image with a standard tool (docker, buildah)"
    )


def _typed(doc: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = doc.get(key)
    if value is not None and not isinstance(value, kind):
        raise bad_config(f"has a {where} of the wrong type ({type(value).__name__})")
    return value


def _strings(cfg: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = _typed(cfg, key, list, f"config.{key}") or []
    if not all(isinstance(item, str) for item in value):
        raise bad_config(f"has a config.{key} that is not a list of strings")
    return tuple(value)


# umoci reads the image config with Go's encoding/json, whose time.Time takes RFC 3339 and nothing else
# ("2006-01-02T15:04:05Z07:00", with optional fractions of a second): a `created` it cannot parse stops
# the unpack, so it is refused here first, in ctr2svc's words.
_RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:[.,]\d+)?(?:Z|[+-]\d{2}:\d{2})$")

# umoci resolves a numeric User with runc's libcontainer/user, which takes ids up to 2^31-1 only.
MAX_IMAGE_ID = 2**31 - 1

_NUMBER = re.compile(r"^[+-]?[0-9]+$")


def is_rfc3339(text: str) -> bool:
    """TEXT is a time Go's RFC 3339 parser accepts (year 0 and 9999 included; no leap second)."""
    match = _RFC3339.match(text)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    # calendar has no year 0; it is a leap year in Go's proleptic Gregorian calendar, as 2000 is.
    days = calendar.monthrange(year or 2000, month)[1] if 1 <= month <= 12 else 0
    # Go checks the fields but not the zone's offset (+25:00 passes).
    return 1 <= day <= days and hour < 24 and minute < 60 and second < 60


def _check_env(env: tuple[str, ...]) -> None:
    """Entries runc can set: NAME=VALUE with a NAME, and no NUL (runc refuses them at every start)."""
    for entry in env:
        name, sep, _ = entry.partition("=")
        if not sep:
            problem = "has no '='"
        elif not name:
            problem = "has an empty name"
        elif "\0" in entry:
            problem = "holds a NUL character"
        else:
            continue
        raise ImageError(
            f"the image's config has an Env entry that {problem}: {entry[:60]!r}",
            hint="rebuild the image with Env entries of the form NAME=VALUE",
        )


def _check_no_nul(cfg: Mapping[str, Any]) -> None:
    """No NUL in what becomes the process's arguments, directory or user: runc cannot pass one on and
    refuses to start (config.json carries it as \\u0000, so the build would not notice)."""
    for key in ("Entrypoint", "Cmd", "WorkingDir", "User"):
        value = cfg.get(key)
        words = value if isinstance(value, list) else [value]
        if any(isinstance(word, str) and "\0" in word for word in words):
            raise bad_config(f"has a config.{key} that holds a NUL character")


def _check_user(user: str) -> None:
    """A numeric user or group in the image's User must be an id umoci (and runc) can use; no part
    is a user or group name with white space, which no passwd file has."""
    if any(c.isspace() for c in user):
        raise ImageError(
            f"the image's User {user[:40]!r} has white space, so it is neither a user name nor an id",
            hint="rebuild the image with a User such as app or 1000:1000",
        )
    for part in user.split(":", 1):
        if _NUMBER.match(part) and not 0 <= int(part) <= MAX_IMAGE_ID:
            raise ImageError(
                f"the image's User {user[:40]!r} is out of range: user and group ids go from 0 to "
                f"{MAX_IMAGE_ID}",
                hint="rebuild the image with a User in that range (or a user name from its /etc/passwd)",
            )


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
        """The image config as the OCI image spec types it; anything else is the image's fault."""
        if not isinstance(doc, Mapping):
            raise bad_config("is not a JSON object")
        cfg = _typed(doc, "config", Mapping, "config") or {}
        labels = _typed(cfg, "Labels", Mapping, "config.Labels") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise bad_config("has config.Labels that are not all strings")
        health = _typed(cfg, "Healthcheck", Mapping, "config.Healthcheck")
        _check_no_nul(cfg)
        created = _typed(doc, "created", str, "created")
        if created is not None and not is_rfc3339(created):
            raise bad_config(f"has a created time that is not an RFC 3339 time: {created[:40]!r}")
        env = _strings(cfg, "Env")
        _check_env(env)
        user = _typed(cfg, "User", str, "config.User") or ""
        _check_user(user)
        return cls(
            architecture=_typed(doc, "architecture", str, "architecture") or "",
            os=_typed(doc, "os", str, "os") or "",
            variant=_typed(doc, "variant", str, "variant") or None,
            entrypoint=_strings(cfg, "Entrypoint"),
            cmd=_strings(cfg, "Cmd"),
            env=env,
            user=user,
            working_dir=_typed(cfg, "WorkingDir", str, "config.WorkingDir") or "",
            volumes=tuple(sorted(_typed(cfg, "Volumes", Mapping, "config.Volumes") or {})),
            exposed_ports=tuple(sorted(_typed(cfg, "ExposedPorts", Mapping, "config.ExposedPorts") or {})),
            stop_signal=_typed(cfg, "StopSignal", str, "config.StopSignal") or None,
            labels=dict(labels),
            created=created,
            healthcheck=health,
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
    # What the signature policy asked of the image when skopeo pulled it (trust.Requirement.record).
    trust: dict[str, Any] | None = None

    @property
    def pinned(self) -> str:
        """REPO@DIGEST for remote images, the local reference plus digest otherwise."""
        if self.reference.is_remote:
            return str(self.reference.pinned(self.digest))
        return f"{self.reference.skopeo()}@{self.digest}"
