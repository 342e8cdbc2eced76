"""`ctr2svc build -c` and `ctr2svc update`: many images from a project file, one failure not stopping
the others, and a repository kept in step with the registry.

update asks the registry for each tag's current digest (a manifest request, no pull), rebuilds only
what changed since the digest recorded in REPO/ctr2svc-state.json, gives a new digest of an unchanged
tag the next release (9.0.0 -> 9.0.0-1 -> 9.0.0-2, rpm 9.0.0-1 -> 9.0.0-2) so that package managers
upgrade to it, publishes to the repository and records the new state last.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ctr2svc import log, registry, repo
from ctr2svc.build import build, pull_options
from ctr2svc.errors import Ctr2svcError
from ctr2svc.model import PackageFormat
from ctr2svc.project import ImageEntry, Project, options
from ctr2svc.record import BuildResult

STATE_FILE = "ctr2svc-state.json"


@dataclass
class Outcome:
    image: str
    format: PackageFormat
    status: str  # built, unchanged, failed
    detail: str  # package file, digest or the error
    result: BuildResult | None = None


def table(outcomes: list[Outcome]) -> str:
    rows = [("IMAGE", "FORMAT", "RESULT", "DETAIL")] + [
        (o.image, str(o.format), o.status, o.detail) for o in outcomes
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row)) for row in rows
    )


def build_all(project: Project) -> list[Outcome]:
    outcomes = []
    for entry in project.images:
        for fmt in entry.formats:
            outcomes.append(_build_one(project, entry, fmt))
    return outcomes


def _build_one(
    project: Project, entry: ImageEntry, fmt: PackageFormat, min_version: str | None = None
) -> Outcome:
    try:
        opts = options(project, entry, fmt, min_version=min_version)
        result = build(opts)
    except Ctr2svcError as exc:
        log.warn(f"{entry.label()} ({fmt}): {exc.one_line()}")
        return Outcome(entry.label(), fmt, "failed", exc.one_line())
    return Outcome(entry.label(), fmt, "built", str(result.path), result)


def _state_key(entry: ImageEntry, fmt: PackageFormat) -> str:
    return f"{entry.settings.get('name') or entry.ref} {fmt}"


def load_state(repo_dir: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads((repo_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        log.warn(f"{repo_dir / STATE_FILE} is not valid JSON; every image is rebuilt")
        return {}
    return data if isinstance(data, dict) else {}


def save_state(repo_dir: Path, state: dict[str, dict[str, str]]) -> None:
    repo_dir.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=repo_dir, prefix=f".{STATE_FILE}.")
    with os.fdopen(fd, "w") as out:
        json.dump(state, out, indent=2, sort_keys=True)
        out.write("\n")
    Path(temp).replace(repo_dir / STATE_FILE)


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ctr2svc-update-") as name:
        yield Path(name)


def update(project: Project, repo_dir: Path) -> list[Outcome]:
    state = load_state(repo_dir)
    outcomes: list[Outcome] = []
    for entry in project.images:
        for fmt in entry.formats:
            key = _state_key(entry, fmt)
            previous = state.get(key)
            try:
                opts = options(project, entry, fmt)
                with _scratch() as work:
                    digest = registry.locate(opts.reference, pull_options(opts), work).digest
            except Ctr2svcError as exc:
                log.warn(f"{entry.label()} ({fmt}): {exc.one_line()}")
                outcomes.append(Outcome(entry.label(), fmt, "failed", exc.one_line()))
                continue
            if previous and previous.get("digest") == digest:
                outcomes.append(
                    Outcome(entry.label(), fmt, "unchanged", f"{previous['version']} {digest[:19]}")
                )
                continue
            # A new digest must sort above what the repository has, even under the same tag.
            floor = previous.get("version") if previous else None
            outcome = _build_one(project, entry, fmt, min_version=floor)
            outcomes.append(outcome)
            if outcome.result is not None:
                done = outcome.result
                state[key] = {"digest": done.digest, "version": done.version, "name": done.name}
    built = [o.result.path for o in outcomes if o.result is not None]
    if built:
        repo.add(repo_dir, built, keep=project.keep, signing=project.signing, apk_key=project.apk_key)
        # Recorded only once published: a failed publish rebuilds next time.
        save_state(repo_dir, state)
    return outcomes
