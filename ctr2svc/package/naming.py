"""Package names, versions and architectures derived from an image, and the rules that check them.

The version rule (documented in docs/usage.md, "Names and versions"):
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

RPM takes the same version and adds the release ``1`` (``9.0.0-1``). apk's grammar is stricter
(``1.2.3[a][_rc1][-r0]``): pre-releases become ``_alpha``/``_beta``/``_pre``/``_rc`` suffixes, other
suffixes (``-alpine``) are left out, and a tag that is not a version gives ``0_git<CREATED>``; the release
is ``r0``.
"""

from __future__ import annotations

import platform
import re
from datetime import UTC, datetime

from ctr2svc.errors import UsageError
from ctr2svc.model import PackageFormat, PackageVersion
from ctr2svc.run import run

_PRERELEASE = re.compile(r"^(rc|alpha|beta|pre|preview|dev|a|b)\d*([.-].*)?$", re.IGNORECASE)
# A name is a package name in every format and a systemd unit name: Debian's grammar ([a-z0-9+.-], the
# strictest of the three formats) without "+", which systemd refuses in unit names ([A-Za-z0-9:_.@-]).
_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]+$")
# The name is also the private network's host name (at most 64 bytes, sethostname(2)) and the name other
# services look up through aardvark-dns (a DNS label, at most 63): 63 fits everywhere it goes, /run/netns
# and unit names included.
MAX_NAME_LENGTH = 63
# The whole version as written (epoch and release included). With the longest name it keeps the package
# file name (NAME_VERSION_ARCH.deb, NAME-VERSION.ARCH.rpm) below the file systems' 255 bytes, and it
# holds every version derived from a tag (tags have at most 128 characters: 0+TAG.YYYYMMDDHHMMSS).
MAX_VERSION_LENGTH = 160
# dpkg refuses an epoch above INT_MAX ("epoch in version is too big"), rpm keeps it in an int32.
MAX_EPOCH = 2**31 - 1
# ctr2svc's own packages: the builder itself, and the layer packages of --layers shared.
RESERVED_NAME = "ctr2svc"
RESERVED_PREFIX = "ctr2svc-layer-"
_DEB_VERSION = re.compile(r"^(?:\d+:)?[0-9][A-Za-z0-9.+~]*(?:-[A-Za-z0-9.+~]+)?$")
# rpm's Version and Release: no "-" (it separates them), "~" sorts before, "^" after (rpm >= 4.15).
_RPM_VERSION = re.compile(r"^(?:(\d+):)?([0-9][A-Za-z0-9._+~^]*)(?:-([A-Za-z0-9._+~^]+))?$")
# apk-tools' grammar (apk_version_validate): numbers, one optional letter, suffixes, ~hash, -rN.
_APK_SUFFIX = r"_(?:alpha|beta|pre|rc|cvs|svn|git|hg|p)\d*"
_APK_VERSION = re.compile(rf"^(\d+(?:\.\d+)*[a-z]?(?:{_APK_SUFFIX})*(?:~[0-9a-f]+)?)(?:-r(\d+))?$")
# What the formats' tools accept in a version, whatever the format: these strings reach `rpm --eval`.
TOOL_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+~^_:-]*$")
_APK_PRERELEASE = {"alpha": "alpha", "a": "alpha", "beta": "beta", "b": "beta", "rc": "rc"}

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

# Debian architecture -> the spelling of the other formats (what `uname -m`-style tools print).
_FORMAT_ARCH = {
    PackageFormat.RPM: {
        "amd64": "x86_64",
        "arm64": "aarch64",
        "armhf": "armv7hl",
        "i386": "i686",
        "ppc64el": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    },
    PackageFormat.APK: {
        "amd64": "x86_64",
        "arm64": "aarch64",
        "armhf": "armv7",
        "armel": "armhf",
        "i386": "x86",
        "ppc64el": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    },
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


def format_arch(fmt: PackageFormat, deb: str) -> str:
    """The architecture as FMT spells it; UsageError if FMT has no such architecture."""
    if fmt is PackageFormat.DEB:
        return deb
    table = _FORMAT_ARCH[fmt]
    if deb not in table:
        raise UsageError(
            f"{fmt} packages have no architecture for the image's {deb}",
            hint=f"{fmt} supports {', '.join(sorted(table))} (Debian names); pick one with --arch",
        )
    return table[deb]


def default_package_name(basename: str) -> str:
    name = re.sub(r"[^a-z0-9.-]+", "-", basename.lower()).strip("-.")
    # Room for "-svc" within the longest name; a cut never ends on a separator.
    name = name[: MAX_NAME_LENGTH - 4].rstrip("-.")
    return f"{name or 'image'}-svc"


def check_package_name(name: str, fmt: PackageFormat = PackageFormat.DEB) -> str:
    """One rule for every format, so that a service has one name everywhere: a package name in each
    format that is also a systemd unit name, a host name and a DNS label, and not one of ctr2svc's own."""
    if name == RESERVED_NAME or name.startswith(RESERVED_PREFIX):
        what = (
            "ctr2svc's own package"
            if name == RESERVED_NAME
            else f"ctr2svc's layer packages ({RESERVED_PREFIX}*)"
        )
        raise UsageError(
            f"{name!r} is reserved: it is the name of {what}",
            hint=f"use --name {_suggestion(name.removeprefix(RESERVED_PREFIX))}",
        )
    if not _NAME.match(name):
        rule = (
            "lowercase letters, digits, '.' and '-', at least 2 characters, starting with a letter or digit"
        )
        why = (
            "a valid Debian package name and systemd unit name"
            if fmt is PackageFormat.DEB
            else f"a valid {fmt} package name and systemd unit name for ctr2svc, which keeps one rule for "
            "every format so that a service has the same name everywhere"
        )
        extra = (
            " ('+' is valid in a Debian package name, but systemd refuses it in a unit name)"
            if ("+" in name)
            else ""
        )
        raise UsageError(f"{name!r} is not {why} ({rule}){extra}", hint=f"use --name {_suggestion(name)}")
    if len(name) > MAX_NAME_LENGTH:
        raise UsageError(
            f"the name {name[:20]}… has {len(name)} characters, more than the {MAX_NAME_LENGTH} a service "
            "name may have (it is also the service's host name and DNS name)",
            hint=f"use a shorter --name, e.g. --name {_suggestion(name[: MAX_NAME_LENGTH - 4])}",
        )
    return name


def _suggestion(name: str) -> str:
    """A valid name close to NAME, for the hint of a refused one."""
    suggestion = default_package_name(name.replace("+", "p"))
    if _NAME.match(suggestion.removesuffix("-svc")):
        suggestion = suggestion.removesuffix("-svc")
    if suggestion == RESERVED_NAME or suggestion.startswith(RESERVED_PREFIX):
        suggestion = f"my-{suggestion}"
    return suggestion[:MAX_NAME_LENGTH].rstrip(".-") or "image-svc"


def created_time(created: str | None) -> datetime | None:
    """The image config's `created` (RFC 3339, nanoseconds as Go writes them), or None."""
    if not created:
        return None
    try:
        # Go writes nanoseconds; Python parses at most microseconds.
        text = re.sub(r"\.(\d{6})\d+", r".\1", created.replace("Z", "+00:00"))
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _created_stamp(created: str | None) -> str | None:
    when = created_time(created)
    return when.strftime("%Y%m%d%H%M%S") if when is not None else None


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


def _apk_version_from_tag(tag: str | None, created: str | None) -> str:
    stamp = _created_stamp(created)
    text = tag[1:] if tag and re.match(r"^[vV]\d", tag) else tag
    match = re.match(r"^(\d+(?:[._]\d+)*)([a-z]?)(?:[-._+](.*))?$", text or "")
    if not match:
        # apk has no place for a word: the image's creation time keeps a moving tag moving up.
        return f"0_git{stamp}" if stamp else "0"
    numbers, letter, rest = match.group(1).replace("_", "."), match.group(2), match.group(3) or ""
    pre = re.match(r"^(alpha|beta|rc|preview|pre|dev|a|b)[.-]?(\d*)(?:[.-].*)?$", rest, re.IGNORECASE)
    if pre:
        return f"{numbers}{letter}_{_APK_PRERELEASE.get(pre.group(1).lower(), 'pre')}{pre.group(2)}"
    if re.match(r"^r\d+$", rest):
        # Alpine-style tags (3.19.1-r2) carry their own release.
        return f"{numbers}{letter}-{rest}"
    # A flavour such as -alpine or -bookworm has no apk spelling; the description names the image.
    return f"{numbers}{letter}"


def default_version(fmt: PackageFormat, tag: str | None, digest: str, created: str | None) -> PackageVersion:
    """The package version for an image with no --version (the rule in the module docstring)."""
    if fmt is PackageFormat.APK:
        return parse_version(fmt, _apk_version_from_tag(tag, created))
    return parse_version(fmt, version_from_tag(tag, digest, created))


def parse_version(fmt: PackageFormat, text: str) -> PackageVersion:
    """Check TEXT against FMT's version grammar and length, and split it into the format's fields."""
    parsed = _parse_version(fmt, text)
    if parsed.epoch is not None and parsed.epoch > MAX_EPOCH:
        raise UsageError(
            f"the epoch of version {text[:40]!r} is larger than {MAX_EPOCH}, which dpkg and rpm refuse",
            hint="pass a smaller epoch, e.g. --version 1:2.0, or none",
        )
    if len(parsed.full) > MAX_VERSION_LENGTH:
        raise UsageError(
            f"the version {parsed.full[:20]}… has {len(parsed.full)} characters as {fmt} writes it, more "
            f"than the {MAX_VERSION_LENGTH} a package version may have (it is part of the package's file "
            "name and of its directory /opt/containers/NAME/VERSION)",
            hint="pass a shorter --version, e.g. --version 1.2.3",
        )
    return parsed


def _parse_version(fmt: PackageFormat, text: str) -> PackageVersion:
    if fmt is PackageFormat.DEB:
        check_version(text)
        epoch, _, rest = text.rpartition(":") if ":" in text else ("", "", text)
        version, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
        return PackageVersion(fmt, version, revision or None, int(epoch) if epoch else None)
    if fmt is PackageFormat.RPM:
        match = _RPM_VERSION.match(text)
        if not match:
            raise UsageError(
                f"{text!r} is not a valid RPM version (a digit first, then letters, digits and . _ + ~ ^, "
                "with one optional -release)",
                hint="pass a version such as 1.2.3 or 1.2.3-2 with --version",
            )
        epoch, version, release = match.groups()
        return PackageVersion(fmt, version, release or "1", int(epoch) if epoch else None)
    match = _APK_VERSION.match(text)
    if not match:
        raise UsageError(
            f"{text!r} is not a valid apk version (numbers such as 1.2.3, an optional letter, suffixes "
            "_alpha _beta _pre _rc _p _git with digits, and an optional -rN)",
            hint="pass a version such as 1.2.3, 1.2.3_rc1 or 1.2.3-r1 with --version",
        )
    version, release = match.groups()
    return PackageVersion(fmt, version, f"r{release or 0}")


def _next_release(fmt: PackageFormat, release: str | None) -> str:
    if fmt is PackageFormat.APK:
        return f"r{int((release or 'r0')[1:]) + 1}"
    if release is None:
        return "1"
    head, digits = re.match(r"^(.*?)(\d*)$", release).groups()  # type: ignore[union-attr]
    return f"{head}{int(digits) + 1}" if digits else f"{release}.1"


def above(fmt: PackageFormat, version: str, floor: str) -> str:
    """VERSION if it sorts above FLOOR in FMT's order, else FLOOR's next release (9.0.0 -> 9.0.0-1)."""
    if compare(fmt, version, floor) > 0:
        return version
    base = parse_version(fmt, floor)
    return PackageVersion(fmt, base.version, _next_release(fmt, base.release), base.epoch).full


def compare(fmt: PackageFormat, a: str, b: str) -> int:
    """-1, 0 or 1, as dpkg or rpm order the two versions: the package managers' own order."""
    if a == b:
        return 0
    if fmt is PackageFormat.DEB:
        lower = run(["dpkg", "--compare-versions", a, "lt", b], what="compare versions", check=False)
        return -1 if lower.returncode == 0 else 1
    # Only versions of the formats' grammar get here (read_package and the build check them): no quote
    # can be in them. apk's order is close to rpm's for the versions ctr2svc writes (digits, _rc/_git
    # suffixes, -rN).
    for version in (a, b):
        if not TOOL_VERSION.match(version):
            raise UsageError(
                f"{version!r} is not a package version", hint="use digits, letters and . + ~ _ -"
            )
    out = run(["rpm", "--eval", f"%{{lua:print(rpm.vercmp('{a}', '{b}'))}}"], what="compare versions").stdout
    return int(out.decode().strip())
