"""Render the files ctr2svc generates (unit, service helper, ownership script, package scripts).

Python decides every value; the templates in templates/ only lay them out.
"""

from __future__ import annotations

import shlex
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from ctr2svc import __version__
from ctr2svc.bundle import Entry, Kind, RootfsScan
from ctr2svc.model import ServiceSpec

# Paths per chown command line: few processes, and far below the kernel's argument size limit.
CHOWN_BATCH = 200


def templates_dir() -> Path:
    here = Path(__file__).resolve().parent
    # Installed wheels carry the templates inside the package; a checkout keeps them at the top level.
    for candidate in (here / "templates", here.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"ctr2svc's templates are missing (looked in {here / 'templates'})")


def _unit_value(value: str) -> str:
    # systemd expands %-specifiers and ends a value at a newline.
    return " ".join(str(value).split()).replace("%", "%%")


def _rel(path: str) -> str:
    # "./" keeps names that start with "-" from being read as options.
    return f"./{path}" if path else "."


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - shell and unit files, not HTML; values are quoted by filters
    )
    env.filters["sh"] = lambda value: shlex.quote(str(value))
    env.filters["unit_value"] = _unit_value
    env.filters["rel"] = _rel
    return env


ENV = _environment()


def render(template: str, **values: Any) -> str:
    return ENV.get_template(template).render(ctr2svc_version=__version__, **values)


@dataclass(frozen=True)
class ChownBatch:
    owner: str
    paths: tuple[str, ...]


def ownership_plan(scan: RootfsScan) -> tuple[list[ChownBatch], list[Entry], list[Entry]]:
    """(chown batches by owner, entries whose mode chown would spoil, hard links)."""
    by_owner: dict[str, list[str]] = defaultdict(list)
    chmods: list[Entry] = []
    for entry in scan.foreign_owned:
        by_owner[f"{entry.uid}:{entry.gid}"].append(entry.path)
        if entry.kind is not Kind.SYMLINK and entry.mode & 0o6000:
            chmods.append(entry)
    batches = [
        ChownBatch(owner, tuple(paths[i : i + CHOWN_BATCH]))
        for owner, paths in sorted(by_owner.items())
        for i in range(0, len(paths), CHOWN_BATCH)
    ]
    return batches, chmods, scan.hardlinks


@dataclass(frozen=True)
class GeneratedFile:
    dest: str
    content: str
    mode: int


def service_files(spec: ServiceSpec, scan: RootfsScan) -> list[GeneratedFile]:
    """The files every package format installs, whatever its init system integration."""
    values: dict[str, Any] = {
        "name": spec.name,
        "version": spec.version,
        "image": spec.image.pinned,
        "layout": spec.layout,
        "stop_signal": spec.stop_signal,
        "stop_timeout": spec.stop_timeout,
        "volumes": spec.volumes,
        "description": spec.description,
        "homepage": spec.homepage,
        "unit": spec.layout.unit_name,
    }
    batches, chmods, hardlinks = ownership_plan(scan)
    return [
        GeneratedFile(spec.layout.helper, render("service.sh.j2", **values), 0o755),
        GeneratedFile(spec.layout.unit_path, render("service.unit.j2", **values), 0o644),
        GeneratedFile(
            f"{spec.layout.image_dir}/ownership.sh",
            render(
                "ownership.sh.j2",
                image=spec.image.pinned,
                rootfs=spec.layout.rootfs,
                chown_batches=batches,
                chmods=chmods,
                hardlinks=hardlinks,
            ),
            0o755,
        ),
    ]


def deb_scripts(spec: ServiceSpec) -> dict[str, str]:
    values = {"name": spec.name, "version": spec.version, "layout": spec.layout}
    return {script: render(f"deb/{script}.j2", **values) for script in ("postinst", "prerm", "postrm")}
