"""skopeo's failures in ctr2svc's words: one line naming the input at fault (the registry, the repository,
the tag, the local path) and the fix, instead of Go's error chain, which is kept for --debug.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from ctr2svc.errors import Ctr2svcError, ImageError, ToolError, ToolFailed
from ctr2svc.image.reference import ImageReference, Transport
from ctr2svc.image.skopeo import GRACE, PullOptions, command_timeout, source_args
from ctr2svc.run import find_tool, last_words, run

_WRAPPERS = (
    re.compile(r'^Error parsing image name "[^"]*": '),
    re.compile(r"^initializing source \S+: "),
    re.compile(r"^(?:Error )?reading manifest \S+ in \S+: "),
    re.compile(r"^pinging container registry \S+: "),
)

# Go's net/http error chains: `Get "URL": net/http: TLS handshake timeout`, `dial tcp ADDR: ...`.
_GO_REQUEST = re.compile(r'\b(Get|Head|Post|Put|Patch|Delete) "([^"]*)": (.*)$')

_GO_NOISE = re.compile(r"\b(?:net/http|http|remote error|(?:dial|read|write) tcp[46]? \S+?): ")


def plain_words(text: str) -> str:
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
    return plain_words(text) or "no error output"


def _tags(ref: ImageReference, opts: PullOptions, policy: list[str], auth: Path | None) -> list[str] | None:
    """The repository's tags (one more request, made only to explain a missing manifest); None when
    the repository itself is not there (or the question cannot be answered)."""
    if ref.is_remote:
        try:
            out = run(
                [
                    find_tool("skopeo", "pull container images"),
                    *command_timeout(opts.limits.request),
                    *policy,
                    "list-tags",
                    *source_args(ref, opts, "", auth),
                    f"docker://{ref.name}",
                ],
                what=f"list the tags of {ref.name}",
                timeout=opts.limits.request + GRACE,
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


def skopeo_error(
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
