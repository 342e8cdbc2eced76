"""Upgrades that roll back, the helper's side (snapshot.sh, rollback.sh): arming one (the snapshot, the
previous version's files kept), refusing an upgrade with no room for the snapshot, the readiness wait
after the restart, and the rollback itself, against the stand-in runtime and real file systems (tmpfs
in a mount namespace of the test's own). The package's scripts around them run in the VM
(tests/vm/test_rollback.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require

from .conftest import Helper, spec_for

pytestmark = pytest.mark.usefixtures("as_root")

# arm_rollback as the preinst calls it (a failure exits the preinst), its status printed.
ARM = "st=0; arm_rollback 1.0 2.0 || st=$?; echo status $st"

# systemd's side stubbed: the service runs, and what systemctl is asked is logged (by a program on
# the PATH, written by the fixture: the helper runs it under timeout too).
STUBS = """\
service_active() { true; }
OVERRIDE_DIR="$TOP/etc/systemd/system"
mkdir -p "$OVERRIDE_DIR"
"""


@pytest.fixture
def service(tmp_path: Path) -> Helper:
    """Version 1.0 installed, its packaged unit beside it, data in its volume."""
    top = tmp_path / "host"
    helper = Helper(top, spec_for())
    helper.top.mkdir(parents=True)
    unit = top / "lib/kv-svc.service"
    helper.install(
        LIBEXEC=str(helper.libexec),
        UNIT_PATH=str(unit),
        ROLLBACK_DIR=str(top / "var/lib/ctr2svc/rollback/kv-svc"),
        PREVIOUS_DIR=str(top / "opt/kv-svc/.rollback"),
        HEALTH_CMD="",
    )
    unit.parent.mkdir(parents=True)
    program = helper.libexec / "service"
    unit.write_text(f"[Service]\nExecStartPre={program} prepare\nExecStart={program} start\n")
    stub = top / "bin/systemctl"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\necho "systemctl $*" >>"$LOG"\n')
    stub.chmod(0o755)
    data = helper.path("DATA_DIR") / "volumes/data"
    data.mkdir(parents=True)
    (data / "index.html").write_text("v1 data\n")
    return helper


def sh(helper: Helper, script: str, *, check: bool = True, namespace: bool = False):  # type: ignore[no-untyped-def]
    extra = {
        "TOP": str(helper.top),
        "LOG": str(helper.top / "systemctl.log"),
        "PATH": f"{helper.top}/bin:{os.environ['PATH']}",
    }
    return helper.shell(STUBS + script, extra=extra, check=check, namespace=namespace)


def test_arming_keeps_the_previous_version_and_snapshots_the_data(service: Helper) -> None:
    armed = sh(service, "arm_rollback 1.0 2.0")
    assert "upgrading from 1.0 to 2.0: " in armed.stderr and "kept for a rollback (copy" in armed.stderr
    state = service.path("ROLLBACK_DIR") / "state"
    assert state.read_text().startswith("FROM='1.0'\nTO='2.0'\nSTATUS='armed'\nMETHOD='copy (")
    snapshot = service.path("ROLLBACK_DIR") / "data/volumes/data/index.html"
    assert snapshot.read_text() == "v1 data\n"
    previous = service.path("PREVIOUS_DIR")
    # The image as hard links: the unpack's renames and unlinks leave these names the old inodes.
    original = service.path("IMAGE_DIR") / "rootfs/data/seed"
    kept = previous / "image/rootfs/data/seed"
    assert kept.stat().st_ino == original.stat().st_ino
    assert (previous / "unit").read_text() == Path(service.values["UNIT_PATH"]).read_text()
    env = (previous / "libexec/service.env").read_text()
    assert env.endswith(f"IMAGE_DIR='{previous}/image'\n")
    assert (previous / "libexec/service").read_bytes() == service.program.read_bytes()


def test_a_stopped_service_or_rollback_off_arms_nothing(service: Helper) -> None:
    sh(service, "service_active() { false; }\narm_rollback 1.0 2.0")
    assert not service.path("ROLLBACK_DIR").exists() and not service.path("PREVIOUS_DIR").exists()
    (service.path("CONFIG_DIR") / "rollback").write_text("# comment\nrollback off\n")
    sh(service, "arm_rollback 1.0 2.0")
    assert not service.path("ROLLBACK_DIR").exists() and not service.path("PREVIOUS_DIR").exists()


def test_data_larger_than_the_copy_limit_upgrades_without_rollback(service: Helper) -> None:
    (service.path("DATA_DIR") / "volumes/data/big").write_bytes(os.urandom(3 << 20))
    (service.path("CONFIG_DIR") / "rollback").write_text("copy-limit 2M\n")
    armed = sh(service, "arm_rollback 1.0 2.0")
    assert "upgrading to 2.0 without a rollback: " in armed.stderr
    assert "more than the copy-limit of 2048 KiB" in armed.stderr
    assert not service.path("ROLLBACK_DIR").exists() and not service.path("PREVIOUS_DIR").exists()


def test_no_room_for_the_snapshot_refuses_the_upgrade(service: Helper) -> None:
    """Where the snapshot goes is a 1 MiB tmpfs, the data 2 MiB: the preinst fails before the unpack,
    saying why, and leaves nothing behind: the running version is untouched."""
    (service.path("DATA_DIR") / "volumes/data/big").write_bytes(os.urandom(2 << 20))
    rollback_root = service.path("ROLLBACK_DIR").parent
    rollback_root.mkdir(parents=True)
    script = f"mount -t tmpfs -o size=1m tmpfs {rollback_root}\n{ARM}"
    refused = sh(service, script, namespace=True)
    assert refused.stdout.strip() == "status 1", refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("kv-svc: upgrade to 2.0 refused, 1.0 keeps running: no room for the snapshot")
    assert "write 'rollback off' in" in line
    assert not service.path("PREVIOUS_DIR").exists()
    assert (service.path("DATA_DIR") / "volumes/data/index.html").read_text() == "v1 data\n"


def test_no_room_found_by_the_copy_itself(service: Helper) -> None:
    """The free-space estimate passes but the copy runs out (what another writer took meanwhile): cp's
    error refuses the upgrade just the same."""
    (service.path("DATA_DIR") / "volumes/data/big").write_bytes(os.urandom(2 << 20))
    rollback_root = service.path("ROLLBACK_DIR").parent
    rollback_root.mkdir(parents=True)
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {rollback_root}\n"
        "df() { printf 'Filesystem 1024-blocks Used Available Capacity Mounted\\nx 1 1 999999 0% /\\n'; }\n"
        f"{ARM}"
    )
    refused = sh(service, script, namespace=True)
    assert refused.stdout.strip() == "status 1", refused.stderr
    assert "No space left on device" in refused.stderr


@pytest.mark.parametrize(
    "line", ["rollback maybe", "copy-limit 12", "copy-limit 1.5G", "steady 0", "frobnicate 1", "steady 5 s"]
)
def test_a_bad_config_line_is_named(service: Helper, line: str) -> None:
    (service.path("CONFIG_DIR") / "rollback").write_text(f"# comment\n\nrollback on\n{line}\n")
    failed = sh(service, "arm_rollback 1.0 2.0", check=False)
    assert failed.returncode != 0
    config = service.path("CONFIG_DIR") / "rollback"
    assert failed.stderr.strip() == (
        f"kv-svc: {config} line 4: not 'rollback on|off', 'copy-limit SIZE' (0, or a number and K, M, G or "
        "T), 'ready-timeout SECONDS' or 'steady SECONDS'"
    )


def test_config_values(service: Helper) -> None:
    (service.path("CONFIG_DIR") / "rollback").write_text("copy-limit 3G\nready-timeout 42\nsteady 7\n")
    read = sh(service, 'read_rollback_config; echo "$ROLLBACK $COPY_LIMIT $READY_TIMEOUT $STEADY"')
    assert read.stdout.strip() == "on 3145728 42 7"


def test_roll_back_puts_the_snapshot_back_and_runs_the_kept_version(service: Helper) -> None:
    """After the unpack deleted 1.0's image and 2.0 rewrote the data: the data is 1.0's again, 2.0's is
    kept beside it, and the unit in /etc runs the kept helper, whose root is the kept image."""
    sh(service, "arm_rollback 1.0 2.0")
    image = service.path("IMAGE_DIR")
    previous = service.path("PREVIOUS_DIR")
    data = service.path("DATA_DIR")
    # The unpack and the failed version.
    for path in sorted(image.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    image.rmdir()
    (data / "volumes/data/index.html").write_text("migrated by 2.0\n")

    rolled = sh(service, "roll_back 2.0")
    assert "kv-svc: rolled back to 1.0: " in rolled.stderr
    assert (data / "volumes/data/index.html").read_text() == "v1 data\n"
    failed = Path(f"{data}.failed-2.0")
    assert (failed / "volumes/data/index.html").read_text() == "migrated by 2.0\n"
    assert f"the data 2.0 left is in {failed}" in rolled.stderr
    override = (service.top / "etc/systemd/system/kv-svc.service").read_text()
    assert override.startswith("# Written by ctr2svc's rollback: 2.0 did not become ready, 1.0 runs from ")
    assert f"ExecStart=/bin/sh {previous}/libexec/service start\n" in override
    assert "STATUS='rolled-back'" in (service.path("ROLLBACK_DIR") / "state").read_text()

    # The kept version starts from its kept files (in a namespace: prepare mounts the root).
    ran = sh(
        service,
        f"sh {previous}/libexec/service prepare\nsh {previous}/libexec/service start\n"
        'grep -c " $ROOT " /proc/self/mountinfo\n'
        "awk -v root=\"$ROOT\" '$5 == root' /proc/self/mountinfo | grep -o 'lowerdir=[^,]*'\n"
        f"sh {previous}/libexec/service stop",
        namespace=True,
    )
    assert ran.stdout.split() == ["1", f"lowerdir={previous}/image/rootfs"], ran.stderr

    # A second failure of the same version keeps the first one's data too.
    sh(service, "arm_rollback 2.0 2.0")
    again = sh(service, "roll_back 2.0")
    assert Path(f"{data}.failed-2.0.2").is_dir() and failed.is_dir(), again.stderr


def test_configuring_a_rolled_back_version_again_fails_and_changes_nothing(service: Helper) -> None:
    sh(service, "arm_rollback 1.0 2.0\nroll_back 2.0")
    again = sh(service, "st=0; upgrade_restart 2.0 true || st=$?; echo status $st")
    assert again.stdout.strip() == "status 4"
    assert "version 2.0 did not become ready and was rolled back to 1.0" in again.stderr
    assert (service.top / "etc/systemd/system/kv-svc.service").exists()
    assert service.path("PREVIOUS_DIR").is_dir()


def test_a_version_that_runs_steadily_is_kept(service: Helper) -> None:
    """No ready port, no health check: STEADY seconds without a stop make it ready; the snapshot and the
    kept files go."""
    (service.path("CONFIG_DIR") / "rollback").write_text("steady 1\n")
    done = sh(
        service,
        "arm_rollback 1.0 2.0\nst=0\n"
        "upgrade_restart 2.0 sh -c './service prepare && ./service start' || st=$?\necho status $st\n"
        "./service stop",
        namespace=True,
    )
    assert done.stdout.strip() == "status 0", done.stderr
    assert "version 2.0 is ready (" in done.stderr and "the rollback snapshot is removed" in done.stderr
    assert not service.path("ROLLBACK_DIR").exists() and not service.path("PREVIOUS_DIR").exists()


@pytest.mark.parametrize("when", ["at once", "within the steady time"])
def test_a_version_that_stops_is_not_ready(service: Helper, when: str) -> None:
    (service.path("CONFIG_DIR") / "rollback").write_text("steady 3\n")
    # (In the background with its output elsewhere: the restart's output is read to its end.)
    late = '(sleep 1; kill -9 "$(cat ../run/kv-svc/pid)") >/dev/null 2>&1 &'
    crash = "./service stop" if when == "at once" else late
    done = sh(
        service,
        "arm_rollback 1.0 2.0\nst=0\n"
        f"upgrade_restart 2.0 sh -c './service prepare && ./service start && {crash}' || st=$?\n"
        "echo status $st\n./service stop",
        namespace=True,
    )
    assert done.stdout.strip() == "status 3", done.stderr
    why = (
        "the container is not running"
        if when == "at once"
        else "the container stopped within 3 s of its start"
    )
    assert f"kv-svc: version 2.0 is not ready: {why}; rolling back to 1.0\n" in done.stderr
    assert "STATUS='armed'" in (service.path("ROLLBACK_DIR") / "state").read_text()


def test_a_restart_that_fails_or_takes_too_long_is_not_ready(service: Helper) -> None:
    failing = "upgrade_restart 2.0 sh -c 'echo Job failed. >&2; exit 1'"
    done = sh(service, f"arm_rollback 1.0 2.0\nst=0; {failing} || st=$?; echo status $st")
    assert done.stdout.strip() == "status 3", done.stderr
    assert "version 2.0 is not ready: the restart failed (Job failed.); rolling back to 1.0" in done.stderr
    (service.path("CONFIG_DIR") / "rollback").write_text("ready-timeout 1\n")
    done = sh(service, "arm_rollback 1.0 2.0\nst=0; upgrade_restart 2.0 sleep 3 || st=$?; echo status $st")
    assert done.stdout.strip() == "status 3", done.stderr
    assert "not ready: the restart took longer than the ready-timeout of 1 s; rolling back" in done.stderr


def test_an_upgrade_that_was_not_armed_just_restarts(service: Helper) -> None:
    done = sh(service, "upgrade_restart 2.0 sh -c 'exit 7'; echo status $?", check=False)
    assert done.returncode == 7 and done.stdout == ""
    fine = sh(service, "st=0; upgrade_restart 2.0 true || st=$?; echo status $st")
    assert fine.stdout.strip() == "status 0"


@pytest.fixture
def btrfs(tmp_path: Path) -> Path:
    """An empty btrfs image file (mkfs.btrfs from btrfs-progs; the kernel's btrfs)."""
    require(shutil.which("mkfs.btrfs") is not None, "mkfs.btrfs (btrfs-progs) is not installed")
    require("btrfs" in Path("/proc/filesystems").read_text(), "the kernel has no btrfs")
    image = tmp_path / "btrfs.img"
    with image.open("wb") as f:
        f.truncate(256 << 20)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    return image


@pytest.mark.parametrize("kind", ["subvolume", "directory"])
def test_btrfs_snapshots_or_reflinks_whatever_the_copy_limit(service: Helper, btrfs: Path, kind: str) -> None:
    """/var/lib on btrfs: a data directory that is a subvolume is snapshotted, a plain one reflinked; the
    100 MiB of data take no copy (copy-limit 0 forbids one) and almost no space; the rollback puts it back
    by renames."""
    (service.path("CONFIG_DIR") / "rollback").write_text("copy-limit 0\n")
    make = "btrfs -q subvolume create" if kind == "subvolume" else "mkdir"
    script = f"""
mount -o loop {btrfs} "$TOP/var/lib"
{make} "$DATA_DIR"
mkdir -p "$DATA_DIR/volumes/data"
head -c 104857600 /dev/urandom >"$DATA_DIR/volumes/data/big"
echo "v1 data" >"$DATA_DIR/volumes/data/index.html"
sync
used() {{ btrfs filesystem sync "$TOP/var/lib"; df -k --output=used "$TOP/var/lib" | tail -n 1; }}
before=$(used)
arm_rollback 1.0 2.0
echo "grew $(($(used) - before))"
echo "migrated by 2.0" >"$DATA_DIR/volumes/data/index.html"
roll_back 2.0 2>/dev/null
echo "restored $(cat "$DATA_DIR/volumes/data/index.html")"
echo "failed $(cat "$DATA_DIR.failed-2.0/volumes/data/index.html")"
"""
    done = sh(service, script, namespace=True)
    method = "btrfs snapshot" if kind == "subvolume" else "reflink copy"
    assert f"kept for a rollback ({method})" in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    grew = int(lines[0].removeprefix("grew "))
    assert grew < 4096, f"the snapshot took {grew} KiB"
    assert lines[1:] == ["restored v1 data", "failed migrated by 2.0"]


def test_a_data_directory_that_is_a_mount_point_is_copied_back(service: Helper) -> None:
    """/var/lib/NAME on a file system of its own cannot be renamed: the failed data is copied aside and
    the snapshot copied in."""
    script = """
mount -t tmpfs -o size=8m tmpfs "$DATA_DIR"
mkdir -p "$DATA_DIR/volumes/data"
echo "v1 data" >"$DATA_DIR/volumes/data/index.html"
arm_rollback 1.0 2.0 2>/dev/null
echo "migrated by 2.0" >"$DATA_DIR/volumes/data/index.html"
echo new >"$DATA_DIR/volumes/data/new"
roll_back 2.0 2>/dev/null
ls "$DATA_DIR/volumes/data"
cat "$DATA_DIR/volumes/data/index.html" "$DATA_DIR.failed-2.0/volumes/data/index.html"
grep -c " $DATA_DIR " /proc/self/mountinfo
"""
    done = sh(service, script, namespace=True)
    assert done.stdout.splitlines() == ["index.html", "v1 data", "migrated by 2.0", "1"], done.stderr


def test_after_a_rollback_the_next_upgrade_keeps_what_runs(service: Helper) -> None:
    """The version a rollback restored runs from the kept files: the next upgrade's snapshot keeps them
    (and comes back to that version), and one that cannot snapshot leaves them to the restart."""
    sh(service, "arm_rollback 1.0 2.0\nroll_back 2.0")
    previous = service.path("PREVIOUS_DIR")
    armed = sh(service, "arm_rollback 2.0 3.0")
    assert "upgrading from 1.0 to 3.0: " in armed.stderr
    assert (previous / "image/rootfs/data/seed").is_file()
    sh(service, "roll_back 3.0")
    (service.path("DATA_DIR") / "volumes/data/big").write_bytes(os.urandom(2 << 20))
    (service.path("CONFIG_DIR") / "rollback").write_text("copy-limit 1M\n")
    plain = sh(service, "arm_rollback 3.0 4.0")
    assert "upgrading to 4.0 without a rollback" in plain.stderr
    assert (previous / "image/rootfs/data/seed").is_file()
    # The restart of 4.0 stops the restored version with its own unit, then forgets it all.
    done = sh(service, 'st=0; upgrade_restart 4.0 false || st=$?; echo status $st; cat "$LOG"')
    assert done.stdout.splitlines() == [
        "status 0",
        "systemctl stop kv-svc.service",
        "systemctl daemon-reload",
        # Started, whatever the restart asked (rpm's try-restart would leave it stopped).
        "systemctl start kv-svc.service",
    ]
    assert not previous.exists() and not (service.top / "etc/systemd/system/kv-svc.service").exists()


# OpenRC's side stubbed as systemd's is: rc-service logs what it is asked.
@pytest.fixture
def openrc_service(service: Helper) -> Helper:
    """The same service packaged for OpenRC (an .apk): its init script is the file kept."""
    init = service.top / "etc/init.d/kv-svc"
    init.parent.mkdir(parents=True)
    init.write_text("#!/sbin/openrc-run\ncommand=/usr/libexec/kv-svc/service\n")
    values = {k: service.values[k] for k in ("LIBEXEC", "ROLLBACK_DIR", "PREVIOUS_DIR", "HEALTH_CMD")}
    service.install(**values, UNIT_PATH=str(init), INIT="openrc")
    stub = service.top / "bin/rc-service"
    stub.write_text('#!/bin/sh\necho "rc-service $*" >>"$LOG"\n')
    stub.chmod(0o755)
    return service


def test_openrc_roll_back_names_the_kept_files_for_the_init_script(openrc_service: Helper) -> None:
    """Under OpenRC no unit is written: the file the init script reads names the kept helper and
    ownership script, and the kept version prepares and starts from them, run by sh; the next upgrade
    stops it with rc-service, removes the file and starts the service (the new version)."""
    service = openrc_service
    sh(service, "arm_rollback 1.0-r0 2.0-r0")
    previous = service.path("PREVIOUS_DIR")
    assert (previous / "unit").read_text() == (service.top / "etc/init.d/kv-svc").read_text()
    (service.path("DATA_DIR") / "volumes/data/index.html").write_text("migrated by 2.0\n")
    rolled = sh(service, "roll_back 2.0-r0")
    assert "kv-svc: rolled back to 1.0-r0: " in rolled.stderr
    assert (service.path("DATA_DIR") / "volumes/data/index.html").read_text() == "v1 data\n"
    assert not (service.top / "etc/systemd/system/kv-svc.service").exists()
    named = service.path("ROLLBACK_DIR") / "openrc"
    assert named.read_text().startswith(
        "# Written by ctr2svc's rollback: 2.0-r0 did not become ready or was refused, 1.0-r0 runs from "
    )
    ran = sh(
        service,
        f". {named}\n"
        '$ctr2svc_sh "$ctr2svc_helper" prepare\n$ctr2svc_sh "$ctr2svc_helper" start\n'
        "awk -v root=\"$ROOT\" '$5 == root' /proc/self/mountinfo | grep -o 'lowerdir=[^,]*'\n"
        'sh "$ctr2svc_ownership"\n$ctr2svc_sh "$ctr2svc_helper" stop',
        namespace=True,
    )
    assert ran.stdout.split() == [f"lowerdir={previous}/image/rootfs"], ran.stderr

    # Configured again: apk has no such step, but the message points at OpenRC's logs.
    again = sh(service, "st=0; upgrade_restart 2.0-r0 true || st=$?; echo status $st")
    assert again.stdout.strip() == "status 4"
    assert "rolled back to 1.0-r0 (rc-service kv-svc status, and syslog)" in again.stderr

    done = sh(service, 'st=0; upgrade_restart 3.0-r0 false || st=$?; echo status $st; cat "$LOG"')
    assert done.stdout.splitlines() == ["status 0", "rc-service kv-svc stop", "rc-service kv-svc start"]
    assert not named.exists() and not previous.exists()


def test_openrc_refusal_after_the_unpack_keeps_the_previous_version(openrc_service: Helper) -> None:
    """apk unpacks whatever its pre-upgrade says: with no room for the snapshot the state says refused,
    and post-upgrade's upgrade_restart restarts nothing, names the kept files for the init script and
    fails, the data untouched."""
    service = openrc_service
    (service.path("DATA_DIR") / "volumes/data/big").write_bytes(os.urandom(2 << 20))
    rollback_root = service.path("ROLLBACK_DIR").parent
    rollback_root.mkdir(parents=True)
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {rollback_root}\nUNPACKED_ANYWAY=1\n{ARM}\n"
        'st=0; upgrade_restart 2.0 false || st=$?; echo status $st; cat "$LOG" 2>/dev/null || true\n'
        'cat "$ROLLBACK_DIR/state" "$ROLLBACK_DIR/openrc"'
    )
    done = sh(service, script, namespace=True)
    lines = done.stdout.splitlines()
    # Nothing restarted: rc-service was not called.
    assert lines[:2] == ["status 1", "status 4"], done.stderr
    assert "STATUS='rolled-back'" in lines and any("ctr2svc_helper=" in line for line in lines), lines
    assert "upgrade to 2.0 refused, 1.0 keeps running: no room" in done.stderr
    assert "kv-svc: the upgrade to 2.0 was refused (no room for the snapshot a rollback needs" in done.stderr
    assert (service.path("PREVIOUS_DIR") / "libexec/service").is_file()
    assert (service.path("DATA_DIR") / "volumes/data/index.html").read_text() == "v1 data\n"
