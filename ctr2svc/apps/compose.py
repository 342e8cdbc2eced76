"""Compose files: a multi-service application as one package per service and one for the application.

docker-compose itself reads the file (compose_file.py): it validates it, interpolates variables and
prints the canonical model. This module maps that model onto BuildOptions, one service at a time
(compose_service.py, its mounts, secrets and configs in compose_mounts.py), and refuses, naming the key
and the service, everything it does not map (compose_keys.py): a key left out silently would make a
package that runs something other than what the file says.

The services of an application share a network of their own (names resolve between them only), start in the
order depends_on gives (systemd's Requires=/After=, a health-gated start for service_healthy, a
one-shot unit for service_completed_successfully), and are part of the application's target,
NAME.target, in the application package NAME, which depends on them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctr2svc.apps.compose_file import left_out, raw_services, read_model
from ctr2svc.apps.compose_keys import (
    STACK_SUFFIX,
    TOP_KEYS,
    Source,
    check_name,
    package_name,
    refuse,
    unknown_keys,
)
from ctr2svc.apps.compose_service import service_options
from ctr2svc.apps.entries import Application, ImageEntry, Project, ServicePlan
from ctr2svc.errors import UsageError
from ctr2svc.image.reference import ImageReference, parse
from ctr2svc.model import InitSystem, PackageFormat


def load(
    path: Path,
    project_name: str | None,
    common: Mapping[str, Any],
    allow_outside: Sequence[Path] = (),
    images: Mapping[str, str] | None = None,
) -> Application:
    """The application in PATH, every service mapped onto BuildOptions (COMMON adds the options that
    are the same for every service: format, output directory, cache, credentials…). Checked whole
    before anything is pulled, built or written. ALLOW_OUTSIDE: paths outside the file's directory that
    its secrets, configs and bind mounts may package. IMAGES: --image SERVICE=REF, images that replace
    what the file gives (or builds)."""
    doc = read_model(path, project_name)
    written = raw_services(path, project_name)
    if written is not None:
        left_out(path, written, list(doc.get("services") or {}))
    return plan(doc, path, common, allow_outside, written, images)


def plan(
    doc: Mapping[str, Any],
    path: Path,
    common: Mapping[str, Any],
    allow_outside: Sequence[Path] = (),
    written: Mapping[str, Any] | None = None,
    images: Mapping[str, str] | None = None,
) -> Application:
    """DOC (the canonical model) mapped; WRITTEN (raw_services) adds the env_file paths it folded."""
    src = Source(path, tuple(p.resolve() for p in allow_outside))
    supplied = _supplied(path, images or {}, doc.get("services") or {})
    unknown_keys(src, "top level", doc, TOP_KEYS)
    name = str(doc.get("name") or "")
    services = doc.get("services") or {}
    if not services:
        raise refuse(path, "services", "no services", "a compose file needs at least one service")
    fmt = common.get("format", PackageFormat.DEB)
    stack = f"{name}{STACK_SUFFIX}"
    check_name(path, "name", stack, fmt)
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
        mapped = src.attempt(
            service_options,
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
            supplied=supplied.get(svc_name),
        )
        if mapped is not None:
            plans[svc_name] = ServicePlan(svc_name, *mapped)
        _env_files(src, f"services.{svc_name}.env_file", (written or {}).get(svc_name) or {})
    _one_network(src, services)
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


def _supplied(
    path: Path, images: Mapping[str, str], services: Mapping[str, Any]
) -> dict[str, ImageReference]:
    """--image SERVICE=REF, each naming a service of the file and an image."""
    supplied = {}
    for service, text in images.items():
        if service not in services:
            raise UsageError(
                f"--image {service}={text}: {path} has no service {service!r}",
                hint=f"its services: {', '.join(services) or 'none'}",
            )
        supplied[service] = parse(text)
    return supplied


def parse_images(given: Sequence[str]) -> dict[str, str]:
    """--image SERVICE=REF values, one service each."""
    images: dict[str, str] = {}
    for item in given:
        service, sep, ref = item.partition("=")
        if not sep or not service or not ref:
            raise UsageError(
                f"--image {item!r} is not SERVICE=REF", hint="e.g. --image web=registry.example.com/web:1.0"
            )
        if images.setdefault(service, ref) != ref:
            raise UsageError(f"--image names {service} twice", hint="give one image per service")
    return images


def _one_network(src: Source, services: Mapping[str, Any]) -> None:
    """ctr2svc gives an application one network, on which every service reaches every other. A file
    whose services are on different networks (two on one service, or separate ones) asks that some
    of them cannot reach others: that would silently be lost, so it is refused."""
    members: dict[str, list[str]] = {}
    for svc_name, svc in services.items():
        if svc.get("network_mode") is None:
            for net in svc.get("networks") or {"default": None}:
                members.setdefault(str(net), []).append(svc_name)
    if len(members) > 1:
        listed = "; ".join(f"{net}: {', '.join(names)}" for net, names in sorted(members.items()))
        src.note(
            src.refuse(
                "networks",
                f"the services are on {len(members)} networks ({listed}), and ctr2svc puts an "
                "application's services on one, where each service reaches every other",
                "put every service on one network (or drop networks: from the file) if they may all "
                "reach each other",
            )
        )


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
        unknown_keys(src, where, spec, {"name", "ipam", "driver", "external", "attachable"})
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
        unknown_keys(src, f"volumes.{vol}", spec or {}, {"name"})
    return set(volumes)


def check_format(fmt: PackageFormat, init: InitSystem | None) -> None:
    if fmt is PackageFormat.APK or init is InitSystem.OPENRC:
        raise UsageError(
            "compose applications are built for systemd only (deb or rpm)",
            hint="use --format deb or --format rpm without --init openrc",
        )


def as_project(
    path: Path, allow_outside: Sequence[Path] = (), supplied: Mapping[str, str] | None = None
) -> Project:
    """A compose file as a project file (`build -c`, `update -c`): its services are the images, built
    into dist/ beside it, and its application package is built after them."""
    output_dir = path.parent / "dist"
    app = load(path, None, {"output_dir": output_dir}, allow_outside, supplied)
    images = [
        ImageEntry(
            number, {"ref": str(s.options.reference), "name": s.options.name}, preset=s.options, build=s.build
        )
        for number, s in enumerate(app.services, 1)
    ]
    return Project(path=path, output_dir=output_dir, images=images, application=app)
