"""Reading the Markdown documentation the tests hold the code to: sections, tables, code, links."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def without_code_blocks(text: str) -> str:
    """The text with fenced code blocks blanked (headings and links in them are not Markdown)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            kept.append("")
        else:
            kept.append("" if fenced else line)
    return "\n".join(kept)


def code_blocks(text: str) -> list[list[str]]:
    """The lines of each fenced code block, in order."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def sections(text: str, level: int = 2) -> list[tuple[str, str]]:
    """(heading, body) of each heading of `level` (outside code blocks); body up to the next such heading."""
    marker = "#" * level + " "
    found: list[tuple[str, str]] = []
    heading = ""
    body: list[str] = []
    plain = without_code_blocks(text).splitlines()
    for raw, line in zip(text.splitlines(), plain, strict=True):
        if line.startswith(marker):
            found.append((heading, "\n".join(body)))
            heading, body = line[len(marker) :].strip(), []
        else:
            body.append(raw)
    found.append((heading, "\n".join(body)))
    return found


def section(text: str, heading: str) -> str:
    bodies = [body for head, body in sections(text) if head == heading]
    assert len(bodies) == 1, f"{len(bodies)} sections named {heading!r}"
    return bodies[0]


def tables(text: str) -> list[list[list[str]]]:
    """Each table's body rows (the header and separator rows left out)."""
    found: list[list[list[str]]] = []
    current: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.strip().startswith("|"):
            current.append(line.strip())
            continue
        if len(current) >= 2 and re.fullmatch(r"\|[-|: ]+\|", current[1]):
            found.append([_cells(row) for row in current[2:]])
        current = []
    return found


def _cells(row: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]


def backticked(text: str) -> list[str]:
    """The inline code spans of a piece of Markdown."""
    return re.findall(r"`([^`]+)`", text)


def slug(heading: str, seen: dict[str, int]) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens, -N for repeats."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
    count = seen.get(text, 0)
    seen[text] = count + 1
    return f"{text}-{count}" if count else text


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    return {
        slug(m.group(1), seen)
        for m in re.finditer(r"^#{1,6} (.+)$", without_code_blocks(path.read_text()), re.M)
    }


def links(path: Path) -> list[str]:
    """The targets of the Markdown links in a file (not in code)."""
    text = re.sub(r"`[^`]*`", "", without_code_blocks(path.read_text()))
    return re.findall(r"\]\(([^)\s]+)\)", text)


def json_fields(heading: str) -> list[str]:
    """The fields docs/json.md lists under `heading` (first column; several in one row when shared)."""
    rows = [row for table in tables(section((DOCS / "json.md").read_text(), heading)) for row in table]
    return [field for row in rows for field in backticked(row[0])]


def top_level(fields: list[str]) -> set[str]:
    return {f for f in fields if "." not in f and "[" not in f}
