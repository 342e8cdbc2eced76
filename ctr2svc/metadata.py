"""Text that reaches package metadata, unit files, scripts and the runtime config: checked or made safe.

Every such string comes from somewhere a user or an image author controls: options, project files and
the image itself (labels, volume paths). Each gets the treatment where it goes: a control file field is
one line with no control characters, a URL is a URL, a volume path stays inside the service's data
directory. What the user typed and is wrong is refused (UsageError); what an image declares and cannot
be used is refused when the service cannot run without it (ImageError), else dropped with a warning.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from collections.abc import Mapping

from ctr2svc import log
from ctr2svc.errors import ImageError, UsageError

# Debian policy 5.6.2: "Name <email>"; the other formats take the same.
_MAINTAINER = re.compile(r"^[^<>\s][^<>]*? <[^<>@\s]+@[^<>@\s]+>$")
_URL = re.compile(r"^https?://[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]+$")
# An SPDX license expression: identifiers, WITH/AND/OR, parentheses, LicenseRef-.
_LICENSE = re.compile(r"^[A-Za-z0-9.+()\- ]+$")
# What a synopsis may hold: Debian's short description should stay below 80 characters.
SUMMARY_LIMIT = 72
# The variable nfpm is given so that "$" survives its ${VAR} expansion of metadata fields (it expands
# Description, Maintainer, Homepage and Name with the build's environment, with no escape of its own).
NFPM_DOLLAR_VAR = "CTR2SVC_DOLLAR"


def control_characters(text: str) -> list[str]:
    """The control characters (C0, DEL, C1, line and paragraph separators) in text, as escapes."""
    return sorted(
        {
            repr(c)[1:-1]
            for c in text
            if unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in "\u2028\u2029\x85"
        }
    )


def one_line(text: str, limit: int | None = None) -> str:
    """Text with every run of white space and control characters made one space, cut at limit."""
    cleaned = "".join(
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp", "Zs") or c.isspace() else c for c in text
    )
    words = " ".join(cleaned.split())
    if limit is not None and len(words) > limit:
        cut = words[: limit - 1].rsplit(" ", 1)[0] if " " in words[: limit - 1] else words[: limit - 1]
        words = cut.rstrip(" ,;:.") + "…"
    return words


def check_one_line(what: str, value: str, hint: str) -> str:
    """A user-given value that lands in a one-line field: refused if it has control characters."""
    bad = control_characters(value)
    if bad:
        raise UsageError(f"{what} {value!r} contains control characters ({' '.join(bad)})", hint=hint)
    return value


def maintainer(value: str, what: str = "--maintainer") -> str:
    check_one_line(what, value, "write it as 'Full Name <address@example.com>' on one line")
    if not _MAINTAINER.match(value.strip()):
        raise UsageError(
            f"{what} {value!r} is not 'Full Name <address>'",
            hint="write it as 'Full Name <address@example.com>'",
        )
    return value.strip()


def maintainer_from_environment(environ: Mapping[str, str]) -> str | None:
    """The maintainer dch and fpm would write: DEBEMAIL (which may be 'Name <address>' on its own) or
    EMAIL for the address, DEBFULLNAME or NAME for the name. None when no address is set."""
    address_var = next((var for var in ("DEBEMAIL", "EMAIL") if environ.get(var, "").strip()), None)
    if address_var is None:
        return None
    address = environ[address_var].strip()
    if "<" in address:
        return maintainer(address, address_var)
    name_var = next((var for var in ("DEBFULLNAME", "NAME") if environ.get(var, "").strip()), None)
    if name_var is None:
        raise UsageError(
            f"{address_var}={address!r} gives the maintainer's address but no name",
            hint="set DEBFULLNAME too (export DEBFULLNAME='Full Name'), or pass --maintainer",
        )
    return maintainer(f"{environ[name_var].strip()} <{address}>", f"{name_var} and {address_var}")


def maintainer_from_label(authors: str | None) -> str | None:
    """The image's org.opencontainers.image.authors label when it is one 'Name <address>'; the label
    is free text, so anything else (a list, a URL) is not guessed at."""
    if not authors or control_characters(authors):
        return None
    text = authors.strip()
    return text if _MAINTAINER.match(text) else None


def summary(text: str) -> str:
    """A label made fit for a package synopsis and a unit's Description=."""
    return one_line(text, SUMMARY_LIMIT)


def homepage(url: str | None, source: str) -> str | None:
    """The image's URL label, if it is a plain http(s) URL; anything else is left out, with a warning."""
    if not url:
        return None
    if _URL.match(url) and len(url) <= 2000:
        return url
    log.warn(f"leaving out the image's {source} label {one_line(url, 60)!r}: not a plain http(s) URL")
    return None


def license_expression(text: str | None) -> str | None:
    """The image's license label, if it reads as an SPDX expression; else left out, with a warning."""
    if not text:
        return None
    if _LICENSE.match(text) and len(text) <= 200:
        return text
    log.warn(f"leaving out the image's license label {one_line(text, 60)!r}: not an SPDX license expression")
    return None


def nfpm_text(text: str) -> str:
    """text for a field nfpm runs through ${VAR} expansion: every "$" reaches the package as it is."""
    return text.replace("$", "${" + NFPM_DOLLAR_VAR + "}")


def volume_path(path: str) -> str:
    """An image VOLUME as an absolute path with no "..": its host directory is derived from it."""
    bad = control_characters(path)
    if bad:
        raise ImageError(
            f"the image declares a VOLUME with control characters ({' '.join(bad)}): {path!r}",
            hint="rebuild the image with a plain VOLUME path",
        )
    # As Docker cleans it (filepath.Clean): "/data/../../etc" is "/etc", never a path above the root.
    return posixpath.normpath("/" + path.strip().lstrip("/")).replace("//", "/")


# The file systems the runtime mounts in every container; what is mounted over them hides them.
RUNTIME_PATHS = {
    "/proc": "the kernel's process file system, which runc mounts and refuses other mounts in",
    "/sys": "the kernel's sysfs, which runc mounts read-only",
    "/dev": "where runc provides the container's device nodes",
}


def mount_point_problem(path: str, *, data: bool = False) -> str | None:
    """Why nothing can be mounted at PATH (absolute, cleaned) in the container, or None.

    The root cannot be; /proc and below is the kernel's, and runc refuses mounts there; /sys and /dev
    themselves would hide what runc mounts (below them a bind mount is how a device or a cgroup tree is
    passed in). DATA: a data directory (an image VOLUME, a named volume), which has no place in any of
    them.
    """
    if path == "/":
        return "the container's root cannot be a mount point"
    for runtime, what in RUNTIME_PATHS.items():
        inside = path.startswith(runtime + "/")
        if path == runtime or (inside and (data or runtime == "/proc")):
            return f"{runtime} is {what}"
    return None


def container_path(what: str, path: str, hint: str, *, data: bool = False) -> str:
    """A mount point in the container as the user gave it: absolute, without "." or "..", and not
    where the runtime's own file systems are (see mount_point_problem)."""
    check_one_line(what, path, hint)
    if not path.startswith("/"):
        raise UsageError(f"{what} {path!r}: the container path is not absolute", hint=hint)
    if any(part in (".", "..") for part in path.split("/")):
        raise UsageError(f"{what} {path!r}: the container path has a '.' or '..' component", hint=hint)
    problem = mount_point_problem(posixpath.normpath(path).replace("//", "/"), data=data)
    if problem:
        raise UsageError(f"{what} {path!r}: {problem}", hint=hint)
    return path


def file_name(what: str, value: str, hint: str) -> str:
    """A value used as one file name (no directories, nothing a shell or a package reads specially)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}", value):
        raise UsageError(f"{what} {value!r} is not a plain file name", hint=hint)
    return value
