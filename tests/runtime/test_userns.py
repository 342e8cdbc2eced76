"""User namespaces in the helper (ctr2svc/runtime/userns.sh, config.awk): the ranges' book (concurrent
installs, kept until purge, stale claims, the pool from /etc/subuid, a full pool) and the runtime config
a user namespace gets. tests/integration/test_userns.py runs it with the real runc; tests/vm/test_userns.py
under systemd."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require

from .conftest import Helper

pytestmark = pytest.mark.usefixtures("as_root")

POOL = 1879048192
SIZE = 65536

# One service's install as init-data does it (the range part), as service $1.
ALLOCATE = """
    NAME=$1
    USERNS_DIR=$BOOK/userns
    SERVICES_DATA=$BOOK/data
    SUBUID=$BOOK/subuid
    DATA_DIR=$SERVICES_DATA/$NAME
    USERNS=auto
    userns_setup allocate
    echo "$NAME $SHIFT"
"""


@pytest.fixture
def book(tmp_path: Path) -> Path:
    return tmp_path / "book"


def allocate(helper: Helper, book: Path, name: str) -> subprocess.CompletedProcess[str]:
    return helper.shell(f"set -- {name}\n{ALLOCATE}", extra={"BOOK": str(book)}, check=False)


def start_of(helper: Helper, book: Path, name: str) -> int:
    done = allocate(helper, book, name)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[1])


@pytest.mark.parametrize("shell", [["sh"], ["busybox", "sh"]], ids=["dash", "busybox"])
def test_concurrent_installs_get_distinct_ranges(helper: Helper, book: Path, shell: list[str]) -> None:
    """Twenty installs at once, in Debian's sh and in Alpine's (busybox: its flock, its read)."""
    require(shutil.which(shell[0]) is not None, f"{shell[0]} is not installed")
    body = f"set -eu\n. ./library.sh\nderive_paths\n{ALLOCATE}"
    installs = [
        subprocess.Popen(
            [*shell, "-c", body, "sh", f"svc{i}"],
            cwd=helper.libexec,
            env={**helper.env(), "BOOK": str(book)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(20)
    ]
    results = {}
    for proc in installs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        name, given = out.split()
        results[name] = int(given)
    assert sorted(results.values()) == [POOL + i * SIZE for i in range(20)]
    for name, start in results.items():
        assert (book / "userns" / str(start)).read_text() == f"{name}\n"
        assert (book / "data" / name / "userns").read_text() == f"{start} {SIZE}\n"


def test_a_range_is_kept_until_purge(helper: Helper, book: Path) -> None:
    """Restarts, upgrades and a remove keep the data directory, and with it the range; a purge deletes
    it, and the range goes to the next service that needs one. Stale claims are free."""
    first = start_of(helper, book, "a")
    assert start_of(helper, book, "b") == first + SIZE
    assert start_of(helper, book, "a") == first
    subprocess.run(["rm", "-rf", str(book / "data/a")], check=True)  # purge
    assert start_of(helper, book, "c") == first
    # A crash between the claim and the service's own record, an empty claim, a claim whose holder says
    # it holds another range: all free.
    claims = book / "userns"
    (claims / str(POOL + 2 * SIZE)).write_text("crashed\n")
    (claims / str(POOL + 3 * SIZE)).write_text("")
    (claims / str(POOL + 4 * SIZE)).write_text("moved\n")
    (book / "data/moved").mkdir(parents=True)
    (book / "data/moved/userns").write_text(f"{POOL + 99 * SIZE} {SIZE}\n")
    assert [start_of(helper, book, n) for n in ("d", "e", "f")] == [POOL + i * SIZE for i in (2, 3, 4)]
    assert start_of(helper, book, "b") == first + SIZE


def test_the_pool_is_subuid_s_ctr2svc_line_and_a_full_one_says_so(helper: Helper, book: Path) -> None:
    book.mkdir()
    (book / "subuid").write_text(f"alice:100000:65536\nctr2svc:300000:{2 * SIZE}\n")
    assert start_of(helper, book, "a") == 300000
    assert start_of(helper, book, "b") == 300000 + SIZE
    full = allocate(helper, book, "c")
    assert full.returncode == 1
    assert full.stderr.strip() == (
        f"c: no user namespace range left ({2 * SIZE} ids from 300000, /etc/subuid's ctr2svc line): "
        "purge a service's package"
    )
    assert not (book / "data/c/userns").exists()


def test_host_mode_allocates_nothing(helper: Helper, book: Path) -> None:
    done = helper.shell(
        f"set -- a\n{ALLOCATE.replace('USERNS=auto', 'USERNS=host')}", extra={"BOOK": str(book)}
    )
    assert done.stdout.split() == ["a", "0"]
    assert not (book / "userns").exists()


def test_the_admin_file_decides_and_a_wrong_word_fails(helper: Helper, book: Path) -> None:
    userns = helper.path("CONFIG_DIR") / "userns"
    userns.write_text("# mine\nauto\n")
    done = helper.shell(
        f"set -- a\n{ALLOCATE.replace('USERNS=auto', 'USERNS=host')}", extra={"BOOK": str(book)}
    )
    assert done.stdout.split() == ["a", str(POOL)]
    userns.write_text("yes\n")
    failed = helper.run("prepare", check=False)
    assert failed.returncode == 1
    assert failed.stderr.strip() == f"kv-svc: {userns} says 'yes': write auto or host there"


@pytest.mark.parametrize("network", ["host", "private"])
def test_the_runtime_config_of_a_user_namespace(helper: Helper, network: str) -> None:
    (helper.path("CONFIG_DIR") / "network").write_text(f"{network}\n")
    helper.shell(f"NETWORK={network}\n" + 'mkdir -p "$BUNDLE"\nrender_config')
    plain = json.loads((helper.path("STATE_DIR") / "bundle/config.json").read_text())
    script = f'NETWORK={network}\nUSERNS_START={POOL}\nmkdir -p "$BUNDLE"\nrender_config'
    helper.shell(script)
    config = json.loads((helper.path("STATE_DIR") / "bundle/config.json").read_text())
    linux = config["linux"]
    mapping = [{"containerID": 0, "hostID": POOL, "size": SIZE}]
    assert linux["uidMappings"] == linux["gidMappings"] == mapping
    assert linux["namespaces"] == [*plain["linux"]["namespaces"], {"type": "user"}]
    # The kernel refuses a new sysfs in a user namespace that does not own the network namespace.
    sys_mount = next(m for m in config["mounts"] if m["destination"] == "/sys")
    assert sys_mount == {
        "destination": "/sys",
        "type": "bind",
        "source": "/sys",
        "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
    }
    # Nothing else changes.
    for key in ("uidMappings", "gidMappings", "namespaces"):
        linux.pop(key)
    plain["linux"].pop("namespaces")
    assert [m for m in config["mounts"] if m["destination"] != "/sys"] == [
        m for m in plain["mounts"] if m["destination"] != "/sys"
    ]
    config.pop("mounts")
    plain.pop("mounts")
    assert config == plain
    # And back: no user namespace, no mappings, the kernel's sysfs.
    helper.shell(f'NETWORK={network}\nUSERNS_START=\nmkdir -p "$BUNDLE"\nrender_config')
    again = json.loads((helper.path("STATE_DIR") / "bundle/config.json").read_text())
    again["linux"].pop("namespaces")
    assert "uidMappings" not in again["linux"]
    assert next(m for m in again["mounts"] if m["destination"] == "/sys")["type"] == "sysfs"
