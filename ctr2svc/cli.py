"""The `ctr2svc` command line."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.shell_completion import get_completion_class

from ctr2svc import __version__, completion, log
from ctr2svc.apps.project import load as load_project
from ctr2svc.build.pipeline import build
from ctr2svc.distribution import summary
from ctr2svc.distribution.indexes import ApkKey, Signing
from ctr2svc.distribution.repo import DEFAULT_KEEP
from ctr2svc.distribution.repo import add as repo_add
from ctr2svc.distribution.update import Outcome, build_all, table, update
from ctr2svc.errors import Ctr2svcError, PartialFailure, UsageError
from ctr2svc.image.reference import parse
from ctr2svc.inspect import inspect as inspect_image
from ctr2svc.inspect import text as inspect_text
from ctr2svc.model import InitSystem, PackageFormat
from ctr2svc.options.build_options import DEFAULT_MAINTAINER, DEFAULT_STOP_TIMEOUT, BuildOptions, shell_words
from ctr2svc.service.runtime_config import DEFAULT_PIDS_LIMIT


def _quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    # --debug wins over --quiet whichever comes first, and wherever each is written.
    if value and log.STATE.verbosity < 1:
        log.set_verbosity(-1)


def _debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        log.set_verbosity(1)


def verbosity_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """-q and -v, accepted before the command (`ctr2svc -q build`) and after it (`ctr2svc build -q`)."""
    quiet = click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_quiet,
        help="Print only warnings and errors.",
    )
    debug = click.option(
        "-v",
        "--debug",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_debug,
        help="Show every external command and its output.",
    )
    return quiet(debug(command))


class _Cli(click.Group):
    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        # Each invocation starts at normal verbosity; -q/-v on any level of the command line change it.
        log.set_verbosity(0)
        return super().make_context(*args, **kwargs)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ctr2svc")
@verbosity_options
def cli() -> None:
    """Turn container images into native packages that run them as system services.

    \b
    Example:
      ctr2svc build oci:examples/hello:1.0 -o dist/
      apt install ./dist/hello-svc_1.0_amd64.deb
    """


# Options that shape the package: `build` takes them, and `inspect --generated` to show their effect.
PACKAGE_OPTIONS = [
    click.option(
        "-f",
        "--format",
        "fmt",
        type=click.Choice([f.value for f in PackageFormat]),
        default="deb",
        show_default=True,
        help="Package format: deb (Debian/Ubuntu), rpm (Fedora/RHEL/SUSE) or apk (Alpine).",
    ),
    click.option(
        "--init",
        "init",
        type=click.Choice([i.value for i in InitSystem]),
        help="Init system to integrate with (default: systemd; openrc for apk; deb can do either).",
    ),
    click.option("--name", help="Package and service name (default: the image's last path part + '-svc')."),
    click.option(
        "--version", "pkg_version", help="Package version (default: derived from the tag; see docs/usage.md)."
    ),
    click.option(
        "--arch",
        help="Platform to take from a multi-arch image, e.g. arm64 or arm/v7 (default: this host's).",
    ),
    click.option("--creds", metavar="USER[:PASSWORD]", help="Registry credentials."),
    click.option(
        "--authfile",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        help="Registry auth file, as written by `skopeo login` or `docker login`.",
    ),
    click.option(
        "--tls-verify/--no-tls-verify",
        default=None,
        help="Require HTTPS and valid certificates (default: yes, except for registries on loopback).",
    ),
    click.option(
        "--cache-dir", type=click.Path(path_type=Path), help="Image cache (default: ~/.cache/ctr2svc)."
    ),
    click.option("--entrypoint", help="Replace the image's entrypoint (a shell-quoted command line)."),
    click.option("--cmd", help="Replace the image's command (a shell-quoted argument list)."),
    click.option(
        "--stop-signal", help="Signal that stops the service (default: the image's STOPSIGNAL or SIGTERM)."
    ),
    click.option(
        "--stop-timeout",
        type=click.IntRange(1, 3600),
        default=DEFAULT_STOP_TIMEOUT,
        show_default=True,
        help="Seconds to wait after the stop signal before killing.",
    ),
    click.option("--maintainer", default=DEFAULT_MAINTAINER, show_default=True, help="Package maintainer."),
    click.option(
        "--compression",
        type=click.Choice(["zstd", "gzip", "xz", "none"]),
        help="Payload compression (default: zstd; gzip for apk). A zstd .deb needs dpkg >= 1.21.18 "
        "(Debian 12, Ubuntu 21.10 and later), a zstd .rpm rpm >= 4.14 (RHEL 8, Fedora 31 and later).",
    ),
    click.option(
        "--user", help="Run as USER[:GROUP] (names from the image's /etc/passwd) instead of its User."
    ),
    click.option(
        "--cap-add",
        multiple=True,
        metavar="CAP",
        shell_complete=completion.capabilities,
        help="Grant a capability beyond Docker's defaults (repeatable).",
    ),
    click.option(
        "--cap-drop",
        multiple=True,
        metavar="CAP",
        shell_complete=completion.capabilities_or_all,
        help="Remove a capability, or ALL of them (repeatable).",
    ),
    click.option(
        "--privileged",
        is_flag=True,
        help="All capabilities, no seccomp filter, nothing masked in /proc and /sys. Avoid.",
    ),
    click.option(
        "--pids-limit",
        type=click.IntRange(0),
        default=DEFAULT_PIDS_LIMIT,
        show_default=True,
        help="Most processes and threads the container may have (0: no limit).",
    ),
    click.option(
        "-e", "--env", multiple=True, metavar="KEY=VALUE", help="Default environment (/etc/NAME/env)."
    ),
    click.option(
        "--volume",
        multiple=True,
        metavar="HOST:CONTAINER[:ro|rw]",
        help="Default extra bind mount (/etc/NAME/mounts); image VOLUMEs need none.",
    ),
    click.option("--memory", metavar="SIZE", help="Memory limit, e.g. 512M (MemoryMax= in the unit)."),
    click.option("--cpus", type=float, help="CPU limit in CPUs, e.g. 1.5 (CPUQuota= in the unit)."),
    click.option(
        "--network",
        type=click.Choice(["host", "private"]),
        default="host",
        show_default=True,
        help="host: the service uses the host's network. private: its own network namespace on the "
        "ctr2svc bridge (netavark), reachable by name from the other private services, with the "
        "--publish'ed ports forwarded from the host.",
    ),
    click.option(
        "-p",
        "--publish",
        multiple=True,
        metavar="[IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]",
        help="Forward a host port to the container (--network private; repeatable; /etc/NAME/ports).",
    ),
    click.option(
        "--ready-port",
        type=click.IntRange(1, 65535),
        help="The start counts as done once the service listens on this TCP port.",
    ),
    click.option(
        "--health-cmd",
        metavar="SHELL-COMMAND",
        help="Health check run inside the container (default: the image's HEALTHCHECK; 'none' disables).",
    ),
    click.option(
        "--health-interval", type=click.IntRange(1), metavar="SECONDS", help="Seconds between checks."
    ),
    click.option(
        "--health-retries",
        type=click.IntRange(1),
        metavar="N",
        help="Failures in a row that restart the service.",
    ),
    click.option(
        "--runtime",
        default="runc",
        show_default=True,
        help="OCI runtime the service runs with: runc or crun (the package depends on it).",
    ),
    click.option(
        "--layers",
        type=click.Choice(["flat", "shared"]),
        default="flat",
        show_default=True,
        help="flat: one package holds the image's whole root. shared: one package per image layer "
        "beside the service package, shared by every service built on that layer.",
    ),
    click.option(
        "--stdio",
        type=click.Choice(["auto", "journal", "pipe"]),
        default="auto",
        show_default=True,
        help="systemd: the container's stdout/stderr straight on the journal's socket (no extra process), or "
        "through a pipe and a relay process, as Docker does, for images that open /dev/stdout or "
        "/dev/stderr (auto: when the image shows it does).",
    ),
]


def package_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(PACKAGE_OPTIONS):
        command = option(command)
    return command


def build_options(image: str, **given: Any) -> BuildOptions:
    """BuildOptions from the command line's values (click names them as BuildOptions does, or nearly)."""
    entrypoint, cmd = given.pop("entrypoint", None), given.pop("cmd", None)
    init = given.pop("init", None)
    return BuildOptions(
        reference=parse(image),
        format=PackageFormat(given.pop("fmt", "deb")),
        init=InitSystem(init) if init else None,
        version=given.pop("pkg_version", None),
        volumes=given.pop("volume", ()),
        entrypoint=shell_words(entrypoint) if entrypoint is not None else None,
        cmd=shell_words(cmd) if cmd is not None else None,
        **given,
    )


@cli.command(name="build")
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
@click.option(
    "--allow-outside",
    multiple=True,
    metavar="PATH",
    type=click.Path(path_type=Path),
    help="With a compose file: a file or directory outside the file's own that its secrets, configs, "
    "env_files or bind mounts may package from this machine (repeatable).",
)
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
        _build_compose(compose_file, project_name, output_dir, as_json, package, allow_outside)
        return
    if project_name is not None:
        raise UsageError(
            "--project-name goes with --compose", hint="add --compose FILE, or drop --project-name"
        )
    if project_file is not None:
        if image is not None:
            raise UsageError("give either IMAGE or -c FILE, not both", hint="drop IMAGE to build the project")
        project = load_project(project_file, allow_outside)
        outcomes = build_all(project)
        _report(outcomes, "built", as_json=as_json)
        return
    if image is None:
        raise UsageError(
            "no image given", hint="pass an image reference, e.g. ctr2svc build valkey/valkey:9.0.0"
        )
    if allow_outside:
        raise UsageError(
            "--allow-outside goes with a compose file", hint="add --compose FILE, or drop --allow-outside"
        )
    options = build_options(image, output_dir=output_dir, **package)
    result = build(options)
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
    log.info(f"  install: {summary.install_command(options.format, result)}")
    # The package path alone on stdout, for scripts (or all of the above as JSON).
    click.echo(summary.dumps(summary.package(options.format, result)) if as_json else str(result.path))


# Package options that are the same for every service of a compose application; the others describe
# one image and are the compose file's to give, per service.
COMPOSE_COMMON = {
    "fmt", "init", "arch", "creds", "authfile", "tls_verify", "cache_dir", "maintainer", "compression",
    "runtime", "stdio", "layers", "pkg_version", "sign_key_file", "sign_key_name",
}  # fmt: skip


def _build_compose(
    path: Path,
    project_name: str | None,
    output_dir: Path,
    as_json: bool,
    given: dict[str, Any],
    allow_outside: tuple[Path, ...],
) -> None:
    from ctr2svc.apps import compose, compose_keys, stack

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
        **{k: given[k] for k in ("compression", "runtime", "stdio", "sign_key_file", "sign_key_name")},
    }
    if ctx.get_parameter_source("layers") is not click.core.ParameterSource.DEFAULT:
        common["layers"] = given["layers"]
    app = compose.load(path, project_name, common, allow_outside)
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


def _report(outcomes: list[Outcome], action: str, *, as_json: bool = False) -> None:
    click.echo(table(outcomes), err=True)
    if as_json:
        click.echo(summary.dumps([summary.outcome(outcome) for outcome in outcomes]))
    for outcome in outcomes:
        if outcome.result is not None and not as_json:
            click.echo(str(outcome.result.path))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise PartialFailure(
            f"{len(failed)} of {len(outcomes)} packages could not be {action}",
            hint="the table above says why; the others are done",
        )


@cli.command(name="inspect")
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
    """Show what IMAGE declares and what a package of it would be, without building.

    Takes the options `build` takes, so `--generated` shows their effect.

    \b
    Examples:
      ctr2svc inspect 127.0.0.1:5000/valkey:9.0.0
      ctr2svc inspect oci:examples/hello:1.0 --generated --memory 256M
      ctr2svc inspect oci:examples/hello:1.0 --json | jq .package
    """
    info = inspect_image(build_options(image, **package), with_files=with_files)
    click.echo(json.dumps(info, indent=2) if as_json else inspect_text(info))


@cli.group(name="repo")
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


@cli.command(name="update")
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
@click.option(
    "--allow-outside",
    multiple=True,
    metavar="PATH",
    type=click.Path(path_type=Path),
    help="With a compose file: a file or directory outside the file's own that its secrets, configs, "
    "env_files or bind mounts may package from this machine (repeatable).",
)
def update_command(
    project_file: Path, repo_dir: Path | None, rebuild: bool, allow_outside: tuple[Path, ...]
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
    project = load_project(project_file, allow_outside)
    target = repo_dir or project.repo
    if target is None:
        raise UsageError("no repository given", hint="pass --repo DIR or set [repo] path in the project file")
    _report(update(project, target, rebuild=rebuild), "updated")


@cli.command(name="completion")
@verbosity_options
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_command(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    Examples:
      ctr2svc completion bash > /etc/bash_completion.d/ctr2svc
      echo 'eval "$(ctr2svc completion zsh)"' >> ~/.zshrc
      ctr2svc completion fish > ~/.config/fish/completions/ctr2svc.fish
    """
    completer = get_completion_class(shell)
    assert completer is not None  # click ships all three
    click.echo(completer(cli, {}, "ctr2svc", "_CTR2SVC_COMPLETE").source())


class Terminated(BaseException):
    """SIGTERM (`kill PID`, systemd stopping a job) as an exception, so clean-up code runs."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main() -> None:
    # Local imports: main() is the only part of this module that needs them.
    import traceback

    from ctr2svc.run import hide_from_ps, secret_args

    signal.signal(signal.SIGTERM, _terminate)
    # A --creds password would otherwise stay readable in /proc/PID/cmdline for the whole build.
    hide_from_ps(secret_args(sys.argv[1:]))
    try:
        _main()
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # A bug, or a failure nobody turned into a sentence yet: one line, the traceback on request.
        if log.STATE.verbosity > 0:
            traceback.print_exc()
        what = str(exc).strip().replace("\n", " ") or "no message"
        click.echo(
            f"ctr2svc: internal error: {type(exc).__name__}: {what} "
            "(please report it; run with --debug for the traceback)",
            err=True,
        )
        sys.exit(70)


def _main() -> None:
    if "_CTR2SVC_COMPLETE" in os.environ:
        # The shell asking for completions (the script `ctr2svc completion` prints sets this).
        cli.main(prog_name="ctr2svc", complete_var="_CTR2SVC_COMPLETE")
    try:
        cli.main(standalone_mode=False)
    except Ctr2svcError as exc:
        click.echo(f"ctr2svc: error: {exc.one_line()}", err=True)
        if exc.details and log.STATE.verbosity > 0:
            click.echo(exc.details, err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("ctr2svc: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        # One line like every other error, with where to look: click's own form is three.
        message = " ".join(exc.format_message().split())
        hint = None
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f"see '{exc.ctx.command_path} --help'"
        click.echo(f"ctr2svc: error: {message}" + (f" (hint: {hint})" if hint else ""), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("ctr2svc: interrupted", err=True)
        sys.exit(130)
    except Terminated:
        click.echo("ctr2svc: terminated", err=True)
        sys.exit(143)
