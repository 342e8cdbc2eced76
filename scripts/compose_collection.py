#!/usr/bin/env python3
"""ctr2svc's verdict on a collection of real compose files: mapped unchanged, or refused with a next
step for every problem (a hint), or refused without one. Nothing is pulled, built or written: each
file is read by docker-compose and mapped by ctr2svc as `ctr2svc build --compose` does before its first
download (ctr2svc/apps/compose.py, load), which is where the verdict is known.

    git clone https://github.com/docker/awesome-compose /tmp/awesome-compose
    .venv/bin/python scripts/compose_collection.py /tmp/awesome-compose

Prints one line per file (its verdict, then ctr2svc's warnings and message) and the tally. Exit status 1
if a refusal lacks a next step. What the tally cannot see, a file mapped into something that would not
run as compose runs it ("silently wrong"), is for a reader of the mapped files' lines to judge:
docs/compose.md, "Compose as people write it", has the last such reading.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ctr2svc import log  # noqa: E402
from ctr2svc.apps import compose  # noqa: E402
from ctr2svc.errors import Ctr2svcError  # noqa: E402

NAMES = re.compile(r"^(docker-)?compose[^/]*\.ya?ml$")


def verdict(path: Path, out: Path) -> tuple[str, str]:
    """("mapped" | "refused" | "refused, no next step", what ctr2svc said)."""
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        try:
            app = compose.load(path, None, {"output_dir": out, "cache_dir": out / "cache"})
        except Ctr2svcError as exc:
            text = exc.one_line()
            counted = re.search(r": (\d+) problems: ", exc.brief)
            wanted = int(counted.group(1)) + 1 if counted else 1
            kind = "refused" if text.count("(hint: ") >= wanted else "refused, no next step"
            return kind, " ".join([*said.getvalue().split("\n"), text]).strip()
    built = [s.service for s in app.services if s.build is not None]
    note = f"{len(app.services)} services" + (f", built: {', '.join(built)}" if built else "")
    return "mapped", f"{note}. {' '.join(said.getvalue().split())}".strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("collection", type=Path, help="a directory holding compose files (searched below)")
    args = parser.parse_args()
    files = sorted(p for p in args.collection.rglob("*") if NAMES.match(p.name) and ".git" not in p.parts)
    log.set_verbosity(0)
    tally: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="compose-collection-") as scratch:
        for path in files:
            kind, text = verdict(path, Path(scratch))
            tally[kind] = tally.get(kind, 0) + 1
            shown = text.replace(f"{path}: ", "").replace(str(args.collection) + "/", "")
            print(f"{kind:22} {path.relative_to(args.collection)}: {shown}")
    print()
    print(f"{len(files)} files: " + ", ".join(f"{n} {kind}" for kind, n in sorted(tally.items())))
    return 1 if tally.get("refused, no next step") else 0


if __name__ == "__main__":
    sys.exit(main())
