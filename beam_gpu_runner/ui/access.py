"""Who may talk to the job server and the web UI.

The job server runs whatever code a client submits, and Beam's PortableRunner
client sends no credentials over a plaintext channel, so the only control that
does not lock Beam's own client out is the client's network address:

* a server bound to loopback (the default) accepts everyone who can reach it
  (this host), unless ``--allow_from`` narrows it further;
* a server bound beyond loopback (``--host 0.0.0.0``, a LAN address) needs
  ``--allow_from=CIDR[,CIDR]`` (checked on every RPC and HTTP request; others
  are refused with PERMISSION_DENIED / 403 and a log line) or an explicit
  ``--insecure`` (logged as a warning at start); with neither it does not start.

Loopback is not implied by an allow-list: name ``127.0.0.1/32`` (or
``::1/128``) too when local clients need it.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

_LOG = logging.getLogger(__name__)

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]", "*")


class AccessConfigError(ValueError):
    """``--allow_from`` / ``--insecure`` / the bind address do not fit together
    (one message arg; pickles)."""


@dataclass(frozen=True)
class AccessPolicy:
    """The clients a server accepts: everyone (``networks`` empty) or those
    whose address lies in one of ``networks``."""

    networks: tuple[Network, ...] = ()

    @property
    def open(self) -> bool:
        return not self.networks

    def allows(self, address: Optional[str]) -> bool:
        """Whether a client at ``address`` (an IP literal) may talk to us."""
        if self.open:
            return True
        ip = parse_address(address)
        if ip is None:
            return False
        return any(ip.version == net.version and ip in net for net in self.networks)

    def describe(self) -> str:
        if self.open:
            return "any client"
        return ",".join(str(n) for n in self.networks)


def parse_address(address: Optional[str]) -> Optional[Address]:
    """An IP address from a socket's peer text; IPv4-mapped IPv6 addresses
    (``::ffff:10.0.0.1``, a dual-stack socket's IPv4 clients) become IPv4."""
    if not address:
        return None
    text = address.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]      # an IPv6 zone id
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def grpc_peer_address(peer: str) -> Optional[str]:
    """The IP address in a gRPC peer string (``ipv4:10.0.0.2:5123``,
    ``ipv6:[::1]:5123``, ``ipv6:%5B::1%5D:5123``); None for unix sockets and
    anything else."""
    kind, _, rest = peer.partition(":")
    rest = rest.replace("%5B", "[").replace("%5D", "]")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        if rest.startswith("["):
            return rest[1:].split("]", 1)[0]
        return rest.rsplit(":", 1)[0]
    return None


def parse_networks(items: Iterable[str], flag: str = "--allow_from") -> tuple[Network, ...]:
    """CIDRs from ``--allow_from`` values (each may hold several, comma-separated).

    A bare address is a one-address network (``10.0.0.5`` = ``10.0.0.5/32``).
    """
    networks: list[Network] = []
    for item in items:
        for part in str(item).split(","):
            text = part.strip()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError as exc:
                raise AccessConfigError(
                    "%s=%s: %r is not a network (%s); write CIDRs such as "
                    "%s=10.0.0.0/8,192.168.1.7/32" % (flag, item, text, exc, flag)) from None
    return tuple(networks)


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` listens on loopback only (names are resolved:
    every address they resolve to must be loopback)."""
    text = host.strip()
    if text in WILDCARD_HOSTS:
        return False
    if text.lower() == "localhost":
        return True
    ip = parse_address(text)
    if ip is not None:
        return ip.is_loopback
    try:
        infos = socket.getaddrinfo(text, None)
    except OSError:
        return False
    addresses = [parse_address(str(info[4][0])) for info in infos]
    return bool(addresses) and all(a is not None and a.is_loopback for a in addresses)


def access_policy(server: str, host: str, allow_from: Sequence[str] = (),
                  insecure: bool = False) -> AccessPolicy:
    """The policy for ``server`` (e.g. "job server", "web UI") bound to ``host``.

    Raises AccessConfigError when ``host`` is beyond loopback and neither an
    allow-list nor ``insecure`` is given, or when ``allow_from`` is malformed.
    """
    networks = parse_networks(allow_from)
    if networks:
        if insecure:
            _LOG.info("%s: --allow_from is given, so --insecure has no effect: only "
                      "%s may connect", server, ",".join(str(n) for n in networks))
        return AccessPolicy(networks)
    if is_loopback_host(host):
        return AccessPolicy()
    if insecure:
        _LOG.warning(
            "%s binds %s with --insecure: ANY client that can reach it is accepted%s. "
            "Use --allow_from=CIDR[,CIDR] to accept only your clients' networks",
            server, host or "all interfaces",
            " and may run code on this host" if server == "job server" else "")
        return AccessPolicy()
    raise AccessConfigError(
        "%s: binding %s (beyond loopback) would open it to every host that can reach "
        "it%s; pass --allow_from=CIDR[,CIDR] with your clients' networks (e.g. "
        "--allow_from=10.0.0.0/8), or --insecure to accept anyone, or bind "
        "127.0.0.1" % (server, host or "all interfaces",
                       ", and the job server runs whatever code a client submits"
                       if server == "job server" else ""))


def log_refused(server: str, address: Optional[str], what: str,
                policy: AccessPolicy) -> None:
    _LOG.warning("%s refused %s from %s: the address is not in --allow_from (%s)",
                 server, what, address or "an unknown address", policy.describe())


__all__ = ["AccessConfigError", "AccessPolicy", "access_policy", "grpc_peer_address",
           "is_loopback_host", "log_refused", "parse_address", "parse_networks"]
