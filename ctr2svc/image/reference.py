"""Image references as the user types them, parsed into a typed ImageReference."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from ctr2svc.errors import UsageError


class Transport(StrEnum):
    DOCKER = "docker"
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"


DEFAULT_REGISTRY = "docker.io"

# The grammar of distribution/reference: lowercase path components joined by separators.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_DOMAIN_RE = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")

EXAMPLES = "registry.example.com/team/app:1.2, valkey/valkey:9.0.0, oci:DIR:TAG, docker-archive:FILE"


@dataclass(frozen=True)
class ImageReference:
    transport: Transport
    # docker: "registry/path"; local transports: the directory or archive path.
    name: str
    tag: str | None = None
    digest: str | None = None

    @property
    def is_remote(self) -> bool:
        return self.transport is Transport.DOCKER

    @property
    def registry(self) -> str | None:
        return self.name.split("/", 1)[0] if self.is_remote else None

    @property
    def basename(self) -> str:
        """The last path part: the default package name is made from it."""
        if self.is_remote:
            return self.name.rsplit("/", 1)[-1]
        stem = Path(self.name.rstrip("/")).name
        for suffix in (".tar.gz", ".tgz", ".tar"):
            if stem.endswith(suffix):
                return stem[: -len(suffix)]
        return stem

    def skopeo(self) -> str:
        """The reference in skopeo's transport syntax."""
        if self.transport is Transport.DOCKER:
            ref = f"docker://{self.name}"
            if self.tag:
                ref += f":{self.tag}"
            if self.digest:
                ref += f"@{self.digest}"
            return ref
        if self.transport is Transport.DOCKER_ARCHIVE:
            return f"docker-archive:{self.name}" + (f":{self.tag}" if self.tag else "")
        return f"{self.transport}:{self.name}" + (f":{self.tag}" if self.tag else "")

    def pinned(self, digest: str) -> ImageReference:
        """The same repository by digest only: what was built, immutable."""
        return replace(self, tag=None, digest=digest)

    def __str__(self) -> str:
        if self.transport is Transport.DOCKER:
            text = (
                self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")
            )
            return text
        return self.skopeo()


def _invalid(text: str, why: str) -> UsageError:
    return UsageError(f"invalid image reference {text!r}: {why}", hint=f"write it like {EXAMPLES}")


def parse(text: str) -> ImageReference:
    """Parse what the user typed: a registry reference (optionally docker://) or a local transport."""
    text = text.strip()
    if not text:
        raise _invalid(text, "it is empty")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text):
        # A reference ends up in package metadata and generated files, where a newline starts a field.
        raise _invalid(text, "it contains control characters")
    for transport in (Transport.OCI_ARCHIVE, Transport.DOCKER_ARCHIVE, Transport.OCI):
        prefix = f"{transport}:"
        if text.startswith(prefix):
            return _parse_local(text, transport, text[len(prefix) :])
    if text.startswith("docker://"):
        return _parse_docker(text, text[len("docker://") :])
    if "://" in text:
        raise _invalid(text, "unknown transport (known: docker://, oci:, oci-archive:, docker-archive:)")
    return _parse_docker(text, text)


def _parse_local(text: str, transport: Transport, rest: str) -> ImageReference:
    path, sep, tag = rest.partition(":")
    if not path:
        raise _invalid(text, f"{transport}: needs a path")
    if transport is not Transport.DOCKER_ARCHIVE and sep and not _TAG_RE.match(tag):
        raise _invalid(text, f"{tag!r} is not a valid tag")
    return ImageReference(transport, path, tag or None)


def _parse_docker(text: str, rest: str) -> ImageReference:
    name, _, digest = rest.partition("@")
    if digest and not _DIGEST_RE.match(digest):
        raise _invalid(text, f"{digest!r} is not a sha256 digest (sha256: and 64 hex digits)")
    tag: str | None = None
    # A ':' after the last '/' separates the tag; one before it belongs to a registry port.
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise _invalid(text, f"{tag!r} is not a valid tag")
    first, slash, remainder = name.partition("/")
    if slash and (first == "localhost" or "." in first or ":" in first or first.startswith("[")):
        if not _DOMAIN_RE.match(first):
            raise _invalid(text, f"{first!r} is not a valid registry host")
        registry, path = first, remainder
    else:
        registry, path = DEFAULT_REGISTRY, name
        if "/" not in path:
            path = f"library/{path}"
    if not path:
        raise _invalid(text, "no repository name")
    if path.lower() != path:
        raise _invalid(text, "repository names must be lowercase")
    if not _PATH_RE.match(path):
        raise _invalid(text, "a repository name takes lowercase letters, digits and . _ - separators")
    if tag is None and not digest:
        tag = "latest"
    return ImageReference(Transport.DOCKER, f"{registry}/{path}", tag, digest or None)
