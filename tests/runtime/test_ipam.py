"""The private networks' address book (ctr2svc/runtime/ipam.sh): concurrent starts, a full network, a
reboot, and what a crash or a purge leaves behind.

Why ctr2svc keeps its own: netavark, run without podman, takes static addresses and allocates none;
systemd-networkd's pools exist on systemd hosts only, not on OpenRC or Alpine. So the address book is one
small file of the helper, with these tests (docs/service.md#private-network)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import Helper

# Network namespaces of their own (unshare --net), away from the host's routes.
pytestmark = pytest.mark.usefixtures("as_root")

# One service's start as network_setup does it (the address part), as service $1 on network $2.
ALLOCATE = """
    NAME=$1
    NETWORK_NAME=${2:-ctr2svc}
    IPAM_DIR=$BOOK/ipam
    SERVICES_DATA=$BOOK/data
    NET_STATE=$BOOK/run
    PODMAN_NETWORKS=$BOOK/podman
    DATA_DIR=$SERVICES_DATA/$NAME
    mkdir -p "$DATA_DIR"
    lock_network
    allocate_subnet
    allocate_address
    unlock_network
    echo "$NAME $address"
"""


@pytest.fixture
def book(tmp_path: Path) -> Path:
    return tmp_path / "book"


def allocate(
    helper: Helper, book: Path, name: str, network: str = "", **values: str
) -> subprocess.CompletedProcess[str]:
    settings = "".join(f"{key}='{value}'\n" for key, value in values.items())
    script = f"set -- {name} {network}\n{settings}{ALLOCATE}"
    # In a network namespace of its own: the host's routes (another service's bridge) are not the test's.
    return helper.shell(script, extra={"BOOK": str(book)}, check=False, network=True)


def address(helper: Helper, book: Path, name: str, network: str = "", **values: str) -> str:
    done = allocate(helper, book, name, network, **values)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[1]


def test_concurrent_starts_get_distinct_addresses(helper: Helper, book: Path) -> None:
    """Thirty services starting at once: thirty addresses, each claimed by its service alone."""
    body = f"set -eu\n. ./library.sh\nderive_paths\n{ALLOCATE}"
    starts = [
        subprocess.Popen(
            ["sh", "-c", body, "sh", f"svc{i}"],
            cwd=helper.libexec,
            env={**helper.env(), "BOOK": str(book)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(30)
    ]
    results = {}
    for proc in starts:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        name, given = out.split()
        results[name] = given
    assert len(set(results.values())) == 30
    assert set(results.values()) == {f"10.89.240.{n}" for n in range(2, 32)}
    for name, given in results.items():
        assert (book / "ipam/addresses" / given).read_text() == f"{name}\n"
        assert (book / "data" / name / "address").read_text() == f"{given}\n"


def test_an_address_is_kept_across_restarts_reboots_and_a_remove(helper: Helper, book: Path) -> None:
    first = address(helper, book, "a")
    address(helper, book, "b")
    # A reboot empties /run (the lock, the ports' claims); the book is on disk.
    subprocess.run(["rm", "-rf", str(book / "run")], check=True)
    assert address(helper, book, "a") == first == "10.89.240.2"
    # A remove keeps the data directory, and with it the address.
    assert address(helper, book, "c") == "10.89.240.4"


def test_stale_claims_are_free_again(helper: Helper, book: Path) -> None:
    """A purged service's claim (its data directory gone), a crash between the claim and the service's
    own record, an empty claim (a crash while writing it), a claim whose holder moved: all free."""
    address(helper, book, "purged")  # .2
    subprocess.run(["rm", "-rf", str(book / "data/purged")], check=True)
    claims = book / "ipam/addresses"
    (claims / "10.89.240.3").write_text("crashed\n")  # its own record never written
    (claims / "10.89.240.4").write_text("")
    (claims / "10.89.240.5").write_text("moved\n")
    (book / "data/moved").mkdir(parents=True)
    (book / "data/moved/address").write_text("10.89.240.99\n")
    given = [address(helper, book, name) for name in ("n1", "n2", "n3", "n4", "n5")]
    assert given == [f"10.89.240.{n}" for n in (2, 3, 4, 5, 6)]


def test_a_full_network_says_so(helper: Helper, book: Path) -> None:
    claims = book / "ipam/addresses"
    claims.mkdir(parents=True)
    for n in range(2, 255):
        holder = f"svc{n}"
        (claims / f"10.89.240.{n}").write_text(f"{holder}\n")
        (book / "data" / holder).mkdir(parents=True)
        (book / "data" / holder / "address").write_text(f"10.89.240.{n}\n")
    full = allocate(helper, book, "one-too-many")
    assert full.returncode == 1
    assert full.stderr.strip() == (
        "one-too-many: no address left on the network ctr2svc (10.89.240.0/24): purge a service's package"
    )
    assert not (book / "data/one-too-many/address").exists()


def test_application_networks_get_a_24_each_and_keep_it(helper: Helper, book: Path) -> None:
    candidates = {"SUBNET_PREFIX": "", "SUBNET_CANDIDATES": "10.89.241 10.89.242"}
    assert address(helper, book, "shop-web", "shop", **candidates) == "10.89.241.2"
    assert address(helper, book, "blog-web", "blog", **candidates) == "10.89.242.2"
    assert address(helper, book, "shop-db", "shop", **candidates) == "10.89.241.3"
    subprocess.run(["rm", "-rf", str(book / "run")], check=True)  # a reboot
    assert address(helper, book, "blog-db", "blog", **candidates) == "10.89.242.3"
    third = allocate(helper, book, "wiki-web", "wiki", **candidates)
    assert third.returncode == 1
    assert "no /24 left for the network wiki (all of 10.89.241 10.89.242 are taken)" in third.stderr
    # Once an application's services are purged, its /24 can go to another network.
    for name in ("blog-web", "blog-db"):
        subprocess.run(["rm", "-rf", str(book / "data" / name)], check=True)
    assert address(helper, book, "wiki-web", "wiki", **candidates) == "10.89.242.2"
    # The application's next services join it there: the purged network's record of the same /24 no
    # longer counts (it made the second service move the network away, or find no /24 at all).
    assert address(helper, book, "wiki-db", "wiki", **candidates) == "10.89.242.3"
    assert (book / "ipam/networks/wiki").read_text() == "10.89.242\n"
    assert not (book / "ipam/networks/blog").exists()
    assert address(helper, book, "wiki-web", "wiki", **candidates) == "10.89.242.2"


def test_a_24_in_use_elsewhere_is_skipped(helper: Helper, book: Path) -> None:
    """A /24 the host routes to another interface, or that a podman network has, is not taken."""
    (book / "podman").mkdir(parents=True)
    (book / "podman/web.json").write_text('{"subnets": [{"subnet": "10.89.242.0/24"}]}\n')
    script = (
        """
        ip link add elsewhere0 type veth peer name elsewhere1
        ip addr add 10.89.241.1/24 dev elsewhere0
        ip link set elsewhere0 up
        set -- svc app
        SUBNET_PREFIX= SUBNET_CANDIDATES='10.89.241 10.89.242 10.89.243'
    """
        + ALLOCATE
    )
    done = helper.shell(script, extra={"BOOK": str(book)}, network=True)
    assert done.stdout.split() == ["svc", "10.89.243.2"]
