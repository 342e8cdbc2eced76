"""`ctr2svc completion`: the shell completion script."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from ctr2svc.commands.common import verbosity_options


@click.command(name="completion")
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
    # The whole command line's script: `ctr2svc`, the group this command runs under.
    root = click.get_current_context().find_root().command
    click.echo(completer(root, {}, "ctr2svc", "_CTR2SVC_COMPLETE").source())
