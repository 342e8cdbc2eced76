"""A compose service's mounts, secrets and configs: named volumes become data directories, tmpfs mounts
stay tmpfs, and what is bind-mounted from beside the compose file (files, directories, secrets and
configs) is packaged below /etc/NAME and mounted from there; nothing outside the project's directory
is packaged unless --allow-outside says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctr2svc import log
from ctr2svc.apps.compose_keys import Source, inside, refuse, unknown_keys
from ctr2svc.model import PackagedFile


def _mode(src: Source, where: str, value: object) -> str:
    """A tmpfs mode in octal (compose gives it as a number); beyond 07777 the mount would fail."""
    mode = value if isinstance(value, int) and not isinstance(value, bool) else -1
    if not 0 <= mode <= 0o7777:
        shown = f"{mode:o} (octal)" if mode >= 0 else repr(value)
        raise src.refuse(where, f"{shown} is not a file mode", "e.g. mode: 01777")
    return f"{mode:o}"


def _text(path: Path, where: str, source: Path) -> str:
    """A secret's or config's content: text only."""
    content = _content(path, where, source)
    if isinstance(content, bytes):
        raise refuse(path, where, f"{source} is not UTF-8 text", "ctr2svc packages text files only")
    return content


def _content(path: Path, where: str, source: Path) -> str | bytes:
    """A packaged file's content: text as text, anything else (an icon, a font) as it is."""
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise refuse(path, where, f"cannot read {source}: {exc.strerror}", "check the path") from exc
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data


def add_mount(
    src: Source,
    where: str,
    service: str,
    pkg: str,
    mount: Mapping[str, Any],
    volumes: set[str],
    used_volumes: dict[str, str],
    tmpfs: list[str],
    binds: list[str],
    files: list[PackagedFile],
    paths: list[str],
) -> None:
    path = src.path
    unknown_keys(src, where, mount, {"type", "source", "target", "read_only", "bind", "volume", "tmpfs"})
    kind = mount.get("type")
    target = str(mount.get("target") or "")
    read_only = bool(mount.get("read_only"))
    if kind == "volume":
        unknown_keys(src, f"{where}.volume", mount.get("volume") or {}, set())
        source = mount.get("source")
        if source:
            first = used_volumes.setdefault(str(source), service)
            if first != service:
                raise refuse(
                    path,
                    where,
                    f"the volume {source} is also {first}'s: each service keeps its data in a "
                    "directory of its own",
                    "give each service its own volume",
                )
        if read_only:
            raise refuse(path, where, "a read-only volume is not supported", "drop :ro")
        paths.append(target)
    elif kind == "tmpfs":
        options = mount.get("tmpfs") or {}
        unknown_keys(src, f"{where}.tmpfs", options, {"size", "mode"})
        extra = [f"size={options['size']}"] if options.get("size") else []
        if options.get("mode") is not None:
            extra.append(f"mode={_mode(src, f'{where}.tmpfs.mode', options['mode'])}")
        tmpfs.append(target + (":" + ",".join(extra) if extra else ""))
    elif kind == "bind":
        bind = mount.get("bind") or {}
        unknown_keys(src, f"{where}.bind", bind, {"create_host_path"})
        _bind(src, where, pkg, Path(str(mount.get("source"))), target, read_only, binds, files, paths)
    else:
        raise refuse(
            path, where, f"a {kind} mount is not supported", "use a named volume, a bind mount or a tmpfs"
        )


# Docker's API socket: no Docker daemon listens on a ctr2svc host.
DOCKER_SOCKETS = frozenset({"/var/run/docker.sock", "/run/docker.sock"})


def _bind(
    src: Source,
    where: str,
    pkg: str,
    given: Path,
    target: str,
    read_only: bool,
    binds: list[str],
    files: list[PackagedFile],
    paths: list[str],
) -> None:
    """A bind mount (docs/compose.md, "Volumes, config files and secrets"): a host path stays the host's;
    what lies beside the compose file is packaged, as the admin's configuration below /etc/NAME (a file,
    or a directory mounted read-only or into /etc), else as the package's data below /usr/share/NAME,
    mounted read-only; a directory that is not there or empty is data the service writes, as a named
    volume."""
    base = src.base
    if str(given) in DOCKER_SOCKETS:
        raise src.refuse(
            where,
            f"{given}: there is no Docker daemon on a ctr2svc host",
            "drop the mount: what manages containers through Docker's API (traefik's docker provider, "
            "portainer, watchtower) cannot work there",
        )
    if not inside(given, base):
        home = Path.home()
        if home != Path("/") and inside(given, home):
            # compose expanded ~ (or $HOME) on this machine: the path means nothing on the host.
            raise src.refuse(
                where,
                f"{given} is in the home directory of the user building ({home}), where compose expands "
                "~, and would be mounted from that path on the host the package is installed on",
                "write the host path the service should mount (e.g. /srv/NAME), use a named volume for "
                "its data, or put the files beside the compose file to package them",
            )
        # A host path: mounted at each start, as an admin's --volume; nothing is read here.
        binds.append(f"{given}:{target}:{'ro' if read_only else 'rw'}")
        return
    relative = given.relative_to(base)
    # A file is configuration wherever it is mounted; a directory mounted read-write elsewhere than
    # below /etc is the application's own files (a web root, a source tree).
    config = read_only or given.is_file() or target == "/etc" or target.startswith("/etc/")
    top = f"/etc/{pkg}/files" if config else f"/usr/share/{pkg}/files"
    dest = f"{top}/{relative}" if str(relative) != "." else top
    if not given.exists() or (given.is_dir() and not read_only and not any(given.iterdir())):
        if read_only:
            raise src.refuse(
                where, f"{given} does not exist beside the compose file", "create it, or fix the path"
            )
        # compose creates it empty, and the service writes its data there: a data directory.
        paths.append(target)
        return
    # Packaged from here: what a symlink leads to outside the project is refused like a path there.
    source = src.local(where, given)
    if not config:
        log.warn(
            f"{src.path}: {where}: {given} is packaged with the service ({dest}) and mounted read-only "
            "(add :ro to say so): what the container writes there would be lost on upgrade; give data "
            "it writes a named volume"
        )
    if source.is_file():
        mode = source.stat().st_mode & 0o777 | 0o644
        files.append(PackagedFile(str(given), dest, target, _content(src.path, where, source), mode,
                                  read_only or not config, config))  # fmt: skip
    elif source.is_dir():
        for found in sorted(source.rglob("*")):
            if found.is_symlink() or not (found.is_file() or found.is_dir()):
                raise src.refuse(
                    where, f"{found} is not a plain file or directory", "package plain files only"
                )
            if found.is_file():
                mode = found.stat().st_mode & 0o777 | 0o644
                content = _content(src.path, where, found)
                files.append(
                    PackagedFile(
                        str(found), f"{dest}/{found.relative_to(source)}", "", content, mode, True, config
                    )
                )
        binds.append(f"{dest}:{target}:{'rw' if config and not read_only else 'ro'}")
    else:
        raise src.refuse(where, f"{given} is not a plain file or directory", "package plain files only")


def check_nested(src: Source, where: str, bind: str, targets: list[str], files: list[PackagedFile]) -> None:
    """A mount inside a packaged directory mounted read-only needs its mount point in the package:
    runc cannot make it in a read-only directory (compose's node_modules volume over a source tree)."""
    dest, outer, mode = bind.split(":")
    if mode != "ro" or not dest.startswith(("/etc/", "/usr/share/")):
        return
    for target in targets:
        if target == outer or not inside(Path(target), Path(outer)):
            continue
        point = f"{dest}/{Path(target).relative_to(outer)}/"
        if not any(f.dest.startswith(point) for f in files):
            raise src.refuse(
                where,
                f"{target} is mounted inside {outer}, which is packaged and mounted read-only, and has no "
                f"{Path(target).relative_to(outer)} to mount it on",
                f"drop the bind mount at {outer} (let the image bring its files) or the mount at {target}",
            )


def file_ref(
    src: Source, where: str, kind: str, pkg: str, ref: Mapping[str, Any], table: Mapping[str, Any]
) -> PackagedFile:
    """A service's secret or config: packaged below /etc/NAME (secrets root-only), mounted read-only
    at /run/secrets/TARGET (secrets) or /TARGET (configs), as compose mounts file secrets and configs."""
    path = src.path
    unknown_keys(src, where, ref, {"source", "target", "mode"})
    source = str(ref.get("source"))
    spec = table.get(source) or {}
    top = f"{kind}.{source}"
    unknown_keys(src, top, spec, {"name", "file", "environment", "content"})
    if spec.get("file"):
        content = _text(path, top, src.local(f"{top}.file", Path(spec["file"])))
    elif spec.get("environment"):
        variable = str(spec["environment"])
        if variable not in os.environ:
            raise refuse(path, top, f"${variable} is not set", f"set {variable} in the build's environment")
        content = os.environ[variable]
    elif spec.get("content") is not None:
        content = str(spec["content"])
    else:
        raise refuse(path, top, "has no file, environment or content", "e.g. file: ./db_password.txt")
    target = str(ref.get("target") or source)
    if kind == "secrets":
        target = target if target.startswith("/") else f"/run/secrets/{target}"
        default_mode = 0o600
    else:
        target = target if target.startswith("/") else f"/{target}"
        default_mode = 0o644
    mode = default_mode
    if ref.get("mode") is not None:
        try:
            mode = int(str(ref["mode"]), 8)
        except ValueError:
            raise refuse(path, f"{where}.mode", f"{ref['mode']!r} is not a file mode", "e.g. 0400") from None
    if mode & ~0o777:
        raise refuse(path, f"{where}.mode", f"{mode:o} is not a file mode", "e.g. 0400")
    return PackagedFile(
        spec.get("file") or f"${kind}:{source}", f"/etc/{pkg}/{kind}/{source}", target, content, mode
    )
