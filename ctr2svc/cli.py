"""The `ctr2svc` command line: the group its commands (ctr2svc/commands/) run under, and main(), which
turns every failure into one line and an exit status."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

import click

from ctr2svc import __version__, log
from ctr2svc.commands.common import verbosity_options
from ctr2svc.errors import Ctr2svcError

# Each command's module, imported when the command is looked up: `ctr2svc build` of an unchanged image
# (a look at the build record) must not pay for importing inspect's, repo's and update's code.
COMMANDS = {
    "build": ("ctr2svc.commands.build", "build_command"),
    "completion": ("ctr2svc.commands.completion", "completion_command"),
    "inspect": ("ctr2svc.commands.inspect", "inspect_command"),
    "repo": ("ctr2svc.commands.repo", "repo_group"),
    "update": ("ctr2svc.commands.update", "update_command"),
}


class _Commands(MutableMapping[str, click.Command]):
    """The group's commands by name, as click keeps them, each imported when first looked up (whoever
    goes through all of them, help or the docs' tests, gets all of them)."""

    def __init__(self) -> None:
        self.loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self.loaded and name in COMMANDS:
            module, attribute = COMMANDS[name]
            self.loaded[name] = getattr(importlib.import_module(module), attribute)
        return self.loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self.loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self.loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in COMMANDS or name in self.loaded

    def __iter__(self) -> Iterator[str]:
        return iter(sorted({*COMMANDS, *self.loaded}))

    def __len__(self) -> int:
        return len({*COMMANDS, *self.loaded})


class _Cli(click.Group):
    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        # Each invocation starts at normal verbosity; -q/-v on any level of the command line change it.
        log.set_verbosity(0)
        return super().make_context(*args, **kwargs)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        try:
            return self.commands[cmd_name]
        except KeyError:
            return None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands)


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


cli.commands = _Commands()


class Terminated(BaseException):
    """SIGTERM (`kill PID`, systemd stopping a job) as an exception, so clean-up code runs."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main() -> None:
    # Local imports: main() is the only part of this module that needs them.
    import traceback

    from ctr2svc.cmdline import hide_from_ps, secret_args

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
