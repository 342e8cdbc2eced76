"""`ctr2svc inspect`: what an image declares and what a package of it would be, without building one.

The image is pulled into the cache (a later build of the same digest reuses it); nothing is unpacked
or written elsewhere.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ctr2svc import naming, registry
from ctr2svc.build import BuildOptions, normalize_signal, pull_options, workspace
from ctr2svc.errors import Ctr2svcError
from ctr2svc.model import HealthCheck, Layout, PackageFormat


def inspect(opts: BuildOptions) -> dict[str, Any]:
    registry.check_transport(opts.reference)
    cache = registry.ImageCache(opts.cache_dir or registry.default_cache_dir())
    cache.ensure()
    with workspace(cache.root) as work:
        pull = pull_options(opts)
        located = registry.locate(opts.reference, pull, work)
        image = registry.resolve(opts.reference, pull, cache, work, located)
    cfg = image.config
    name = opts.name or naming.default_package_name(image.reference.basename)
    packages: dict[str, Any] = {}
    for fmt in PackageFormat:
        try:
            version = naming.default_version(fmt, image.reference.tag, image.digest, cfg.created)
            arch = naming.format_arch(fmt, naming.deb_arch(cfg.architecture or "amd64", cfg.variant))
            packages[str(fmt)] = {"version": version.full, "arch": arch}
        except Ctr2svcError as exc:
            packages[str(fmt)] = {"error": exc.one_line()}
    layout = Layout(name, packages["deb"].get("version", "VERSION"))
    health = HealthCheck.from_image(cfg.healthcheck)
    return {
        "reference": str(image.reference),
        "pinned": image.pinned,
        "digest": image.digest,
        "index_digest": image.index_digest,
        "platform": cfg.platform,
        "platforms": list(located.platforms) or [cfg.platform],
        "created": cfg.created,
        "entrypoint": list(cfg.entrypoint),
        "cmd": list(cfg.cmd),
        "user": cfg.user or "root",
        "working_dir": cfg.working_dir or "/",
        "env": list(cfg.env),
        "exposed_ports": list(cfg.exposed_ports),
        "volumes": list(cfg.volumes),
        "stop_signal": normalize_signal(cfg.stop_signal or "SIGTERM"),
        "healthcheck": asdict(health) if health else None,
        "labels": dict(cfg.labels),
        "package": {
            "name": name,
            "formats": packages,
            "service": layout.unit_name,
            "image_dir": layout.image_dir,
            "data_dir": layout.data_dir,
            "volumes": {v: layout.volume_host_path("/" + v.strip("/")) for v in cfg.volumes},
            "config_dir": layout.config_dir,
        },
    }


def text(info: dict[str, Any]) -> str:
    """The report for people: what the image declares, then what ctr2svc would make of it."""
    pkg = info["package"]
    health = info["healthcheck"]
    check = f"{' '.join(health['command'])} (every {health['interval']}s)" if health else "-"
    lines = [
        f"image       {info['pinned']}",
        f"platform    {info['platform']}  (offers: {', '.join(info['platforms'])})",
        f"created     {info['created'] or 'unknown'}",
        f"entrypoint  {' '.join(info['entrypoint']) or '-'}",
        f"cmd         {' '.join(info['cmd']) or '-'}",
        f"user        {info['user']}",
        f"workdir     {info['working_dir']}",
        f"ports       {', '.join(info['exposed_ports']) or '-'}",
        f"volumes     {', '.join(info['volumes']) or '-'}",
        f"stop signal {info['stop_signal']}",
        f"healthcheck {check}",
        "env         " + ("\n            ".join(info["env"]) or "-"),
        "",
        f"package     {pkg['name']}",
    ]
    for fmt, detail in pkg["formats"].items():
        lines.append(
            f"  {fmt:<9} {detail.get('version', '')} {detail.get('arch', '')}{detail.get('error', '')}"
        )
    lines += [
        f"service     {pkg['service']}",
        f"image dir   {pkg['image_dir']}",
        f"data        {pkg['data_dir']}",
    ]
    lines += [f"  volume    {c} -> {h}" for c, h in pkg["volumes"].items()]
    lines.append(f"settings    {pkg['config_dir']}/{{env,args,mounts}}")
    return "\n".join(lines)
