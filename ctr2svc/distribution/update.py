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
from pathlib import Path

from ctr2svc import log
from ctr2svc.apps import compose_build, stack
from ctr2svc.apps.entries import ImageEntry, Project
from ctr2svc.apps.project import options, package_name
from ctr2svc.build.pipeline import build, pull_options
from ctr2svc.distribution import repo
from ctr2svc.distribution.summary import Outcome
from ctr2svc.errors import Ctr2svcError, PackageError, UsageError
from ctr2svc.image import registry
from ctr2svc.model import PackageFormat
from ctr2svc.options.request import BuildRequest, with_floor

STATE_FILE = "ctr2svc-state.json"


def build_all(project: Project) -> list[Outcome]:
    outcomes = []
    for entry in project.images:
        for fmt in entry.formats:
            outcomes.append(_build_one(project, entry, fmt))
    stack = _application(project)
    return outcomes if stack is None else [*outcomes, stack]


def _application(project: Project) -> Outcome | None:
    """A compose file's application package (ctr2svc/apps/compose.py), after its services'."""
    app = project.application
    if app is None:
        return None
    fmt = app.services[0].request.format
    try:
        path, same = stack.build_stack(app, project.output_dir)
    except Ctr2svcError as exc:
        log.warn(f"{app.stack} ({fmt}): {exc.one_line()}")
        return Outcome(app.stack, fmt, "failed", exc.one_line())
    return Outcome(app.stack, fmt, "built", str(path), stack.stack_result(app, path, same))


def _build_one(
    project: Project, entry: ImageEntry, fmt: PackageFormat, request: BuildRequest | None = None
) -> Outcome:
    """ENTRY's package of format FMT, from REQUEST when it is made already (update's, with its floor)."""
    try:
        if entry.build is not None and request is None:
            compose_build.build(entry.build)
        result = build(request or options(project, entry, fmt))
    except Ctr2svcError as exc:
        log.warn(f"{entry.label()} ({fmt}): {exc.one_line()}")
        return Outcome(entry.label(), fmt, "failed", exc.one_line())
    return Outcome(entry.label(), fmt, "built", str(result.path), result)


def _state_key(entry: ImageEntry, fmt: PackageFormat) -> str:
    return f"{entry.name or entry.ref} {fmt}"


def load_state(repo_dir: Path) -> dict[str, dict[str, str]]:
    """What the last update published: "KEY FORMAT" -> digest, version, name. A damaged file costs a
    rebuild of every image (above the versions in the repository), never a failed update."""
    path = repo_dir / STATE_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except IsADirectoryError as exc:
        raise UsageError(f"{path} is a directory", hint="remove it; update writes its state there") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint="check its permissions") from exc
    except ValueError:
        log.warn(f"{path} is not valid JSON; every image is rebuilt")
        return {}
    if not isinstance(data, dict):
        log.warn(f"{path} is not a JSON object; every image is rebuilt")
        return {}
    state = {
        key: value
        for key, value in data.items()
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    }
    if len(state) != len(data):
        log.warn(f"{path} has {len(data) - len(state)} damaged entries; their images are rebuilt")
    return state


def save_state(repo_dir: Path, state: dict[str, dict[str, str]]) -> None:
    try:
        repo_dir.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=repo_dir, prefix=f".{STATE_FILE}.")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(state, out, indent=2, sort_keys=True)
                out.write("\n")
            Path(temp).replace(repo_dir / STATE_FILE)
        finally:
            Path(temp).unlink(missing_ok=True)
    except OSError as exc:
        raise PackageError(
            f"published, but cannot record the state in {repo_dir / STATE_FILE}: {exc.strerror}",
            hint="fix the repository directory; the next update rebuilds above what is published",
        ) from exc


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ctr2svc-update-") as name:
        yield Path(name)


def update(project: Project, repo_dir: Path, *, rebuild: bool = False) -> list[Outcome]:
    """REBUILD: every image, moved or not, above the version published (a new ctr2svc's helper)."""
    # One update (or repo add) at a time: from reading the state to recording the new one.
    with repo.locked(repo_dir):
        return _update(project, repo_dir, rebuild)


def _update(project: Project, repo_dir: Path, rebuild: bool = False) -> list[Outcome]:
    state = load_state(repo_dir)
    published: dict[PackageFormat, dict[str, str]] = {}
    outcomes: list[Outcome] = []
    new_state: dict[Path, tuple[Outcome, str, dict[str, str]]] = {}
    for entry in project.images:
        for fmt in entry.formats:
            key = _state_key(entry, fmt)
            previous = state.get(key)
            try:
                request = options(project, entry, fmt)
                if entry.build is not None:
                    # Built each time: the same context gives the same digest (compose_build.py), so an
                    # unchanged one is "unchanged" here as an unmoved tag is.
                    compose_build.build(entry.build)
                with _scratch() as work:
                    digest = registry.locate(request.reference, pull_options(request), work).digest
            except Ctr2svcError as exc:
                log.warn(f"{entry.label()} ({fmt}): {exc.one_line()}")
                outcomes.append(Outcome(entry.label(), fmt, "failed", exc.one_line()))
                continue
            if not rebuild and previous and previous.get("digest") == digest and previous.get("version"):
                outcomes.append(
                    Outcome(entry.label(), fmt, "unchanged", f"{previous['version']} {digest[:19]}")
                )
                continue
            # A new digest must sort above what the repository has, even under the same tag. Without a
            # record (first run, a lost state file): above what the repository has of that package.
            floor = previous.get("version") if previous else None
            if floor is None:
                if fmt not in published:
                    published[fmt] = repo.newest_versions(repo_dir, fmt)
                floor = published[fmt].get(package_name(entry))
            outcome = _build_one(project, entry, fmt, with_floor(request, floor))
            outcomes.append(outcome)
            if outcome.result is not None:
                done = outcome.result
                new_state[done.path] = (
                    outcome,
                    key,
                    {"digest": done.digest, "version": done.version, "name": done.name},
                )
    stack = _application(project)
    extra: list[Path] = []
    if stack is not None:
        outcomes.append(stack)
        if stack.result is not None:
            # Given to every update: the same file again is a no-op for the repository.
            extra.append(stack.result.path)
            if stack.result.up_to_date:
                stack.status, stack.detail = "unchanged", stack.result.version
    if new_state or extra:

        def refused(path: Path, error: UsageError) -> None:
            # Same name and version as a published package, other bytes (a `version` fixed in the
            # project while the tag moved): that image fails, the others are published.
            if path not in new_state:
                log.warn(f"{path}: {error.one_line()}")
                return
            outcome = new_state.pop(path)[0]
            log.warn(f"{outcome.image} ({outcome.format}): {error.one_line()}")
            outcome.status, outcome.detail, outcome.result = "failed", error.one_line(), None

        layer_files = [
            Path(p)
            for outcome, _, _ in new_state.values()
            if outcome.result
            for p in outcome.result.layer_files
        ]
        repo.add(
            repo_dir,
            [*new_state, *dict.fromkeys(layer_files), *extra],
            keep=project.keep,
            signing=project.signing,
            apk_key=project.apk_key,
            on_clash=refused,
        )
        # Recorded only once published: a failed publish rebuilds next time.
        if new_state:
            for _, key, record in new_state.values():
                state[key] = record
            save_state(repo_dir, state)
    return outcomes
