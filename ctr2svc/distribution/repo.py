"""Package repositories: add built packages, keep a few versions, (re)generate signed indexes.

The field's own tools do the work: `apt-ftparchive` writes the apt index (a flat repository, used as
`deb [signed-by=KEY] URL ./`), `createrepo_c` the dnf/yum metadata, `gpg` the signatures (InRelease and
Release.gpg; repodata/repomd.xml.asc), and dpkg and rpm decide which version is the newest. Old versions
are pruned per package name (and architecture) beyond --keep, so a downgrade stays possible.

What a repository promises its hosts, and so what `add` keeps to:
- every input is checked (a readable package of the format its name says, whole) before the
  repository is touched;
- a package already published is never replaced by different bytes under the same name, version and
  architecture: hosts that have the old one would never get the new one (the same bytes are a no-op);
- the new state (packages, pruning, indexes, signatures) is made in REPO/.ctr2svc-staging and moved into
  place only once all of it worked: a failing index tool or gpg leaves the repository as it was;
- one writer at a time: an exclusive flock on REPO/.ctr2svc.lock; a second one waits for it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import filecmp
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ctr2svc import log
from ctr2svc.distribution.indexes import (
    DEB_INDEX,
    INDEX_TOOLS,
    ApkKey,
    Signing,
    check_apk_key,
    check_signing,
    index_apk,
    index_deb,
    index_rpm,
)
from ctr2svc.distribution.packages import PackageFile, newest_first, read_package
from ctr2svc.errors import Ctr2svcError, PackageError, UsageError
from ctr2svc.model import PackageFormat
from ctr2svc.run import find_tool

DEFAULT_KEEP = 3
LOCK_FILE = ".ctr2svc.lock"
STAGING = ".ctr2svc-staging"


@dataclass(frozen=True)
class RepoResult:
    added: list[Path]
    pruned: list[Path]
    index: list[Path]  # index files written (none when there was nothing to do)
    unchanged: list[Path] = field(default_factory=list)  # inputs the repository already had, byte for byte


# --- the lock ----------------------------------------------------------------------------------------

_held: dict[Path, int] = {}  # repository -> how many nested `locked` hold it in this process


def _unwritable(path: Path, exc: OSError) -> Ctr2svcError:
    if exc.errno == errno.ENOSPC:
        return PackageError(f"cannot write {path}: no space left on the device", hint="free space there")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return UsageError(
            f"the repository directory is not writable: {path}: {exc.strerror}",
            hint="pass a repository directory you can write, or fix its permissions or mount",
        )
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return UsageError(
            f"{path} is in the way: {exc.strerror}", hint="the repository must be a directory of directories"
        )
    return PackageError(f"cannot write {path}: {exc.strerror}", hint="check the repository directory")


@contextlib.contextmanager
def locked(repo: Path) -> Iterator[None]:
    """Hold REPO's lock (flock on REPO/.ctr2svc.lock) for the duration; nested use in one process is fine.

    A repository this call had to create, and that holds nothing but the lock afterwards, is removed.
    """
    key = repo.absolute()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    if repo.exists() and not repo.is_dir():
        raise UsageError(
            f"{repo} is not a directory", hint="pass the repository's directory (it is created if missing)"
        )
    created = not repo.exists()
    lock = repo / LOCK_FILE
    said = False
    while True:
        try:
            repo.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _unwritable(repo, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not said:
                log.info(f"waiting for another ctr2svc that is writing to {repo} (it holds {lock})")
                said = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        # The file locked must still be the lock file: a repository removed by a failed first run is not.
        try:
            if lock.stat().st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    if said:
        log.info(f"… {repo} is free, going on")
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        if created:
            with contextlib.suppress(OSError):
                if [p.name for p in repo.iterdir()] == [LOCK_FILE]:
                    lock.unlink()
                    repo.rmdir()
        os.close(fd)


# --- adding ------------------------------------------------------------------------------------------


def _directory(repo: Path, package: PackageFile) -> Path:
    """Where the package lives: REPO/deb, REPO/rpm, or Alpine's layout, REPO/apk/ARCH."""
    if package.format is PackageFormat.APK:
        return repo / "apk" / package.arch
    return repo / str(package.format)


def _published_name(package: PackageFile) -> str:
    """A new package's file name in the repository: as given, but NAME-VERSION.apk for apk, the name
    apk-tools downloads a package by (its index has the P: and V: fields, no file name)."""
    if package.format is PackageFormat.APK:
        return f"{package.name}-{package.version}.apk"
    return package.path.name


def _scan(repo: Path, fmt: PackageFormat) -> list[PackageFile]:
    base = repo / str(fmt)
    found = base.glob(f"*/*.{fmt}") if fmt is PackageFormat.APK else base.glob(f"*.{fmt}")
    return [
        read_package(p, verify=False, in_repo=True)
        for p in sorted(found)
        if not p.name.startswith(".") and p.is_file()
    ]


def newest_versions(repo: Path, fmt: PackageFormat) -> dict[str, str]:
    """Package name -> the newest version REPO has of it in FMT (any architecture)."""
    by_name: dict[str, list[PackageFile]] = defaultdict(list)
    for package in _scan(repo, fmt):
        by_name[package.name].append(package)
    return {name: newest_first(fmt, versions)[0].identity[1] for name, versions in by_name.items()}


def _clash(new: PackageFile, old: PackageFile, *, in_repo: bool) -> UsageError:
    if new.identity == old.identity:
        problem = f"{new.path} and {old.path} are both {new.describe()} but their contents differ"
        why = (
            "; the repository keeps the one it has (hosts that have it would never get the other)"
            if in_repo
            else ""
        )
    else:
        problem = (
            f"{new.path} ({new.describe()}) would replace {old.path} ({old.describe()}), a different package"
        )
        why = ""
    bump = (
        f"give the new one a higher version: ctr2svc build --version {_next(new)}, "
        "or rebuild it with ctr2svc update"
    )
    return UsageError(problem + why, hint=bump)


def _next(package: PackageFile) -> str:
    version = package.identity[1]
    upstream, dash, release = version.rpartition("-")
    if package.format is PackageFormat.APK and release.startswith("r") and release[1:].isdigit():
        return f"{upstream}-r{int(release[1:]) + 1}"
    if dash and release.isdigit():
        return f"{upstream}-{int(release) + 1}"
    return f"{version}-1"


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and filecmp.cmp(a, b, shallow=False)


def add(
    repo: Path,
    packages: Sequence[Path],
    *,
    keep: int = DEFAULT_KEEP,
    signing: Signing | None,
    apk_key: ApkKey | None = None,
    on_clash: Callable[[Path, UsageError], None] | None = None,
) -> RepoResult:
    """Copy PACKAGES into REPO (deb/, rpm/, apk/ARCH/ below it), prune, and regenerate the indexes.

    Every package and key is checked before the repository is touched; a package that clashes with
    one in the repository (or another one given) is an error, or, with ON_CLASH, reported to it and
    left out while the others are published.
    """
    if keep < 1:
        raise UsageError(f"--keep {keep} would empty the repository", hint="keep at least 1 version")
    if repo.exists() and not repo.is_dir():
        raise UsageError(
            f"{repo} is not a directory", hint="pass the repository's directory (it is created if missing)"
        )
    files = [read_package(p) for p in packages]
    formats = sorted({f.format for f in files})
    for fmt in set(formats) & set(INDEX_TOOLS):
        tool, package = INDEX_TOOLS[fmt]
        find_tool(tool, f"index {fmt} repositories (apt-get install {package})")
    if apk_key is not None and PackageFormat.APK in formats:
        check_apk_key(apk_key)
    if signing is not None and set(formats) & set(INDEX_TOOLS):
        check_signing(signing)
    for directory in {repo / str(fmt) for fmt in formats} | {_directory(repo, f) for f in files}:
        if directory.exists() and not directory.is_dir():
            raise UsageError(f"{directory} is not a directory", hint="move it out of the repository")
    with locked(repo):
        return _add_locked(repo, files, keep, signing, apk_key, on_clash)


def _add_locked(
    repo: Path,
    files: list[PackageFile],
    keep: int,
    signing: Signing | None,
    apk_key: ApkKey | None,
    on_clash: Callable[[Path, UsageError], None] | None,
) -> RepoResult:
    existing = [p for fmt in sorted({f.format for f in files}) for p in _scan(repo, fmt)]
    accepted: list[PackageFile] = []
    unchanged: list[Path] = []
    for new in files:
        target = _directory(repo, new) / _published_name(new)
        problem = None
        for other, in_repo in [(o, False) for o in accepted] + [(o, True) for o in existing]:
            if other.format is not new.format:
                continue
            same_place = (
                _directory(repo, other) / (other.path.name if in_repo else _published_name(other))
            ) == target
            if other.identity != new.identity and not same_place:
                continue
            if new.is_layer and other.is_layer and new.identity == other.identity:
                # A layer package's name is its content's digest: another build of the same layer
                # (signed at another time, say) adds nothing. The one published stays.
                if in_repo:
                    log.info(f"{new.path} is already in the repository as {other.path}")
                    unchanged.append(new.path)
                break
            if _same_bytes(new.path, other.path):
                if in_repo:
                    log.info(f"{new.path} is already in the repository as {other.path} (same bytes)")
                    unchanged.append(new.path)
                else:
                    log.info(f"{new.path} was given twice ({other.path}, same bytes)")
                break
            problem = _clash(new, other, in_repo=in_repo)
            break
        else:
            accepted.append(new)
            continue
        if problem is not None:
            if on_clash is None:
                raise problem
            on_clash(new.path, problem)

    # Per directory (deb, rpm, apk/ARCH), per package name and architecture: the newest KEEP stay.
    groups: dict[tuple[Path, str, str], list[PackageFile]] = defaultdict(list)
    for package in existing + accepted:
        groups[(_directory(repo, package), package.name, package.arch)].append(package)
    pruned: list[PackageFile] = []
    for (_, name, _arch), versions in groups.items():
        for old in newest_first(versions[0].format, versions)[keep:]:
            if old in accepted:
                accepted.remove(old)
                log.warn(
                    f"{old.path} is older than the {keep} newest versions of {name} that the repository "
                    "keeps; not added (raise --keep to keep it)"
                )
            else:
                pruned.append(old)
    # Layer packages go with the last package that needs them.
    kept = [p for p in existing + accepted if p not in pruned]
    needed = {(_directory(repo, p), d) for p in kept if not p.is_layer for d in p.depends}
    for layer in [p for p in kept if p.is_layer]:
        if (_directory(repo, layer), layer.name) not in needed:
            if layer in accepted:
                accepted.remove(layer)
                log.warn(f"{layer.path}: no package in the repository needs this layer; not added")
            else:
                pruned.append(layer)
    changed = {_directory(repo, p) for p in accepted + pruned}
    for directory in {_directory(repo, p) for p in files if p in accepted or p.path in unchanged}:
        if _index_missing(directory, directory.relative_to(repo).parts[0], signing, apk_key):
            changed.add(directory)
    if not changed:
        log.info(f"nothing to do: {repo} already has every package given")
        return RepoResult([], [], [], unchanged)
    staging = repo / STAGING
    try:
        shutil.rmtree(staging, ignore_errors=True)  # left by a run that was killed; we hold the lock
        index = _stage_and_commit(
            repo, staging, sorted(changed), existing, accepted, pruned, signing, apk_key
        )
    except OSError as exc:
        raise _unwritable(Path(exc.filename) if exc.filename else repo, exc) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in pruned:
        log.info(f"  pruned {old.path.name}")
    added = [_directory(repo, p) / _published_name(p) for p in accepted]
    return RepoResult(added, [p.path for p in pruned], index, unchanged)


def _index_missing(directory: Path, fmt: str, signing: Signing | None, apk_key: ApkKey | None) -> bool:
    if fmt == "deb":
        wanted = ["Packages", "Release"] + (["InRelease", "Release.gpg"] if signing else [])
    elif fmt == "rpm":
        wanted = ["repodata/repomd.xml"] + (["repodata/repomd.xml.asc"] if signing else [])
    else:
        wanted = ["APKINDEX.tar.gz"]
    return not all((directory / name).is_file() for name in wanted)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _stage_and_commit(
    repo: Path,
    staging: Path,
    changed: list[Path],
    existing: list[PackageFile],
    accepted: list[PackageFile],
    pruned: list[PackageFile],
    signing: Signing | None,
    apk_key: ApkKey | None,
) -> list[Path]:
    """Make each changed directory's new state in STAGING, then move it into place. Until the move,
    nothing in REPO has changed; the move is renames of files already written."""
    staged: dict[Path, Path] = {}
    index: list[Path] = []
    for directory in changed:
        rel = directory.relative_to(repo)
        stage = staging / rel
        stage.mkdir(parents=True)
        for package in existing:
            if _directory(repo, package) == directory and package not in pruned:
                _link_or_copy(package.path, stage / package.path.name)
        for package in accepted:
            if _directory(repo, package) == directory:
                shutil.copyfile(package.path, stage / _published_name(package))
        fmt = rel.parts[0]
        if fmt == "deb":
            index += [directory / p.name for p in index_deb(stage, signing, staging / "release")]
        elif fmt == "rpm":
            if (directory / "repodata").is_dir():
                shutil.copytree(directory / "repodata", stage / "repodata")
            index += [directory / p.relative_to(stage) for p in index_rpm(stage, signing)]
        else:
            index += [directory / p.name for p in index_apk(stage, apk_key)]
        staged[directory] = stage
    # Everything is written and signed: publish. New packages first, then the indexes that name them,
    # then the pruned packages go (hosts reading the old index can still fetch what it names).
    for directory, stage in staged.items():
        directory.mkdir(parents=True, exist_ok=True)
        for package in accepted:
            if _directory(repo, package) == directory:
                name = _published_name(package)
                (stage / name).replace(directory / name)
                log.debug(f"wrote {directory / name}")
    for directory, stage in staged.items():
        fmt = directory.relative_to(repo).parts[0]
        if fmt == "deb":
            for name in DEB_INDEX:
                _replace_or_remove(stage / name, directory / name)
        elif fmt == "rpm":
            _swap_repodata(stage / "repodata", directory / "repodata")
        else:
            _replace_or_remove(stage / "APKINDEX.tar.gz", directory / "APKINDEX.tar.gz")
    for old in pruned:
        old.path.unlink(missing_ok=True)
    return index


def _replace_or_remove(new: Path, final: Path) -> None:
    if new.exists():
        new.replace(final)
    else:
        final.unlink(missing_ok=True)


def _swap_repodata(new: Path, final: Path) -> None:
    """createrepo_c's files have content-hashed names: move the new ones in, then repomd.xml (and its
    signature) that names them, then drop the files no longer named."""
    final.mkdir(exist_ok=True)
    names = {p.name for p in new.iterdir()}
    tops = ("repomd.xml", "repomd.xml.asc")
    for item in sorted(new.iterdir()):
        if item.name not in tops and item.is_file():
            item.replace(final / item.name)
    for name in tops:
        _replace_or_remove(new / name, final / name)
    for item in final.iterdir():
        if item.name not in names and item.is_file():
            item.unlink()
