"""Render the files ctr2svc generates (unit, service helper, ownership script, package scripts).

Python decides every value; the templates in templates/ only lay them out.
"""

from __future__ import annotations

import shlex
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctr2svc import __version__, runtime
from ctr2svc.image.bundle import Entry, Kind, RootfsScan
from ctr2svc.model import InitSystem, PackageFormat, ServiceSpec
from ctr2svc.service import rollback, sandbox

if TYPE_CHECKING:
    import jinja2

# Paths per chown command line: few processes, and far below the kernel's argument size limit.
CHOWN_BATCH = 200


def templates_dir() -> Path:
    package = Path(__file__).resolve().parents[1]  # ctr2svc/
    # Installed wheels carry the templates inside the package; a checkout keeps them at the top level.
    for candidate in (package / "templates", package.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"ctr2svc's templates are missing (looked in {package / 'templates'})")


def _unit_value(value: str) -> str:
    # systemd expands %-specifiers and ends a value at a newline.
    return " ".join(str(value).split()).replace("%", "%%")


def _rel(path: str) -> str:
    # "./" keeps names that start with "-" from being read as options.
    return f"./{path}" if path else "."


@cache
def _environment() -> jinja2.Environment:
    # Imported here: a no-op rebuild or `--help` renders nothing and should not pay for jinja2.
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - shell and unit files, not HTML; values are quoted by filters
    )
    env.filters["sh"] = lambda value: shlex.quote(str(value))
    env.filters["unit_value"] = _unit_value
    env.filters["rel"] = _rel
    return env


def render(template: str, **values: Any) -> str:
    return _environment().get_template(template).render(ctr2svc_version=__version__, **values)


@dataclass(frozen=True)
class ChownBatch:
    owner: str
    paths: tuple[str, ...]

    @property
    def uid(self) -> int:
        return int(self.owner.split(":")[0])

    @property
    def gid(self) -> int:
        return int(self.owner.split(":")[1])


def ownership_plan(scan: RootfsScan) -> tuple[list[ChownBatch], list[Entry], list[Entry]]:
    """(chown batches by owner, entries whose mode chown would spoil, hard links)."""
    by_owner: dict[str, list[str]] = defaultdict(list)
    chmods: list[Entry] = []
    for entry in scan.foreign_owned:
        by_owner[f"{entry.uid}:{entry.gid}"].append(entry.path)
        if entry.kind is not Kind.SYMLINK and entry.mode & 0o6000:
            chmods.append(entry)
    batches = [
        ChownBatch(owner, tuple(paths[i : i + CHOWN_BATCH]))
        for owner, paths in sorted(by_owner.items())
        for i in range(0, len(paths), CHOWN_BATCH)
    ]
    return batches, chmods, scan.hardlinks


@dataclass(frozen=True)
class GeneratedFile:
    dest: str
    content: str | bytes
    mode: int
    # The admin's to edit: a conffile (deb), %config(noreplace) (rpm), kept on upgrade.
    config: bool = False

    @property
    def text(self) -> str:
        """The content of a file ctr2svc generated, which is text (a compose file's may not be)."""
        if isinstance(self.content, bytes):
            raise TypeError(f"{self.dest} is not text")
        return self.content


def _values(spec: ServiceSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "format": str(spec.format),
        "version": spec.version,
        "image": spec.image.pinned,
        "layout": spec.layout,
        "init": str(spec.init),
        "stop_signal": spec.stop_signal,
        "stop_timeout": spec.stop_timeout,
        "volumes": spec.volumes,
        "description": spec.description,
        "homepage": spec.homepage,
        "unit": spec.layout.unit_name,
        "preset_name": Path(spec.layout.preset_path).name,
        "activation": spec.activation,
        "entrypoint_n": spec.entrypoint_n,
        "restart": f"rc-service {spec.name} restart"
        if spec.init is InitSystem.OPENRC
        else f"systemctl restart {spec.name}",
        "config_dir": spec.layout.config_dir,
        "volumes_dir": spec.layout.volumes_dir,
        "resources": spec.resources,
        "memory_max": spec.resources.memory,
        "cpu_quota": f"{round(spec.resources.cpus * 100)}%" if spec.resources.cpus else None,
        "health": spec.health,
        "ready_port": spec.ready_port,
        "runtime": spec.runtime,
        "pids_limit": spec.security.pids_limit,
        "layers": spec.layers,
        # The package's network mode; /etc/NAME/network (the admin's) may say otherwise.
        "network_mode": spec.network,
        "userns_mode": spec.userns,
        # Compose applications (their defaults render as before).
        "restart_policy": spec.restart,
        "requires": [f"{name}.service" for name in spec.requires],
        "wants": [f"{name}.service" for name in spec.wants],
        "stack_target": f"{spec.stack}.target" if spec.stack else None,
        "wanted_by": spec.wanted_by,
        "oneshot": spec.oneshot,
        "ready_health": spec.ready_health,
        "health_deadline": health_deadline(spec),
        "sandbox": sandbox.unit_sandbox(spec),
        "data_dir": spec.layout.data_dir,
        "rollback": rollback.applies(spec),
        "rollback_dir": rollback.state_dir(spec.layout),
        "previous_dir": rollback.previous_dir(spec.layout),
        "kept_path": rollback.kept_path(spec),
        "openrc_rollback": rollback.openrc_file(spec.layout),
    }


def health_deadline(spec: ServiceSpec) -> int:
    """Seconds a start waits for a health check to pass (a service others wait for to be healthy): its
    start period, then as many intervals as failures in a row make Docker call it unhealthy."""
    check = spec.health
    if check is None:
        return 0
    return check.start_period + check.retries * (check.interval + check.timeout)


def service_files(spec: ServiceSpec, scan: RootfsScan, render_key: str = "") -> list[GeneratedFile]:
    """The files the package installs besides the image: helper, ownership script, init integration.

    RENDER_KEY names the packaged runtime config (a digest of it): the helper renders the runtime
    bundle again only when it, the host name or the admin's files changed."""
    values = _values(spec)
    root = scan.entries[0] if scan.entries else Entry("", Kind.DIR, 0o755, 0, 0, 0)
    key = render_key or spec.image.digest.split(":")[-1][:16]
    helper_data = runtime.service_values(spec, key, root.mode, root.uid, root.gid)
    batches, chmods, hardlinks = ownership_plan(scan)
    cfg = spec.layout.config_dir
    files = [
        # The helper and its awk programs: the same bytes in every package; service.env is the data.
        GeneratedFile(spec.layout.helper, runtime.program(), 0o755),
        GeneratedFile(spec.layout.service_env, runtime.service_env(helper_data), 0o644),
        GeneratedFile(spec.layout.config_awk, runtime.awk_program("config.awk"), 0o644),
        GeneratedFile(spec.layout.network_awk, runtime.awk_program("network.awk"), 0o644),
        GeneratedFile(spec.layout.idmap_program, runtime.awk_program(runtime.IDMAP_PROGRAM), 0o644),
        # Mode 0600: the environment is where an admin puts passwords.
        GeneratedFile(f"{cfg}/env", render("env.j2", **values, env=spec.env), 0o600, config=True),
        GeneratedFile(
            f"{cfg}/args",
            render(
                "args.j2",
                **values,
                args=(),
            ),
            0o644,
            config=True,
        ),
        GeneratedFile(f"{cfg}/mounts", render("mounts.j2", **values, mounts=spec.mounts), 0o644, config=True),
    ]
    # Every package can run on either network: the admin switches with /etc/NAME/network.
    files += [
        GeneratedFile(f"{cfg}/network", render("network.j2", **values), 0o644, config=True),
        GeneratedFile(f"{cfg}/ports", render("ports.j2", **values, publish=spec.publish), 0o644, config=True),
        # And in a user namespace of its own or not: /etc/NAME/userns.
        GeneratedFile(f"{cfg}/userns", render("userns.j2", **values), 0o644, config=True),
    ]
    # A compose application's config files and secrets (the admin's, kept on upgrade) and the data it
    # packages from beside the compose file, mounted at start.
    files += [GeneratedFile(f.dest, f.content, f.mode, config=f.config) for f in spec.files]
    if not spec.layers:
        # Shared layers set their own files up (templates/layer/setup.sh.j2).
        # A shift (user namespaces) chowns every file, which clears the set-id bits of root's too.
        shifted_chmods = [
            e for e in scan.entries if e.kind is not Kind.SYMLINK and e.mode & 0o6000 and e not in chmods
        ]
        ownership = render(
            "ownership.sh.j2",
            image=spec.image.pinned,
            rootfs=spec.layout.rootfs,
            chown_batches=batches,
            chmods=chmods,
            shifted_chmods=shifted_chmods,
            hardlinks=hardlinks,
            root_uid=root.uid,
            root_gid=root.gid,
        )
        files.append(GeneratedFile(f"{spec.layout.image_dir}/ownership.sh", ownership, 0o755))
    if spec.init is InitSystem.OPENRC:
        # Only where OpenRC is the init: beside a systemd unit, an init.d script breaks `systemctl enable`.
        # A .deb's init script is a conffile, as Debian policy wants of everything in /etc.
        script = render("openrc/init.j2", **values)
        config = spec.format is PackageFormat.DEB
        files.append(GeneratedFile(spec.layout.init_script, script, 0o755, config=config))
        # The init script sends the output to /var/log/NAME.log: logrotate keeps it in bounds.
        logrotate = render("openrc/logrotate.j2", **values)
        files.append(GeneratedFile(f"/etc/logrotate.d/{spec.name}", logrotate, 0o644, config=True))
    else:
        files.append(GeneratedFile(spec.layout.unit_path, render("service.unit.j2", **values), 0o644))
        if spec.health is not None:
            for kind in ("service", "timer"):
                dest = f"{spec.layout.unit_dir}/{spec.name}-health.{kind}"
                files.append(GeneratedFile(dest, render(f"health.{kind}.j2", **values), 0o644))
    if rollback.applies(spec):
        files.append(GeneratedFile(f"{cfg}/rollback", render("rollback.j2", **values), 0o644, config=True))
    if spec.format is PackageFormat.RPM and spec.activation == "start":
        # Fedora's policy leaves enabling to the distribution's and the admin's presets; only a build that
        # asks for Debian's rule (--activation start) ships one enabling the service.
        files.append(GeneratedFile(spec.layout.preset_path, render("rpm/preset.j2", **values), 0o644))
    return files


# Package script templates per format, keyed by nfpm's name for the script.
SCRIPTS = {
    PackageFormat.DEB: {"postinstall": "deb/postinst", "preremove": "deb/prerm", "postremove": "deb/postrm"},
    PackageFormat.RPM: {"postinstall": "rpm/post", "preremove": "rpm/preun", "postremove": "rpm/postun"},
    PackageFormat.APK: {
        "postinstall": "apk/post-install",
        "postupgrade": "apk/post-upgrade",
        "preremove": "apk/pre-deinstall",
        "postremove": "apk/post-deinstall",
    },
}


def package_scripts(spec: ServiceSpec) -> dict[str, str]:
    """The package's maintainer scripts, keyed by nfpm's script name."""
    values = _values(spec)
    scripts = {key: render(f"{template}.j2", **values) for key, template in SCRIPTS[spec.format].items()}
    if rollback.applies(spec):
        # Upgrades that roll back: the snapshot is taken before the unpack.
        templates = {
            PackageFormat.DEB: "deb/preinst",
            PackageFormat.RPM: "rpm/pre",
            PackageFormat.APK: "apk/pre-upgrade",
        }
        key = "preupgrade" if spec.format is PackageFormat.APK else "preinstall"
        scripts[key] = render(
            f"{templates[spec.format]}.j2", **values, snapshot_program=runtime.snapshot_part()
        )
    return scripts


# A layer package's scripts, keyed by nfpm's name (one template each, for every format): make what its
# payload cannot carry, and take it away again on removal.
LAYER_SCRIPTS = {"postinstall": "layer/postinst", "preremove": "layer/prerm", "postremove": "layer/postrm"}
