"""--userns: the option, the admin's file, the helper's data, the package's needs, the ownership script's
shift. tests/runtime/test_userns.py runs the helper's part; tests/integration and tests/vm the packages."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from ctr2svc import runtime
from ctr2svc.apps.project import load, options
from ctr2svc.commands.common import build_options
from ctr2svc.errors import UsageError
from ctr2svc.image.bundle import Entry, Kind, RootfsScan
from ctr2svc.model import PackageFormat, ServiceSpec, SharedLayer
from ctr2svc.options.request import resolve
from ctr2svc.service import units
from tests.conftest import require

DIFF_ID = "sha256:" + "ab" * 32
LAYER = SharedLayer(DIFF_ID, "ctr2svc-layer-abababababab", "/opt/containers/layers/ab", (DIFF_ID,), 1)


def test_the_option_is_host_or_auto(tmp_path: Path) -> None:
    assert resolve(build_options("oci:/x:1")).userns == "host"
    assert resolve(build_options("oci:/x:1", userns="auto", layers="shared")).userns == "auto"
    with pytest.raises(UsageError, match="unknown --userns 'keep-id'"):
        resolve(build_options("oci:/x:1", userns="keep-id"))
    # And a project file's key (ctr2svc update).
    path = tmp_path / "ctr2svc.toml"
    path.write_text('[[image]]\nref = "r.example/web:1"\nuserns = "auto"\n')
    project = load(path)
    assert options(project, project.images[0], PackageFormat.DEB).userns == "auto"


@pytest.mark.parametrize("mode", ["host", "auto"])
def test_every_package_ships_the_admins_file_and_the_idmap_program(spec: ServiceSpec, mode: str) -> None:
    files = {f.dest: f for f in units.service_files(dataclasses.replace(spec, userns=mode), RootfsScan([]))}
    admin = files[f"{spec.layout.config_dir}/userns"]
    assert admin.config and admin.mode == 0o644
    assert admin.text.splitlines()[-1] == mode
    assert files[spec.layout.idmap_program].text == runtime.awk_program("idmap.pl")
    assert f"USERNS={mode}\n" in files[spec.layout.service_env].text


def test_perl_is_a_dependency_only_where_it_is_not_essential(spec: ServiceSpec) -> None:
    shared = dataclasses.replace(spec, userns="auto", layers=(LAYER,))
    assert shared.userns_depends == ()  # Debian: perl-base is Essential
    for fmt in (PackageFormat.RPM, PackageFormat.APK):
        assert dataclasses.replace(shared, format=fmt).userns_depends == ("perl",)
        # A flat package is shifted with chown: no perl.
        assert dataclasses.replace(spec, userns="auto", format=fmt).userns_depends == ()
        assert dataclasses.replace(shared, userns="host", format=fmt).userns_depends == ()


def test_ownership_shifts_every_file_and_puts_set_id_bits_back(spec: ServiceSpec, tmp_path: Path) -> None:
    """ownership.sh without an argument (the package's post-install) gives the image's foreign owners;
    with OFFSET (the helper, for a user namespace) every file is the image's owner plus OFFSET, and the
    set-id bits chown clears (root's setuid binary's too) come back; OFFSET 0 undoes it."""
    require(os.geteuid() == 0, "needs root (chown)")
    rootfs = tmp_path / "rootfs"
    scan = RootfsScan(
        [
            Entry("", Kind.DIR, 0o755, 0, 0, 0),
            Entry("bin", Kind.DIR, 0o755, 0, 0, 0),
            Entry("bin/su", Kind.FILE, 0o4755, 0, 0, 0),
            Entry("data", Kind.DIR, 0o2770, 999, 999, 0),
            Entry("bin/sh", Kind.SYMLINK, 0o777, 0, 0, 0, "su"),
        ]
    )
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "data").mkdir()
    (rootfs / "bin/su").write_text("")
    (rootfs / "bin/sh").symlink_to("su")
    for path in (rootfs, rootfs / "bin", rootfs / "data", rootfs / "bin/su"):
        path.chmod(0o755)
    (rootfs / "bin/su").chmod(0o4755)
    (rootfs / "data").chmod(0o2770)
    layout = dataclasses.replace(spec.layout, prefix=str(tmp_path), version="v")
    script = next(f for f in units.service_files(dataclasses.replace(spec, layout=layout), scan)
                  if f.dest.endswith("ownership.sh")).text.replace(layout.rootfs, str(rootfs))  # fmt: skip

    def run(*args: str) -> dict[str, tuple[int, int, int]]:
        subprocess.run(["sh", "-c", script, "ownership.sh", *args], check=True)
        return {
            rel: (st.st_uid, st.st_gid, st.st_mode & 0o7777)
            for rel in ("", "bin", "bin/su", "data", "bin/sh")
            for st in [(rootfs / rel).lstat()]
        }

    assert run()["data"] == (999, 999, 0o2770)
    start = 1879048192
    shifted = run(str(start))
    assert shifted[""] == shifted["bin"] == (start, start, 0o755)
    assert shifted["bin/sh"][:2] == (start, start)
    assert shifted["bin/su"] == (start, start, 0o4755)
    assert shifted["data"] == (start + 999, start + 999, 0o2770)
    back = run("0")
    assert back["bin/su"] == (0, 0, 0o4755) and back["data"] == (999, 999, 0o2770) and back[""][:2] == (0, 0)
