"""Write the bundled demo feed (``feed.jsonl``): fictional companies, realistic wording.

The companies are invented, so no real issuer is tied to invented news. Background coverage is mixed;
three storylines (a failed trial, a profit warning, an accounting probe) are dense, negative bursts that
the negative-surge rule should catch; one ticker gets a single bad headline that it should not. A few
syndicated copies (exact duplicates) and malformed records are mixed in. Run it to regenerate:
``python -m riskwire.sample.make_sample``. Seeded: the output is the same every time.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

OUT = Path(__file__).resolve().parent / "feed.jsonl"
START = datetime(2026, 11, 2, 7, 0, tzinfo=UTC)

COMPANIES = {
    "NWSC": "Northwind Semiconductors", "HLXB": "Helix Biotherapeutics", "GRDN": "Gardner Retail",
    "KSTL": "Keystone Lending", "ORCP": "Orca Pacific Shipping", "BRVN": "Brevan Energy",
    "MDLY": "Medley Foods", "QNTM": "Quantum Grid Systems", "SLVR": "Silverline Airlines",
    "TRLX": "Terralux Mining", "AVNT": "Avanti Motors", "CLDR": "Cloudrise Software",
    "PNRG": "Pioneer Renewables", "FNCH": "Finch Payments", "BLKS": "Blackstone Steelworks",
    "VRDA": "Verida Health", "ZPHR": "Zephyr Telecom", "MRBL": "Marble Insurance",
    "ASTR": "Astra Aerospace", "CRNL": "Cornell Pharmaceuticals", "DLTA": "Delta Logistics",
    "ELMW": "Elmwood Bank", "FJRD": "Fjord Seafood", "GLXY": "Galaxy Gaming",
}  # fmt: skip

NEWS = {
    "positive": [
        "{name} beats quarterly estimates as revenue jumps {pct}%",
        "{name} raises full-year guidance on strong demand",
        "{name} shares climb after analysts upgrade the stock to buy",
        "{name} wins ${bn} billion contract, shares rally",
        "{name} announces $1 billion share buyback",
        "{name} reports record profit, margins expand",
        "{name} lifts dividend by {pct}% after solid year",
    ],
    "neutral": [
        "{name} to report third-quarter results on November {day}",
        "{name} appoints new chief financial officer",
        "{name} schedules capital markets day for December",
        "{name} completes previously announced sale of a minority stake",
        "{name} to present at an investor conference next week",
        "{name} files quarterly report with regulators",
        "{name} shareholders to vote on board nominees at annual meeting",
        "{name} confirms date of its next trading update",
    ],
    "negative": [
        "{name} shares slide after revenue misses estimates",
        "{name} cuts outlook, citing weak demand",
        "Analysts downgrade {name} on margin pressure",
        "{name} recalls products over safety concerns",
        "{name} posts wider-than-expected quarterly loss",
    ],
}  # fmt: skip

SOCIAL = {
    "positive": [
        "${t} crushing it today, guidance raised again",
        "Loading up on ${t} after that blowout quarter",
        "${t} breaking out to new highs, very bullish",
        "Love the ${t} buyback, management is confident",
    ],
    "neutral": [
        "Watching ${t} into earnings, no position yet",
        "${t} earnings call at 4:30pm ET, anyone listening?",
        "${t} trading flat so far this morning",
        "Added ${t} to the watchlist, waiting for a setup",
    ],
    "negative": [
        "${t} getting hit hard today, that guidance was weak",
        "Selling my ${t}, management keeps missing",
        "${t} chart looks awful, breaking below support",
    ],
}  # fmt: skip

STORYLINES = {
    "HLXB": (datetime(2026, 11, 3, 13, 0, tzinfo=UTC), [
        ("news", "Helix Biotherapeutics says late-stage trial of lead drug failed to meet primary endpoint"),
        ("news", "Helix Biotherapeutics shares plunge 45% premarket after trial failure"),
        ("social", "$HLXB trial failed, this is a disaster for longs"),
        ("news", "Analysts slash price targets on Helix Biotherapeutics after failed study"),
        ("social", "$HLXB down 45%, the pipeline is basically empty now"),
        ("news", "Helix Biotherapeutics suspends guidance and warns of job cuts"),
        ("social", "Dumped all my $HLXB, terrible news"),
        ("news", "Helix Biotherapeutics downgraded to sell by two brokers"),
        ("news", "Helix Biotherapeutics faces class action lawsuit over trial disclosures"),
    ]),
    "GRDN": (datetime(2026, 11, 4, 9, 30, tzinfo=UTC), [
        ("news", "Gardner Retail issues profit warning as holiday sales disappoint"),
        ("news", "Gardner Retail cuts full-year guidance, shares tumble"),
        ("social", "$GRDN profit warning, same-store sales collapsed"),
        ("news", "Gardner Retail to close 120 stores and lay off staff"),
        ("news", "Brokers downgrade Gardner Retail after the profit warning"),
        ("social", "$GRDN bleeding again, stay away"),
    ]),
    "KSTL": (datetime(2026, 11, 4, 15, 0, tzinfo=UTC), [
        ("news", "Keystone Lending discloses regulatory investigation into its accounting"),
        ("news", "Keystone Lending shares sink as auditors flag material weakness"),
        ("social", "$KSTL accounting probe, this smells like fraud"),
        ("news", "Keystone Lending chief executive resigns amid accounting probe"),
        ("news", "Keystone Lending delays annual report, shares halted"),
        ("social", "$KSTL halted, bad loans and a probe, terrible"),
        ("news", "Keystone Lending bonds slump as downgrade fears mount"),
    ]),
}  # fmt: skip

LONE_BAD = (
    "FJRD",
    datetime(2026, 11, 3, 10, 0, tzinfo=UTC),
    "Fjord Seafood recalls salmon batch over labelling error",
)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def background(rng: random.Random) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for ticker, name in COMPANIES.items():
        for _ in range(rng.randint(10, 13)):
            mood = rng.choices(["positive", "neutral", "negative"], [0.33, 0.5, 0.17])[0]
            when = START + timedelta(minutes=rng.randint(0, 3 * 24 * 60))
            if rng.random() < 0.6:
                text = rng.choice(NEWS[mood]).format(
                    name=name, pct=rng.randint(3, 30), bn=rng.randint(1, 4), day=rng.randint(10, 28)
                )
                rows.append(
                    {
                        "kind": "news",
                        "source": rng.choice(["wire-a", "wire-b", "wire-c"]),
                        "title": text,
                        "tickers": [ticker],
                        "published_at": _iso(when),
                    }
                )
            else:
                text = rng.choice(SOCIAL[mood]).format(t=ticker)
                rows.append(
                    {
                        "kind": "social",
                        "source": "social-x",
                        "text": text,
                        "author": f"trader{rng.randint(1, 400)}",
                        "published_at": _iso(when),
                    }
                )
    return rows


def storylines(rng: random.Random) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for ticker, (start, items) in STORYLINES.items():
        for i, (kind, text) in enumerate(items):
            when = start + timedelta(minutes=12 * i + rng.randint(0, 8))
            if kind == "news":
                rows.append(
                    {
                        "kind": "news",
                        "source": "wire-a",
                        "title": text,
                        "tickers": [ticker],
                        "published_at": _iso(when),
                    }
                )
            else:
                rows.append(
                    {
                        "kind": "social",
                        "source": "social-x",
                        "text": text,
                        "published_at": _iso(when),
                    }
                )
    ticker, when, text = LONE_BAD
    rows.append(
        {
            "kind": "news",
            "source": "wire-b",
            "title": text,
            "tickers": [ticker],
            "published_at": _iso(when),
        }
    )
    return rows


def build() -> list[str]:
    rng = random.Random(20261102)
    rows = background(rng) + storylines(rng)
    # syndication: the same headline from a second wire is an exact duplicate
    for row in rng.sample([r for r in rows if r["kind"] == "news"], 6):
        rows.append(dict(row, source="wire-syndicated"))
    rows.sort(key=lambda r: str(r["published_at"]))
    for i, row in enumerate(rows):
        row["id"] = f"item-{i:04d}"
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    malformed = [
        json.dumps({"id": "bad-1", "kind": "news", "source": "wire-a",
                    "published_at": "2026-11-03T10:00:00Z"}),  # no text
        json.dumps({"id": "bad-2", "kind": "news", "source": "wire-a",
                    "title": "Orca Pacific Shipping adds two vessels", "published_at": "yesterday"}),
        json.dumps({"id": "bad-3", "kind": "social", "source": "social-x",
                    "text": "$ZPHR to the moon", "published_at": "2031-01-01T00:00:00Z"}),
        '{"id": "bad-4", "kind": "news", "title": "truncated line',
    ]  # fmt: skip
    for offset, bad in zip((40, 120, 200, 280), malformed, strict=True):
        lines.insert(offset, bad)
    return lines


if __name__ == "__main__":
    lines = build()
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} lines to {OUT}")
