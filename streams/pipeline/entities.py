"""Entity linking: which companies a document is about, from a reference table of tickers, names and
aliases (a CSV the user can replace; a starter table of the S&P 500 and major European names ships in
``ingest/reference/companies.csv``), each link with a relevance score.

What links, strongest first: tickers the source gives (relevance 1), exchange-prefixed tickers
(``NYSE:IBM``, ``(LSE: VOD)``), cashtags (``$AAPL``), and company names and aliases (case-sensitive,
whole words). What does not: boilerplate ("Share this", "Follow us on ..."), one-letter cashtags
(``$A``) unless the company is also named, and names that are common words (flagged ``ambiguous``:
Apple, Target, Visa, Shell, ...) unless the sentence is about a company (a corporate suffix, its
ticker, market words such as shares, earnings, CEO, or a company's act right after the name:
"Apple unveils", "Amazon opens").

Relevance: 1 for a mention in the title; in the body 0.5, plus 0.1 for each further mention and 0.1
when the first one is in the opening 200 characters, at most 0.9.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from riskwire.exceptions import InvalidRecord
from riskwire.records import TickerLink

BOILERPLATE = re.compile(
    r"(share (this|on \w+)|follow us on \w+[^.]*|sign up for [^.]*newsletter[^.]*|click here[^.]*|"
    r"read more[^.]*|subscribe (now|today)[^.]*|all rights reserved[^.]*|"
    r"copyright \S+[^.]*)",
    re.IGNORECASE,
)
CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z]{1,6}(?:\.[A-Za-z]{1,2})?)(?![\w$])")
PREFIXED = re.compile(
    r"\b(NYSE|NASDAQ|Nasdaq|LSE|LON|XETRA|ETR|EPA|AMS|SIX|SWX|BME|MIL|STO|CPH|HEL|OSE|TSX)\s*:\s*"
    r"([A-Z][A-Z0-9]{0,5}(?:[.\-][A-Z0-9]{1,3})?)\b"
)
CORPORATE = re.compile(
    r"\b(inc|corp|corporation|plc|ag|se|sa|nv|ltd|group|shares?|stock|stake|earnings|revenue|"
    r"profit|quarter|ceo|cfo|chief executive|guidance|outlook|investors?|analysts?|dividend|"
    r"ipo|merger|acquisition|acquire[sd]?|market cap|valuation|sales|forecast|downgrade|upgrade|"
    r"recalls?|lawsuit|deal|settles?|layoffs?|jobs)\b",
    re.IGNORECASE,
)
# a verb right after an ambiguous name makes it the subject of company news ("Apple unveils",
# "Amazon opens", "Target recalls"); a fruit, a river or a bullseye does none of these
ACTS = re.compile(
    r"[ \t]+(?:unveil|launch|announce|open|plan|hire|sue|buy|bought|sell|sold|cut|raise|warn|"
    r"delay|expand|report|agree|win|won|invest|partner|team|sign|recall|file|post|beat|miss|"
    r"shut|close|name|appoint|lay|settle|fine|acquire|to (?:buy|acquire|sell|cut|close|open|"
    r"launch|invest|hire))(?:s|es|ed|d|ing)?\b",
    re.IGNORECASE,
)
SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")
TICKER = re.compile(r"^[A-Z][A-Z0-9]{0,5}(?:[.\-][A-Z0-9]{1,3})?$")
NEXT_WORD = re.compile(r"[ \t]+([A-Z][\w&]*)")
WORD = re.compile(r"[A-Za-z][\w'&-]*")
SUFFIXES = {
    "Inc", "Corp", "Corporation", "Co", "Company", "Companies", "Plc", "PLC", "AG", "SE", "SA",
    "NV", "N.V", "Ltd", "Limited", "Group", "Holdings", "Shares", "Stock", "CEO", "CFO", "Chief",
    "Q1", "Q2", "Q3", "Q4", "I", "II",
}  # fmt: skip


@dataclass(frozen=True)
class Company:
    ticker: str
    exchange: str
    name: str
    aliases: tuple[str, ...]
    sector: str
    country: str
    ambiguous: bool


class ReferenceTable:
    """Companies by ticker, and one regular expression over all their names and aliases."""

    def __init__(self, companies: Iterable[Company]) -> None:
        self.by_ticker: dict[str, Company] = {}
        self.by_name: dict[str, Company] = {}  # canonical name (see ``canonical``) -> company
        self.ambiguous_names: set[str] = set()  # names that are common words, of any company
        self.longest: dict[str, int] = {}  # first word -> words in the longest name it begins
        for company in companies:
            self.by_ticker.setdefault(company.ticker, company)
            for name in (company.name, *company.aliases):
                word = name.endswith("?")  # an alias that is a common word: "Chase?"
                key = canonical(name.rstrip("?").split())
                if len(key) >= 2:
                    self.by_name.setdefault(key, company)
                    if word or company.ambiguous:
                        self.ambiguous_names.add(key)
                    first = key.split(" ", 1)[0]
                    self.longest[first] = max(self.longest.get(first, 0), key.count(" ") + 1)

    def names_in(self, text: str) -> list[tuple[int, int, Company, bool]]:
        """(start, end, company, ambiguous) of every name or alias in ``text``, longest match first
        at each position, matches not overlapping; ambiguous: the name is also a common word.
        Case-sensitive, whole words."""
        tokens = [(m.start(), m.end(), _EDGE.sub("", m.group(0))) for m in TOKEN.finditer(text)]
        words = [t[2] for t in tokens]
        found = []
        i = 0
        while i < len(tokens):
            longest = self.longest.get(words[i], 0)  # only words that begin some name
            for size in range(min(longest, len(tokens) - i), 0, -1):
                key = " ".join(w for w in words[i : i + size] if w)
                company = self.by_name.get(key)
                if company is not None:
                    ambiguous = key in self.ambiguous_names
                    found.append((tokens[i][0], tokens[i + size - 1][1], company, ambiguous))
                    i += size
                    break
            else:
                i += 1
        return found

    def __len__(self) -> int:
        return len(self.by_ticker)

    @classmethod
    def load(cls, path: Path | None = None) -> ReferenceTable:
        """A CSV with ticker, exchange, name, aliases (``|``-separated), sector, country and
        ambiguous (1 when the company's names are also common words; a single alias that is one
        ends in ``?``, as ``Chase?``); None: the packaged starter table."""
        if path is None:
            text = resources.files("ingest").joinpath("reference/companies.csv").read_text("utf-8")
        else:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise InvalidRecord(f"cannot read the companies table {path}: {exc}") from exc
        rows = list(csv.DictReader(text.splitlines()))
        needed = {"ticker", "name", "aliases", "sector"}
        if rows and not needed <= set(rows[0]):
            raise InvalidRecord(f"the companies table needs columns {sorted(needed)}")
        return cls(
            Company(
                ticker=r["ticker"].strip().upper(), exchange=(r.get("exchange") or "").strip(),
                name=r["name"].strip(),
                aliases=tuple(a.strip() for a in (r["aliases"] or "").split("|") if a.strip()),
                sector=r["sector"].strip(), country=(r.get("country") or "").strip(),
                ambiguous=(r.get("ambiguous") or "0").strip() in ("1", "true", "yes"),
            )
            for r in rows
            if r.get("ticker", "").strip()
        )  # fmt: skip

    def sector_of(self) -> dict[str, str]:
        return {t: c.sector for t, c in self.by_ticker.items()}


TOKEN = re.compile(r"\S+")
_EDGE = re.compile(r"^[(\"'\u201c\u2018\[]+|(?:'s|\u2019s)?[)\"'\u201d\u2019\],.;:!?]*$")


def canonical(words: Iterable[str]) -> str:
    """Words of a name as matched: without surrounding quotes, brackets and trailing punctuation or
    possessive ('s), joined by one space ("Apple Inc." and "Apple Inc" are one key)."""
    return " ".join(w for w in (_EDGE.sub("", w) for w in words) if w)


def _body_relevance(positions: list[int]) -> float:
    score = 0.5 + 0.1 * (len(positions) - 1) + (0.1 if positions[0] < 200 else 0.0)
    return round(min(score, 0.9), 3)


class EntityLinker:
    def __init__(self, table: ReferenceTable) -> None:
        self.table = table

    def mentions(self, text: str) -> dict[str, list[int]]:
        """Ticker -> positions of its mentions in ``text`` (boilerplate already removed)."""
        found: dict[str, list[int]] = {}

        def add(ticker: str, at: int) -> None:
            found.setdefault(ticker, []).append(at)

        for match in PREFIXED.finditer(text):
            add(match.group(2), match.start())
        cashtags = [(m.group(1).upper(), m.start()) for m in CASHTAG.finditer(text)]
        named: dict[str, list[int]] = {}
        for start, end, company, ambiguous in self.table.names_in(text):
            if self._part_of_a_longer_name(text, start, end):
                continue  # "Blackstone Steelworks" is not Blackstone
            if ambiguous and not self._about_a_company(text, start, end, company):
                continue
            named.setdefault(company.ticker, []).append(start)
        for ticker, at in cashtags:
            # "$A", "$C": too easily a currency or a typo, unless the company is named as well
            if len(ticker) == 1 and ticker not in named:
                continue
            add(ticker, at)
        for ticker, positions in named.items():
            for at in positions:
                add(ticker, at)
        return {t: sorted(p) for t, p in found.items()}

    @staticmethod
    def _part_of_a_longer_name(text: str, start: int, end: int) -> bool:
        """A name followed by another capitalised word ("Blackstone Steelworks", "Apple Valley
        Bank") names something else, unless that word is a corporate suffix or the sentence is
        written in Title Case (headline style, where every word is capitalised)."""
        following = NEXT_WORD.match(text, end)
        if following is None or following.group(1) in SUFFIXES:
            return False
        for sentence in SENTENCE.finditer(text):
            if sentence.start() <= start < sentence.end():
                words = [w for w in WORD.findall(sentence.group(0)) if len(w) > 3]
                capitalised = sum(1 for w in words if w[0].isupper())
                return capitalised < 0.9 * len(words)
        return True

    def _about_a_company(self, text: str, start: int, end: int, company: Company) -> bool:
        """Is an ambiguous name ("Apple", "Target") used as the company here?"""
        if ACTS.match(text, end):
            return True
        for sentence in SENTENCE.finditer(text):
            if sentence.start() <= start < sentence.end():
                context = sentence.group(0)
                break
        else:
            context = text
        if CORPORATE.search(context) or f"${company.ticker}" in text:
            return True
        # named beside another company ("Visa and Mastercard", "Tesla and Ford")
        for _, _, named, ambiguous in self.table.names_in(context):
            if named.ticker != company.ticker and not ambiguous:
                return True
        ticker = re.escape(company.ticker)
        return len(company.ticker) > 1 and re.search(rf"\b{ticker}\b", text) is not None

    def link(self, title: str, text: str, given: object) -> tuple[TickerLink, ...]:
        links: dict[str, float] = {}
        if given is not None:
            if not isinstance(given, list) or not all(isinstance(t, str) for t in given):
                raise InvalidRecord(f"tickers must be a list of strings, got {given!r}")
            for ticker in given:
                symbol = ticker.strip().lstrip("$").upper()
                if not TICKER.match(symbol):
                    raise InvalidRecord(f"ticker {ticker!r} is not a valid symbol")
                links[symbol] = 1.0
        for ticker in self.mentions(BOILERPLATE.sub(" ", title)):
            links[ticker] = 1.0
        if text and text != title:
            for ticker, positions in self.mentions(BOILERPLATE.sub(" ", text)).items():
                links.setdefault(ticker, _body_relevance(positions))
        return tuple(TickerLink(ticker=t, relevance=r) for t, r in links.items())


_default: EntityLinker | None = None


def default_linker() -> EntityLinker:
    """The linker over the packaged starter table (or the one ``configure`` set)."""
    global _default
    if _default is None:
        _default = EntityLinker(ReferenceTable.load())
    return _default


def configure(path: Path | None) -> EntityLinker:
    """Use the companies table at ``path`` (a worker's RISKWIRE_COMPANIES_FILE) from now on."""
    global _default
    _default = EntityLinker(ReferenceTable.load(path))
    return _default


def evaluate(linker: EntityLinker, cases: Iterable[dict[str, object]]) -> dict[str, float]:
    """Micro precision and recall of links against labelled cases ({title, text, expected})."""
    tp = fp = fn = 0
    for case in cases:
        got = {link.ticker for link in linker.link(str(case["title"]), str(case["text"]), None)}
        expected = set(case["expected"])  # type: ignore[call-overload]
        tp, fp, fn = tp + len(got & expected), fp + len(got - expected), fn + len(expected - got)
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "links": float(tp + fn),
    }


def labelled_sample(name: str) -> list[dict[str, object]]:
    """A packaged labelled sample: ``linking_sample`` (the rules were tuned on it),
    ``linking_heldout`` (written before measuring; its misses were worked on later) or
    ``linking_heldout2`` (written before that work; the table gaps it showed were then filled)."""
    import json

    text = resources.files("ingest").joinpath(f"reference/{name}.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
