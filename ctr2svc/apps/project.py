"""A project file (ctr2svc.toml) listing many images, each with its own build settings.

    output = "dist"                      # paths are relative to the file
    [repo]                               # for `ctr2svc update` (and `build -c --repo`)
    path = "repo"
    keep = 3
    sign_key = "ops@example.com"         # gpg key for the indexes; gnupghome = "..." optional
    [defaults]                           # any [[image]] key, for every image
    formats = ["deb"]
    [[image]]
    ref = "registry.example.com/valkey:9.0.0"
    name = "valkey-svc"
    formats = ["deb", "rpm"]
    env = { VALKEY_EXTRA_FLAGS = "--maxmemory 256mb" }
    memory = "512M"

Unknown keys are errors: a typo must not silently build something else.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctr2svc.apps import compose
from ctr2svc.apps.entries import ImageEntry, Project
from ctr2svc.distribution.indexes import ApkKey, Signing
from ctr2svc.distribution.repo import DEFAULT_KEEP
from ctr2svc.errors import UsageError
from ctr2svc.image.reference import parse
from ctr2svc.model import InitSystem, PackageFormat
from ctr2svc.options.build_options import DEFAULT_STOP_TIMEOUT, BuildOptions, shell_words
from ctr2svc.options.ranges import LIMITS, user_problem
from ctr2svc.options.request import BuildRequest, resolve
from ctr2svc.package.naming import check_package_name, default_package_name
from ctr2svc.service.runtime_config import DEFAULT_PIDS_LIMIT

# A project's images go to a repository, where shared layers pay off: a base is downloaded once per
# host, and an upgrade moves only the layers that changed (README, "Shared layers").
DEFAULT_LAYERS = "shared"

# Image key -> the type TOML must give it.
IMAGE_KEYS: dict[str, type | tuple[type, ...]] = {
    "ref": str,
    "name": str,
    "formats": list,
    "version": str,
    "arch": str,
    "init": str,
    "creds": str,
    "authfile": str,
    "policy": str,
    "registries_d": str,
    "tls_verify": bool,
    "entrypoint": str,
    "cmd": str,
    "stop_signal": str,
    "stop_timeout": int,
    "maintainer": str,
    "compression": str,
    "user": str,
    "cap_add": list,
    "cap_drop": list,
    "privileged": bool,
    "pids_limit": int,
    "env": dict,
    "volumes": list,
    "memory": str,
    "cpus": (int, float),
    "ready_port": int,
    "health_cmd": str,
    "health_interval": int,
    "health_retries": int,
    "runtime": str,
    "stdio": str,
    "activation": str,
    "layers": str,
    "network": str,
    "userns": str,
    "publish": list,
    "sign_key_file": str,
    "sign_key_name": str,
}
TOP_KEYS = {"output", "repo", "defaults", "image", "cache_dir"}
REPO_KEYS = {"path": str, "keep": int, "sign_key": str, "gnupghome": str, "apk_key": str, "apk_key_name": str}


def _fail(path: Path, where: str, problem: str, hint: str) -> UsageError:
    return UsageError(f"{path}: {where}: {problem}", hint=hint)


def _check_keys(
    path: Path, where: str, table: Mapping[str, Any], known: Mapping[str, Any] | set[str]
) -> None:
    for key in table:
        if key not in known:
            raise _fail(path, where, f"unknown key {key!r}", f"known keys: {', '.join(sorted(known))}")


def _check_types(path: Path, where: str, table: Mapping[str, Any]) -> None:
    for key, value in table.items():
        expected = IMAGE_KEYS[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and expected in (int, (int, float))):
            names = (
                expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
            )
            raise _fail(path, where, f"{key} must be a {names}", f"e.g. see `ctr2svc build --help` for {key}")
    for key in ("formats", "cap_add", "cap_drop", "volumes"):
        if key in table and not all(isinstance(v, str) for v in table[key]):
            raise _fail(path, where, f"{key} must be a list of strings", f'e.g. {key} = ["..."]')
    for fmt in table.get("formats", []):
        if fmt not in {f.value for f in PackageFormat}:
            raise _fail(path, where, f"unknown format {fmt!r}", "formats are deb, rpm and apk")
    if "env" in table and not all(isinstance(v, str | int | float) for v in table["env"].values()):
        raise _fail(path, where, "env values must be strings", 'e.g. env = { LOG_LEVEL = "debug" }')
    for key, limit in LIMITS.items():
        problem = limit.problem(table[key]) if key in table else None
        if problem is not None:
            raise _fail(path, where, f"{key}: {problem}", f"e.g. {limit.example}")
    problem = user_problem(table["user"]) if "user" in table else None
    if problem is not None:
        raise _fail(path, where, f"user: {problem}", 'e.g. user = "999:999"')


def _read(path: Path) -> dict[str, Any]:
    """The file's TOML, or one line naming the file and what is wrong with it."""
    hint = "pass the project file (ctr2svc.toml) with -c"
    if path.is_dir():
        raise UsageError(f"{path} is a directory, not a project file", hint=hint)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint=hint) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UsageError(
            f"{path} is not UTF-8 text (line {line}: byte 0x{raw[exc.start]:02x})",
            hint="save it as UTF-8 (TOML files are UTF-8)",
        ) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(
            f"{path} is not valid TOML: {' '.join(str(exc).split())}", hint="check the line it names"
        ) from exc


def _check_tables(path: Path, doc: Mapping[str, Any]) -> None:
    """The top level's own shape: [repo] and [defaults] tables, [[image]] an array of tables."""
    for key in ("repo", "defaults"):
        if key in doc and not isinstance(doc[key], dict):
            raise _fail(path, "top level", f"{key} must be a table", f"write it as [{key}]")
    images = doc.get("image", [])
    if not isinstance(images, list) or not all(isinstance(t, dict) for t in images):
        raise _fail(path, "top level", "image must be an array of tables", "write each image as [[image]]")
    for key in ("output", "cache_dir"):
        if key in doc and not (isinstance(doc[key], str) and doc[key]):
            raise _fail(path, "top level", f"{key} must be a non-empty string", f'e.g. {key} = "dist"')


def package_name(entry: ImageEntry) -> str:
    """The package's name as `ctr2svc build` will give it: `name`, or the reference's last path part
    plus -svc."""
    return entry.name or default_package_name(parse(entry.ref).basename)


def _check_packages(path: Path, images: list[ImageEntry]) -> None:
    """One package per name and format: two images making the same package would overwrite each other
    in the output directory and in the repository."""
    seen: dict[tuple[str, PackageFormat], ImageEntry] = {}
    for entry in images:
        formats = entry.formats
        if not formats:
            raise _fail(path, f"[[image]] {entry.number}", "formats is empty", 'e.g. formats = ["deb"]')
        for fmt in formats:
            if formats.count(fmt) > 1:
                raise _fail(
                    path,
                    f"[[image]] {entry.number}",
                    f"format {fmt} is listed twice",
                    "list each format once",
                )
            name = package_name(entry)
            first = seen.setdefault((name, fmt), entry)
            if first is entry:
                continue
            if first.settings == entry.settings:
                raise UsageError(
                    f"{path}: image {first.number} and image {entry.number} are the same image "
                    f"({entry.ref}, {fmt}, {name})",
                    hint="remove one of them",
                )
            raise UsageError(
                f"{path}: image {first.number} ({first.ref}) and image {entry.number} ({entry.ref}) "
                f"both make {name} ({fmt})",
                hint=f'set name = "..." on one of them, e.g. name = "{_suggest(entry, name)}" on image '
                f"{entry.number}",
            )


def _suggest(entry: ImageEntry, taken: str) -> str:
    """A name for ENTRY other than TAKEN: its registry path's parts, or a number."""
    reference = parse(entry.ref)
    parts = [p for p in reference.name.split("/")[1 if reference.is_remote else 0 : -1] if p]
    if parts:
        candidate = default_package_name(f"{parts[-1]}-{reference.basename}")
        if candidate != taken:
            return candidate
    return f"{taken.removesuffix('-svc')}{entry.number}-svc"


def load(
    path: Path, allow_outside: tuple[Path, ...] = (), supplied: Mapping[str, str] | None = None
) -> Project:
    """The project in PATH; ALLOW_OUTSIDE and SUPPLIED (--image SERVICE=REF) are for a compose file
    (compose.load)."""
    if path.suffix in (".yaml", ".yml"):
        # A compose file: its services are the images, its application one more package.
        return compose.as_project(path, allow_outside, supplied)
    if allow_outside:
        raise UsageError(
            f"{path}: --allow-outside goes with a compose file",
            hint="a project file's images package nothing from this machine: drop --allow-outside",
        )
    if supplied:
        raise UsageError(
            f"{path}: --image goes with a compose file",
            hint="a project file names each image with ref = ...: drop --image",
        )
    doc = _read(path)
    base = path.parent
    _check_keys(path, "top level", doc, TOP_KEYS)
    _check_tables(path, doc)
    defaults = doc.get("defaults", {})
    _check_keys(path, "[defaults]", defaults, IMAGE_KEYS)
    _check_types(path, "[defaults]", defaults)
    images = []
    for number, table in enumerate(doc.get("image", []), start=1):
        where = f"[[image]] {number}"
        _check_keys(path, where, table, IMAGE_KEYS)
        _check_types(path, where, table)
        settings = {**defaults, **table}
        if "ref" not in settings:
            raise _fail(path, where, "no ref", 'add ref = "registry.example.com/app:1.0"')
        try:
            # A bad reference or name is reported now, not halfway through the builds.
            parse(settings["ref"])
            if "name" in settings:
                check_package_name(settings["name"])
        except UsageError as exc:
            hint = (exc.hint or "").replace("use --name ", "set name = ")
            raise _fail(path, where, exc.brief, hint or "see the README's project file section") from exc
        images.append(ImageEntry(number, settings))
    if not images:
        raise _fail(path, "top level", "no [[image]] tables", "add at least one [[image]] with a ref")
    _check_packages(path, images)
    repo_table = doc.get("repo", {})
    _check_keys(path, "[repo]", repo_table, REPO_KEYS)
    for key, kind in REPO_KEYS.items():
        value = repo_table.get(key)
        if key in repo_table and (not isinstance(value, kind) or isinstance(value, bool) or value == ""):
            article = "an" if kind is int else "a non-empty"
            raise _fail(
                path,
                "[repo]",
                f"{key} must be {article} {kind.__name__}",
                "see the README's project file section",
            )
    if repo_table.get("keep", DEFAULT_KEEP) < 1:
        raise _fail(
            path, "[repo]", f"keep = {repo_table['keep']} would empty the repository", "keep = 1 or more"
        )
    problem = LIMITS["keep"].problem(repo_table["keep"]) if "keep" in repo_table else None
    if problem is not None:
        raise _fail(path, "[repo]", f"keep: {problem}", f"e.g. {LIMITS['keep'].example}")
    signing = None
    if "sign_key" in repo_table:
        home = repo_table.get("gnupghome")
        signing = Signing(repo_table["sign_key"], base / home if home else None)
    return Project(
        path=path,
        output_dir=base / str(doc.get("output", "dist")),
        images=images,
        repo=base / repo_table["path"] if "path" in repo_table else None,
        keep=int(repo_table.get("keep", DEFAULT_KEEP)),
        signing=signing,
        apk_key=ApkKey(
            base / repo_table["apk_key"],
            repo_table.get("apk_key_name", Path(repo_table["apk_key"]).name + ".pub"),
        )
        if "apk_key" in repo_table
        else None,
        cache_dir=base / doc["cache_dir"] if "cache_dir" in doc else None,
    )


def options(
    project: Project, entry: ImageEntry, fmt: PackageFormat, *, min_version: str | None = None
) -> BuildRequest:
    """The request `ctr2svc build` would make of this image and format: the image's settings as
    BuildOptions, checked (a value out of range fails this image alone)."""
    return resolve(_build_options(project, entry, fmt, min_version))


def _build_options(
    project: Project, entry: ImageEntry, fmt: PackageFormat, min_version: str | None
) -> BuildOptions:
    if entry.preset is not None:
        return dataclasses.replace(
            entry.preset, format=fmt, output_dir=project.output_dir, min_version=min_version
        )
    s = entry.settings
    base = project.path.parent

    def words(key: str) -> tuple[str, ...] | None:
        return shell_words(s[key]) if key in s else None

    return BuildOptions(
        reference=parse(s["ref"]),
        format=fmt,
        init=InitSystem(s["init"]) if "init" in s else None,
        output_dir=project.output_dir,
        name=s.get("name"),
        version=s.get("version"),
        min_version=min_version,
        arch=s.get("arch"),
        creds=s.get("creds"),
        authfile=base / s["authfile"] if "authfile" in s else None,
        policy=base / s["policy"] if "policy" in s else None,
        registries_d=base / s["registries_d"] if "registries_d" in s else None,
        tls_verify=s.get("tls_verify"),
        cache_dir=project.cache_dir,
        entrypoint=words("entrypoint"),
        cmd=words("cmd"),
        stop_signal=s.get("stop_signal"),
        stop_timeout=s.get("stop_timeout", DEFAULT_STOP_TIMEOUT),
        maintainer=s.get("maintainer"),
        compression=s.get("compression"),
        user=s.get("user"),
        cap_add=tuple(s.get("cap_add", ())),
        cap_drop=tuple(s.get("cap_drop", ())),
        privileged=s.get("privileged", False),
        pids_limit=s.get("pids_limit", DEFAULT_PIDS_LIMIT),
        env=tuple(f"{k}={v}" for k, v in s.get("env", {}).items()),
        volumes=tuple(s.get("volumes", ())),
        memory=s.get("memory"),
        cpus=float(s["cpus"]) if "cpus" in s else None,
        ready_port=s.get("ready_port"),
        health_cmd=s.get("health_cmd"),
        health_interval=s.get("health_interval"),
        health_retries=s.get("health_retries"),
        runtime=s.get("runtime", "runc"),
        stdio=s.get("stdio", "auto"),
        activation=s.get("activation", "distro"),
        layers=s.get("layers", DEFAULT_LAYERS),
        network=s.get("network", "host"),
        userns=s.get("userns", "host"),
        publish=tuple(s.get("publish", ())),
        sign_key_file=base / s["sign_key_file"] if "sign_key_file" in s else None,
        sign_key_name=s.get("sign_key_name"),
    )
