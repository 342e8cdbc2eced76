"""nfpm, as every package ctr2svc makes uses it (a service's, a shared layer's, a compose application's,
ctr2svc's own): the timestamps (the image's, or SOURCE_DATE_EPOCH), each format's compressions and
signatures, the rpm sections nfpm has no default for, the run itself, and the result placed in the
output directory atomically.

nfpm is given one explicit entry per file, directory and symlink (tree_contents): a `tree` entry
would apply a umask (`/tmp` 1777 would ship as 1775) and give every file the same owner. Regular
files are staged as hard links under numbered names, so no image file name is ever read as a glob
pattern.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ctr2svc import log, metadata
from ctr2svc.errors import PackageError, ToolFailed, UsageError
from ctr2svc.image.bundle import Kind, RootfsScan
from ctr2svc.model import PackageFormat
from ctr2svc.package import debian
from ctr2svc.run import find_tool, run


def mtime(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def year(seconds: int) -> int:
    return datetime.fromtimestamp(seconds, tz=UTC).year


# The latest time every format can store: rpm headers and cpio (and apk's and deb's tar headers, whose
# ustar limit 8^11-1 is later) keep a file's time in 32 unsigned bits, i.e. up to 2106-02-07.
MAX_EPOCH = 2**32 - 1


def source_date_epoch() -> int | None:
    text = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):
        raise UsageError(
            f"SOURCE_DATE_EPOCH={text[:30]!r} is not a number of seconds",
            hint="set it to a Unix time such as 1700000000, or unset it",
        )
    if int(text) > MAX_EPOCH:
        raise UsageError(
            f"SOURCE_DATE_EPOCH={text[:30]} is later than the packages can store (at most {MAX_EPOCH}, "
            "in 2106: rpm and cpio keep times in 32 bits)",
            hint="set it to a Unix time such as 1700000000, or unset it",
        )
    return int(text)


# What each format accepts for the payload; the first is the default.
COMPRESSIONS = {
    PackageFormat.DEB: ("zstd", "gzip", "xz", "none"),
    PackageFormat.RPM: ("zstd", "gzip", "xz"),
    PackageFormat.APK: ("gzip",),  # apk packages are gzip streams by definition
}


def signing(config: dict[str, Any], fmt: PackageFormat, key_file: Path, apk_key_name: str) -> None:
    """nfpm's signature section for FMT (it reads the key's passphrase from $NFPM_PASSPHRASE)."""
    key = str(key_file.absolute())
    if fmt is PackageFormat.DEB:
        # dpkg-sig/debsigs "origin" style: a _gpgorigin member over debian-binary, control and data.
        config["deb"]["signature"] = {"key_file": key, "method": "debsign", "type": "origin"}
    elif fmt is PackageFormat.RPM:
        config["rpm"]["signature"] = {"key_file": key}
    else:
        config["apk"]["signature"] = {"key_file": key, "key_name": apk_key_name}


def nfpm_compression(name: str) -> str:
    """nfpm's spelling: zstd at zstd's own default level 3, where nfpm's plain "zstd" means its slower
    "better" level (bench/README.md: about twice the time for a package 6% smaller)."""
    return "zstd:3" if name == "zstd" else name


def run_nfpm(
    config: dict[str, Any], fmt: PackageFormat, staging: Path, built: Path, epoch: int, total: int = 0
) -> None:
    nfpm = find_tool("nfpm", "build packages")
    config_path = staging / "nfpm.yaml"
    # JSON is YAML: no YAML writer needed, and no value is ever misread as another YAML type.
    config_path.write_text(json.dumps(config, indent=1))
    try:
        # A progress line for the one large package of a flat build; layer packages are packed in
        # worker threads, several at once, and the step line says what they are.
        with log.Progress("packing", total=total) if total else contextlib.nullcontext() as progress:
            run(
                [nfpm, "package", "-f", config_path, "-p", str(fmt), "-t", built],
                what="build the package",
                timeout=7200,
                env={metadata.NFPM_DOLLAR_VAR: "$", "SOURCE_DATE_EPOCH": str(epoch)},
                on_start=progress.watch_reads if progress is not None else None,
            )
    except ToolFailed as exc:
        raise PackageError(
            f"nfpm could not build the package: {exc.brief.split(': ', 1)[-1]}",
            hint="run with --debug for nfpm's full output",
            details=exc.details,
        ) from exc


def rpm_section(summary: str, group: str, packager: str, compression: str) -> dict[str, Any]:
    """nfpm's rpm section: the Summary capitalised and within rpmlint's 79 columns, and a fixed build
    host (nfpm's default is this machine's name, which would make the package differ by machine;
    openSUSE's reproducible builds use the same word)."""
    summary = metadata.one_line(summary, debian.SYNOPSIS_LIMIT)
    return {
        "compression": nfpm_compression(compression),
        "summary": summary[:1].upper() + summary[1:],
        "group": group,
        "packager": packager,
        "buildhost": "reproducible",
    }


def rpm_changelog(version: str, changes: list[str], packager: str, epoch: int) -> str:
    """A one-entry %changelog as nfpm reads it (goreleaser/chglog's YAML; JSON is YAML), dated EPOCH:
    rpm shows it as "* DATE PACKAGER - VERSION" and one "- CHANGE" each."""
    notes = [
        "\n  ".join(textwrap.wrap(c, debian.LINE_LIMIT - 2, break_long_words=False, break_on_hyphens=False))
        for c in changes
    ]
    entry = {
        "semver": version,
        "date": mtime(epoch),
        "packager": packager,
        "changes": [{"note": note} for note in notes],
    }
    return json.dumps([entry], indent=1) + "\n"


def publish(built: Path, output_dir: Path, *, move: bool = False) -> Path:
    """Put `built` into output_dir atomically: readers see the old file or the whole new one.

    move=True lets a file from our own scratch space be renamed rather than copied when it can be.
    """
    final = output_dir / built.name
    if move:
        try:
            # Same filesystem (the cache beside the output): one rename, no copy of a large file.
            built.replace(final)
            log.debug(f"wrote {final}")
            return final
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise PackageError(
                    f"cannot write {final}: {exc.strerror}",
                    hint="check the permissions of the output directory",
                ) from exc
    partial = output_dir / f".{built.name}.partial-{os.getpid()}"
    try:
        shutil.copyfile(built, partial)
        partial.replace(final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise PackageError(
            f"cannot write {final}: {exc.strerror}",
            hint="check free space and permissions of the output directory",
        ) from exc
    log.debug(f"wrote {final}")
    return final


def tree_contents(
    scan: RootfsScan, source: Path, dest: str, files_dir: Path, epoch: int
) -> list[dict[str, Any]]:
    """nfpm's entries for a tree of image files: SOURCE (scanned as SCAN) installed at DEST."""
    contents: list[dict[str, Any]] = []
    staged: dict[str, Path] = {}
    for number, entry in enumerate(scan.entries):
        dst = f"{dest}/{entry.path}" if entry.path else dest
        info = {"mode": entry.mode, "mtime": mtime(min(entry.mtime, epoch))}
        if entry.kind is Kind.DIR:
            contents.append({"dst": dst, "type": "dir", "file_info": info})
        elif entry.kind is Kind.SYMLINK:
            # With no mode nfpm stats the link's *target* on the build host: "/run" would make var/run a
            # directory with this host's mode and mtime. A link's own mode is always 0777 on Linux.
            info["mode"] = 0o777
            contents.append({"src": entry.target, "dst": dst, "type": "symlink", "file_info": info})
        else:
            # A hard link's second name is given to nfpm as a copy of the first (nfpm cannot write a
            # hard link): finish() makes it one in the package nfpm wrote.
            first = staged.get(entry.target) if entry.kind is Kind.HARDLINK and entry.target else None
            if first is None:
                first = files_dir / str(number)
                os.link(source / entry.path, first)
                staged[entry.path] = first
            contents.append({"src": str(first), "dst": dst, "type": "file", "file_info": info})
    return contents
