"""Package names, versions and architectures derived from an image, and the rules that check them.

The version rule (documented in the README):
- a tag that starts with a digit keeps its dotted numbers: ``9.0.0`` -> ``9.0.0``;
- a leading ``v`` before a digit is dropped: ``v1.2`` -> ``1.2``;
- ``_`` becomes ``.`` (Debian versions have no ``_``);
- a ``-suffix`` becomes ``~suffix`` when it names a pre-release (rc, alpha, beta, pre, dev), so
  ``1.0-rc1`` sorts before ``1.0``; any other suffix becomes ``+suffix`` (``9.0.0-alpine`` ->
  ``9.0.0+alpine``), which sorts after the plain version;
- a tag that does not start with a digit (``latest``, ``stable``) gives ``0+TAG.CREATED`` where CREATED is
  the image's creation time as YYYYMMDDHHMMSS, so newer builds of a moving tag sort higher;
- no tag (a bare digest) gives ``0+CREATED.DIGEST12``.
``--version`` overrides all of this and is checked against the format's grammar.
"""

from __future__ import annotations

import platform
import re
from datetime import datetime

from ctr2svc.errors import UsageError

_PRERELEASE = re.compile(r"^(rc|alpha|beta|pre|preview|dev|a|b)\d*([.-].*)?$", re.IGNORECASE)
_DEB_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_DEB_VERSION = re.compile(r"^(?:\d+:)?[0-9][A-Za-z0-9.+~]*(?:-[A-Za-z0-9.+~]+)?$")

# OCI architecture (+variant) -> Debian architecture.
_DEB_ARCH = {
    ("amd64", None): "amd64",
    ("arm64", None): "arm64",
    ("arm64", "v8"): "arm64",
    ("arm", "v7"): "armhf",
    ("arm", "v6"): "armel",
    ("arm", "v5"): "armel",
    ("arm", None): "armhf",
    ("386", None): "i386",
    ("ppc64le", None): "ppc64el",
    ("s390x", None): "s390x",
    ("riscv64", None): "riscv64",
    ("mips64le", None): "mips64el",
}

# Debian architecture -> nfpm's (GOARCH-style) spelling, which it maps back per format.
_NFPM_ARCH = {
    "amd64": "amd64",
    "arm64": "arm64",
    "armhf": "arm7",
    "armel": "arm6",
    "i386": "386",
    "ppc64el": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64el": "mips64le",
}

_MACHINE_TO_OCI = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "386",
    "i386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def host_oci_arch() -> str:
    machine = platform.machine()
    return _MACHINE_TO_OCI.get(machine, machine)


def split_platform(text: str) -> tuple[str, str | None]:
    """'arm/v7' -> ('arm', 'v7'); 'amd64' -> ('amd64', None)."""
    arch, _, variant = text.partition("/")
    return arch, variant or None


def deb_arch(arch: str, variant: str | None) -> str:
    found = _DEB_ARCH.get((arch, variant)) or _DEB_ARCH.get((arch, None))
    if not found:
        known = sorted({a + (f"/{v}" if v else "") for a, v in _DEB_ARCH})
        raise UsageError(
            f"the image architecture {arch}{'/' + variant if variant else ''} has no Debian equivalent",
            hint=f"pick one of {', '.join(known)} with --arch",
        )
    return found


def nfpm_arch(deb: str) -> str:
    return _NFPM_ARCH[deb]


def default_package_name(basename: str) -> str:
    name = re.sub(r"[^a-z0-9+.-]+", "-", basename.lower()).strip("-.+")
    return f"{name or 'image'}-svc"


def check_package_name(name: str) -> str:
    if not _DEB_NAME.match(name):
        suggestion = default_package_name(name).removesuffix("-svc")
        raise UsageError(
            f"{name!r} is not a valid Debian package name (lowercase letters, digits, + - ., at least 2 "
            "characters, starting with a letter or digit)",
            hint=f"use --name {suggestion}",
        )
    return name


def _created_stamp(created: str | None) -> str | None:
    if not created:
        return None
    try:
        # Go writes nanoseconds; Python parses at most microseconds.
        text = re.sub(r"\.(\d{6})\d+", r".\1", created.replace("Z", "+00:00"))
        return datetime.fromisoformat(text).strftime("%Y%m%d%H%M%S")
    except ValueError:
        return None


def version_from_tag(tag: str | None, digest: str, created: str | None) -> str:
    """Turn an image tag into a Debian version (see the module docstring for the rule)."""
    stamp = _created_stamp(created)
    if not tag:
        hexpart = digest.split(":", 1)[-1][:12]
        return f"0+{stamp}.{hexpart}" if stamp else f"0+{hexpart}"
    text = tag
    if re.match(r"^[vV]\d", text):
        text = text[1:]
    text = text.replace("_", ".")
    if not text[0].isdigit():
        text = text.replace("-", ".")
        return f"0+{text}.{stamp}" if stamp else f"0+{text}"
    head, sep, suffix = text.partition("-")
    if sep:
        suffix = suffix.replace("-", ".")
        marker = "~" if _PRERELEASE.match(suffix) else "+"
        text = f"{head}{marker}{suffix}"
    return text


def check_version(version: str) -> str:
    if not _DEB_VERSION.match(version):
        raise UsageError(
            f"{version!r} is not a valid Debian version (it must start with a digit and use only "
            "letters, digits and . + ~, with one optional -revision)",
            hint="pass a version such as 1.2.3 with --version",
        )
    return version
