"""What a .deb carries besides the service so that Debian's tools accept it: the copyright file, the
changelog, lintian overrides and a description that fits lintian's limits.

lintian reports 0 errors and 0 warnings on these packages (tests/integration/test_lintian.py). The
overrides shipped in /usr/share/lintian/overrides/NAME cover only tags that are wrong for this kind of
package (each with its reason as the comment above it), and for the image's files only the tags they
raise (imagelint.py; those that rest on lintian's own tables whenever they could), so that few are
unused; everything else is fixed for real.
"""

from __future__ import annotations

import gzip
import textwrap
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

COPYRIGHT_FORMAT = "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
# lintian's extended-description-line-too-long and debian-changelog-line-too-long: 80 columns.
LINE_LIMIT = 79
# lintian's synopsis-too-long.
SYNOPSIS_LIMIT = 79
# The default maintainer's address is one lintian flags (root-in-contact, bogus-mail-host).
LOCAL_ADDRESS_HINT = (
    "pass --maintainer 'Full Name <address@example.com>', or set DEBFULLNAME and DEBEMAIL as for dch"
    " (a real address, for Debian's tools)"
)


@dataclass(frozen=True)
class DocFile:
    dest: str
    data: bytes


def local_maintainer(maintainer: str) -> bool:
    """An address lintian refuses: root's, or one at localhost."""
    address = maintainer.rsplit("<", 1)[-1].rstrip(">").lower()
    user, _, host = address.partition("@")
    return user == "root" or host in ("localhost", "localhost.localdomain") or "." not in host


def wrap(text: str) -> list[str]:
    # A reference or a digest is never broken: it has to stay copyable.
    return textwrap.wrap(text, LINE_LIMIT, break_long_words=False, break_on_hyphens=False)


def description(synopsis: str, body: str, digest: str) -> str:
    """A Description: the synopsis, then BODY wrapped within lintian's limit, then the digest alone on
    its line (sha256:<64 hex> is 71 characters)."""
    return "\n".join([synopsis, *wrap(body), digest])


IMAGE_LICENSE_UNKNOWN = (
    "The image declares no license (no org.opencontainers.image.licenses label):",
    "its files are under the licenses their authors chose, unknown to ctr2svc.",
)
LAYER_LICENSE_UNKNOWN = (
    "A layer of container images: its files are under the licenses of those images",
    "(their org.opencontainers.image.licenses labels), unknown to the layer itself.",
)


def copyright_file(
    subject: str,
    source: str,
    license_id: str | None,
    dated: str,
    unknown: tuple[str, ...] = IMAGE_LICENSE_UNKNOWN,
) -> str:
    """A machine-readable copyright file for files whose authors and license are the image's."""
    if license_id:
        license_text = [
            f"License: {license_id}",
            " The license the image declares in its org.opencontainers.image.licenses label;",
            " the license texts are among the image's own files.",
        ]
    else:
        license_text = ["License: NOASSERTION", *(f" {line}" for line in unknown)]
    lines = [
        f"Format: {COPYRIGHT_FORMAT}",
        f"Upstream-Name: {subject}",
        *("Source:", *(f" {line}" for line in wrap(source))),
        "Comment: Packaged by ctr2svc from a container image; the image's files are",
        " unmodified and keep the copyright and license of the image.",
        "",
        "Files: *",
        f"Copyright: the authors of the container image's contents ({dated})",
        *license_text,
        "",
    ]
    return "\n".join(lines)


def changelog(name: str, version: str, changes: list[str], maintainer: str, epoch: int) -> bytes:
    """A one-entry Debian changelog, gzipped as dpkg-deb expects and byte-reproducibly (no name, mtime 0)."""
    items = []
    for change in changes:
        first, *rest = textwrap.wrap(change, LINE_LIMIT - 4, break_long_words=False, break_on_hyphens=False)
        items.append(f"  * {first}")
        items.extend(f"    {line}" for line in rest)
    # Imported here: the email package is a noticeable part of the CLI's start-up, and only a .deb's
    # changelog needs it.
    from email.utils import format_datetime

    date = format_datetime(datetime.fromtimestamp(epoch, tz=UTC))
    text = f"{name} ({version}) unstable; urgency=medium\n\n" + "\n".join(items)
    text += f"\n\n -- {maintainer}  {date}\n"
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def changelog_path(name: str, native: bool) -> str:
    # A version with no Debian revision is a native package's: lintian wants changelog.gz then.
    return f"/usr/share/doc/{name}/changelog.gz" if native else f"/usr/share/doc/{name}/changelog.Debian.gz"


# Tags about the image's own files, which ctr2svc ships as the image has them, each group with the reason
# the tag is wrong for them. Scoped to the image's root directory, and shipped only for the tags the
# image's files raise (imagelint.py): lintian reports an override it finds no use for.
IMAGE_FILE_TAGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "the container image's own files, shipped as the image has them (unpatched, unstripped, its modes)",
        (
            "statically-linked-binary",
            "unstripped-binary-or-object",
            "uses-dpkg-database-directly",
            "elevated-privileges",
            "non-standard-setuid-executable-perm",
            "non-standard-dir-perm",
            "non-standard-executable-perm",
            "non-standard-file-perm",
            "executable-is-not-world-readable",
            "embedded-library",
            "custom-library-search-path",
            "relative-library-search-path",
            "hardening-no-pie",
            "hardening-no-relro",
            "package-contains-vcs-control-file",
            "package-contains-vcs-control-dir",
            "package-installs-python-pycache-dir",
            "package-installs-python-bytecode",
            "script-not-executable",
            "executable-not-elf-or-script",
            "shared-library-is-executable",
            "national-encoding",
            "broken-gz",
            "package-contains-timestamped-gzip",
            "package-contains-hardlink",
        ),
    ),
    (
        "the image's programs run in the container on the image's own libraries and interpreters, "
        "not the host's",
        (
            "undeclared-elf-prerequisites",
            "missing-dependency-on-libc",
            "library-not-linked-against-libc",
            "program-not-linked-against-libc",
            "shared-library-lacks-prerequisites",
            "missing-depends-on-sensible-utils",
            "unusual-interpreter",
            "interpreter-in-usr-local",
            "wrong-path-for-interpreter",
            "incorrect-path-for-interpreter",
            "interpreter-not-absolute",
            "script-without-interpreter",
            "script-uses-bin-env",
            "script-uses-deprecated-nodejs-location",
            "php-script-with-unusual-interpreter",
            "missing-dep-for-interpreter",
            "python3-script-but-no-python3-dep",
            "python2-script-but-no-python2-dep",
            "ruby-script-but-no-ruby-dep",
            "gawk-script-but-no-gawk-dep",
            "mawk-script-but-no-mawk-dep",
            "php-script-but-no-php-cli-dep",
            "tclsh-script-but-no-tclsh-dep",
            "wish-script-but-no-wish-dep",
        ),
    ),
    (
        "the image's own systemd units, which the host's systemd never reads (the image tree is not /)",
        (
            "service-file-is-not-a-file",
            "systemd-service-file-refers-to-unusual-wantedby-target",
            "systemd-service-file-refers-to-obsolete-target",
            "systemd-service-file-refers-to-obsolete-bindto",
            "systemd-service-file-wraps-init-script",
            "systemd-service-alias-without-extension",
            "systemd-service-file-uses-nobody-or-nogroup",
            "systemd-service-file-uses-deprecated-syslog-facility",
            "systemd-service-file-shutdown-problems",
            "kill-mode-none",
        ),
    ),
)


def overrides(name: str, rules: list[tuple[str, str]]) -> DocFile:
    """/usr/share/lintian/overrides/NAME from (reason, override) pairs."""
    lines = [f"# lintian overrides of {name}, written by ctr2svc: each reason is the comment above it."]
    previous = ""
    for reason, rule in rules:
        if reason != previous:
            lines.append(f"# {reason}")
            previous = reason
        lines.append(rule)
    return DocFile(f"/usr/share/lintian/overrides/{name}", ("\n".join(lines) + "\n").encode())


def image_rules(rootfs: str, tags: Collection[str], skip: Collection[str] = ()) -> list[tuple[str, str]]:
    """Overrides of TAGS (those the image's files raise, imagelint.raised) for the image's files under
    ROOTFS (an absolute path), but for the tags in SKIP (a caller's own rule covers them)."""
    where = rootfs.lstrip("/")
    rules = []
    for reason, group in IMAGE_FILE_TAGS:
        for tag in group:
            if tag not in tags or tag in skip:
                continue
            # This one names the first binary (sorted) and counts the others, with no [pointer].
            pattern = f"needed by {where}/*" if tag == "missing-dependency-on-libc" else f"*[{where}/*]"
            rules.append((reason, f"{tag} {pattern}"))
    return rules


OPT_RULE = (
    "container images are add-on software: /opt/containers is their place (FHS 3.13)",
    "dir-or-file-in-opt [opt/containers/*]",
)

ZSTD_RULE = (
    "a zstd payload, which dpkg reads since 1.21.18 (Debian 12; Ubuntu's default): lintian 2.116 predates it",
    "malformed-deb-archive third (official) member data.tar.zst not data.tar.(gz|xz|bz2|lzma)",
)
