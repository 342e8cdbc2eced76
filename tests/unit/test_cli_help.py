"""Every command's --help ends with a runnable example, as docs/usage.md promises."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from ctr2svc.cli import cli


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", _commands(cli), ids=lambda p: " ".join(p) or "ctr2svc")
def test_help_has_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    heads = [i for i, line in enumerate(lines) if line.strip() in ("Example:", "Examples:")]
    assert heads, result.output
    example = lines[heads[0] + 1].strip()
    # The first example runs this very command.
    assert example.startswith(" ".join(("ctr2svc", *path))), example


def test_every_command_is_covered() -> None:
    names = {" ".join(p) for p in _commands(cli)}
    assert {"build", "inspect", "repo", "repo add", "update", "completion"} <= names
