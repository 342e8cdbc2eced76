"""Resolve an image reference to the digest of this platform's manifest and pull it, through skopeo,
into the digest-keyed image cache (cache.py). Manifest requests come first and download no layer:
`update` and the no-op rebuild stop there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctr2svc import log
from ctr2svc.errors import Ctr2svcError, ImageError, ToolFailed, ToolTimedOut
from ctr2svc.image import trust
from ctr2svc.image.cache import ImageCache
from ctr2svc.image.config import ImageConfig, ResolvedImage
from ctr2svc.image.reference import ImageReference, Transport
from ctr2svc.image.skopeo import (
    GRACE,
    STALL_BYTES,
    PullOptions,
    auth_file,
    command_timeout,
    deadline_passed,
    policy_args,
    source_args,
    timed_out,
)
from ctr2svc.image.skopeo_errors import skopeo_error
from ctr2svc.run import Watchdog, find_tool, run

INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
}
# What the config of a runnable container image is; anything else is an artifact (a Helm chart, a
# signature, an SBOM...) that umoci cannot unpack.
CONFIG_TYPES = {
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
}


def _platform_entry(index: dict[str, Any], ref: ImageReference, opts: PullOptions) -> dict[str, Any]:
    entries = [m for m in index.get("manifests", []) if m.get("platform")]
    linux = [m for m in entries if m["platform"].get("os") == "linux"]
    if not linux:
        systems = sorted({m["platform"].get("os", "?") for m in entries}) or ["none"]
        raise ImageError(
            f"image {ref} has no Linux variant (it is for: {', '.join(systems)})",
            hint="ctr2svc runs Linux images only; pick a Linux image",
        )
    for m in linux:
        p = m["platform"]
        if p.get("architecture") != opts.arch:
            continue
        variant = p.get("variant")
        if opts.variant is None or variant == opts.variant or (variant is None and opts.variant == "v8"):
            chosen: dict[str, Any] = m
            return chosen
    available = sorted(
        {
            m["platform"]["architecture"]
            + (f"/{m['platform']['variant']}" if m["platform"].get("variant") else "")
            for m in linux
        }
    )
    wanted = opts.arch + (f"/{opts.variant}" if opts.variant else "")
    raise ImageError(
        f"image {ref} has no linux/{wanted} variant (it has: {', '.join(available)})",
        hint=f"pass --arch with one of {', '.join(available)}",
    )


@dataclass(frozen=True)
class Located:
    """Where the image for our platform is: its manifest digest and how skopeo copies it."""

    digest: str
    index_digest: str | None
    source: str
    platform_args: tuple[str, ...]
    # Every platform a multi-arch image offers (os/arch[/variant]); empty for a single manifest.
    platforms: tuple[str, ...] = ()
    # The platform manifest when the first request returned it (not an index): sizes for progress.
    manifest: dict[str, Any] | None = None


def _raw_manifest(
    ref: ImageReference, opts: PullOptions, policy: list[str], auth: Path | None, source: str, *extra: str
) -> bytes:
    """`skopeo inspect --raw`: the manifest (or index) exactly as served, its digest's input."""
    # Any skopeo can ask for a manifest: its version matters for copying, and is checked before the
    # first copy (registry.resolve), not here, where an up-to-date package needs nothing else of it.
    skopeo = find_tool("skopeo", "pull container images", checked=False)
    seconds = opts.limits.request
    try:
        return run(
            [
                skopeo,
                *command_timeout(seconds),
                *policy,
                "inspect",
                "--raw",
                *extra,
                *source_args(ref, opts, "", auth),
                source,
            ],
            what=f"inspect {ref}",
            timeout=seconds + GRACE,
        ).stdout
    except ToolTimedOut as exc:
        raise timed_out(ref, "reading the manifest", seconds, "request", exc) from exc
    except ToolFailed as exc:
        if deadline_passed(exc):
            raise timed_out(ref, "reading the manifest", seconds, "request", exc) from exc
        raise skopeo_error(exc, ref, opts, policy=policy, auth=auth) from exc


def _check_media_types(ref: ImageReference, top: dict[str, Any]) -> None:
    """Refuse, before any download, what is not a container image: an unknown manifest type, or an OCI
    artifact (a Helm chart, a signature) whose config is not an image config."""
    media_type = top.get("mediaType")
    if media_type and media_type not in INDEX_TYPES | MANIFEST_TYPES:
        raise ImageError(
            f"{ref} is not a container image: its manifest is of type {media_type}",
            hint="pick a container image (an OCI or Docker image manifest or index)",
        )
    config_type = (top.get("config") or {}).get("mediaType") if isinstance(top.get("config"), dict) else None
    if config_type and config_type not in CONFIG_TYPES:
        raise ImageError(
            f"{ref} is not a container image: its config is of type {config_type} "
            "(an OCI artifact such as a Helm chart or a signature)",
            hint="pick a container image, whose config is an OCI or Docker image config",
        )


def locate(ref: ImageReference, opts: PullOptions, workdir: Path) -> Located:
    """The platform manifest's digest, from manifest requests only (no layer is downloaded)."""
    with auth_file(ref, opts, workdir) as auth:
        raw = _raw_manifest(ref, opts, policy_args(workdir, opts), auth, ref.skopeo())
    try:
        top = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ImageError(f"the manifest of {ref} is not valid JSON", hint="check the image source") from exc
    if not isinstance(top, dict):
        raise ImageError(f"the manifest of {ref} is not a JSON object", hint="check the image source")
    _check_media_types(ref, top)
    top_digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    if ref.digest and ref.digest != top_digest:
        raise ImageError(
            f"the registry served a manifest whose digest {top_digest} does not match {ref.digest}",
            hint="the registry or a proxy is corrupting data; retry or use another mirror",
        )
    index_digest: str | None = None
    platform_args: list[str] = []
    platforms: tuple[str, ...] = ()
    if top.get("mediaType") in INDEX_TYPES or "manifests" in top:
        index_digest = top_digest
        platforms = tuple(
            "/".join(filter(None, (p.get("os"), p.get("architecture"), p.get("variant"))))
            for p in (m.get("platform") or {} for m in top.get("manifests", []))
            if p
        )
        entry = _platform_entry(top, ref, opts)
        digest: str = entry["digest"]
        platform = entry["platform"]
        platform_args = ["--override-os", "linux", "--override-arch", platform["architecture"]]
        if platform.get("variant"):
            platform_args += ["--override-variant", platform["variant"]]
    else:
        digest = top_digest
    source = ref.pinned(digest).skopeo() if ref.is_remote else ref.skopeo()
    manifest = None if index_digest else top
    return Located(digest, index_digest, source, tuple(platform_args), platforms, manifest)


def pinned_reference(ref: ImageReference, located: Located) -> ImageReference:
    """The reference skopeo copies (and its signature policy judges): a remote image by digest."""
    return ref.pinned(located.digest) if ref.is_remote else ref


def resolve(
    ref: ImageReference,
    opts: PullOptions,
    cache: ImageCache,
    workdir: Path,
    located: Located | None = None,
    checked: trust.Requirement | None = None,
) -> ResolvedImage:
    """Find the platform manifest's digest (unless LOCATED already did) and make sure the image is cached.
    CHECKED is the signature policy's requirement for the image: when it checks anything, skopeo copies
    the image again even if it is cached (only the manifest and signatures travel: the cache has the
    blobs), so that every build is verified under the policy it runs with."""
    skopeo = find_tool("skopeo", "pull container images")
    policy = policy_args(workdir, opts)
    located = located or locate(ref, opts, workdir)
    digest, index_digest = located.digest, located.index_digest
    if checked is None:
        checked = trust.requirement(trust.load(opts.policy), ref, pinned_reference(ref, located))

    with cache.locked(exclusive=True):
        manifest = cache.manifest(digest)
        if manifest is not None and checked.checks:
            log.info(f"  using cached image {digest}, verified again: {checked.describe()} ({checked.scope})")
            with auth_file(ref, opts, workdir) as auth:
                _pull(skopeo, ref, opts, cache, located, policy, auth, checked)
        elif manifest is not None:
            log.info(f"  using cached image {digest}")
        else:
            cache.layout.mkdir(parents=True, exist_ok=True)
            cache.remove_partial_blobs()
            with auth_file(ref, opts, workdir) as auth:
                _pull(skopeo, ref, opts, cache, located, policy, auth, checked)
            manifest = cache.manifest(digest)
            if manifest is None:
                raise ImageError(
                    f"skopeo reported success but {ref} is not complete in the cache {cache.root}"
                )
        config = ImageConfig.from_json(cache.config(manifest))

    _check_platform(config, ref, opts)
    return ResolvedImage(ref, digest, index_digest, config, cache.umoci_ref(digest), checked.record(digest))


def _pull(
    skopeo: str,
    ref: ImageReference,
    opts: PullOptions,
    cache: ImageCache,
    located: Located,
    policy: list[str],
    auth: Path | None,
    checked: trust.Requirement,
) -> None:
    """`skopeo copy` of the located platform manifest into the cache, tagged by its digest; skopeo
    applies the signature policy (CHECKED says what it asks of this image) before anything is copied."""
    limits = opts.limits
    # A local image has no network to stall on: only the total limit applies to it.
    watchdog = Watchdog(_Received(cache), limits.stall, STALL_BYTES) if ref.is_remote else None
    try:
        with _pull_progress(ref, located, opts, cache, policy, auth):
            run(
                [
                    skopeo,
                    *command_timeout(limits.pull),
                    *policy,
                    *located.platform_args,
                    "copy",
                    "--quiet",
                    "--remove-signatures",
                    "--retry-times",
                    "2",
                    *source_args(ref, opts, "src-", auth),
                    located.source,
                    cache.ref(located.digest),
                ],
                what=f"pull {ref}",
                timeout=limits.pull + GRACE,
                watchdog=watchdog,
            )
    except ToolTimedOut as exc:
        # A skopeo stopped mid-blob leaves it half written; under the exclusive lock nobody else writes.
        cache.remove_partial_blobs()
        if exc.stalled:
            raise timed_out(ref, "pulling the layers", limits.stall, "stall", exc, stalled=True) from exc
        raise timed_out(ref, "pulling the layers", limits.pull, "pull", exc) from exc
    except ToolFailed as exc:
        if deadline_passed(exc):
            cache.remove_partial_blobs()
            raise timed_out(ref, "pulling the layers", limits.pull, "pull", exc) from exc
        refused = trust.refusal(exc.stderr, ref, located.digest, checked)
        if refused is not None:
            raise refused from exc
        raise skopeo_error(exc, ref, opts, cache.root, policy=policy, auth=auth) from exc


class _Received:
    """Bytes of blobs that reached the cache since the pull started, whole and partial: what the pull's
    watchdog watches (skopeo writes a blob as it arrives, then renames it into blobs/)."""

    def __init__(self, cache: ImageCache) -> None:
        self.cache = cache
        self.before = set(self._blobs())

    def _blobs(self) -> list[Path]:
        return list((self.cache.layout / "blobs").glob("*/*"))

    def __call__(self) -> int:
        total = 0
        for path in [*self.cache.partial_blobs(), *(b for b in self._blobs() if b not in self.before)]:
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total


def _check_platform(config: ImageConfig, ref: ImageReference, opts: PullOptions) -> None:
    if config.os and config.os != "linux":
        raise ImageError(
            f"image {ref} is a {config.os} image", hint="ctr2svc runs Linux images only; pick a Linux image"
        )
    if config.architecture and config.architecture != opts.arch:
        raise ImageError(
            f"image {ref} is for {config.platform}, not linux/{opts.arch}",
            hint=f"pass --arch {config.architecture}"
            + (f"/{config.variant}" if config.variant else "")
            + " to package it for that architecture",
        )


def check_transport(ref: ImageReference) -> None:
    if ref.transport is not Transport.DOCKER and not Path(ref.name).exists():
        raise ImageError(
            f"{ref.transport} image {ref.name!r} does not exist",
            hint="check the path"
            + ("; an OCI layout is a directory holding index.json" if ref.transport is Transport.OCI else ""),
        )


class _PullProgress(log.Progress):
    """Bytes and blobs (layers and config) that have reached the cache, as skopeo copies them."""

    def __init__(self, cache: ImageCache, blobs: dict[str, int]) -> None:
        missing = {d: size for d, size in blobs.items() if not cache.blob_path(d).is_file()}
        super().__init__("pulling", total=sum(missing.values()) or None, poll=self._bytes)
        self.cache = cache
        self.missing = missing

    def _bytes(self) -> int:
        present = [d for d in self.missing if self.cache.blob_path(d).is_file()]
        self.note(f"{len(present)}/{len(self.missing)} blobs")
        partial = sum(p.stat().st_size for p in self.cache.partial_blobs())
        return sum(self.missing[d] for d in present) + partial


def _pull_progress(
    ref: ImageReference,
    located: Located,
    opts: PullOptions,
    cache: ImageCache,
    policy: list[str],
    auth: Path | None,
) -> log.Progress:
    """The progress line of a pull; sizes come from one more manifest request, made only for a terminal."""
    if not log.Progress.enabled():
        return log.Progress("pulling")
    manifest = located.manifest
    if manifest is None:
        try:
            raw = _raw_manifest(ref, opts, policy, auth, located.source, *located.platform_args)
            manifest = json.loads(raw)
        except (Ctr2svcError, ValueError):
            # Only the progress line's total depends on it: pull without one.
            manifest = {}
    blobs = {
        d["digest"]: int(d.get("size", 0))
        for d in [manifest.get("config") or {}, *manifest.get("layers", [])]
        if isinstance(d, dict) and "digest" in d
    }
    return _PullProgress(cache, blobs)
