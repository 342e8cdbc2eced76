"""A compose service's `build:`: its image built with podman from the context, Dockerfile, args and
target the file gives, in a store of ctr2svc's own under the cache directory (never the host's), then
written out as an OCI layout (oci:DIR:TAG) that the service is packaged from like any other image.

What a build depends on must give the same image twice: the image's date (`--timestamp`, which podman
also gives every file of the new layers) is $SOURCE_DATE_EPOCH, else the newest modification time in
the build context, so an unchanged context builds the same digest and a changed one a later date. The
tag is the file's `image:` tag when it names one, else `latest`, as compose tags what it builds: the
package version follows from them by the rule for any image (0+latest.DATE, docs/usage.md).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctr2svc import log
from ctr2svc.apps.compose_keys import DOCS, Source
from ctr2svc.errors import ImageError, ToolFailed, UsageError
from ctr2svc.image.cache import default_cache_dir
from ctr2svc.image.reference import ImageReference, Transport, parse
from ctr2svc.run import find_tool, run

# build: keys podman is given; those that only tune compose's own cache are accepted and ignored.
BUILD_KEYS = frozenset({"context", "dockerfile", "args", "target", "labels", "network", "no_cache", "pull"})
IGNORED = frozenset({"cache_from", "cache_to", "tags"})
HINTS = {
    "dockerfile_inline": "put the Dockerfile in a file and name it with dockerfile:",
    "secrets": "build the image yourself and name it with --image SERVICE=REF",
    "ssh": "build the image yourself and name it with --image SERVICE=REF",
    "additional_contexts": "build the image yourself and name it with --image SERVICE=REF",
    "platforms": "drop it: ctr2svc builds for this machine (--image SERVICE=REF takes one built elsewhere)",
}

# What Docker assumes of a short name in FROM (python:3.12 is docker.io/library/python:3.12); podman
# asks which registry on a terminal and refuses without one, unless told as here.
REGISTRIES_CONF = 'unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n'

# BUILD: podman's time limit for one image (downloads of base images included).
BUILD_TIMEOUT = 3600

_FROM = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*(?P<ref>\S+)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class ImageBuild:
    """How one service's image is built, and where it is written."""

    service: str  # compose's name, for messages
    context: Path
    dockerfile: Path
    args: tuple[tuple[str, str], ...]
    target: str | None
    labels: tuple[tuple[str, str], ...]
    network: str | None  # podman build --network (compose's build.network)
    no_cache: bool
    pull: bool
    store: Path  # podman's storage, under ctr2svc's cache
    layout: Path  # the OCI layout the image is written to
    tag: str
    tls_verify: bool | None

    @property
    def reference(self) -> ImageReference:
        return ImageReference(Transport.OCI, str(self.layout), self.tag)


def plan_build(
    src: Source, where: str, pkg: str, spec: Mapping[str, Any], tag: str, common: Mapping[str, Any]
) -> ImageBuild:
    """The service's build: as compose's canonical model gives it (context absolute, dockerfile relative
    to it), checked now: nothing runs before the whole file is mapped."""
    service = where.removeprefix("services.")
    where = f"{where}.build"
    for key, value in spec.items():
        if key in BUILD_KEYS or key in IGNORED or key.startswith("x-") or value in (None, False, "", [], {}):
            continue
        src.note(src.refuse(f"{where}.{key}", "not supported by ctr2svc", HINTS.get(key, "remove it")))
    context_text = str(spec.get("context") or ".")
    if "://" in context_text or context_text.startswith("git@"):
        raise src.refuse(
            f"{where}.context",
            f"{context_text} is a remote context",
            "clone it beside the compose file and name the directory, or pass --image SERVICE=REF",
        )
    if not Path(context_text).is_dir():
        raise src.refuse(f"{where}.context", f"{context_text} is not a directory", "fix the path")
    # What the build reads goes into the package: the project's own files, as for bind mounts.
    context = src.local(f"{where}.context", Path(context_text))
    dockerfile = context / str(spec.get("dockerfile") or "Dockerfile")
    if not dockerfile.is_file():
        raise src.refuse(
            f"{where}.dockerfile",
            f"{dockerfile} does not exist",
            "fix the path (it is relative to the context)",
        )
    dockerfile = src.local(f"{where}.dockerfile", dockerfile)
    network = spec.get("network")
    if network not in (None, "host", "none", "default"):
        raise src.refuse(f"{where}.network", f"{network!r} is not supported", "use host or none, or drop it")
    cache = Path(common.get("cache_dir") or default_cache_dir()).absolute()
    return ImageBuild(
        service=service,
        context=context,
        dockerfile=dockerfile,
        args=tuple((str(k), str(v)) for k, v in (spec.get("args") or {}).items() if v is not None),
        target=str(spec["target"]) if spec.get("target") else None,
        labels=tuple((str(k), str(v)) for k, v in (spec.get("labels") or {}).items()),
        network=None if network == "default" else network,
        no_cache=bool(spec.get("no_cache")),
        pull=bool(spec.get("pull")),
        store=cache / "podman",
        layout=cache / "built" / pkg,
        tag=tag,
        tls_verify=common.get("tls_verify"),
    )


def timestamp(context: Path) -> int:
    """$SOURCE_DATE_EPOCH, else the newest modification time in CONTEXT (symlinks not followed)."""
    if env := os.environ.get("SOURCE_DATE_EPOCH", "").strip():
        if env.isdigit():
            return int(env)
        log.warn(f"SOURCE_DATE_EPOCH={env!r} is not a number of seconds; ignored")
    newest = int(context.lstat().st_mtime)
    for directory, dirs, files in os.walk(context):
        for name in [*dirs, *files]:
            try:
                newest = max(newest, int(Path(directory, name).lstat().st_mtime))
            except OSError:
                continue
    return newest


def runroot(store: Path) -> Path:
    """podman's state while it runs: it refuses a path longer than 50 characters, so not the cache's
    (which may be anywhere) but one per store in /run (or the temporary directory without root)."""
    key = hashlib.sha256(str(store).encode()).hexdigest()[:12]
    base = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
    return base / f"ctr2svc-podman-{key}"


def _insecure_registries(build: ImageBuild) -> list[str]:
    """The registries on loopback that the Dockerfile's FROM lines name: like Docker (and ctr2svc's
    pulls), podman is told not to require TLS of them unless --tls-verify says otherwise."""
    if build.tls_verify is not None:
        return []
    found = []
    for match in _FROM.finditer(build.dockerfile.read_text(errors="replace")):
        host = match.group("ref").split("/", 1)[0] if "/" in match.group("ref") else ""
        name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 else host.strip("[]")
        try:
            loopback = name == "localhost" or ipaddress.ip_address(name).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            found.append(host)
    return sorted(set(found))


def _registries_conf(build: ImageBuild) -> Path:
    text = REGISTRIES_CONF + "".join(
        f'\n[[registry]]\nlocation = "{host}"\ninsecure = true\n' for host in _insecure_registries(build)
    )
    path = build.store / f"registries-{build.layout.name}.conf"
    path.write_text(text)
    return path


def build(spec: ImageBuild) -> None:
    """The image built and written to spec.layout, tagged spec.tag (a layout of that one image)."""
    podman = find_tool("podman", f"build the image of the compose service {spec.service} (build:)")
    spec.store.mkdir(parents=True, exist_ok=True)
    store = ["--root", str(spec.store / "root"), "--runroot", str(runroot(spec.store))]
    # runc: ctr2svc's runtime, and the one that works on cgroup-hybrid hosts (crun 1.8 does not).
    runtime = ["--runtime", find_tool("runc", "run the RUN steps of a build")]
    name = f"localhost/ctr2svc-built/{spec.layout.name}:{spec.tag}"
    argv = [podman, *store, *runtime, "build", "--timestamp", str(timestamp(spec.context))]
    argv += ["--file", str(spec.dockerfile), "--tag", name]
    for key, value in spec.args:
        argv += ["--build-arg", f"{key}={value}"]
    for key, value in spec.labels:
        argv += ["--label", f"{key}={value}"]
    if spec.target:
        argv += ["--target", spec.target]
    if spec.network:
        argv += ["--network", spec.network]
    if spec.no_cache:
        argv.append("--no-cache")
    if spec.pull:
        argv.append("--pull=always")
    if spec.tls_verify is False:
        argv.append("--tls-verify=false")
    argv.append(str(spec.context))
    env = {"CONTAINERS_REGISTRIES_CONF": str(_registries_conf(spec))}
    try:
        with log.step(f"Building the image of {spec.service} from {spec.dockerfile}"):
            run(argv, env=env, what=f"build the image of {spec.service}", timeout=BUILD_TIMEOUT)
            if spec.layout.exists():
                shutil.rmtree(spec.layout)
            spec.layout.parent.mkdir(parents=True, exist_ok=True)
            run(
                [podman, *store, "push", "--quiet", name, f"oci:{spec.layout}:{spec.tag}"],
                what=f"write the image of {spec.service} to {spec.layout}",
                timeout=BUILD_TIMEOUT,
            )
    except ToolFailed as exc:
        raise ImageError(
            f"the image of {spec.service} could not be built: {exc.brief}",
            hint=f"podman's words say why (-v shows all of them); fix the Dockerfile ({spec.dockerfile}), or "
            f"build the image yourself and pass --image {spec.service}=REF",
            details=exc.details,
        ) from exc


def image_source(
    src: Source,
    where: str,
    pkg: str,
    svc: Mapping[str, Any],
    common: Mapping[str, Any],
    supplied: ImageReference | None,
) -> tuple[ImageReference, ImageBuild | None]:
    """Where the service's image comes from: --image SERVICE=REF, else its build: when it has no image:
    (or pull_policy: build says to build it), else image: from its registry. Compose tags what it
    builds with image:'s tag, else latest: the package version follows from that tag."""
    image, spec, policy = svc.get("image"), svc.get("build"), svc.get("pull_policy")
    if supplied is not None:
        return supplied, None
    if policy == "never":
        raise src.refuse(
            f"{where}.pull_policy",
            "never: the image would have to be on this machine already",
            f"pass --image {where.split('.', 1)[1]}=REF (e.g. oci:DIR:TAG), or drop pull_policy",
        )
    reference = None
    if image:
        try:
            reference = parse(str(image))
        except UsageError as exc:
            raise src.refuse(f"{where}.image", exc.brief, exc.hint or DOCS) from exc
    if spec is not None and (reference is None or policy == "build"):
        tag = (reference.tag if reference is not None else None) or "latest"
        build = plan_build(src, where, pkg, spec, tag, common)
        return build.reference, build
    if reference is None:
        raise src.refuse(
            where,
            "has neither image: nor build:",
            f"add one, or pass --image {where.split('.', 1)[1]}=REF",
        )
    if spec is not None:
        log.warn(
            f"{src.path}: {where}.build: not built; ctr2svc packages the image {image} from its registry "
            "(pull_policy: build builds it)"
        )
    return reference, None
