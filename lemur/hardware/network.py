"""This node's address and interface as another node sees them: what a
model spanning nodes needs in each node's environment (vLLM's
`VLLM_HOST_IP`, Gloo's `GLOO_SOCKET_IFNAME`), found from the route to the
leader rather than guessed from the host name."""

from __future__ import annotations

import fcntl
import socket
import struct
from collections.abc import Mapping

HOST_IP_ENV = "VLLM_HOST_IP"
GLOO_IFNAME_ENV = "GLOO_SOCKET_IFNAME"
_SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address


def route_ip(peer: str, port: int = 9) -> str:
    """The local address this node uses to reach `peer` (a host name or IP):
    the kernel's route choice, found by connecting a UDP socket, which sends
    nothing."""
    family, _, _, _, address = socket.getaddrinfo(peer, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        return sock.getsockname()[0]


def interface_address(name: str) -> str | None:
    """An interface's IPv4 address, or None (down, no IPv4, not Linux)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def interface_of(ip: str) -> str | None:
    """The name of the interface that holds `ip` (IPv4), or None."""
    for _, name in socket.if_nameindex():
        if interface_address(name) == ip:
            return name
    return None


def node_environment(leader: str, env: Mapping[str, str]) -> dict[str, str]:
    """The variables a node of a multi-node model lacks in `env`: its address
    on the route to the leader, and that route's interface for Gloo. Set ones
    are left alone (a pod may know better, e.g. from the downward API)."""
    missing: dict[str, str] = {}
    ip = env.get(HOST_IP_ENV) or route_ip(leader)
    if HOST_IP_ENV not in env:
        missing[HOST_IP_ENV] = ip
    if GLOO_IFNAME_ENV not in env and (name := interface_of(ip)) is not None:
        missing[GLOO_IFNAME_ENV] = name
    return missing
