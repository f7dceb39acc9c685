"""The access policy of the job server and the web UI (ui/access.py)."""
from __future__ import annotations

import logging
import pickle

import pytest

from beam_gpu_runner.ui.access import (
    AccessConfigError, AccessPolicy, access_policy, grpc_peer_address, is_loopback_host,
    parse_address, parse_networks)


def test_networks_parse_comma_lists_repeats_and_bare_addresses() -> None:
    nets = parse_networks(["10.0.0.0/8,192.168.1.7", " ::1/128 "])
    assert [str(n) for n in nets] == ["10.0.0.0/8", "192.168.1.7/32", "::1/128"]


def test_a_malformed_network_names_the_flag_and_the_value() -> None:
    with pytest.raises(AccessConfigError) as info:
        parse_networks(["10.0.0.0/8,ten.0.0.0/8"])
    text = str(info.value)
    assert "--allow_from=10.0.0.0/8,ten.0.0.0/8" in text
    assert "'ten.0.0.0/8'" in text and "CIDR" in text
    assert str(pickle.loads(pickle.dumps(info.value))) == text


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("", False), ("::", False),
    ("10.1.2.3", False), ("no-such-host.invalid", False)])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_loopback_without_a_list_is_open() -> None:
    assert access_policy("job server", "127.0.0.1").open


def test_beyond_loopback_without_a_list_or_insecure_fails_naming_both_flags() -> None:
    with pytest.raises(AccessConfigError) as info:
        access_policy("job server", "0.0.0.0")
    text = str(info.value)
    assert "job server" in text and "0.0.0.0" in text
    assert "--allow_from=CIDR" in text and "--insecure" in text
    assert "runs whatever code" in text


def test_insecure_opens_it_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        policy = access_policy("web UI", "0.0.0.0", insecure=True)
    assert policy.open
    assert any("--insecure" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


def test_a_list_applies_on_loopback_too_and_wins_over_insecure() -> None:
    policy = access_policy("web UI", "127.0.0.1", ["127.0.0.2/32"], insecure=True)
    assert not policy.open
    assert policy.allows("127.0.0.2")
    assert not policy.allows("127.0.0.1")


def test_allows_checks_each_network_and_maps_ipv4_in_ipv6() -> None:
    policy = AccessPolicy(parse_networks(["10.0.0.0/8", "::1/128"]))
    assert policy.allows("10.200.1.2")
    assert policy.allows("::ffff:10.0.0.1")          # a dual-stack socket's IPv4 peer
    assert policy.allows("[::1]")
    assert not policy.allows("11.0.0.1")
    assert not policy.allows("127.0.0.1")
    assert not policy.allows("not an address")
    assert not policy.allows(None)


@pytest.mark.parametrize("peer,address", [
    ("ipv4:10.0.0.2:5123", "10.0.0.2"),
    ("ipv6:[::1]:5123", "::1"),
    ("ipv6:%5B::ffff:127.0.0.1%5D:40000", "::ffff:127.0.0.1"),
    ("unix:/tmp/socket", None)])
def test_grpc_peer_addresses(peer: str, address: object) -> None:
    assert grpc_peer_address(peer) == address


def test_parse_address_drops_zone_ids() -> None:
    assert str(parse_address("fe80::1%eth0")) == "fe80::1"
