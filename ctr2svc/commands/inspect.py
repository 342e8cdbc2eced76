"""`ctr2svc inspect`: what an image declares and what its package would be."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ctr2svc import completion
from ctr2svc.commands.common import build_options, package_options, verbosity_options
from ctr2svc.inspect import inspect as inspect_image
from ctr2svc.inspect import text as inspect_text
from ctr2svc.options.request import resolve


@click.command(name="inspect")
@verbosity_options
@click.argument("image", shell_complete=completion.image_references)
@package_options
@click.option(
    "--generated",
    "with_files",
    is_flag=True,
    help="Also unpack the image and show what a build would generate: every file it adds, the "
    "systemd unit or OpenRC script, and the changes to the runtime config.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_command(image: str, with_files: bool, as_json: bool, **package: Any) -> None:
    """Show what IMAGE declares and what a package of it would be, without building; or, given a
    package file ctr2svc built, the image it holds and the signature policy it was verified against.

    Takes the options `build` takes, so `--generated` shows their effect.

    \b
    Examples:
      ctr2svc inspect 127.0.0.1:5000/valkey:9.0.0
      ctr2svc inspect oci:examples/hello:1.0 --generated --memory 256M
      ctr2svc inspect oci:examples/hello:1.0 --json | jq .package
      ctr2svc inspect ./hello-svc_1.0_amd64.deb
    """
    if _package_file(image):
        _inspect_package(Path(image), as_json)
        return
    info = inspect_image(resolve(build_options(image, **package)), with_files=with_files)
    click.echo(json.dumps(info, indent=2) if as_json else inspect_text(info))


def _package_file(argument: str) -> bool:
    """A .deb, .rpm or .apk file (an image reference has a transport or a registry, never this)."""
    path = Path(argument)
    return path.suffix in (".deb", ".rpm", ".apk") and path.is_file()


def _inspect_package(path: Path, as_json: bool) -> None:
    """What a built package records of its image: the pinned digest and who vouched for it."""
    from ctr2svc.distribution import provenance
    from ctr2svc.distribution.packages import read_package

    package = read_package(path, verify=False)
    record = provenance.image_record(path, package.format, package.describe())
    if as_json:
        click.echo(json.dumps({"package": package.describe(), "image": record}, indent=2))
    else:
        click.echo(provenance.report(path, package.describe(), record))
