"""Resolve an image reference to a digest and pull it, through skopeo, into a digest-keyed cache.

The cache is one OCI layout shared by every image, so layers common to several images are stored
(and downloaded) once. Entries are tagged with the hex digest of the platform manifest the source
served; skopeo only records a tag in index.json once every blob is in place, so an interrupted pull
never leaves an entry that looks complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctr2svc import log
from ctr2svc.errors import Ctr2svcError, ImageError, ToolError, ToolFailed, UsageError
from ctr2svc.model import ImageConfig, ResolvedImage
from ctr2svc.reference import ImageReference, Transport
from ctr2svc.run import find_tool, run

INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
SYSTEM_POLICY = Path("/etc/containers/policy.json")
# Used only where the host has no containers policy of its own: without one skopeo refuses to run.
DEFAULT_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


@dataclass(frozen=True)
class PullOptions:
    arch: str
    variant: str | None = None
    creds: str | None = None
    authfile: Path | None = None
    # None: verify TLS except for registries on loopback, which Docker also treats as insecure.
    tls_verify: bool | None = None


def default_cache_dir() -> Path:
    if env := os.environ.get("CTR2SVC_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ctr2svc"


def _is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ImageCache:
    """A shared OCI layout plus a lock; entries are keyed by platform manifest digest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = root / "oci"

    def ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create the image cache {self.root}: {exc.strerror}",
                hint="point --cache-dir (or CTR2SVC_CACHE_DIR) at a writable directory",
            ) from exc

    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        self.ensure()
        with (self.root / "lock").open("a+") as handle:
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
            except (OSError, ValueError, KeyError):
                return None
            if all(self.blob_path(d).is_file() for d in needed):
                return manifest
            return None
        return None

    def config(self, manifest: dict[str, Any]) -> dict[str, Any]:
        doc: dict[str, Any] = self._read_json(self.blob_path(manifest["config"]["digest"]))
        return doc


def _policy_args(workdir: Path) -> list[str]:
    if SYSTEM_POLICY.exists():
        return []
    policy = workdir / "policy.json"
    policy.write_text(json.dumps(DEFAULT_POLICY))
    log.debug(f"{SYSTEM_POLICY} is missing: using a policy that accepts any image ({policy})")
    return ["--policy", str(policy)]


def _source_args(ref: ImageReference, opts: PullOptions, prefix: str) -> list[str]:
    """Credentials and TLS flags for skopeo; prefix is '' for inspect and 'src-' for copy."""
    if not ref.is_remote:
        return []
    args: list[str] = []
    tls = opts.tls_verify
    if tls is None:
        tls = not _is_loopback(ref.registry or "")
        if not tls:
            log.debug(f"{ref.registry} is on loopback: not requiring TLS (as Docker does)")
    args.append(f"--{prefix}tls-verify={'true' if tls else 'false'}")
    if opts.creds:
        args += [f"--{prefix}creds", opts.creds]
    if opts.authfile:
        args += [f"--{prefix}authfile", str(opts.authfile)]
    return args


def _map_skopeo_error(
    exc: ToolFailed, ref: ImageReference, opts: PullOptions, cache_root: Path | None = None
) -> Ctr2svcError:
    """Turn skopeo's stderr into a one-line error that names the problem and the fix."""
    text = exc.stderr.lower()
    where = ref.registry or ref.name
    if "unauthorized" in text or "authentication required" in text or "401" in text:
        if opts.creds or opts.authfile:
            return ImageError(
                f"registry {where} refused the credentials for {ref}",
                hint="check the user name and password given with --creds or the entry in --authfile",
            )
        return ImageError(
            f"registry {where} requires credentials for {ref}",
            hint="pass --creds USER:PASSWORD or --authfile FILE (as written by `skopeo login`)",
        )
    if "manifest unknown" in text or "name unknown" in text or ("not found" in text and ref.is_remote):
        return ImageError(
            f"image {ref} not found in registry {where}",
            hint=f"check the name and tag; `skopeo list-tags docker://{ref.name}` lists the tags",
        )
    if "server gave http response to https client" in text:
        return ImageError(
            f"registry {where} speaks plain HTTP, not HTTPS",
            hint="pass --no-tls-verify if you trust this registry",
        )
    if "no space left on device" in text:
        return ToolError(
            f"no space left on the device holding the image cache {cache_root or ''} while pulling {ref}",
            hint="free some space there, or point --cache-dir (or CTR2SVC_CACHE_DIR) at a larger disk",
        )
    if "digest did not match" in text or "digest mismatch" in text:
        return ImageError(
            f"a blob of {ref} arrived corrupt: its content does not match its digest",
            hint="retry; if it persists, the registry's storage or a proxy in between is damaging data",
        )
    if "x509" in text or "certificate" in text or "tls:" in text:
        reason = re.search(r"(x509: [^\"\n]+|tls: [^\"\n]+)", exc.stderr)
        return ImageError(
            f"TLS verification failed for registry {where}"
            + (f": {reason.group(1).strip()}" if reason else ""),
            hint="install the registry's CA certificate, or pass --no-tls-verify if you trust it",
        )
    if any(
        s in text
        for s in ("connection refused", "no such host", "i/o timeout", "network is unreachable", "dial tcp")
    ):
        return ImageError(
            f"cannot reach registry {where}",
            hint="check the registry address and port, that it is running, and the network or proxy settings",
        )
    if not ref.is_remote and ("no such file" in text or "not a directory" in text):
        return ImageError(
            f"{ref.transport} image {ref.name!r} does not exist",
            hint="check the path; an OCI layout is a directory holding index.json",
        )
    if not ref.is_remote and ("no descriptor found" in text or "not found" in text):
        return ImageError(
            f"tag {ref.tag!r} not found in {ref.name}",
            hint=f"`skopeo inspect {ref.transport}:{ref.name}` lists what is there",
        )
    return ImageError(
        f"skopeo could not read {ref}: {exc.brief.split(': ', 1)[-1]}",
        hint="run with --debug to see the full skopeo output",
        details=exc.details,
    )


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
    ref: ImageReference, opts: PullOptions, policy: list[str], source: str, *extra: str
) -> bytes:
    """`skopeo inspect --raw`: the manifest (or index) exactly as served, its digest's input."""
    skopeo = find_tool("skopeo", "pull container images")
    try:
        return run(
            [skopeo, *policy, "inspect", "--raw", *extra, *_source_args(ref, opts, ""), source],
            what=f"inspect {ref}",
            timeout=600,
        ).stdout
    except ToolFailed as exc:
        raise _map_skopeo_error(exc, ref, opts) from exc


def locate(ref: ImageReference, opts: PullOptions, workdir: Path) -> Located:
    """The platform manifest's digest, from manifest requests only (no layer is downloaded)."""
    raw = _raw_manifest(ref, opts, _policy_args(workdir), ref.skopeo())
    try:
        top = json.loads(raw)
    except ValueError as exc:
        raise ImageError(f"the manifest of {ref} is not valid JSON", hint="check the image source") from exc
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


def resolve(
    ref: ImageReference, opts: PullOptions, cache: ImageCache, workdir: Path, located: Located | None = None
) -> ResolvedImage:
    """Find the platform manifest's digest (unless LOCATED already did) and make sure the image is cached."""
    skopeo = find_tool("skopeo", "pull container images")
    policy = _policy_args(workdir)
    located = located or locate(ref, opts, workdir)
    digest, index_digest, source, platform_args = (
        located.digest,
        located.index_digest,
        located.source,
        list(located.platform_args),
    )

    with cache.locked(exclusive=True):
        manifest = cache.manifest(digest)
        if manifest is not None:
            log.info(f"  using cached image {digest}")
        else:
            cache.layout.mkdir(parents=True, exist_ok=True)
            cache.remove_partial_blobs()
            try:
                with _pull_progress(ref, located, opts, cache, policy):
                    run(
                        [
                            skopeo,
                            *policy,
                            *platform_args,
                            "copy",
                            "--quiet",
                            "--remove-signatures",
                            "--retry-times",
                            "2",
                            *_source_args(ref, opts, "src-"),
                            source,
                            cache.ref(digest),
                        ],
                        what=f"pull {ref}",
                        timeout=3600,
                    )
            except ToolFailed as exc:
                raise _map_skopeo_error(exc, ref, opts, cache.root) from exc
            manifest = cache.manifest(digest)
            if manifest is None:
                raise ImageError(
                    f"skopeo reported success but {ref} is not complete in the cache {cache.root}"
                )
        config = ImageConfig.from_json(cache.config(manifest))

    _check_platform(config, ref, opts)
    return ResolvedImage(ref, digest, index_digest, config, cache.umoci_ref(digest))


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
    ref: ImageReference, located: Located, opts: PullOptions, cache: ImageCache, policy: list[str]
) -> log.Progress:
    """The progress line of a pull; sizes come from one more manifest request, made only for a terminal."""
    if not log.Progress.enabled():
        return log.Progress("pulling")
    manifest = located.manifest
    if manifest is None:
        try:
            raw = _raw_manifest(ref, opts, policy, located.source, *located.platform_args)
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
