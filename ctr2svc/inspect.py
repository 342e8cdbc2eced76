"""`ctr2svc inspect`: what an image declares and what a package of it would be, without building one.

The image is pulled into the cache (a later build of the same digest reuses it). With `generated`
it is also unpacked in a scratch directory, to render the files a build would put in the package;
nothing is written anywhere else.
"""

from __future__ import annotations

import difflib
import json
import unicodedata
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ctr2svc import metadata
from ctr2svc.build.generate import Generated, generate
from ctr2svc.build.pipeline import pull_options
from ctr2svc.build.workspace import workspace
from ctr2svc.errors import Ctr2svcError
from ctr2svc.image import layers, layerstore, registry
from ctr2svc.image.cache import ImageCache, default_cache_dir
from ctr2svc.model import HealthCheck, Layout, PackageFormat
from ctr2svc.options.request import BuildRequest
from ctr2svc.options.values import normalize_signal
from ctr2svc.package import naming

# Of `inspect --json`'s output (docs/json.md): bumped when a field changes meaning or goes away.
SCHEMA_VERSION = 1


def inspect(request: BuildRequest, *, with_files: bool = False) -> dict[str, Any]:
    registry.check_transport(request.reference)
    cache = ImageCache(request.cache_dir or default_cache_dir())
    cache.ensure()
    made: dict[str, Any] | None = None
    with workspace(cache.root) as work:
        pull = pull_options(request)
        located = registry.locate(request.reference, pull, work)
        image = registry.resolve(request.reference, pull, cache, work, located)
        if with_files:
            made = generated(generate(request, cache, image, work))
    cfg = image.config
    name = request.name or naming.default_package_name(image.reference.basename)
    layer_info = image_layers(cache, image.digest)
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
        "schema_version": SCHEMA_VERSION,
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
        "stop_signal": normalize_signal(cfg.stop_signal or "SIGTERM", f"image {image.reference}"),
        "healthcheck": asdict(health) if health else None,
        "labels": dict(cfg.labels),
        "layers": layer_info,
        "package": {
            "name": name,
            "formats": packages,
            "service": layout.unit_name,
            "image_dir": layout.image_dir,
            "data_dir": layout.data_dir,
            "volumes": {v: layout.volume_host_path(metadata.volume_path(v)) for v in cfg.volumes},
            "config_dir": layout.config_dir,
        },
        "generated": made,
    }


def image_layers(cache: ImageCache, digest: str) -> list[dict[str, Any]]:
    """The layer packages `--layers shared` makes of the image, bottom first: their sizes, and whether
    they are already unpacked and packed in the cache, and installed on this host."""
    manifest = cache.manifest(digest)
    if manifest is None:
        return []
    store = layerstore.LayerStore(cache.root)
    shown = []
    for unit in layers.plan(layers.image_layers(manifest, cache.config(manifest))):
        extracted = store.cached(unit)
        marker = Path(unit.install_dir) / "id"
        try:
            installed = marker.read_text().strip() == unit.id
        except OSError:
            installed = False
        shown.append(
            {
                "package": unit.package,
                "id": unit.id,
                "diff_ids": [x.diff_id for x in unit.layers],
                "compressed": sum(x.size for x in unit.layers),
                "unpacked": extracted.scan.file_bytes if extracted else None,
                "files": len(extracted.scan.entries) if extracted else None,
                "built": sorted(p.name for p in (store.path(unit) / "packages").glob("*/*") if p.is_file()),
                "installed": installed,
            }
        )
    return shown


def generated(made: Generated) -> dict[str, Any]:
    """What a build would add to the image: every file it installs, and the runtime config's changes."""
    spec = made.spec
    layout = spec.layout
    files = [
        {
            "path": f.dest,
            "mode": f"{f.mode:04o}",
            "conffile": f.config,
            # JSON holds text: a binary file is shown by its size.
            "content": f.content if isinstance(f.content, str) else f"<{len(f.content)} bytes>",
        }
        for f in made.files
    ]
    original = json.dumps(made.bundle.config, indent=2, sort_keys=True).splitlines()
    patched = json.dumps(made.config, indent=2, sort_keys=True).splitlines()
    diff = difflib.unified_diff(
        original, patched, "umoci's config.json", "the package's config.json", lineterm=""
    )
    return {
        "format": str(spec.format),
        "init": str(spec.init),
        "version": spec.version,
        "files": files,
        "config_json": f"{layout.image_dir}/config.json",
        "config_diff": "\n".join(diff),
        # Shared layers: the root is in the layer packages (`layers` says which), not this package.
        "rootfs": layout.rootfs if not spec.layers else None,
        "rootfs_entries": len(made.scan.entries),
        "rootfs_bytes": made.scan.file_bytes,
        "layer_packages": [x.package for x in spec.layers],
        "scripts": sorted(made.scripts),
    }


def _shown(value: Any) -> str:
    """An image's value for a terminal: control characters (escape sequences, line breaks) as escapes,
    so that a crafted label or env value cannot redraw the screen or fake a line of the report."""
    return "".join(
        c if c == " " or unicodedata.category(c)[0] not in "CZ" else repr(c)[1:-1] for c in str(value)
    )


def text(info: dict[str, Any]) -> str:
    """The report for people: what the image declares, then what ctr2svc would make of it."""
    pkg = info["package"]
    health = info["healthcheck"]
    check = f"{' '.join(health['command'])} (every {health['interval']}s)" if health else "-"
    lines = [
        f"image       {info['pinned']}",
        f"platform    {_shown(info['platform'])}  (offers: {_shown(', '.join(info['platforms']))})",
        f"created     {_shown(info['created'] or 'unknown')}",
        f"entrypoint  {_shown(' '.join(info['entrypoint'])) or '-'}",
        f"cmd         {_shown(' '.join(info['cmd'])) or '-'}",
        f"user        {_shown(info['user'])}",
        f"workdir     {_shown(info['working_dir'])}",
        f"ports       {_shown(', '.join(info['exposed_ports'])) or '-'}"
        + ("  (publish with --network private -p HOST_PORT:PORT)" if info["exposed_ports"] else ""),
        f"volumes     {_shown(', '.join(info['volumes'])) or '-'}",
        f"stop signal {_shown(info['stop_signal'])}",
        f"healthcheck {_shown(check)}",
        "env         " + ("\n            ".join(_shown(e) for e in info["env"]) or "-"),
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
    shared = info["layers"]
    if shared:
        lines += ["", f"layers      {len(shared)} (--layers shared: one package each, bottom first)"]
        for layer in shared:
            unpacked = f", {layer['unpacked'] / 1e6:.1f} MB unpacked" if layer["unpacked"] is not None else ""
            state = [
                "built" if layer["built"] else "not built",
                "installed here" if layer["installed"] else "not installed here",
            ]
            merged = f", {len(layer['diff_ids'])} layers merged" if len(layer["diff_ids"]) > 1 else ""
            lines.append(
                f"  {layer['package']}  {layer['compressed'] / 1e6:.1f} MB compressed{unpacked}{merged}; "
                + ", ".join(state)
            )
    made = info.get("generated")
    if made:
        lines += ["", f"files of the {made['format']} package ({made['init']}), besides the image:"]
        image = f"({made['rootfs_entries']} entries, {made['rootfs_bytes']} bytes)"
        if made["rootfs"]:
            lines.append(f"  {made['rootfs']}/  {image}")
        else:
            lines.append(f"  no image files: they are in {', '.join(made['layer_packages'])} {image}")
        lines.append(f"  {made['config_json']}  (0644)")
        lines += [
            f"  {f['path']}  ({f['mode']}{', conffile' if f['conffile'] else ''})" for f in made["files"]
        ]
        lines.append(f"  scripts: {', '.join(made['scripts'])}")
        for f in made["files"]:
            if f["path"].endswith((".service", ".timer")) or "/init.d/" in f["path"]:
                lines += ["", f"--- {f['path']}", f["content"].rstrip()]
        lines += ["", "--- runtime config: what ctr2svc changes", made["config_diff"]]
    return "\n".join(lines)
