"""Smoke test of the benchmark: `bench/run --quick` measures every section, (a) to (e), and writes numbers.

No timing is asserted: how fast this machine is, is not under test (bench/README.md has the results).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    )


def test_quick_run_measures_every_section(integration_host: None, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [str(REPO / "bench" / "run"), "--quick", "--json", str(out), "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"bench/run failed:\n{proc.stderr[-4000:]}"
    results = json.loads(out.read_text())

    assert results["settings"]["quick"] is True
    assert list(results["images"]) == ["small"]
    assert results["images"]["small"]["layer_bytes"] > 0

    a = results["a"]["small"]
    assert all(is_number(x) for x in (a["ctr2svc"]["median"], a["hand"]["median"], a["ratio"]))
    assert a["profile"]["ctr2svc -v"]["commands"], "no per-command profile of the cold build"

    b = results["b"]["small"]
    assert all(is_number(x) for x in (b["seconds"], b["startup"]["median"], b["inspect"]["median"]))

    c = results["c"]["small"]
    for compression in ("gzip", "zstd", "xz", "none"):
        assert c[compression]["bytes"] > 0
        assert is_number(c[compression]["ratio"])

    d = results["d"]["small"]
    variants = ["packaged", "runc"] + (["podman"] if shutil.which("podman") else [])
    for variant in variants:
        assert is_number(d[variant]["median"]) and d[variant]["median"] > 0
    assert is_number(d["ratio"])

    e = results["e"]["small"]
    for variant in variants:
        assert isinstance(e[variant]["extra_processes"], int)
        assert is_number(e[variant]["extra_rss_kib"])
        # The service's own processes were found: the entrypoint shell and httpd.
        assert e[variant]["container_processes"] >= 1

    # The pipe relay (--stdio pipe) is measured beside the default: one process, its memory shown.
    assert is_number(d["packaged-pipe"]["median"]) and is_number(d["pipe_ratio"])
    assert e["packaged-pipe"]["extra_processes"] == 1, e["packaged-pipe"]
    assert e["packaged-pipe"]["extra"][0].startswith("cat ")
    assert e["packaged"]["extra_processes"] == 0

    # Every section is in the printed table.
    for row in ("(a) cold build", "(b) no-op rebuild", "(c) package size", "(d) start", "(e) extra"):
        assert f"| {row}" in proc.stdout
