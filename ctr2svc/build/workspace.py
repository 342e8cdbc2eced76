"""Where a build works (a scratch directory beside the cache) and the lock that keeps two builds of one
package out of each other's way in one output directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ctr2svc import log
from ctr2svc.errors import UsageError
from ctr2svc.options.request import BuildRequest
from ctr2svc.package import naming


@contextlib.contextmanager
def workspace(cache_root: Path) -> Iterator[Path]:
    # Beside the cache rather than in /tmp: a rootfs can be large and /tmp is often memory.
    base = cache_root / "work"
    try:
        base.mkdir(parents=True, exist_ok=True)
        _remove_orphans(base)
        path = Path(tempfile.mkdtemp(prefix=f"build-{os.getpid()}-", dir=base))
    except OSError as exc:
        raise UsageError(
            f"cannot make a work directory in {base}: {exc.strerror}",
            hint="point --cache-dir (or CTR2SVC_CACHE_DIR) at a writable directory with free space",
        ) from exc
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _remove_orphans(base: Path) -> None:
    """Work directories of builds that were killed (SIGKILL, power loss) before they could clean up."""
    for stale in base.glob("build-*-*"):
        pid = stale.name.split("-")[1]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        log.debug(f"removing {stale}, left by a build that did not finish")
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def output_lock(cache_root: Path, request: BuildRequest) -> Iterator[None]:
    """One build at a time of one package name and format into one output directory.

    Without it two builds of one image into one directory both succeed and one reports the sha256 of a
    file the other has replaced. The second waits, then finds the first one's record: "up to date".
    """
    name = request.name or naming.default_package_name(request.reference.basename)
    key = hashlib.sha256(f"{request.output_dir.absolute()}\0{name}\0{request.format}".encode()).hexdigest()
    locks = cache_root / "locks"
    try:
        locks.mkdir(exist_ok=True)
        handle = (locks / f"{key[:32]}.lock").open("a+")
    except OSError as exc:
        raise UsageError(
            f"cannot lock {locks}: {exc.strerror}",
            hint="point --cache-dir (or CTR2SVC_CACHE_DIR) at a writable directory",
        ) from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"  waiting for another build of {name} ({request.format}) into {request.output_dir}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
