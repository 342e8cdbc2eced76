"""Resolve an image reference to a digest and pull it, through skopeo, into a digest-keyed cache.

The cache is one OCI layout shared by every image, so layers common to several images are stored
(and downloaded) once. Entries are tagged with the hex digest of the platform manifest the source
served; skopeo only records a tag in index.json once every blob is in place, so an interrupted pull
never leaves an entry that looks complete.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctr2svc import log
from ctr2svc.errors import Ctr2svcError, ImageError, ToolError, ToolFailed, ToolTimedOut, UsageError
from ctr2svc.image.reference import ImageReference, Transport
from ctr2svc.model import ImageConfig, ResolvedImage
from ctr2svc.run import Watchdog, find_tool, last_words, run

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
SYSTEM_POLICY = Path("/etc/containers/policy.json")
# Used only where the host has no containers policy of its own: without one skopeo refuses to run.
DEFAULT_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


@dataclass(frozen=True)
class Limits:
    """How long the network may take: every registry step has a limit, so a registry that accepts the
    connection and then answers nothing (or a byte a minute) fails the build instead of holding it."""

    # Seconds for one request that downloads no layer: a manifest, the tags of a repository.
    request: int = 60
    # Seconds a pull may go without receiving STALL_BYTES more: a slow but moving pull goes on.
    stall: int = 120
    # Seconds one pull may take in all, however it progresses.
    pull: int = 4 * 3600


# The environment variables that change the limits (docs/usage.md, "Time limits").
LIMIT_VARIABLES = {
    "request": "CTR2SVC_REGISTRY_TIMEOUT",
    "stall": "CTR2SVC_PULL_STALL_TIMEOUT",
    "pull": "CTR2SVC_PULL_TIMEOUT",
}
MAX_LIMIT = 7 * 24 * 3600
# Less than this in a whole stall period is a stall: a trickle of a byte every few seconds is no pull.
STALL_BYTES = 1024
# What skopeo's own --command-timeout has to say before ctr2svc's backstop stops it.
_GRACE = 30


def limits() -> Limits:
    """The limits, with the environment's changes; a value that is not a number of seconds is refused."""
    values: dict[str, int] = {}
    for field_name, variable in LIMIT_VARIABLES.items():
        text = os.environ.get(variable, "").strip()
        if not text:
            continue
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_LIMIT):
            raise UsageError(
                f"{variable}={text[:20]!r} is not a number of seconds from 1 to {MAX_LIMIT}",
                hint=f"set whole seconds, e.g. {variable}={getattr(Limits, field_name) * 2}, or unset it",
            )
        values[field_name] = int(text)
    return Limits(**values)


@dataclass(frozen=True)
class PullOptions:
    arch: str
    variant: str | None = None
    creds: str | None = None
    authfile: Path | None = None
    # None: verify TLS except for registries on loopback, which Docker also treats as insecure.
    tls_verify: bool | None = None
    limits: Limits = Limits()


def default_cache_dir() -> Path:
    """The cache when --cache-dir is not given, absolute (as BuildOptions makes --cache-dir)."""
    if env := os.environ.get("CTR2SVC_CACHE_DIR"):
        return Path(env).absolute()
    # The XDG base directory spec: a relative XDG_CACHE_HOME is invalid and ignored.
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg.startswith("/") else Path.home() / ".cache"
    return base / "ctr2svc"


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


def _policy_args(workdir: Path) -> list[str]:
    if SYSTEM_POLICY.exists():
        return []
    policy = workdir / "policy.json"
    try:
        policy.write_text(json.dumps(DEFAULT_POLICY))
    except OSError as exc:
        raise ToolError(
            f"cannot write skopeo's policy file into {workdir}: {exc.strerror}",
            hint="check free space and permissions of the image cache, or point --cache-dir elsewhere",
        ) from exc
    log.debug(f"{SYSTEM_POLICY} is missing: using a policy that accepts any image ({policy})")
    return ["--policy", str(policy)]


@contextlib.contextmanager
def _auth_file(ref: ImageReference, opts: PullOptions, workdir: Path) -> Iterator[Path | None]:
    """--creds as a containers-auth.json file only we can read, for the duration of the skopeo calls.

    On skopeo's command line the password would show in `ps` and /proc/PID/cmdline, and in --debug's
    command lines. The file lives in a fresh 0700 directory inside the build's own work directory and
    is removed on the way out (errors and SIGTERM included; after a SIGKILL the next build removes the
    dead build's work directory, and with it the file). Without --creds, the user's --authfile (or
    none) is used as it is.
    """
    if not (ref.is_remote and opts.creds):
        yield opts.authfile if ref.is_remote else None
        return
    secret = base64.b64encode(opts.creds.encode()).decode()
    doc = json.dumps({"auths": {ref.registry or "": {"auth": secret}}})
    try:
        private = Path(tempfile.mkdtemp(prefix="auth-", dir=workdir))
        path = private / "auth.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(doc)
    except OSError as exc:
        raise ToolError(
            f"cannot write the credentials for skopeo into {workdir}: {exc.strerror}",
            hint="check free space and permissions of the image cache, or point --cache-dir elsewhere",
        ) from exc
    try:
        yield path
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _source_args(ref: ImageReference, opts: PullOptions, prefix: str, auth: Path | None) -> list[str]:
    """Auth file and TLS flags for skopeo; prefix is '' for inspect and 'src-' for copy."""
    if not ref.is_remote:
        return []
    args: list[str] = []
    tls = opts.tls_verify
    if tls is None:
        tls = not _is_loopback(ref.registry or "")
        if not tls:
            log.debug(f"{ref.registry} is on loopback: not requiring TLS (as Docker does)")
    args.append(f"--{prefix}tls-verify={'true' if tls else 'false'}")
    if auth is not None:
        args += [f"--{prefix}authfile", str(auth)]
    return args


_WRAPPERS = (
    re.compile(r'^Error parsing image name "[^"]*": '),
    re.compile(r"^initializing source \S+: "),
    re.compile(r"^(?:Error )?reading manifest \S+ in \S+: "),
    re.compile(r"^pinging container registry \S+: "),
)


# Go's net/http error chains: `Get "URL": net/http: TLS handshake timeout`, `dial tcp ADDR: ...`.
_GO_REQUEST = re.compile(r'\b(Get|Head|Post|Put|Patch|Delete) "([^"]*)": (.*)$')
_GO_NOISE = re.compile(r"\b(?:net/http|http|remote error|(?:dial|read|write) tcp[46]? \S+?): ")


def _plain(text: str) -> str:
    """A Go error chain in plain words: the request it was making put after the reason, the package
    prefixes and socket addresses left out (`GET https://r/v2/: TLS handshake timeout`)."""
    request = _GO_REQUEST.search(text)
    if request:
        method, url, reason = request.groups()
        text = f"{text[: request.start()]}{_GO_NOISE.sub('', reason)} ({method.upper()} {url})"
    # What Go quoted (%q: a status line, a header) in the quotes ctr2svc's messages use.
    return re.sub(r'"([^"]*)"', r"'\1'", _GO_NOISE.sub("", text))


def _skopeo_message(stderr: str) -> str:
    """skopeo's last error without its log wrapper, the restatements of what it was doing and Go's
    quoting of the request that failed."""
    text = last_words(stderr, 1)
    for wrapper in _WRAPPERS:
        text = wrapper.sub("", text)
    return _plain(text) or "no error output"


def _tags(ref: ImageReference, opts: PullOptions, policy: list[str], auth: Path | None) -> list[str] | None:
    """The repository's tags (one more request, made only to explain a missing manifest); None when
    the repository itself is not there (or the question cannot be answered)."""
    if ref.is_remote:
        try:
            out = run(
                [
                    find_tool("skopeo", "pull container images"),
                    *_command_timeout(opts.limits.request),
                    *policy,
                    "list-tags",
                    *_source_args(ref, opts, "", auth),
                    f"docker://{ref.name}",
                ],
                what=f"list the tags of {ref.name}",
                timeout=opts.limits.request + _GRACE,
            ).stdout
            tags: list[str] = json.loads(out or b"{}").get("Tags") or []
            return tags
        except (Ctr2svcError, ValueError, AttributeError):
            return None
    if ref.transport is Transport.OCI:
        try:
            index = json.loads((Path(ref.name) / "index.json").read_bytes())
            return [
                name
                for m in index.get("manifests", [])
                if (name := (m.get("annotations") or {}).get("org.opencontainers.image.ref.name"))
            ]
        except (OSError, ValueError, AttributeError):
            return None
    return None


def _some(names: list[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _map_skopeo_error(
    exc: ToolFailed,
    ref: ImageReference,
    opts: PullOptions,
    cache_root: Path | None = None,
    *,
    policy: list[str] | None = None,
    auth: Path | None = None,
) -> Ctr2svcError:
    """Turn skopeo's stderr into a one-line error in ctr2svc's words that names the input at fault
    and the fix; skopeo's own text is kept for --debug only."""
    text = exc.stderr.lower()
    message = _skopeo_message(exc.stderr)
    where = ref.registry or ref.name
    debug_details = exc.details

    def image_error(brief: str, hint: str) -> ImageError:
        return ImageError(brief, hint=hint, details=debug_details)

    if ref.is_remote:
        if "denied:" in text and not (opts.creds or opts.authfile):
            # Docker Hub's answer for a repository that does not exist as much as for a private one.
            return image_error(
                f"registry {where} denied access to {ref}: it does not exist there, or it needs credentials",
                "check the name; for a private image pass --creds USER:PASSWORD or --authfile FILE",
            )
        if "unauthorized" in text or "authentication required" in text or "denied:" in text:
            if opts.creds or opts.authfile:
                return image_error(
                    f"registry {where} refused the credentials for {ref}",
                    "check the user name and password given with --creds or the entry in --authfile",
                )
            return image_error(
                f"registry {where} requires credentials for {ref}",
                "pass --creds USER:PASSWORD or --authfile FILE (as written by `skopeo login`)",
            )
        if "http response to https client" in text or "not look like a tls handshake" in text:
            return image_error(
                f"registry {where} speaks plain HTTP, not HTTPS",
                "pass --no-tls-verify if you trust this registry",
            )
    if "no space left on device" in text:
        return ToolError(
            f"no space left on the device holding the image cache {cache_root or ''} while pulling {ref}",
            hint="free some space there, or point --cache-dir (or CTR2SVC_CACHE_DIR) at a larger disk",
            details=debug_details,
        )
    if "digest did not match" in text or "digest mismatch" in text:
        if ref.is_remote:
            return image_error(
                f"a blob of {ref} arrived corrupt: its content does not match its digest",
                "retry; if it persists, the registry's storage or a proxy in between is damaging data",
            )
        return image_error(
            f"a blob of {ref} is corrupt: its content does not match its digest",
            "the image files are damaged: copy or export the image again",
        )
    if ref.is_remote:
        return _map_registry_error(exc, ref, opts, message, image_error, policy or [], auth)
    return _map_local_error(ref, text, message, image_error, policy or [], auth, opts)


def _map_registry_error(
    exc: ToolFailed,
    ref: ImageReference,
    opts: PullOptions,
    message: str,
    image_error: Callable[[str, str], ImageError],
    policy: list[str],
    auth: Path | None,
) -> Ctr2svcError:
    text = exc.stderr.lower()
    where = ref.registry or ref.name
    host = where.rsplit(":", 1)[0] if not where.endswith("]") else where
    if "x509" in text or "certificate" in text or "tls:" in text:
        reason = re.search(r"(x509: [^\"\n(]+|tls: [^\"\n(]+)", message)
        return image_error(
            f"TLS verification failed for registry {where}"
            + (f": {reason.group(1).strip()}" if reason else ""),
            "install the registry's CA certificate, or pass --no-tls-verify if you trust it",
        )
    if "tls handshake timeout" in text:
        return image_error(
            f"registry {where} accepted the connection but did not complete a TLS handshake (it timed out)",
            "check that it speaks HTTPS on that port and is not overloaded; for a plain-HTTP registry "
            "pass --no-tls-verify",
        )
    if any(s in text for s in ("no such host", "server misbehaving", "temporary failure in name resolution")):
        return image_error(
            f"cannot find registry {where}: the name {host} does not resolve",
            "check the registry's name for typos, and the DNS settings of this machine",
        )
    if "connection refused" in text:
        return image_error(
            f"cannot reach registry {where}: connection refused",
            "check the registry address and port, and that it is running",
        )
    if any(s in text for s in ("i/o timeout", "network is unreachable", "no route to host", "deadline")):
        return image_error(
            f"cannot reach registry {where}: the connection timed out or the network is unreachable",
            "check the registry address and port, that it is running, and the network or proxy settings",
        )
    if "malformed http" in text or "transport connection broken" in text:
        return image_error(
            f"{where} does not answer as a container registry: its answer is not HTTP ({message})",
            "check the registry address and port: it must point at a registry's API",
        )
    status = re.search(r"invalid status code from registry (\d+)(?: \(([^)]*)\))?", message)
    if status:
        return image_error(
            f"{where} does not answer as a container registry (GET /v2/ gave {status.group(1)}"
            + (f" {status.group(2)}" if status.group(2) else "")
            + ")",
            "check the registry address and port: it must point at a registry's API",
        )
    # Go's client says "EOF", or "server closed idle connection" when it reused a kept-alive one.
    closed = r"(?:^|: )(?:unexpected )?eof(?: \(|$)|connection reset by peer|server closed idle connection"
    if re.search(closed, message.lower()):
        return image_error(
            f"{where} closed the connection without answering as a container registry",
            "check the registry address and port, and whether it needs --tls-verify or --no-tls-verify",
        )
    if "blob unknown" in text:
        blob = re.search(r"sha256:[0-9a-f]{64}", message)
        return image_error(
            f"registry {where} is missing a layer of {ref}" + (f" ({blob.group(0)})" if blob else ""),
            "the image in the registry is incomplete: push it again",
        )
    if "manifest unknown" in text or "name unknown" in text or "not found" in text:
        return _not_found(ref, opts, image_error, policy, auth)
    if "unsupported" in text or "unknown media type" in text or "mime type" in text:
        return image_error(
            f"{ref} is not a container image ctr2svc can use: {message}",
            "pick a container image (an OCI or Docker image), not another kind of OCI artifact",
        )
    return image_error(
        f"skopeo could not read {ref} from registry {where}: {message}",
        "run with --debug to see the full skopeo output",
    )


def _not_found(
    ref: ImageReference,
    opts: PullOptions,
    image_error: Callable[[str, str], ImageError],
    policy: list[str],
    auth: Path | None,
) -> Ctr2svcError:
    where = ref.registry or ref.name
    repo = ref.name.split("/", 1)[1] if "/" in ref.name else ref.name
    tags = _tags(ref, opts, policy, auth)
    if tags is None:
        return image_error(
            f"image {ref} not found in registry {where}: it has no repository {repo!r}",
            f"check the name; `skopeo list-tags docker://{ref.name}` lists a repository's tags",
        )
    if ref.digest:
        return image_error(
            f"image {ref} not found in registry {where}: repository {repo!r} has no manifest {ref.digest}",
            f"check the digest; `skopeo inspect docker://{ref.name}:TAG` shows a tag's digest",
        )
    if not tags:
        return image_error(
            f"image {ref} not found in registry {where}: repository {repo!r} has no tags",
            "push the image first, or check the name",
        )
    return image_error(
        f"image {ref} not found in registry {where}: repository {repo!r} has no tag {ref.tag!r}",
        f"use one of its tags: {_some(tags)}",
    )


def _map_local_error(
    ref: ImageReference,
    text: str,
    message: str,
    image_error: Callable[[str, str], ImageError],
    policy: list[str],
    auth: Path | None,
    opts: PullOptions,
) -> Ctr2svcError:
    kind = str(ref.transport)
    path = Path(ref.name)
    if not path.exists():
        return image_error(
            f"{kind} image {ref.name!r} does not exist",
            "check the path" + ("; an OCI layout is a directory holding index.json" if kind == "oci" else ""),
        )
    if ref.transport is Transport.OCI:
        if not path.is_dir():
            return image_error(
                f"oci: image {ref.name!r} is a file, not an OCI layout directory",
                f"use oci-archive:{ref.name} for a tar of a layout, "
                f"docker-archive:{ref.name} for `docker save` output",
            )
        if "index.json" in text and ("no such file" in text or "not a directory" in text):
            return image_error(
                f"{ref.name} is not an OCI image layout: it has no index.json",
                "point oci: at a directory written by `skopeo copy ... oci:DIR:TAG` or `umoci init`",
            )
        if "oci-layout" in text:
            return image_error(
                f"{ref.name} is not a valid OCI image layout: {message}",
                "write it again with `skopeo copy ... oci:DIR:TAG`",
            )
    if "no descriptor found" in text or ("not found" in text and "reference" in text):
        tags = _tags(ref, opts, policy, auth)
        return image_error(
            f"tag {ref.tag or 'latest'!r} not found in {kind} image {ref.name}",
            f"use one of its tags: {_some(tags)}"
            if tags
            else f"`skopeo inspect {kind}:{ref.name}` shows what is there",
        )
    if ref.transport is Transport.OCI and "reading blob" in text and "no such file" in text:
        blob = re.search(r"sha256:[0-9a-f]{64}", message)
        return image_error(
            f"OCI layout {ref.name} is incomplete: a blob its manifest names is missing"
            + (f" ({blob.group(0)})" if blob else ""),
            "copy the image into the layout again",
        )
    if ref.transport is Transport.OCI_ARCHIVE and ("untarring" in text or "tar" in text or "eof" in text):
        return image_error(
            f"{ref.name} is not an oci-archive (a tar of an OCI layout): {message}",
            f"write one with `skopeo copy ... oci-archive:{ref.name}:TAG`; for `docker save` output use "
            f"docker-archive:{ref.name}",
        )
    if ref.transport is Transport.DOCKER_ARCHIVE and (
        "manifest.json" in text or "tar" in text or "eof" in text or "invalid" in text
    ):
        return image_error(
            f"{ref.name} is not a docker-archive (what `docker save` writes): {message}",
            "write one with `docker save -o FILE IMAGE`; for a tar of an OCI layout use "
            f"oci-archive:{ref.name}",
        )
    if "unsupported" in text or "unknown media type" in text:
        return image_error(
            f"{ref} is not a container image ctr2svc can use: {message}",
            "pick a container image (an OCI or Docker image), not another kind of OCI artifact",
        )
    return image_error(
        f"skopeo could not read {kind} image {ref.name}: {message}",
        "run with --debug to see the full skopeo output",
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


def _command_timeout(seconds: int) -> list[str]:
    """skopeo's own deadline for a whole command (a global option, before the subcommand)."""
    return ["--command-timeout", f"{seconds}s"]


def _raw_manifest(
    ref: ImageReference, opts: PullOptions, policy: list[str], auth: Path | None, source: str, *extra: str
) -> bytes:
    """`skopeo inspect --raw`: the manifest (or index) exactly as served, its digest's input."""
    skopeo = find_tool("skopeo", "pull container images")
    seconds = opts.limits.request
    try:
        return run(
            [
                skopeo,
                *_command_timeout(seconds),
                *policy,
                "inspect",
                "--raw",
                *extra,
                *_source_args(ref, opts, "", auth),
                source,
            ],
            what=f"inspect {ref}",
            timeout=seconds + _GRACE,
        ).stdout
    except ToolTimedOut as exc:
        raise _timed_out(ref, "reading the manifest", seconds, "request", exc) from exc
    except ToolFailed as exc:
        if _deadline(exc):
            raise _timed_out(ref, "reading the manifest", seconds, "request", exc) from exc
        raise _map_skopeo_error(exc, ref, opts, policy=policy, auth=auth) from exc


def _deadline(exc: ToolFailed) -> bool:
    """skopeo stopped by its --command-timeout (Go's context deadline)."""
    return "context deadline exceeded" in exc.stderr


def _timed_out(
    ref: ImageReference, step: str, seconds: float, limit: str, exc: ToolError, *, stalled: bool = False
) -> ImageError:
    """A registry that took too long, in ctr2svc's words: which registry, which step, which limit."""
    variable = LIMIT_VARIABLES[limit]
    where = f"registry {ref.registry}" if ref.is_remote else f"{ref.transport} image {ref.name}"
    if stalled:
        brief = f"{where} sent less than {STALL_BYTES} bytes in {seconds:.0f}s while {step} of {ref}"
        hint = (
            f"check the registry and the network; if they are only slow, allow longer with {variable}=SECONDS"
        )
    else:
        brief = f"{where} did not answer within {seconds:.0f}s while {step} of {ref}"
        if limit == "pull":
            brief = f"pulling {ref} from {where} did not finish within {seconds:.0f}s"
        hint = f"check that the registry is up and reachable; allow longer with {variable}=SECONDS"
    return ImageError(brief, hint=hint, details=exc.details)


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
    with _auth_file(ref, opts, workdir) as auth:
        raw = _raw_manifest(ref, opts, _policy_args(workdir), auth, ref.skopeo())
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


def resolve(
    ref: ImageReference, opts: PullOptions, cache: ImageCache, workdir: Path, located: Located | None = None
) -> ResolvedImage:
    """Find the platform manifest's digest (unless LOCATED already did) and make sure the image is cached."""
    skopeo = find_tool("skopeo", "pull container images")
    policy = _policy_args(workdir)
    located = located or locate(ref, opts, workdir)
    digest, index_digest = located.digest, located.index_digest

    with cache.locked(exclusive=True):
        manifest = cache.manifest(digest)
        if manifest is not None:
            log.info(f"  using cached image {digest}")
        else:
            cache.layout.mkdir(parents=True, exist_ok=True)
            cache.remove_partial_blobs()
            with _auth_file(ref, opts, workdir) as auth:
                _pull(skopeo, ref, opts, cache, located, policy, auth)
            manifest = cache.manifest(digest)
            if manifest is None:
                raise ImageError(
                    f"skopeo reported success but {ref} is not complete in the cache {cache.root}"
                )
        config = ImageConfig.from_json(cache.config(manifest))

    _check_platform(config, ref, opts)
    return ResolvedImage(ref, digest, index_digest, config, cache.umoci_ref(digest))


def _pull(
    skopeo: str,
    ref: ImageReference,
    opts: PullOptions,
    cache: ImageCache,
    located: Located,
    policy: list[str],
    auth: Path | None,
) -> None:
    """`skopeo copy` of the located platform manifest into the cache, tagged by its digest."""
    limits = opts.limits
    # A local image has no network to stall on: only the total limit applies to it.
    watchdog = Watchdog(_Received(cache), limits.stall, STALL_BYTES) if ref.is_remote else None
    try:
        with _pull_progress(ref, located, opts, cache, policy, auth):
            run(
                [
                    skopeo,
                    *_command_timeout(limits.pull),
                    *policy,
                    *located.platform_args,
                    "copy",
                    "--quiet",
                    "--remove-signatures",
                    "--retry-times",
                    "2",
                    *_source_args(ref, opts, "src-", auth),
                    located.source,
                    cache.ref(located.digest),
                ],
                what=f"pull {ref}",
                timeout=limits.pull + _GRACE,
                watchdog=watchdog,
            )
    except ToolTimedOut as exc:
        # A skopeo stopped mid-blob leaves it half written; under the exclusive lock nobody else writes.
        cache.remove_partial_blobs()
        if exc.stalled:
            raise _timed_out(ref, "pulling the layers", limits.stall, "stall", exc, stalled=True) from exc
        raise _timed_out(ref, "pulling the layers", limits.pull, "pull", exc) from exc
    except ToolFailed as exc:
        if _deadline(exc):
            cache.remove_partial_blobs()
            raise _timed_out(ref, "pulling the layers", limits.pull, "pull", exc) from exc
        raise _map_skopeo_error(exc, ref, opts, cache.root, policy=policy, auth=auth) from exc


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
