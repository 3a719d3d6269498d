"""SetProxySettings' lists: BITS/WinHTTP syntax, our SOCKS5 entries, and <local>."""

from __future__ import annotations

import pytest

from openbits.transfer.proxylist import ProxyEntry, parse_bypass_list, parse_proxy_list


def test_entries_in_every_form_and_order() -> None:
    assert parse_proxy_list("p1:3128; http=p2:8080  https://p3 socks5://s:1080;socks5h://[::1]:9050") == [
        ProxyEntry("http", "p1", 3128),
        ProxyEntry("http", "p2", 8080, for_scheme="http"),
        ProxyEntry("https", "p3", 443),
        ProxyEntry("socks5", "s", 1080),
        ProxyEntry("socks5h", "::1", 9050),
    ]


@pytest.mark.parametrize(
    "text",
    ["", "  ; ", "ftp://p:21", "p:0", "p:70000", "p:x", "u:pw@p:80", "gopher=p:70", "b!d:1", "p:80/x"],
)
def test_entries_that_do_not_parse_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_proxy_list(text)


def test_bypass_names_wildcards_addresses_networks_and_local() -> None:
    bypass = parse_bypass_list("<local>; *.corp.example, 10.0.0.0/8 192.168.1.5 [::1] Intranet")
    for host in (
        "printer",
        "a.corp.example",
        "A.CORP.EXAMPLE.",
        "10.2.3.4",
        "192.168.1.5",
        "[::1]",
        "intranet",
    ):
        assert bypass.matches(host), host
    for host in ("corp.example", "example.com", "192.168.1.6", "11.0.0.1", "::2"):
        assert not bypass.matches(host), host


def test_without_local_a_dotless_name_is_proxied() -> None:
    assert not parse_bypass_list("*.example").matches("printer")


def test_a_bypass_entry_that_does_not_parse_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_bypass_list("good.example bad/entry")
