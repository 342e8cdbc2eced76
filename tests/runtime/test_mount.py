"""The root's overlay mount, counted by the kernel through a package's whole life (issue 22, item 1).

Each scenario runs in a mount namespace of its own: its mounts are gone with it whatever happens."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from ctr2svc.model import Layout
from ctr2svc.service import units

from .conftest import Helper, spec_for

pytestmark = pytest.mark.usefixtures("as_root")

COUNT = 'count() { mounts_on "$ROOT"; echo "$1 $mounts"; }\n'


def counts(output: str) -> list[tuple[str, int]]:
    return [(step, int(n)) for step, n in (line.split() for line in output.splitlines())]


def test_an_upgrade_that_deletes_the_running_image_leaks_no_mount(tmp_path: Path) -> None:
    """dpkg deletes the old version's rootfs (the overlay's lower directory) while the service runs: the
    root then looks empty, but is mounted. Install, upgrade, downgrade, upgrade, stop: one mount while
    it runs, none once stopped."""
    v1 = Helper(tmp_path / "host", spec_for(version="1.0")).install()
    env1 = (v1.libexec / "service.env").read_text()
    v2 = Helper(tmp_path / "host", spec_for(version="2.0")).install()
    env2 = (v2.libexec / "service.env").read_text()
    (v1.libexec / "env-1.0").write_text(env1)
    (v1.libexec / "env-2.0").write_text(env2)
    opt = tmp_path / "host/opt/kv-svc"
    shutil.copytree(opt, tmp_path / "pristine", symlinks=True)
    # An upgrade as dpkg and the package scripts do it: the new files unpacked, the old ones deleted
    # (the running service's rootfs among them), then the postinst's restart: stop, prepare, start.
    upgrade = """
        cp -a "$PRISTINE/$2" "$OPT/$2"
        cp "env-$2" service.env
        rm -rf "${OPT:?}/$1"
        ./service stop
        count "stopped-for-$2"
        ./service prepare
        ./service start
        count "running-$2"
    """
    script = f"""{COUNT}
        upgrade() {{ {upgrade} }}
        rm -rf "$OPT/2.0"
        cp env-1.0 service.env
        ./service prepare
        ./service start
        count running-1.0
        upgrade 1.0 2.0
        upgrade 2.0 1.0
        upgrade 1.0 2.0
        ./service stop
        count stopped
        ./service cleanup
        count cleaned
    """
    done = v1.shell(script, extra={"OPT": str(opt), "PRISTINE": str(tmp_path / "pristine")}, namespace=True)
    assert counts(done.stdout) == [
        ("running-1.0", 1),
        ("stopped-for-2.0", 0),
        ("running-2.0", 1),
        ("stopped-for-1.0", 0),
        ("running-1.0", 1),
        ("stopped-for-2.0", 0),
        ("running-2.0", 1),
        ("stopped", 0),
        ("cleaned", 0),
    ], done.stderr


def stack(n: int) -> str:
    """N overlays mounted on top of each other at $ROOT, as older helpers leaked them."""
    return f"""
        mkdir -p "$ROOT"
        i=0
        while [ "$i" -lt {n} ]; do
            leak="$STATE_DIR/leak$i"
            mkdir -p "$leak/upper" "$leak/work"
            options="lowerdir=$IMAGE_DIR/rootfs,upperdir=$leak/upper,workdir=$leak/work"
            mount -t overlay overlay -o "$options" "$ROOT"
            i=$((i + 1))
        done
    """


def test_stacked_mounts_all_go(helper: Helper) -> None:
    """A start after leaked mounts mounts the root once; a cleanup takes every mount away, a busy one
    too (a process with its working directory in the root)."""
    script = f"""{COUNT}{stack(3)}
        count leaked
        ./service prepare
        count prepared
        ./service start
        (cd "$ROOT" && sleep 30) &
        sleep 0.2
        ./service stop
        count stopped
        kill $! 2>/dev/null || true
    """
    done = helper.shell(script, namespace=True)
    assert counts(done.stdout) == [("leaked", 3), ("prepared", 1), ("stopped", 0)], done.stderr


def test_package_removal_takes_every_leaked_mount(tmp_path: Path) -> None:
    """The package's own fallback (postrm, %postun, post-deinstall), for a root a killed helper left:
    three stacked mounts, one busy. Run on a /run of its own, where the package's paths are."""
    layout = Layout("kv-svc", "1.0")
    snippet = units._environment().from_string('{% import "init.j2" as i %}{{ i.clean_runtime(layout) }}')
    clean = snippet.render(layout=layout)
    helper = Helper(tmp_path / "host", spec_for()).install(STATE_DIR="/run/kv-svc", ROOT="/run/kv-svc/rootfs")
    script = f"""{COUNT}
        mount -t tmpfs tmpfs /run
        {stack(3)}
        (cd "$ROOT" && sleep 30) &
        sleep 0.2
        count leaked
        sh -e -c {shlex.quote(clean)}
        count removed
        [ ! -e /run/kv-svc ] && echo "gone 0"
        kill $! 2>/dev/null || true
    """
    done = helper.shell(script, namespace=True)
    assert counts(done.stdout) == [("leaked", 3), ("removed", 0), ("gone", 0)], done.stderr
