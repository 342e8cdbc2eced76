"""--network host|private and -p/--publish: what a private network is made of.

A private network is podman's network stack, run by the service helper with no daemon: netavark sets
up a network namespace per service (a veth on the `ctr2svc0` bridge, NAT outbound, the published ports
forwarded from the host with iptables/nftables rules) and starts aardvark-dns, one per host, which
answers the services' names. Everything here is decided at build time and rendered into the helper.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from ctr2svc import metadata
from ctr2svc.errors import UsageError
from ctr2svc.model import PortMapping

MODES = ("host", "private")
# One bridge and one /24 for every ctr2svc service on a host: services find each other by name on it.
# Podman's own networks are 10.88.0.0/16 (its default) and 10.89.0.0/24 upwards (`network create`):
# this one stays out of the way of both.
BRIDGE = "ctr2svc0"
NETWORK_NAME = "ctr2svc"
SUBNET = ipaddress.IPv4Network("10.89.240.0/24")
GATEWAY = SUBNET.network_address + 1
# A Linux bridge not given a MAC address takes the lowest of its ports': every service that starts or
# stops would change the gateway's MAC under the others, whose ARP entries then point at nothing (their
# name lookups through aardvark-dns time out until the entry fails). The helper gives it this one, made
# from the gateway's address as the services' own are made from theirs (network.awk).
BRIDGE_MAC = "02:c2:" + ":".join(f"{octet:02x}" for octet in GATEWAY.packed)
# netavark names the network's firewall chains after a hash of its id: a constant id, so every service
# (and every version of ctr2svc) tears down what another one set up.
NETWORK_ID = hashlib.sha256(b"ctr2svc network ctr2svc0").hexdigest()

_PUBLISH = re.compile(r"^(?:(\d{1,3}(?:\.\d{1,3}){3}):)?(\d{1,5}):(\d{1,5})(?:/(tcp|udp))?$")
_HINT = "e.g. --publish 8081:80, --publish 127.0.0.1:5432:5432 or --publish 5353:53/udp"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UsageError(f"unknown --network {mode!r}", hint="use --network host or --network private")
    return mode


def parse_publish(text: str) -> PortMapping:
    """[IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp], as `docker run -p` takes it (IPv4, one port each)."""
    metadata.check_one_line("--publish", text, _HINT)
    match = _PUBLISH.match(text.strip())
    if not match:
        raise UsageError(f"--publish {text!r} is not [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]", hint=_HINT)
    ip, host, container, proto = match.groups()
    if ip is not None:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise UsageError(f"--publish {text!r}: {ip} is not an IPv4 address", hint=_HINT) from None
    for port in (host, container):
        if not 1 <= int(port) <= 65535:
            raise UsageError(f"--publish {text!r}: port {port} is not between 1 and 65535", hint=_HINT)
    return PortMapping(int(host), int(container), proto or "tcp", ip or "")


def publish(mode: str, texts: tuple[str, ...]) -> tuple[PortMapping, ...]:
    """The mappings, checked on their own and together (no host port published twice)."""
    check_mode(mode)
    if texts and mode != "private":
        raise UsageError(
            "--publish needs --network private: with host networking the service's ports are the host's",
            hint="add --network private, or drop --publish",
        )
    mappings = tuple(parse_publish(text) for text in texts)
    seen: dict[tuple[int, str], PortMapping] = {}
    for mapping in mappings:
        key = (mapping.host_port, mapping.protocol)
        if key in seen:
            raise UsageError(
                f"--publish {mapping} and --publish {seen[key]} both publish host port "
                f"{mapping.host_port}/{mapping.protocol}",
                hint="give each host port once",
            )
        seen[key] = mapping
    return mappings


# A compose application's network: a /24 of its own, given out on the host at the first start of one of
# its services (the helper's allocate_subnet), from these: above the default network's first, then
# below it. Podman's own `network create` counts up from 10.89.0.0/24, so these stay out of its way
# unless a host has more than a hundred podman networks (and a subnet podman has is skipped anyway).
APPLICATION_SUBNETS = (*range(241, 255), *range(239, 127, -1))
_APPLICATION = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class Network:
    """A netavark network the helper sets up: name, id and bridge are fixed at build time; the /24 is
    fixed for the default network and given out on the host for an application's."""

    name: str
    id: str
    bridge: str
    prefix: str  # the /24's first three numbers; "" for an application's network (given out at start)


def for_service(application: str) -> Network:
    """The network of a service: the host's ctr2svc network, or compose APPLICATION's own, on which its
    service names resolve only between its services."""
    if not application:
        return Network(NETWORK_NAME, NETWORK_ID, BRIDGE, str(SUBNET.network_address).rsplit(".", 1)[0])
    if not _APPLICATION.match(application):
        raise UsageError(
            f"application name {application!r} cannot name a network",
            hint="use lowercase letters, digits, '-' and '_' (as compose does)",
        )
    name = f"{NETWORK_NAME}-{application}"
    digest = hashlib.sha256(f"ctr2svc network {name}".encode()).hexdigest()
    # Interface names have at most 15 characters: the application's name when it fits, else a hash.
    bridge = f"c2s-{application}" if len(application) <= 11 else f"c2s-{digest[:11]}"
    return Network(name, digest, bridge, "")


def container_id(name: str) -> str:
    """netavark's container id (64 hex, like podman's): fixed per service, so that aardvark-dns keeps
    one entry per service whatever happened to the previous run."""
    return hashlib.sha256(f"ctr2svc service {name}".encode()).hexdigest()


def aliases(name: str) -> tuple[str, ...]:
    """The names other services reach this one by: its own, and without the "-svc" ctr2svc adds."""
    short = name.removesuffix("-svc")
    return (name, short) if short and short != name else (name,)
