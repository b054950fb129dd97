"""Pure delivery rules: filters, webhook signatures, backoff, refused addresses, API keys."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from riskwire.delivery import keys
from riskwire.delivery.model import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AlertFilter,
    DeliveryError,
    backoff_s,
    check_webhook_url,
    load_sectors,
    sign,
    verify,
)

ALERT = {"ticker": "ACME", "rule": "negative_surge", "severity": "warning"}


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        (AlertFilter(), True),
        (AlertFilter(tickers=("ACME", "BETA")), True),
        (AlertFilter(tickers=("BETA",)), False),
        (AlertFilter(rules=("volume_spike",)), False),
        (AlertFilter(rules=("negative_surge",), min_severity="warning"), True),
        (AlertFilter(min_severity="critical"), False),
        (AlertFilter(sectors=("Industrials",)), True),
        (AlertFilter(sectors=("Energy",)), False),
    ],
)
def test_filters_match_on_every_field_they_name(wanted: AlertFilter, expected: bool) -> None:
    assert wanted.matches(ALERT, {"ACME": "Industrials"}) is expected


def test_a_sector_filter_matches_nothing_for_an_unmapped_ticker() -> None:
    assert not AlertFilter(sectors=("Industrials",)).matches(ALERT, {})


def test_an_unknown_severity_is_refused() -> None:
    with pytest.raises(DeliveryError, match="unknown severity"):
        AlertFilter(min_severity="urgent")


def test_a_signed_webhook_verifies_and_any_change_breaks_it() -> None:
    body = b'{"alert":{"ticker":"ACME"}}'
    headers = {TIMESTAMP_HEADER: "1700000000", SIGNATURE_HEADER: sign("k", 1700000000, body)}
    assert verify("k", headers, body, now=1700000010)
    assert not verify("k", headers, body + b" ", now=1700000010)  # altered body
    assert not verify("other", headers, body, now=1700000010)  # wrong secret
    later = {**headers, TIMESTAMP_HEADER: "1700000100"}  # timestamp moved: signature no longer fits
    assert not verify("k", later, body, now=1700000100)
    assert not verify("k", headers, body, now=1700000000 + 3600)  # replayed an hour later
    assert not verify("k", {}, body, now=1700000010)


def test_header_names_are_case_insensitive_for_receivers() -> None:
    body = b"{}"
    headers = {"x-riskwire-timestamp": "100", "X-RISKWIRE-SIGNATURE": sign("k", 100, body)}
    assert verify("k", headers, body, now=100)


def test_backoff_grows_exponentially_with_jitter_and_stops_at_the_cap() -> None:
    rng = random.Random(7)
    delays = [backoff_s(n, 2.0, 60.0, rng) for n in range(1, 10)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(60.0, 2.0 * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 60.0 and delays[-1] >= 30.0


def resolver(address: str):  # a DNS answer, without the network
    return lambda host, port: [address]


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "192.168.0.10", "172.16.5.5", "169.254.169.254", "::1", "fe80::1",
     "0.0.0.0", "224.0.0.1"],
)  # fmt: skip
def test_webhooks_to_private_loopback_and_link_local_addresses_are_refused(address: str) -> None:
    with pytest.raises(DeliveryError, match="private, loopback or link-local"):
        check_webhook_url("https://hooks.example.com/x", False, resolver(address))
    check_webhook_url("https://hooks.example.com/x", True, resolver(address))  # when allowed


def test_public_webhooks_pass_and_odd_urls_are_refused() -> None:
    check_webhook_url("https://hooks.example.com/x", False, resolver("93.184.215.14"))
    for url in ("ftp://example.com/x", "https:///nohost", "http://user:pw@example.com/x"):
        with pytest.raises(DeliveryError):
            check_webhook_url(url, True, resolver("93.184.215.14"))


def test_a_host_that_does_not_resolve_is_refused() -> None:
    def fails(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(DeliveryError, match="does not resolve"):
        check_webhook_url("https://nowhere.invalid/x", False, fails)


def test_api_keys_are_random_parse_back_and_only_their_hash_is_kept() -> None:
    a, b = keys.new_key(), keys.new_key()
    assert a.token != b.token and a.id != b.id
    key_id, secret = keys.parse_token(a.token) or ("", "")
    assert key_id == a.id and keys.secret_matches(secret, a.secret_hash)
    assert secret not in a.secret_hash and not keys.secret_matches(secret + "x", a.secret_hash)
    assert keys.parse_token("Bearer nonsense") is None and keys.parse_token("rw__x") is None


def test_scopes_are_checked_and_admin_implies_all() -> None:
    assert keys.check_scopes(["alerts:read", "alerts:read"]) == ["alerts:read"]
    with pytest.raises(ValueError, match="unknown scopes"):
        keys.check_scopes(["root"])
    assert keys.allows(["admin"], "subscriptions:write")
    assert not keys.allows(["alerts:read"], "subscriptions:write")


def test_sectors_come_from_a_csv(tmp_path: Path) -> None:
    path = tmp_path / "sectors.csv"
    path.write_text("ticker,sector\nacme,Industrials\nBETA, Energy\n", encoding="utf-8")
    assert load_sectors(path) == {"ACME": "Industrials", "BETA": "Energy"}
    assert load_sectors(None) == {}
    (tmp_path / "bad.csv").write_text("symbol,industry\nA,B\n", encoding="utf-8")
    with pytest.raises(DeliveryError, match="columns"):
        load_sectors(tmp_path / "bad.csv")
