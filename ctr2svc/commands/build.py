"""`ctr2svc build`: one image, a project file (-c) or a compose application (--compose)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ctr2svc import completion, log
from ctr2svc.commands.common import (
    allow_outside_option,
    build_options,
    image_option,
    package_options,
    report,
    verbosity_options,
)
from ctr2svc.distribution import summary
from ctr2svc.errors import UsageError


@click.command(name="build")
@verbosity_options
@click.argument("image", required=False, shell_complete=completion.image_references)
@click.option(
    "-c",
    "--config",
    "project_file",
    type=click.Path(path_type=Path),
    help="Build every image of a project file (ctr2svc.toml) instead of IMAGE.",
)
@click.option(
    "--compose",
    "compose_file",
    type=click.Path(path_type=Path),
    help="Build a compose application: one package per service and NAME-stack, which starts them all.",
)
@click.option(
    "--project-name",
    metavar="NAME",
    help="With --compose: the application's name, which package names start with (default: the "
    "compose file's name:, or its directory's name).",
)
@allow_outside_option
@image_option
@click.option(
    "-o", "--output-dir", type=click.Path(path_type=Path), default=Path(), help="Where to write the package."
)
@package_options
@click.option(
    "--sign-key-file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Sign the package: an armored OpenPGP secret key (deb, rpm) or a PEM RSA key (apk). "
    "Its passphrase, if any, in $NFPM_PASSPHRASE.",
)
@click.option("--sign-key-name", help="apk: the public key's name in /etc/apk/keys (default: NAME.rsa.pub).")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print a JSON summary of the package (with -c: a list, one per package) instead of its path.",
)
def build_command(
    image: str | None,
    project_file: Path | None,
    compose_file: Path | None,
    project_name: str | None,
    allow_outside: tuple[Path, ...],
    images: tuple[str, ...],
    output_dir: Path,
    as_json: bool,
    **package: Any,
) -> None:
    """Build a package that runs IMAGE as a service.

    IMAGE is a registry reference (registry.example.com/team/app:1.2, valkey/valkey:9.0.0, or with a
    @sha256: digest) or a local image: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE.

    \b
    Examples:
      ctr2svc build 127.0.0.1:5000/valkey:9.0.0 -o dist/
      ctr2svc build registry.example.com/app:2.1 --creds user:secret --arch arm64
      ctr2svc build docker-archive:app.tar --name app-svc --version 2.1
      ctr2svc build oci:examples/hello:1.0 --format rpm
      ctr2svc build oci:examples/hello:1.0 --format apk        # OpenRC
      ctr2svc build -c ctr2svc.toml                             # every image of a project
      ctr2svc build --compose compose.yaml -o dist/             # a compose application
    """
    if compose_file is not None:
        if image is not None or project_file is not None:
            raise UsageError(
                "give one of IMAGE, -c FILE or --compose FILE",
                hint="--compose builds every service of the file",
            )
        _build_compose(compose_file, project_name, output_dir, as_json, package, allow_outside, images)
        return
    if project_name is not None:
        raise UsageError(
            "--project-name goes with --compose", hint="add --compose FILE, or drop --project-name"
        )
    if project_file is not None:
        if image is not None:
            raise UsageError("give either IMAGE or -c FILE, not both", hint="drop IMAGE to build the project")
        from ctr2svc.apps.compose import parse_images
        from ctr2svc.apps.project import load as load_project
        from ctr2svc.distribution.update import build_all

        project = load_project(project_file, allow_outside, parse_images(images))
        outcomes = build_all(project)
        report(outcomes, "built", as_json=as_json)
        return
    if image is None:
        raise UsageError(
            "no image given", hint="pass an image reference, e.g. ctr2svc build valkey/valkey:9.0.0"
        )
    if allow_outside or images:
        option = "--allow-outside" if allow_outside else "--image"
        raise UsageError(f"{option} goes with a compose file", hint=f"add --compose FILE, or drop {option}")
    # Imported here, not at the top: an up-to-date package (the build record says so) needs little of the
    # build's code, and `ctr2svc build` of an unchanged image should cost hardly more than Python's start.
    from ctr2svc.build.pipeline import build
    from ctr2svc.options.request import resolve

    request = resolve(build_options(image, output_dir=output_dir, **package))
    result = build(request)
    size = result.path.stat().st_size
    state = "up to date" if result.up_to_date else f"{size / 1e6:.1f} MB"
    log.info(f"✓ {result.path} ({state})")
    if result.layer_files:
        built = set(result.built_layers)
        log.info(
            f"  layers:  {len(result.layer_files)} package(s), {len(built)} built now, "
            f"{len(result.layer_files) - len(built)} reused"
        )
        for layer in result.layer_files:
            log.debug(f"    {layer}")
    log.info(f"  sha256:  {result.sha256}")
    log.info(f"  image:   {result.pinned}")
    log.info(f"  service: {result.service}, data in {result.data_dir}")
    log.info(f"  install: {summary.install_command(request.format, result)}")
    # The package path alone on stdout, for scripts (or all of the above as JSON).
    click.echo(summary.dumps(summary.package(request.format, result)) if as_json else str(result.path))


# Package options that are the same for every service of a compose application; the others describe
# one image and are the compose file's to give, per service.
COMPOSE_COMMON = {
    "fmt", "init", "arch", "creds", "authfile", "tls_verify", "cache_dir", "maintainer", "compression",
    "policy", "registries_d",
    "runtime", "stdio", "activation", "layers", "pkg_version", "sign_key_file", "sign_key_name",
}  # fmt: skip


def _build_compose(
    path: Path,
    project_name: str | None,
    output_dir: Path,
    as_json: bool,
    given: dict[str, Any],
    allow_outside: tuple[Path, ...],
    images: tuple[str, ...],
) -> None:
    from ctr2svc.apps import compose, compose_keys, stack
    from ctr2svc.model import InitSystem, PackageFormat

    ctx = click.get_current_context()
    for key in given:
        source = ctx.get_parameter_source(key)
        if key not in COMPOSE_COMMON and source is not click.core.ParameterSource.DEFAULT:
            option = next(p for p in ctx.command.params if p.name == key)
            raise UsageError(
                f"{option.opts[-1]} describes one image, and --compose builds many",
                hint=f"set it per service in {path} ({compose_keys.DOCS})",
            )
    fmt = PackageFormat(given["fmt"])
    init = InitSystem(given["init"]) if given.get("init") else None
    compose.check_format(fmt, init)
    common: dict[str, Any] = {
        "format": fmt,
        "init": init,
        "output_dir": output_dir,
        **{k: given[k] for k in ("arch", "creds", "authfile", "tls_verify", "cache_dir", "maintainer")},
        **{k: given[k] for k in ("policy", "registries_d")},
        **{
            k: given[k]
            for k in ("compression", "runtime", "stdio", "activation", "sign_key_file", "sign_key_name")
        },
    }
    if ctx.get_parameter_source("layers") is not click.core.ParameterSource.DEFAULT:
        common["layers"] = given["layers"]
    app = compose.load(path, project_name, common, allow_outside, compose.parse_images(images))
    result = stack.build_application(app, version=given.get("pkg_version"))
    for plan, built in result.services:
        log.info(f"✓ {plan.service}: {built.path} ({'up to date' if built.up_to_date else built.version})")
    log.info(f"✓ {result.stack} ({'up to date' if result.stack_up_to_date else 'the application'})")
    log.info(f"  start:   systemctl start {app.stack}.target (installing it starts it)")
    log.info(f"  install: {stack.install_command(result)}")
    if as_json:
        click.echo(summary.dumps(stack.summary(result)))
        return
    click.echo(str(result.stack))
    for _, built in result.services:
        click.echo(str(built.path))
