"""Shell completion beyond click's own: image references, capability names, and colons in bash.

`ctr2svc completion SHELL` prints click's script; these are the `shell_complete=` callbacks of the
image arguments and the capability options, and a bash completer that copes with the `:` in
`oci:DIR`. Bash splits words at `:` (it is in COMP_WORDBREAKS), so click's stock completer would see
`oci`, `:` and `DIR` as three arguments; this one reads the line itself (COMP_LINE up to COMP_POINT)
and replies with only the text after the last word break, which is the part bash replaces.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import click
from click.shell_completion import BashComplete, CompletionItem, add_completion_class, split_arg_string

from ctr2svc.service.runtime_config import ALL_CAPABILITIES

# Local transports, as `ctr2svc build` takes them (image/reference.py); `oci:` names a directory.
DIR_TRANSPORTS = ("oci:",)
FILE_TRANSPORTS = ("oci-archive:", "docker-archive:")

# Bash's default COMP_WORDBREAKS.
_BASH_WORDBREAKS = " \t\n\"'><=;|&(:"


def _entries(partial: str, *, files: bool) -> list[str]:
    """Paths starting with `partial`: directories with a trailing `/`, and files if `files`."""
    folder, _, base = partial.rpartition("/")
    where = Path(folder + "/" if folder or partial.startswith("/") else ".")
    try:
        children = sorted(where.iterdir())
    except OSError:
        return []
    found = []
    for child in children:
        if not child.name.startswith(base) or (child.name.startswith(".") and not base.startswith(".")):
            continue
        text = f"{folder}/{child.name}" if folder or partial.startswith("/") else child.name
        if child.is_dir():
            found.append(text + "/")
        elif files:
            found.append(text)
    return found


def _oci_tags(layout: str) -> list[str]:
    """The tags an OCI layout directory holds (its index's ref.name annotations)."""
    try:
        index = json.loads((Path(layout) / "index.json").read_text())
    except (OSError, ValueError):
        return []
    tags = []
    for manifest in index.get("manifests", []) if isinstance(index, dict) else []:
        name = (manifest.get("annotations") or {}).get("org.opencontainers.image.ref.name")
        if isinstance(name, str):
            tags.append(name)
    return tags


def image_references(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """`oci:` + directories (and `oci:DIR:` + its tags), `oci-archive:`/`docker-archive:` + files.

    A registry reference is not completed (that would need the network); a word that begins a local
    transport's name completes to it.
    """
    for transport in DIR_TRANSPORTS:
        if incomplete.startswith(transport):
            rest = incomplete[len(transport) :]
            layout, colon, tag = rest.rpartition(":")
            if colon and Path(layout).is_dir():
                return [
                    CompletionItem(f"{transport}{layout}:{t}") for t in _oci_tags(layout) if t.startswith(tag)
                ]
            return [CompletionItem(transport + p) for p in _entries(rest, files=False)]
    for transport in FILE_TRANSPORTS:
        if incomplete.startswith(transport):
            rest = incomplete[len(transport) :]
            return [CompletionItem(transport + p) for p in _entries(rest, files=True)]
    return [CompletionItem(t) for t in (*DIR_TRANSPORTS, *FILE_TRANSPORTS) if t.startswith(incomplete)]


def _capabilities(incomplete: str, extra: tuple[str, ...] = ()) -> list[CompletionItem]:
    """Capability names with and without CAP_ (as --cap-add takes either), in the case typed."""
    names = [*extra, *ALL_CAPABILITIES, *(c.removeprefix("CAP_") for c in ALL_CAPABILITIES)]
    lower = incomplete.islower()
    return [
        CompletionItem(name.lower() if lower else name)
        for name in names
        if name.startswith(incomplete.upper())
    ]


def capabilities(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _capabilities(incomplete)


def capabilities_or_all(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _capabilities(incomplete, ("ALL",))


_SOURCE_BASH = """\
%(complete_func)s() {
    local IFS=$'\\n'
    local response

    response=$(env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD=$COMP_CWORD COMP_LINE="$COMP_LINE" \\
        COMP_POINT="$COMP_POINT" COMP_WORDBREAKS="$COMP_WORDBREAKS" %(complete_var)s=bash_complete $1)

    for completion in $response; do
        IFS=',' read type value <<< "$completion"

        if [[ $type == 'dir' ]]; then
            COMPREPLY=()
            compopt -o dirnames
        elif [[ $type == 'file' ]]; then
            COMPREPLY=()
            compopt -o default
        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=($value)
            # A directory or a transport goes on: no space after it.
            [[ $value == */ || $value == *: ]] && compopt -o nospace 2>/dev/null
        fi
    done

    return 0
}

%(complete_func)s_setup() {
    complete -o nosort -F %(complete_func)s %(prog_name)s
}

%(complete_func)s_setup;
"""


class ColonBashComplete(BashComplete):
    """Bash completion that reads the line as typed, so `oci:DIR` is one word, and replies in kind."""

    source_template: ClassVar[str] = _SOURCE_BASH

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._replaced = ""  # what of the incomplete word bash keeps (up to its last word break)

    def get_completion_args(self) -> tuple[list[str], str]:
        line = os.environ.get("COMP_LINE", "")
        if not line:  # called without bash's line (a hand-set COMP_WORDS): click's way
            return super().get_completion_args()
        try:
            point = int(os.environ.get("COMP_POINT", len(line)))
        except ValueError:
            point = len(line)
        line = line[:point]
        words = split_arg_string(line)
        incomplete = "" if not words or line[-1].isspace() else words.pop()
        breaks = os.environ.get("COMP_WORDBREAKS", _BASH_WORDBREAKS)
        cut = max((incomplete.rfind(c) for c in breaks if c.strip()), default=-1)
        self._replaced = incomplete[: cut + 1]
        return words[1:], incomplete

    def format_completion(self, item: CompletionItem) -> str:
        value = str(item.value)
        if self._replaced and value.startswith(self._replaced):
            value = value[len(self._replaced) :]
        return f"{item.type},{value}"


add_completion_class(ColonBashComplete, "bash")
