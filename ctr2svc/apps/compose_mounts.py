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
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise refuse(path, where, f"cannot read {source}: {exc.strerror}", "check the path") from exc
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise refuse(path, where, f"{source} is not UTF-8 text", "ctr2svc packages text files only") from exc


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
        given = Path(str(mount.get("source")))
        base = src.base
        mode = "ro" if read_only else "rw"
        if not inside(given, base):
            # A host path: mounted at each start, as an admin's --volume; nothing is read here.
            binds.append(f"{given}:{target}:{mode}")
            return
        relative = given.relative_to(base)
        dest = f"/etc/{pkg}/files/{relative}" if str(relative) != "." else f"/etc/{pkg}/files"
        if not given.exists():
            raise refuse(
                path, where, f"{given} does not exist beside the compose file", "create it, or fix the path"
            )
        # Packaged from here: what a symlink leads to outside the project is refused like a path there.
        source = src.local(where, given)
        if source.is_file():
            text = _text(path, where, source)
            files.append(
                PackagedFile(str(given), dest, target, text, source.stat().st_mode & 0o777 | 0o644, read_only)
            )
        elif source.is_dir():
            for found in sorted(source.rglob("*")):
                if found.is_symlink() or not (found.is_file() or found.is_dir()):
                    raise refuse(
                        path, where, f"{found} is not a plain file or directory", "package plain files only"
                    )
                if found.is_file():
                    mode_bits = found.stat().st_mode & 0o777 | 0o644
                    files.append(
                        PackagedFile(
                            str(found),
                            f"{dest}/{found.relative_to(source)}",
                            "",
                            _text(path, where, found),
                            mode_bits,
                        )
                    )
            binds.append(f"{dest}:{target}:{mode}")
        else:
            raise refuse(path, where, f"{given} is not a plain file or directory", "package plain files only")
    else:
        raise refuse(
            path, where, f"a {kind} mount is not supported", "use a named volume, a bind mount or a tmpfs"
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
