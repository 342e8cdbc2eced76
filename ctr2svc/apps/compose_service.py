"""One compose service mapped onto BuildOptions: its command, environment, user, restart policy,
resources, health check, network and ports, each key checked in the file's own terms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ctr2svc import log, metadata
from ctr2svc.apps.compose_build import ImageBuild, image_source
from ctr2svc.apps.compose_keys import (
    DOCS,
    SERVICE_KEYS,
    STACK_SUFFIX,
    Source,
    check_name,
    duration,
    package_name,
    refuse,
    strings,
    unknown_keys,
    whole_number,
)
from ctr2svc.apps.compose_mounts import add_mount, check_nested, file_ref
from ctr2svc.errors import UsageError
from ctr2svc.image.reference import ImageReference
from ctr2svc.model import PackagedFile, PackageFormat
from ctr2svc.options.build_options import BuildOptions
from ctr2svc.options.ranges import COMPOSE_LIMITS, user_problem
from ctr2svc.options.request import BuildRequest, resolve

# A variable name /etc/NAME/env can hold (options/values.py's check, config.awk's pattern): Docker passes any
# name without "=" (elasticsearch's discovery.type, for one); a line of the file cannot start with "#"
# (a comment) and its name ends at the first "=", so neither can be in one, nor can blanks.
_ENV_NAME = re.compile(r"[^=\s#][^=\s]*")

# compose-go moves mapping keys that start with x- into a key of this name (as if they were extensions),
# so an environment variable or a label named x-… reaches the model, and the container, as
# "#extensions=map[x-…:…]".
_EXTENSIONS = "#extensions"

# Label prefixes of tools that configure themselves from the labels of the containers Docker runs.
LABEL_DRIVEN = ("caddy", "traefik")


def service_options(
    src: Source,
    app: str,
    name: str,
    svc: Mapping[str, Any],
    common: Mapping[str, Any],
    *,
    networks: set[str],
    volumes: set[str],
    used_volumes: dict[str, str],
    oneshot: bool,
    healthy: bool,
    secrets: Mapping[str, Any],
    configs: Mapping[str, Any],
    supplied: ImageReference | None = None,
) -> tuple[BuildOptions, BuildRequest, ImageBuild | None]:
    """The service's options as mapped, and checked (the request its package is built from), and how
    its image is built when the file builds it (SUPPLIED, --image SERVICE=REF, replaces both)."""
    path = src.path
    where = f"services.{name}"
    # Every refusal is noted and the other keys checked on: a file's problems are reported at once.
    before = len(src.problems)
    unknown_keys(src, where, svc, SERVICE_KEYS)
    fmt = common.get("format", PackageFormat.DEB)
    pkg = check_name(path, where, package_name(app, name), fmt)
    reference, build = src.attempt(image_source, src, where, pkg, svc, common, supplied) or (None, None)
    opts: dict[str, Any] = dict(common)
    opts.update(
        reference=reference,
        name=pkg,
        stack=f"{app}{STACK_SUFFIX}",
        network="private",
        application_network=app,
    )
    opts.setdefault("layers", "shared")
    for key, option in (("entrypoint", "entrypoint"), ("command", "cmd")):
        if svc.get(key) is not None:
            opts[option] = src.attempt(strings, path, f"{where}.{key}", svc[key])
    opts["env"] = src.attempt(_environment, src, f"{where}.environment", svc.get("environment") or {})
    _process(src, where, svc, opts)
    for key in ("cap_add", "cap_drop"):
        opts[key] = src.attempt(strings, path, f"{where}.{key}", svc.get(key))
    for key in ("privileged", "read_only"):
        opts[key] = bool(svc.get(key))
    opts["init_process"] = bool(svc.get("init"))
    opts["oneshot"] = oneshot
    opts["ready_health"] = healthy
    if svc.get("platform"):
        opts["arch"] = str(svc["platform"]).removeprefix("linux/")
    src.attempt(_resources, src, where, svc, opts)
    src.attempt(_health, src, where, svc.get("healthcheck"), opts)
    src.attempt(_network, src, where, svc, opts, networks)
    tmpfs = list(src.attempt(strings, path, f"{where}.tmpfs", svc.get("tmpfs")) or ())
    binds: list[str] = []
    files: list[PackagedFile] = []
    paths: list[str] = []
    for number, mount in enumerate(svc.get("volumes") or []):
        at = f"{where}.volumes[{number}]"
        src.attempt(add_mount, src, at, name, pkg, mount, volumes, used_volumes, tmpfs, binds, files, paths)
    for kind, table in (("secrets", secrets), ("configs", configs)):
        for number, ref in enumerate(svc.get(kind) or []):
            packaged = src.attempt(file_ref, src, f"{where}.{kind}[{number}]", kind, pkg, ref, table)
            files += [packaged] if packaged is not None else []
    targets = [f.target for f in files if f.target] + [b.split(":")[1] for b in binds]
    for target in dict.fromkeys(t for t in targets if targets.count(t) > 1):
        src.note(refuse(path, where, f"two mounts at {target}", "mount one thing at each path"))
    inner = [*targets, *paths, *(t.split(":")[0] for t in tmpfs)]
    for bind in binds:
        src.attempt(check_nested, src, where, bind, inner, files)
    opts.update(tmpfs=tuple(tmpfs), volumes=tuple(binds), files=tuple(files), volume_paths=tuple(paths))
    opts["labels"] = src.attempt(_labels, src, f"{where}.labels", svc.get("labels") or {})
    depends = svc.get("depends_on") or {}
    for other, dep in depends.items():
        unknown_keys(src, f"{where}.depends_on.{other}", dep or {}, {"condition", "required", "restart"})
    opts["requires"] = tuple(
        package_name(app, o) for o, d in depends.items() if (d or {}).get("required", True)
    )
    opts["wants"] = tuple(
        package_name(app, o) for o, d in depends.items() if not (d or {}).get("required", True)
    )
    if svc.get("expose"):
        log.debug(f"{where}.expose: every port is open to the application's other services anyway")
    if len(src.problems) > before:
        # Noted already (Source.note keeps one of each): the service is not mapped.
        raise src.problems[-1]
    try:
        options = BuildOptions(**opts)
        request = resolve(options)
    except UsageError as exc:
        raise refuse(path, where, exc.brief, exc.hint or DOCS) from exc
    return options, request, build


def _process(src: Source, where: str, svc: Mapping[str, Any], opts: dict[str, Any]) -> None:
    """user, working_dir, stop_signal, restart and stop_grace_period, each refusal noted."""
    for key in ("user", "working_dir", "stop_signal"):
        if svc.get(key) is not None:
            opts[key] = str(svc[key])
    problem = user_problem(opts["user"]) if "user" in opts else None
    if problem is not None:
        src.note(src.refuse(f"{where}.user", problem, 'e.g. user: "999:999"'))
    if svc.get("restart") is not None:
        opts["restart"] = str(svc["restart"])
        if opts["restart"].startswith("on-failure:"):
            retry = f"{opts['restart']}: a retry count is not supported"
            src.note(src.refuse(f"{where}.restart", retry, "use on-failure"))
    if svc.get("stop_grace_period") is not None:
        seconds = src.attempt(duration, src.path, f"{where}.stop_grace_period", svc["stop_grace_period"])
        if seconds is not None and not 1 <= seconds <= 3600:
            src.note(src.refuse(f"{where}.stop_grace_period", f"{seconds} s is not 1 s to 1 h", "e.g. 30s"))
        opts["stop_timeout"] = seconds


def _environment(src: Source, where: str, environment: Mapping[str, Any]) -> tuple[str, ...]:
    """KEY=VALUE lines for /etc/NAME/env, each name and value checked in the file's own terms."""
    env = []
    for key, value in environment.items():
        if value is None:
            continue  # `- KEY` with KEY unset: compose passes nothing
        if key == _EXTENSIONS:
            # Not shown: its value holds the variables' values.
            raise src.refuse(
                where,
                "variables whose names start with x- do not reach the container: docker compose takes "
                "them for extensions",
                "rename them, e.g. X_NAME instead of x-name",
            )
        if not _ENV_NAME.fullmatch(key) or metadata.control_characters(key):
            raise src.refuse(
                f"{where}.{key}",
                f"{key!r} is not a variable name ctr2svc can pass: no blanks, '=' or control characters, "
                "and no '#' first",
                "rename the variable",
            )
        text = str(value)
        if "\n" in text or "\r" in text:
            raise src.refuse(f"{where}.{key}", "has a line break", "put long text in a secret or config file")
        bad = metadata.control_characters(text)
        if bad:
            raise src.refuse(
                f"{where}.{key}",
                f"has control characters ({' '.join(bad)})",
                "put such text in a secret or config file",
            )
        env.append(f"{key}={text}")
    return tuple(env)


def _labels(src: Source, where: str, labels: Mapping[str, Any]) -> tuple[str, ...]:
    if _EXTENSIONS in labels:
        raise src.refuse(
            where,
            "labels whose names start with x- are lost: docker compose takes them for extensions",
            "rename them, e.g. com.example.name instead of x-name",
        )
    driven = sorted({tool for tool in LABEL_DRIVEN for k in labels if str(k).startswith(f"{tool}.")})
    if driven:
        log.warn(
            f"{src.path}: {where}: the {' and '.join(driven)} labels are kept as annotations of the runtime "
            "config, but nothing reads them: such a proxy finds its services through Docker's API, which a "
            "ctr2svc host does not have (configure it from a file instead, e.g. traefik's file provider)"
        )
    return tuple(f"{k}={v}" for k, v in labels.items())


def _resources(src: Source, where: str, svc: Mapping[str, Any], opts: dict[str, Any]) -> None:
    deploy = svc.get("deploy") or {}
    unknown_keys(
        src, f"{where}.deploy", deploy, {"resources", "placement", "replicas", "mode", "restart_policy"}
    )
    resources = deploy.get("resources") or {}
    unknown_keys(src, f"{where}.deploy.resources", resources, {"limits"})
    limits = resources.get("limits") or {}
    unknown_keys(src, f"{where}.deploy.resources.limits", limits, {"cpus", "memory", "pids"})
    given = {
        key: [
            (f"{where}.{key}", svc.get(key)),
            (f"{where}.deploy.resources.limits.{limit}", limits.get(limit)),
        ]
        for key, limit in (("mem_limit", "memory"), ("cpus", "cpus"), ("pids_limit", "pids"))
    }
    # The deploy limits win, as with compose; compose gives memory in bytes and leaves out 0 (no limit).
    for at, memory in given["mem_limit"]:
        if memory is not None:
            opts["memory"] = str(whole_number(src, at, memory, COMPOSE_LIMITS["memory"]))
    for at, cpus in given["cpus"]:
        if cpus is not None:
            opts["cpus"] = _cpus(src, at, cpus)
    for at, pids in given["pids_limit"]:
        if pids is not None:
            # Docker's -1 (and 0) is no limit, ctr2svc's 0.
            opts["pids_limit"] = max(0, whole_number(src, at, pids, COMPOSE_LIMITS["pids"]))
    if deploy.get("placement"):
        raise src.refuse(f"{where}.deploy.placement", "not supported by ctr2svc (one host)", "remove it")
    if deploy.get("replicas") not in (None, 1) or deploy.get("mode") not in (None, "replicated"):
        raise src.refuse(f"{where}.deploy", "one container per service only", "remove replicas and mode")
    policy = deploy.get("restart_policy") or {}
    unknown_keys(src, f"{where}.deploy.restart_policy", policy, {"condition"})
    if policy:
        conditions = {"none": "no", "on-failure": "on-failure", "any": "always"}
        if policy.get("condition") not in conditions:
            raise src.refuse(
                f"{where}.deploy.restart_policy.condition",
                "not none, on-failure or any",
                "e.g. on-failure",
            )
        opts["restart"] = conditions[policy["condition"]]


def _cpus(src: Source, where: str, value: object) -> float:
    limit = COMPOSE_LIMITS["cpus"]
    try:
        cpus = float(str(value))
    except ValueError:
        raise src.refuse(where, f"{value!r} is not a number of CPUs", f"e.g. {limit.example}") from None
    problem = limit.problem(cpus)
    if problem is not None:
        raise src.refuse(where, problem, f"e.g. {limit.example}")
    return cpus


def _health(src: Source, where: str, check: Mapping[str, Any] | None, opts: dict[str, Any]) -> None:
    if not check:
        return
    path = src.path
    where = f"{where}.healthcheck"
    unknown_keys(
        src,
        where,
        check,
        {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"},
    )
    test = strings(path, f"{where}.test", check.get("test"))
    if check.get("disable") or test[:1] == ("NONE",):
        opts["health_cmd"] = "none"
        return
    if test[:1] == ("CMD",) and len(test) > 1:
        opts["health_test"] = test[1:]
    elif test[:1] == ("CMD-SHELL",) and len(test) == 2:
        opts["health_test"] = ("/bin/sh", "-c", test[1])
    elif test:
        raise refuse(path, f"{where}.test", "is not CMD, CMD-SHELL or NONE", 'e.g. ["CMD", "pg_isready"]')
    # 0 is Docker's "not given": the image's value, else Docker's default.
    for key, name in (("interval", "health_interval"), ("timeout", "health_timeout")):
        if check.get(key) is not None:
            opts[name] = duration(path, f"{where}.{key}", check[key]) or None
    if check.get("start_period") is not None:
        opts["health_start_period"] = duration(path, f"{where}.start_period", check["start_period"])
    if check.get("retries") is not None:
        opts["health_retries"] = (
            whole_number(src, f"{where}.retries", check["retries"], COMPOSE_LIMITS["retries"]) or None
        )


def _network(
    src: Source, where: str, svc: Mapping[str, Any], opts: dict[str, Any], networks: set[str]
) -> None:
    path = src.path
    mode = svc.get("network_mode")
    attached = svc.get("networks") or {}
    if mode is not None:
        if mode != "host":
            raise refuse(path, f"{where}.network_mode", f"{mode!r} is not supported", "use host, or drop it")
        if svc.get("ports"):
            raise refuse(
                path,
                f"{where}.ports",
                "ports with network_mode: host",
                "drop ports: the host's are the service's",
            )
        opts["network"] = "host"
        return
    aliases: list[str] = [where.split(".", 1)[1]]
    for net, spec in attached.items():
        unknown_keys(src, f"{where}.networks.{net}", spec or {}, {"aliases"})
        aliases += strings(path, f"{where}.networks.{net}.aliases", (spec or {}).get("aliases"))
    if svc.get("container_name"):
        aliases.append(str(svc["container_name"]))
    for alias in aliases:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", alias):
            raise refuse(
                path, f"{where}.networks", f"{alias!r} is not a host name", "use letters, digits, '-', '.'"
            )
    opts["aliases"] = tuple(dict.fromkeys(aliases))
    published = []
    for number, port in enumerate(svc.get("ports") or []):
        at = f"{where}.ports[{number}]"
        unknown_keys(
            src, at, port, {"mode", "host_ip", "target", "published", "protocol", "app_protocol", "name"}
        )
        host = str(port.get("published") or "")
        # "0" is as good as none: Docker picks a free port.
        if not host.isdigit() or int(host) == 0:
            raise refuse(
                path,
                at,
                f"container port {port.get('target')} published on "
                f"{host if host.strip('0') else 'a random host port'}",
                'give one host port, e.g. "8080:80"',
            )
        ip = port.get("host_ip") or ""
        if ip in ("0.0.0.0", "::"):  # noqa: S104 - every address, which an empty IP means too
            ip = ""
        protocol = port.get("protocol") or "tcp"
        published.append(f"{ip + ':' if ip else ''}{host}:{port.get('target')}/{protocol}")
    opts["publish"] = tuple(published)
