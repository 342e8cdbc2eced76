"""The image cache: one OCI layout shared by every image, so layers common to several images are stored
(and downloaded) once, with a lock. Entries are tagged with the hex digest of the platform manifest the
source served; skopeo only records a tag in index.json once every blob is in place, so an interrupted
pull never leaves an entry that looks complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ctr2svc import log
from ctr2svc.errors import ImageError, UsageError


def default_cache_dir() -> Path:
    """The cache when --cache-dir is not given, absolute (as BuildOptions makes --cache-dir)."""
    if env := os.environ.get("CTR2SVC_CACHE_DIR"):
        return Path(env).absolute()
    # The XDG base directory spec: a relative XDG_CACHE_HOME is invalid and ignored.
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg.startswith("/") else Path.home() / ".cache"
    return base / "ctr2svc"


class ImageCache:
    """A shared OCI layout plus a lock; entries are keyed by platform manifest digest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = root / "oci"

    def _unusable(self, why: str) -> UsageError:
        return UsageError(
            f"the image cache {self.root} {why}",
            hint="point --cache-dir (or CTR2SVC_CACHE_DIR) at a writable directory",
        )

    def ensure(self) -> None:
        """The cache directory exists and can be written, or a UsageError (exit 2) says why not."""
        if ":" in str(self.root):
            # The cache is named to skopeo and umoci as DIR:TAG, and both split at the first ':'.
            raise self._unusable("has a ':' in its path, which skopeo and umoci take for the start of a tag")
        if self.root.exists() and not self.root.is_dir():
            raise self._unusable("is not a directory")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unusable(f"cannot be created: {exc.strerror}") from exc
        # access(2) reports a read-only file system (EROFS) even to root, whom modes do not stop.
        if not os.access(self.root, os.W_OK | os.X_OK):
            why = " (read-only file system)" if _read_only(self.root) else ""
            raise self._unusable(f"is not writable{why}")

    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        self.ensure()
        try:
            handle = (self.root / "lock").open("a+")
        except OSError as exc:
            raise self._unusable(f"cannot be locked: {exc.strerror}") from exc
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def partial_blobs(self) -> list[Path]:
        """Blobs skopeo is writing: they sit in the layout's top directory until renamed into blobs/."""
        return list(self.layout.glob("*put-blob*"))

    def remove_partial_blobs(self) -> None:
        """Blobs a killed skopeo was writing (under the exclusive lock, no other pull is running)."""
        for partial in self.partial_blobs():
            log.debug(f"removing {partial}, left by a pull that did not finish")
            partial.unlink(missing_ok=True)

    @staticmethod
    def key(digest: str) -> str:
        return digest.split(":", 1)[1]

    def ref(self, digest: str) -> str:
        return f"oci:{self.layout}:{self.key(digest)}"

    def umoci_ref(self, digest: str) -> str:
        return f"{self.layout}:{self.key(digest)}"

    def blob_path(self, digest: str) -> Path:
        algorithm, hexpart = digest.split(":", 1)
        return self.layout / "blobs" / algorithm / hexpart

    def _read_json(self, path: Path) -> Any:
        return json.loads(path.read_bytes())

    def manifest(self, digest: str) -> dict[str, Any] | None:
        """The cached manifest for a source digest, or None when absent or incomplete."""
        index_path = self.layout / "index.json"
        if not index_path.exists():
            return None
        try:
            index = self._read_json(index_path)
        except (OSError, ValueError):
            log.warn(f"the image cache index {index_path} is unreadable; starting the cache afresh")
            shutil.rmtree(self.layout, ignore_errors=True)
            return None
        key = self.key(digest)
        for desc in index.get("manifests", []):
            if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") != key:
                continue
            try:
                manifest: dict[str, Any] = self._read_json(self.blob_path(desc["digest"]))
                needed = [manifest["config"]["digest"]] + [layer["digest"] for layer in manifest["layers"]]
            except (OSError, ValueError, KeyError, TypeError, RecursionError):
                return None
            if all(self.blob_path(d).is_file() for d in needed):
                return manifest
            return None
        return None

    def config(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """The image config, read as umoci (Go's encoding/json) reads it: bytes that are not UTF-8 become
        U+FFFD, and what is still no JSON is the image's fault."""
        path = self.blob_path(manifest["config"]["digest"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(
                f"the image's config {path.name[:12]} cannot be read from the cache: {exc.strerror}",
                hint="build again: it will be pulled again",
            ) from exc
        hint = "rebuild the image with a standard tool (docker, buildah)"
        if data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
            raise ImageError(
                "the image's config starts with a byte order mark, which JSON has not", hint=hint
            )
        try:
            doc: dict[str, Any] = json.loads(data.decode("utf-8", errors="replace"))
        except json.JSONDecodeError as exc:
            raise ImageError(
                f"the image's config is not valid JSON ({exc.msg} at byte {exc.pos})", hint=hint
            ) from exc
        except RecursionError as exc:
            raise ImageError("the image's config is nested too deeply to be read", hint=hint) from exc
        return doc


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
