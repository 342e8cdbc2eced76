"""--network and -p/--publish: parsing, the checks, the runtime config and the package's needs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from ctr2svc.apps.project import load, options
from ctr2svc.commands.common import build_options
from ctr2svc.errors import UsageError
from ctr2svc.image.reference import parse
from ctr2svc.model import PackageFormat, PortMapping, ServiceSpec
from ctr2svc.options.build_options import BuildOptions
from ctr2svc.options.request import resolve
from ctr2svc.service import network, runtime_config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8081:80", PortMapping(8081, 80, "tcp", "")),
        ("8081:80/tcp", PortMapping(8081, 80, "tcp", "")),
        ("5353:53/udp", PortMapping(5353, 53, "udp", "")),
        ("127.0.0.1:5432:5432", PortMapping(5432, 5432, "tcp", "127.0.0.1")),
        (" 1:65535 ", PortMapping(1, 65535, "tcp", "")),
    ],
)
def test_publish_parses(text: str, expected: PortMapping) -> None:
    assert network.parse_publish(text) == expected


def test_a_mapping_is_its_ports_file_line() -> None:
    assert str(PortMapping(8081, 80)) == "8081:80/tcp"
    assert str(PortMapping(5353, 53, "udp", "127.0.0.1")) == "127.0.0.1:5353:53/udp"
    assert network.parse_publish(str(PortMapping(5353, 53, "udp", "127.0.0.1"))) == PortMapping(
        5353, 53, "udp", "127.0.0.1"
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("80", "is not [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]"),
        ("8081:80/sctp", "is not [IP:]HOST_PORT:CONTAINER_PORT"),
        ("localhost:8081:80", "is not [IP:]HOST_PORT:CONTAINER_PORT"),
        ("[::1]:8081:80", "is not [IP:]HOST_PORT:CONTAINER_PORT"),
        ("8000-8010:8000-8010", "is not [IP:]HOST_PORT:CONTAINER_PORT"),
        ("0:80", "port 0 is not between 1 and 65535"),
        ("8081:70000", "port 70000 is not between 1 and 65535"),
        ("300.1.1.1:8081:80", "300.1.1.1 is not an IPv4 address"),
        ("8081:80\n9090:90", "control characters"),
    ],
)
def test_publish_refuses(text: str, words: str) -> None:
    with pytest.raises(UsageError) as caught:
        network.parse_publish(text)
    assert words in str(caught.value)


def test_publish_needs_a_private_network_and_distinct_host_ports() -> None:
    with pytest.raises(UsageError) as caught:
        network.publish("host", ("8081:80",))
    assert "--publish needs --network private" in str(caught.value)
    assert network.publish("host", ()) == ()
    with pytest.raises(UsageError) as caught:
        network.publish("private", ("8081:80", "127.0.0.1:8081:81/tcp"))
    assert "both publish host port 8081/tcp" in str(caught.value)
    # One number for tcp and for udp is two ports.
    assert len(network.publish("private", ("5353:53/tcp", "5353:53/udp"))) == 2
    with pytest.raises(UsageError, match="unknown --network 'bridge'"):
        network.publish("bridge", ())


def test_build_options_check_the_network() -> None:
    opts = build_options("valkey/valkey:9", network="private", publish=("8081:80", "53:53/udp"))
    assert (opts.network, opts.publish) == ("private", ("8081:80", "53:53/udp"))
    resolve(opts)
    with pytest.raises(UsageError, match="needs --network private"):
        resolve(BuildOptions(reference=parse("valkey/valkey:9"), publish=("8081:80",)))


def test_project_keys(tmp_path: Path) -> None:
    path = tmp_path / "ctr2svc.toml"
    path.write_text('[[image]]\nref = "r.example/web:1"\nnetwork = "private"\npublish = ["8081:80"]\n')
    project = load(path)
    opts = options(project, project.images[0], PackageFormat.DEB)
    assert (opts.network, opts.publish) == ("private", (PortMapping(8081, 80),))
    path.write_text('[[image]]\nref = "r.example/web:1"\npublish = "8081:80"\n')
    with pytest.raises(UsageError, match="publish must be a list"):
        load(path)


def private(spec: ServiceSpec) -> ServiceSpec:
    return dataclasses.replace(spec, network="private", publish=(PortMapping(8081, 6379),))


def test_runtime_config_of_a_private_network(umoci_config: dict[str, Any], spec: ServiceSpec) -> None:
    cfg = runtime_config.patch(umoci_config, private(spec))
    namespaces = cfg["linux"]["namespaces"]
    assert {"type": "network", "path": "/run/netns/ctr2svc-valkey-svc"} in namespaces
    assert {ns["type"] for ns in namespaces} == {"pid", "ipc", "mount", "cgroup", "network", "uts"}
    assert cfg["hostname"] == "valkey-svc"
    # The rest is as with host networking.
    host = runtime_config.patch(umoci_config, spec)
    assert {k: v for k, v in cfg.items() if k not in ("linux", "hostname")} == {
        k: v for k, v in host.items() if k != "linux"
    }


def test_the_package_needs_the_network_stack_only_when_private(spec: ServiceSpec) -> None:
    assert spec.network_depends == ()
    assert private(spec).network_depends == ("netavark", "aardvark-dns", "iptables", "iproute2")
    rpm = dataclasses.replace(private(spec), format=PackageFormat.RPM)
    assert rpm.network_depends == ("netavark", "aardvark-dns", "iptables", "iproute")


def test_names_and_ids() -> None:
    assert network.aliases("valkey-svc") == ("valkey-svc", "valkey")
    assert network.aliases("web") == ("web",)
    ids = {network.container_id(name) for name in ("a-svc", "b-svc")}
    assert len(ids) == 2 and all(len(i) == 64 for i in ids)
    assert str(network.SUBNET) == "10.89.240.0/24" and str(network.GATEWAY) == "10.89.240.1"
    # The bridge's MAC follows the gateway's address as a service's follows its own (network.awk).
    assert network.BRIDGE_MAC == "02:c2:0a:59:f0:01"


def test_an_applications_own_network() -> None:
    default = network.for_service("")
    assert (default.name, default.bridge, default.prefix) == ("ctr2svc", "ctr2svc0", "10.89.240")
    shop = network.for_service("shop")
    assert (shop.name, shop.bridge, shop.prefix) == ("ctr2svc-shop", "c2s-shop", "")
    assert shop.id != default.id and len(shop.id) == 64
    # Interface names have 15 characters at most: a long application name gives a hash, fixed.
    long = network.for_service("a-rather-long-application")
    assert long.bridge.startswith("c2s-") and len(long.bridge) == 15
    assert long == network.for_service("a-rather-long-application")
    with pytest.raises(UsageError, match="cannot name a network"):
        network.for_service("Shop App")
    # The /24s an application's network may get: in 10.89.0.0/16, never the default network's.
    subnets = network.APPLICATION_SUBNETS
    assert len(set(subnets)) == len(subnets) == 126 and 240 not in subnets
    assert subnets[0] == 241 and all(0 < n < 255 for n in subnets)
