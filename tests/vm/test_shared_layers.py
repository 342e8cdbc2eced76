"""Shared layers on a fleet host: three services built on one base image come from a signed apt
repository that `ctr2svc update` maintains (served over HTTP on the host's loopback, 10.0.2.2 to the
guest). The base layer is one package installed once for all three; an image whose top layer changes
reaches the host by downloading that layer and the service package only; removing the services takes
their layers with them (apt autoremove).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.images import (
    CGI_SCRIPTS,
    DEFAULT_PATH,
    ENTRYPOINT_SH,
    ETC_GROUP,
    ETC_PASSWD,
    SERVICE_APPLETS,
    image_config,
    install_busybox,
    layered_image,
    manifest,
    put_dir,
    put_file,
    split_oci_source,
)
from tests.support.registry import Registry, free_port
from tests.vm import vmhost
from tests.vm.conftest import Timings, root_mounts

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

NAMES = ("base-a-svc", "base-b-svc", "base-c-svc")
LAYER_PREFIX = "ctr2svc-layer-"
APT = "DEBIAN_FRONTEND=noninteractive apt-get -q"
INSTALL_ROOT = "/opt/containers"
# Incompressible bytes in the base layer, so that it dominates the sizes measured below.
BLOB_BYTES = 4 * 1024 * 1024
# What the installed tree may weigh over the layers' own files (directories, layer metadata).
SLACK = 1.1


# --------------------------------------------------------------------------------------------------
# the images: one base layer (busybox, the test service's entrypoint and CGI scripts, a few MB of
# random bytes), one small top layer per service (its index.html)


def _populate_base(root: Path) -> None:
    install_busybox(root, symlinks=SERVICE_APPLETS, hardlinks=("sh",))
    put_file(root, "etc/passwd", ETC_PASSWD)
    put_file(root, "etc/group", ETC_GROUP)
    put_dir(root, "tmp", mode=0o1777)
    put_dir(root, "root", mode=0o700)
    put_dir(root, "run")
    put_dir(root, "var")
    (root / "var/run").symlink_to("../run")
    put_dir(root, "data")
    put_file(root, "usr/local/bin/entrypoint.sh", ENTRYPOINT_SH, mode=0o755)
    for name, script in CGI_SCRIPTS.items():
        put_file(root, f"www/cgi-bin/{name}", script, mode=0o755)
    put_file(root, "usr/share/base/blob.bin", os.urandom(BLOB_BYTES))


def _top(text: str) -> Callable[[Path], None]:
    def populate(root: Path) -> None:
        put_file(root, "www/index.html", f"{text}\n")

    return populate


def base_layer_tar(work: Path) -> Path:
    """The base layer as one uncompressed tar, built once: every image adds these same bytes, so all
    of them have the same diff_id (populating again would give other mtimes, another layer)."""
    source = layered_image(work / "base-layout", "base", [_populate_base])
    layout, tag = split_oci_source(source)
    digest = manifest(layout, tag)["layers"][0]["digest"].split(":", 1)[1]
    tar = work / "base.tar"
    with tar.open("wb") as out:
        subprocess.run(["gzip", "-dc", layout / "blobs" / "sha256" / digest], stdout=out, check=True)
    return tar


def service_image(layout: Path, tag: str, base: Path, *, port: int, text: str) -> str:
    return layered_image(
        layout,
        tag,
        [base, _top(text)],
        entrypoint=["/usr/local/bin/entrypoint.sh"],
        cmd=["serve"],
        env={"PATH": DEFAULT_PATH, "PORT": str(port), "APP_VERSION": text},
        volumes=["/data"],
        exposed_ports=[f"{port}/tcp"],
        workdir="/data",
    )


def short(diff_id: str) -> str:
    """A layer's 12 hex digits, as its package and directory name it."""
    return diff_id.split(":", 1)[1][:12]


def diff_ids(source: str) -> list[str]:
    """The image's diff_ids (a check that the images really share their base)."""
    layout, tag = split_oci_source(source)
    return [str(d) for d in image_config(layout, tag)["rootfs"]["diff_ids"]]


# --------------------------------------------------------------------------------------------------
# sizes


def deb_member(deb: Path, rel: str) -> str:
    """The text of one file of a package (REL as the package names it, e.g. ./opt/x/setup.sh)."""
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], check=True, capture_output=True).stdout
    return subprocess.run(["tar", "-xO", rel], input=tar, check=True, capture_output=True).stdout.decode()


def rootfs_bytes(deb: Path) -> int:
    """The unpacked size of a layer package's rootfs: the size column of `dpkg-deb -c` summed over
    its regular files (directories and symbolic links list 0), each hard-linked file once. nfpm
    stores a hard link's second name as a full copy and the package's setup.sh links it again at
    install (`ln -f -- TARGET NAME`): those names are left out. That is what the layer's files weigh
    by apparent size on the host, as `du -sb` counts them, without the directories' own 4 KiB and the
    layer's metadata (id, layer.json, setup.sh). Checked against the `bytes` of the package's
    layer.json, which ctr2svc counts from the unpacked layer."""
    listing = subprocess.run(["dpkg-deb", "-c", deb], check=True, capture_output=True, text=True).stdout
    sizes: dict[str, int] = {}
    for line in listing.splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[0].startswith("-") and "/rootfs/" in fields[5]:
            sizes[fields[5].split("/rootfs/", 1)[1]] = int(fields[2])
    base = next(iter({k.split("/rootfs/")[0] for k in listing.split() if "/rootfs/" in k}))
    setup = deb_member(deb, f"{base}/setup.sh")
    second_names = {m.group(1) for m in re.finditer(r"^ln -f -- \S+ \./(\S+)$", setup, re.M)}
    total = sum(size for rel, size in sizes.items() if rel not in second_names)
    recorded = json.loads(deb_member(deb, f"{base}/layer.json"))["bytes"]
    assert total == recorded, f"{deb.name}: dpkg-deb -c says {total} bytes, its layer.json {recorded}"
    return total


def field(deb: Path, name: str) -> str:
    out = subprocess.run(["dpkg-deb", "-f", deb, name], check=True, capture_output=True, text=True).stdout
    return out.strip()


def repo_debs(repo: Path) -> dict[str, Path]:
    return {p.name: p for p in (repo / "deb").rglob("*.deb")}


# --------------------------------------------------------------------------------------------------
# the guest


def get(vm: vmhost.VM, port: int, path: str = "/", *, timeout: float = 90) -> str:
    return vm.wait_until(f"curl -fsS --max-time 2 http://127.0.0.1:{port}{path}", timeout=timeout).strip()


def installed_layers(vm: vmhost.VM) -> set[str]:
    out = vm.ssh(
        f"dpkg-query -W -f '${{Package}} ${{db:Status-Abbrev}}\\n' '{LAYER_PREFIX}*' 2>/dev/null || true"
    ).stdout
    return {line.split()[0] for line in out.splitlines() if len(line.split()) > 1 and line.split()[1] == "ii"}


def layer_dirs(vm: vmhost.VM) -> set[str]:
    out = vm.ssh(f"ls {INSTALL_ROOT}/layers 2>/dev/null || true").stdout
    return set(out.split())


def n_restarts(vm: vmhost.VM, name: str) -> int:
    return int(vm.ssh(f"systemctl show -p NRestarts --value {name}").stdout.strip())


def main_pid(vm: vmhost.VM, name: str) -> int:
    return int(vm.ssh(f"systemctl show -p MainPID --value {name}").stdout.strip())


def test_services_sharing_a_base_layer_through_apt(
    vm: vmhost.VM,
    registry: Registry,
    ctr2svc: Cli,
    tmp_path: Path,
    served: tuple[Path, int],
    fleet_key: Path,
    timings: Timings,
) -> None:
    repo, http_port = served
    home = fleet_key

    # 1. Three images on one base layer, each with a top layer of its own, published by `update`.
    base = base_layer_tar(tmp_path)
    picked: list[int] = []
    while len(picked) < len(NAMES):  # each service its own port
        if (port := free_port()) not in picked:
            picked.append(port)
    ports = dict(zip(NAMES, picked, strict=True))
    refs: dict[str, str] = {}
    sources: dict[str, str] = {}
    for name in NAMES:
        sources[name] = service_image(tmp_path / "layout", name, base, port=ports[name], text=f"{name} 1")
        refs[name] = registry.push(sources[name], f"e2e/{name}", "1.0")
    ids = [diff_ids(s) for s in sources.values()]
    assert all(len(i) == 2 for i in ids), ids
    assert len({i[0] for i in ids}) == 1, f"the images do not share their base layer: {ids}"
    assert len({i[1] for i in ids}) == 3, f"the top layers are not distinct: {ids}"

    project = tmp_path / "ctr2svc.toml"
    project.write_text(
        f'[repo]\npath = "{repo}"\nsign_key = "fleet@example.com"\ngnupghome = "{home}"\n\n'
        + "".join(f'[[image]]\nref = "{refs[n]}"\nname = "{n}"\n\n' for n in NAMES)
    )
    started = time.monotonic()
    ctr2svc("update", "-c", project)
    timings.record("shared layers: update building 3 services on one base (4 layer packages)",
                   time.monotonic() - started)  # fmt: skip
    published = repo_debs(repo)
    layer_debs = {n: p for n, p in published.items() if n.startswith(LAYER_PREFIX)}
    print(f"\nfirst update published: {sorted(published)}")
    assert len(layer_debs) == 4, sorted(published)
    base_short = short(ids[0][0])
    top_short = {name: short(i[1]) for name, i in zip(NAMES, ids, strict=True)}
    assert f"{LAYER_PREFIX}{base_short}_1_amd64.deb" in layer_debs

    unique_bytes = sum(rootfs_bytes(p) for p in layer_debs.values())
    installed_size_kib = sum(int(field(p, "Installed-Size")) for p in layer_debs.values())
    print(f"unique layers: {unique_bytes} bytes in their rootfs (Installed-Size {installed_size_kib} KiB)")
    assert unique_bytes > BLOB_BYTES

    vm.copy_to(tmp_path / "key.gpg", "/etc/apt/keyrings/fleet.gpg")
    vm.ssh(
        "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*; "
        f"echo 'deb [signed-by=/etc/apt/keyrings/fleet.gpg] http://10.0.2.2:{http_port}/deb ./' "
        "> /etc/apt/sources.list.d/fleet.list"
    )
    all_names = " ".join(NAMES)
    try:
        # 2. One apt command installs the three services and their four layers.
        started = time.monotonic()
        vm.ssh(f"{APT} update && {APT} install -y {all_names}", timeout=900)
        timings.record("shared layers: apt install of 3 services + 4 layers", time.monotonic() - started)
        for name in NAMES:
            assert get(vm, ports[name]) == f"{name} 1"
            assert root_mounts(vm, name) == 1
        layers = installed_layers(vm)
        assert layers == {f"{LAYER_PREFIX}{base_short}"} | {f"{LAYER_PREFIX}{s}" for s in top_short.values()}
        auto = set(vm.ssh("apt-mark showauto").stdout.split())
        assert layers <= auto, f"layer packages not marked automatic: {sorted(layers - auto)}"
        assert not set(NAMES) & auto
        du = int(vm.ssh(f"du -sb {INSTALL_ROOT}").stdout.split()[0])
        print(f"du -sb {INSTALL_ROOT}: {du} bytes for 3 services; unique layers unpacked: {unique_bytes} "
              f"bytes; ratio {du / unique_bytes:.3f} (limit {SLACK})")  # fmt: skip
        assert du <= SLACK * unique_bytes

        # Data written through one service, to find after its upgrade.
        upgraded, removed = NAMES[0], NAMES[1]
        assert get(vm, ports[upgraded], "/cgi-bin/put?answer=42") == "ok"

        # 3. A new image of one service, its base unchanged: one service package, one layer package.
        before = repo_debs(repo)
        new_source = service_image(
            tmp_path / "layout2", upgraded, base, port=ports[upgraded], text=f"{upgraded} 2"
        )
        new_ids = diff_ids(new_source)
        assert new_ids[0] == ids[0][0] and new_ids[1] != ids[0][1], new_ids
        registry.push(new_source, f"e2e/{upgraded}", "1.0")
        second = ctr2svc("update", "-c", project)
        out = [Path(p).name for p in second.stdout.split()]
        after = repo_debs(repo)
        added = sorted(set(after) - set(before))
        new_top = f"{LAYER_PREFIX}{short(new_ids[1])}_1_amd64.deb"
        print(f"second update printed {out}; added to the repository: {added}; "
              f"removed: {sorted(set(before) - set(after))}")  # fmt: skip
        assert len(out) == 1 and out[0].startswith(f"{upgraded}_"), out
        assert added == sorted([out[0], new_top])
        new_bytes = after[out[0]].stat().st_size + after[new_top].stat().st_size

        pid_others = {n: main_pid(vm, n) for n in NAMES[1:]}
        vm.ssh(f"{APT} update", timeout=600)
        # apt-get upgrade installs no new package: the service, which needs a new layer package, is
        # kept back and keeps running its old image. (`apt upgrade`, `apt-get upgrade --with-new-pkgs`
        # and `apt-get dist-upgrade` install new dependencies.)
        held = vm.ssh(f"{APT} upgrade -y", timeout=600).stdout
        assert re.search(rf"kept back:\n\s+{upgraded}\n", held), held
        assert get(vm, ports[upgraded]) == f"{upgraded} 1"

        # Downloaded bytes: the .debs apt leaves in /var/cache/apt/archives (emptied first), summed.
        vm.ssh(f"{APT} clean")
        started = time.monotonic()
        upgrade = vm.ssh(f"{APT} upgrade --with-new-pkgs -y", timeout=900)
        timings.record("shared layers: apt upgrade of one service's top layer", time.monotonic() - started)
        fetched = vm.ssh(
            "find /var/cache/apt/archives -maxdepth 1 -name '*.deb' -printf '%s %f\\n'"
        ).stdout.split("\n")
        fetched_files = {f.split()[1]: int(f.split()[0]) for f in fetched if f.strip()}
        need = re.search(r"Need to get ([0-9.,]+ [kMG]?B)", upgrade.stdout)
        downloaded = sum(fetched_files.values())
        print(f"apt upgrade downloaded {downloaded} bytes {sorted(fetched_files)} "
              f"(apt said: Need to get {need.group(1) if need else '?'}); the new service + layer "
              f".debs: {new_bytes} bytes; ratio {downloaded / new_bytes:.3f}")  # fmt: skip
        assert sorted(fetched_files) == sorted([out[0], new_top]), upgrade.stdout
        assert downloaded <= SLACK * new_bytes
        assert get(vm, ports[upgraded]) == f"{upgraded} 2"
        assert get(vm, ports[upgraded], "/cgi-bin/get?answer") == "42"
        assert root_mounts(vm, upgraded) == 1
        for name, pid in pid_others.items():
            assert main_pid(vm, name) == pid, f"{name} was restarted by another service's upgrade"
        old_top = f"{LAYER_PREFIX}{top_short[upgraded]}"
        assert old_top in installed_layers(vm)
        vm.ssh(f"{APT} autoremove -y", timeout=600)
        layers = installed_layers(vm)
        assert old_top not in layers
        tops = [short(new_ids[1]), top_short[NAMES[1]], top_short[NAMES[2]]]
        assert layers == {f"{LAYER_PREFIX}{s}" for s in (base_short, *tops)}
        assert top_short[upgraded] not in layer_dirs(vm)
        assert [root_mounts(vm, name) for name in NAMES] == [1, 1, 1]

        # 4. A reboot: the three come back.
        vm.reboot()
        timings.record("shared layers: reboot with 3 services", vm.reboot_seconds)
        for name in NAMES:
            text = f"{name} 2" if name == upgraded else f"{name} 1"
            assert get(vm, ports[name]) == text
        assert get(vm, ports[upgraded], "/cgi-bin/get?answer") == "42"

        # 5. One service removed: its top layer goes with autoremove, the base stays, the others run on.
        keep = [n for n in NAMES if n != removed]
        restarts = {n: n_restarts(vm, n) for n in keep}
        pids = {n: main_pid(vm, n) for n in keep}
        vm.ssh(f"{APT} remove -y {removed} && {APT} autoremove -y", timeout=600)
        layers = installed_layers(vm)
        assert f"{LAYER_PREFIX}{top_short[removed]}" not in layers
        assert f"{LAYER_PREFIX}{base_short}" in layers
        assert top_short[removed] not in layer_dirs(vm)
        assert base_short in layer_dirs(vm)
        assert root_mounts(vm, removed) == 0
        for name in keep:
            assert vm.ssh(f"systemctl is-active {name}").stdout.strip() == "active"
            assert get(vm, ports[name]).startswith(name)
            assert n_restarts(vm, name) == restarts[name]
            assert main_pid(vm, name) == pids[name]

        # 6. Everything purged: no layer package, nothing under /opt/containers, no data left.
        vm.ssh(f"{APT} purge -y {all_names} && {APT} autoremove --purge -y", timeout=600)
        assert installed_layers(vm) == set()
        assert [root_mounts(vm, name) for name in NAMES] == [0, 0, 0]
        left = vm.ssh(f"find {INSTALL_ROOT} 2>/dev/null || true").stdout.split()
        assert left in ([], [INSTALL_ROOT]), f"left under {INSTALL_ROOT}: {left[:20]}"
        for name in NAMES:
            assert vm.ssh(f"test -e /var/lib/{name}", check=False).returncode == 1, f"/var/lib/{name} left"
        # Nor in dpkg's database: not even as removed with its configuration kept (state "rc"), which
        # a layer has none of; dpkg may only remember a name as not installed. The layers autoremove
        # took away in steps 3 and 5 count too: `autoremove --purge` does not go back to them.
        states = vm.ssh(
            "dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n' "
            f"{' '.join(NAMES)} '{LAYER_PREFIX}*' 2>/dev/null || true"
        ).stdout
        leftovers = [line for line in states.splitlines() if line.split()[1:2] not in (["un"], ["pn"])]
        assert leftovers == [], f"packages still known to dpkg: {leftovers}"
    finally:
        vm.ssh(
            f"{APT} purge -y {all_names}; {APT} autoremove --purge -y; "
            f"dpkg-query -W -f '${{Package}}\\n' '{LAYER_PREFIX}*' 2>/dev/null | xargs -r dpkg --purge; "
            f"rm -f /etc/apt/sources.list.d/fleet.list /etc/apt/keyrings/fleet.gpg",
            timeout=600,
            check=False,
        )
