"""`ctr2svc repo`: package repositories that apt, dnf and apk install from."""

from __future__ import annotations

from pathlib import Path

import click

from ctr2svc import log
from ctr2svc.commands.common import verbosity_options
from ctr2svc.distribution.indexes import ApkKey, Signing
from ctr2svc.distribution.repo import DEFAULT_KEEP
from ctr2svc.distribution.repo import add as repo_add


@click.group(name="repo")
@verbosity_options
def repo_group() -> None:
    """Package repositories that apt and dnf install from.

    \b
    Example:
      ctr2svc repo add /srv/repo dist/*.deb dist/*.rpm --sign-key ops@example.com
      # clients: deb [signed-by=/etc/apt/keyrings/ops.gpg] http://host/repo/deb ./
    """


@repo_group.command(name="add")
@verbosity_options
@click.argument("repo_dir", metavar="REPO", type=click.Path(path_type=Path))
@click.argument(
    "packages", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False)
)
@click.option("--keep", type=int, default=DEFAULT_KEEP, show_default=True, help="Versions kept per package.")
@click.option("--sign-key", help="gpg key (id, fingerprint or e-mail) that signs the indexes.")
@click.option("--gnupghome", type=click.Path(path_type=Path, file_okay=False), help="gpg home of that key.")
@click.option(
    "--apk-key",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="PEM RSA private key that signs apk indexes (apk does not use gpg).",
)
@click.option(
    "--apk-key-name", help="The public key's name in the hosts' /etc/apk/keys (default: KEY's name.pub)."
)
def repo_add_command(
    repo_dir: Path,
    packages: tuple[Path, ...],
    keep: int,
    sign_key: str | None,
    gnupghome: Path | None,
    apk_key: Path | None,
    apk_key_name: str | None,
) -> None:
    """Add PACKAGES (.deb, .rpm, .apk) to REPO and regenerate its indexes (REPO/deb, REPO/rpm, REPO/apk/ARCH).

    \b
    Example:
      ctr2svc repo add /srv/repo dist/valkey-svc_9.0.0_amd64.deb --sign-key ops@example.com --keep 5
    """
    signing = Signing(sign_key, gnupghome) if sign_key else None
    apk = ApkKey(apk_key, apk_key_name or f"{apk_key.name}.pub") if apk_key else None
    result = repo_add(repo_dir, list(packages), keep=keep, signing=signing, apk_key=apk)
    for path in result.added:
        click.echo(str(path))
    if result.added or result.pruned:
        log.info(
            f"✓ {len(result.added)} added, {len(result.pruned)} pruned; indexes: "
            + ", ".join(str(p.relative_to(repo_dir)) for p in result.index)
        )
