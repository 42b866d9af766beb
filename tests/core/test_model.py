"""Validation of forwards and endpoints: precise messages, nothing accepted that iptables would choke on."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natbox.errors import ValidationError
from natbox.model import Endpoint, Forward, name_problem, parse_cidr


def fwd(listen: str = "192.168.1.30:1234", backend: str = "10.0.2.50:80", **kw: object) -> Forward:
    kw.setdefault("snat", "10.0.2.40")
    return Forward.from_text(listen, backend, **kw)  # type: ignore[arg-type]


def test_seed_forward_defaults() -> None:
    f = fwd()
    assert f.name == "tcp-1234"
    assert f.listen == Endpoint(IPv4Address("192.168.1.30"), 1234)
    assert f.snat == IPv4Address("10.0.2.40")
    assert f.protocols == ("tcp",)
    assert f.comment == "natbox:tcp-1234"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"listen": "192.168.1.30:70000"}, "port 70000 is out of range 1-65535"),
        ({"listen": "192.168.1.300:1234"}, "192.168.1.300 is not an IPv4 address"),
        (
            {"backend": "192.168.1.30:1234"},
            "backend 192.168.1.30:1234 is the listen address itself",
        ),
        ({"listen": "192.168.1.30"}, "listen address '192.168.1.30' has no port"),
        ({"listen": "192.168.1.30:0"}, "port 0 is out of range 1-65535"),
        ({"listen": "192.168.1.30:http"}, "is not a number"),
        ({"listen": "192.168.1.30:2000-1000"}, "port range 2000-1000 runs backwards"),
        ({"listen": "2001:db8::1:80"}, "needs brackets around the IPv6 address"),
        ({"listen": "[2001:db8::zz]:80"}, "2001:db8::zz is not an IPv6 address"),
        ({"listen": "[2001:db8::1]"}, "has no port"),
        ({"backend": "[2001:db8::50]:80"}, "are not the same IP version"),
        (
            {
                "listen": "[fe80::1]:80",
                "backend": "[2001:db8::50]:80",
                "snat": None,
                "masquerade": True,
            },
            "link-local",
        ),
        ({"listen": "0.0.0.0:80"}, "unspecified address"),
        ({"backend": "127.0.0.1:80"}, "loopback"),
        ({"backend": "224.0.0.1:80"}, "not a unicast address"),
        ({"name": "Web"}, "name 'Web' is not valid"),
        ({"name": "-web"}, "name '-web' is not valid"),
        ({"name": "a" * 25}, "is not valid"),
        ({"proto": "icmp"}, "protocol 'icmp' is not one of tcp, udp, both"),
        ({"snat": None}, "no SNAT source"),
        ({"masquerade": True}, "both an SNAT source and masquerade"),
        ({"snat": "10.0.2"}, "10.0.2 is not an IPv4 address"),
        ({"proto": "udp", "mss_clamp": True}, "MSS clamping applies to TCP only"),
        ({"listen": "192.168.1.30:1000-1010", "backend": "10.0.2.50:2000-2004"}, "has 5 ports but"),
        ({"sources": ["192.168.1.1/24"]}, "has host bits set"),
        ({"sources": ["nonsense"]}, "nonsense is not an IP network"),
        ({"sources": ["2001:db8::/64"]}, "is not the forward's IP version"),
    ],
)
def test_bad_input_gets_a_precise_message(kwargs: dict[str, object], message: str) -> None:
    listen = str(kwargs.pop("listen", "192.168.1.30:1234"))
    backend = str(kwargs.pop("backend", "10.0.2.50:80"))
    with pytest.raises(ValidationError) as info:
        fwd(listen, backend, **kwargs)
    assert message in info.value.message
    assert info.value.hint, "every error carries a hint"
    assert "\n" not in info.value.one_line()


def test_ranges() -> None:
    f = fwd("192.168.1.30:1000-1010", "10.0.2.50:2000-2010", proto="udp")
    assert f.name == "udp-1000-1010" and f.listen.size == 11 and f.backend.ipt_ports == "2000:2010"
    many_to_one = fwd("192.168.1.30:1000-1010", "10.0.2.50:80")
    assert many_to_one.backend.size == 1
    with pytest.raises(ValidationError):
        fwd("192.168.1.30:1234", "10.0.2.50:80-81")


def test_same_ip_other_port_is_fine() -> None:
    assert fwd(backend="192.168.1.30:80").backend.port == 80


def test_masquerade_without_snat() -> None:
    f = Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", masquerade=True)
    assert f.masquerade and f.snat is None
    assert f.to_dict()["snat"] is None


def test_cidr() -> None:
    assert parse_cidr("192.168.1.0/24").prefixlen == 24
    assert parse_cidr("192.168.1.7").prefixlen == 32


@given(st.text(max_size=30))
def test_name_validation_never_crashes(name: str) -> None:
    problem = name_problem(name)
    if problem is None:
        assert name[0].isalnum() and name == name.lower() and len(name) <= 24


@given(st.text(max_size=40))
def test_endpoint_parse_raises_only_validation_errors(text: str) -> None:
    try:
        ep = Endpoint.parse(text)
    except ValidationError as exc:
        assert exc.message and "\n" not in exc.one_line()
    else:
        assert 1 <= ep.port <= ep.port_end <= 65535
        assert Endpoint.parse(str(ep)) == ep


@given(st.integers(min_value=-10, max_value=70000), st.integers(min_value=-10, max_value=70000))
def test_port_numbers(a: int, b: int) -> None:
    text = f"192.168.1.30:{a}-{b}"
    if 1 <= a <= b <= 65535:
        assert Endpoint.parse(text).size == b - a + 1
    else:
        with pytest.raises(ValidationError):
            Endpoint.parse(text)
