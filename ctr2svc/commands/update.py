"""`ctr2svc update`: rebuild what moved in the registry and publish it."""

from __future__ import annotations

from pathlib import Path

import click

from ctr2svc.apps.compose import parse_images
from ctr2svc.apps.project import load as load_project
from ctr2svc.commands.common import allow_outside_option, image_option, report, verbosity_options
from ctr2svc.distribution.update import update
from ctr2svc.errors import UsageError


@click.command(name="update")
@verbosity_options
@click.option(
    "-c",
    "--config",
    "project_file",
    required=True,
    type=click.Path(path_type=Path),
    help="The project file (ctr2svc.toml).",
)
@click.option(
    "--repo",
    "repo_dir",
    type=click.Path(path_type=Path),
    help="Repository (default: [repo] path).",
)
@click.option(
    "--rebuild",
    is_flag=True,
    help="Rebuild and publish every image, moved or not (a new release each): how a newer ctr2svc's "
    "service helper reaches the hosts. Layer packages already published are reused.",
)
@allow_outside_option
@image_option
def update_command(
    project_file: Path,
    repo_dir: Path | None,
    rebuild: bool,
    allow_outside: tuple[Path, ...],
    images: tuple[str, ...],
) -> None:
    """Rebuild the images whose tag moved to a new digest and publish them to the repository.

    Asks the registry for each tag's digest (no download when unchanged); safe to run from cron. Exit
    status: 0 when every image is up to date or was published, 6 when some failed (the others are
    published), 2 for a bad project file.

    \b
    Example:
      ctr2svc update -c ctr2svc.toml --repo /srv/repo
      ctr2svc update -c ctr2svc.toml --rebuild      # after upgrading ctr2svc
    """
    project = load_project(project_file, allow_outside, parse_images(images))
    target = repo_dir or project.repo
    if target is None:
        raise UsageError("no repository given", hint="pass --repo DIR or set [repo] path in the project file")
    report(update(project, target, rebuild=rebuild), "updated")
