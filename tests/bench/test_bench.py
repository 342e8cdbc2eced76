"""Smoke test of the benchmark: `bench/run --quick` measures every section, (a) to (i), and writes numbers.

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

    # (f) five services on one base: package and installed bytes of both modes against the registry's.
    f = results["f"]["small"]
    assert f["services"] == 5
    assert f["registry"]["unique_blob_bytes"] > 0
    for mode in ("flat", "shared"):
        assert f[mode]["package_bytes"] > 0 and f[mode]["installed_bytes"] > 0
    # The base's layer package is one file, shared by the five: one layer package per distinct layer.
    assert f["flat"]["packages"] == 5 and f["flat"]["layer_packages"] == 0
    assert f["shared"]["layer_packages"] == f["base_layers"] + 5
    assert all(is_number(f[x]) for x in ("ratio", "flat_ratio", "installed_ratio"))
    if "podman" in f:
        assert f["podman"]["file_bytes"] > 0

    # (g) a top-layer-only update: cold and rebuild timed in both modes; the rebuild packs only the top.
    g = results["g"]["small"]
    for mode in ("shared", "flat"):
        assert is_number(g[mode]["cold"]["median"]) and is_number(g[mode]["rebuild"]["median"])
        assert is_number(g[mode]["ratio"])
        assert g[mode]["profile"]["rebuild"]["commands"], "no per-command profile of the rebuild"
    assert len(g["shared"]["built_cold"]) == g["shared"]["layer_packages"] == 2
    assert len(g["shared"]["built_rebuild"]) == 1
    assert g["shared"]["built_rebuild"][0] in g["shared"]["built_cold"]
    assert is_number(g["ratio"])

    # (h) start to first accept with shared layers, beside the flat package and bare runc.
    h = results["h"]["small"]
    for variant in ("packaged", "packaged-shared", "runc"):
        assert is_number(h[variant]["median"]) and h[variant]["median"] > 0
    assert h["packaged-shared"]["steps"], "no steps of the shared start"
    assert all(is_number(h[x]) for x in ("ratio", "shared_runc_ratio", "flat_runc_ratio"))
    assert h["resident"]["packaged-shared"]["extra_processes"] == 0

    # (i) start to first accept through a published port of a private network, beside the host network.
    i = results["i"]["small"]
    for variant in ("packaged", "packaged-private"):
        assert is_number(i[variant]["median"]) and i[variant]["median"] > 0
    assert any("prepare" in step for step in i["packaged-private"]["steps"]), i["packaged-private"]
    assert is_number(i["ratio"])
    if "podman-bridge" in i:
        assert is_number(i["podman_ratio"])

    # Every section is in the printed table, and every ratio of the new ones names its two sides.
    for row in (
        "(a) cold build",
        "(b) no-op rebuild",
        "(c) package size",
        "(d) start",
        "(e) extra",
        "(f) 5 services on one base",
        "(g) rebuild after a top-layer change, shared",
        "(g) rebuild after a top-layer change, flat",
        "(h) start → first accept, shared layers",
        "(i) start → first accept, private network",
    ):
        assert f"| {row}" in proc.stdout
    for ratio in ("shared / unique blobs =", "flat / unique blobs =", "rebuild / cold =", "shared / flat ="):
        assert ratio in proc.stdout
