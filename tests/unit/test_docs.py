"""The documentation stays true: options, exit codes, links, JSON fields and the README's two commands."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click
import pytest

from ctr2svc import errors
from ctr2svc.cli import cli
from ctr2svc.distribution import summary
from ctr2svc.distribution.record import BuildResult
from ctr2svc.distribution.summary import Outcome
from ctr2svc.model import PackageFormat
from tests.support.docs import (
    DOCS,
    REPO,
    anchors,
    backticked,
    code_blocks,
    json_fields,
    links,
    section,
    sections,
    tables,
    top_level,
)

USAGE = DOCS / "usage.md"
MARKDOWN = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
# An option as written in prose or code: `--cap-add`, `-e` (not the `-svc` of `hello-svc`).
OPTION = re.compile(r"(?<![\w/.-])(--?[a-zA-Z][\w-]*)")
# Options of other programs that usage.md names in code (`docker run --network host`, say) go here.
FOREIGN_OPTIONS: frozenset[str] = frozenset()
HELP = {"-h", "--help"}

CommandPath = tuple[str, ...]


def _commands(command: click.Command, prefix: CommandPath = ()) -> dict[CommandPath, click.Command]:
    found = {prefix: command}
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            found.update(_commands(sub, (*prefix, name)))
    return found


COMMANDS = _commands(cli)


def _options(command: click.Command) -> set[str]:
    return {
        opt
        for param in command.params
        if isinstance(param, click.Option)
        for opt in (*param.opts, *param.secondary_opts)
    }


GLOBAL = _options(cli) | HELP
EVERY_OPTION = set().union(*(_options(c) for c in COMMANDS.values())) | HELP


def _section_commands(heading: str) -> set[CommandPath]:
    """The commands a usage.md section is about: each `ctr2svc ...` named in backticks in its heading."""
    return {tuple(code.split()[1:]) for code in backticked(heading) if code.split()[0] == "ctr2svc"}


def _mentions(text: str) -> set[str]:
    return set(OPTION.findall(text))


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(("ctr2svc", *p)))
def test_every_option_is_documented(path: CommandPath) -> None:
    usage = USAGE.read_text()
    about = "\n".join(body for head, body in sections(usage) if path in _section_commands(head))
    # -q/-v are the root command's too: documented once, in its section.
    own = _options(COMMANDS[path]) - GLOBAL
    assert about or not own, f"docs/usage.md has no section with `ctr2svc {' '.join(path)}` in its heading"
    undocumented = own - _mentions(about)
    assert not undocumented, f"docs/usage.md does not mention {sorted(undocumented)} of {path}"
    assert _options(cli) <= _mentions("\n".join(b for h, b in sections(usage) if () in _section_commands(h)))


def _command_of(line: str) -> tuple[click.Command, str] | None:
    """The ctr2svc command a line of code runs, and the part of the line that is its arguments."""
    line = line.split(" #")[0]
    line = re.split(r"\s\|\s(?!-)|\s>>?\s", line)[0]  # not what it is piped or written to
    words = line.split()
    if not words or words[0] != "ctr2svc":
        return None
    command: click.Command = cli
    for word in words[1:]:
        word = word.strip("[]|")
        if isinstance(command, click.Group) and word in command.commands:
            command = command.commands[word]
        elif not word.startswith("-"):
            break
    return command, line


def _code_lines(path: Path) -> list[str]:
    text = path.read_text()
    lines = [line.strip() for block in code_blocks(text) for line in block]
    return lines + backticked(re.sub(r"```.*?```", "", text, flags=re.S))


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_command_lines_use_real_options(doc: Path) -> None:
    """Every option in a `ctr2svc ...` example is one that command takes."""
    wrong = []
    for line in _code_lines(doc):
        found = _command_of(line)
        if found is None:
            continue
        command, args = found
        valid = _options(command) | GLOBAL
        wrong += [f"{opt} in {line!r}" for opt in _mentions(args) if opt not in valid]
    assert not wrong, wrong


def test_option_tables_name_real_options() -> None:
    """The option tables of usage.md list only options of the commands their section is about."""
    for heading, body in sections(USAGE.read_text()):
        commands = _section_commands(heading)
        if not commands:
            continue
        valid = GLOBAL.union(*(_options(COMMANDS[c]) for c in commands))
        for table in tables(body):
            for row in table:
                named = _mentions(" ".join(c for c in backticked(row[0]) if c.startswith("-")))
                assert named <= valid, f"{heading}: {sorted(named - valid)} in {row[0]!r}"


def test_every_option_usage_names_exists() -> None:
    named = {o for o in _mentions(" ".join(backticked(USAGE.read_text()))) if o.startswith("--")}
    assert named - EVERY_OPTION <= FOREIGN_OPTIONS, sorted(named - EVERY_OPTION - FOREIGN_OPTIONS)


def _error_classes() -> dict[str, int]:
    return {
        name: obj.exit_code
        for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, errors.Ctr2svcError)
    }


def test_exit_code_table_matches_the_errors() -> None:
    rows = [row for table in tables(section(USAGE.read_text(), "Errors and exit codes")) for row in table]
    statuses = [int(row[0]) for row in rows]
    assert len(statuses) == len(set(statuses)), statuses
    documented = {name: int(row[0]) for row in rows for name in backticked(row[1])}
    assert documented == _error_classes()
    # The statuses no class has: success, and the two signals main() turns into an exit status.
    cli_source = (REPO / "ctr2svc/cli.py").read_text()
    for status in set(statuses) - set(documented.values()):
        assert status == 0 or f"sys.exit({status})" in cli_source, status


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path) -> None:
    for target in links(doc):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        where = (doc.parent / path).resolve() if path else doc
        assert where.exists(), f"{doc.name}: {target} is not there"
        if anchor and where.suffix == ".md":
            assert anchor in anchors(where), f"{doc.name}: no heading #{anchor} in {where.name}"


def test_readme_starts_with_the_two_commands() -> None:
    blocks = code_blocks((REPO / "README.md").read_text())
    commands = [
        line.split("#")[0].split() for block in blocks for line in block if line.split("#")[0].strip()
    ]
    assert [c[0] for c in commands[:2]] == ["scripts/demo", "scripts/test"], commands[:2]
    ci = [line.split()[0] for line in (REPO / ".ci/run").read_text().splitlines() if line.strip()]
    assert "scripts/demo" in ci and "scripts/test" in ci
    assert ci.index("scripts/demo") < ci.index("scripts/test")
    for script in ("scripts/demo", "scripts/test", ".ci/run"):
        assert os.access(REPO / script, os.X_OK), script


def _result(tmp_path: Path) -> BuildResult:
    package = tmp_path / "hello-svc_1.0_amd64.deb"
    package.write_bytes(b"!<arch>\n")
    return BuildResult(
        package,
        "hello-svc",
        "1.0",
        "sha256:" + "1" * 64,
        "oci:examples/hello@sha256:" + "1" * 64,
        "hello-svc.service",
        "/var/lib/hello-svc",
        sha256="2" * 64,
    )


def test_build_json_has_the_documented_fields(tmp_path: Path) -> None:
    shown = summary.package(PackageFormat.DEB, _result(tmp_path))
    assert set(shown) == top_level(json_fields("`ctr2svc build --json`"))
    assert shown["schema_version"] == 1 and shown["size"] == 8 and shown["up_to_date"] is False
    assert shown["install"] == f"apt install {tmp_path}/hello-svc_1.0_amd64.deb"


def test_build_project_json_has_the_documented_fields(tmp_path: Path) -> None:
    fields = top_level(json_fields("`ctr2svc build -c --json`"))
    built = Outcome("hello", PackageFormat.RPM, "built", "x.rpm", _result(tmp_path))
    failed = Outcome("broken", PackageFormat.DEB, "failed", "image not found (hint: check the tag)")
    for outcome in (built, failed):
        assert set(summary.outcome(outcome)) == fields
    assert summary.outcome(failed)["package"] is None and summary.outcome(built)["error"] is None
    assert summary.outcome(built)["install"].startswith("dnf install ")
