from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from riskwire.records import AlertState, Severity
from streams.pipeline import NegativeSurgeRule, RiskEngine
from streams.pipeline.risk import Event, TickerWindow, window_starts
from tests.factories import make_score

T = datetime(2026, 11, 3, 13, 0, tzinfo=UTC)
RULE = NegativeSurgeRule(
    window=timedelta(hours=2),
    hop=timedelta(minutes=30),
    min_documents=4,
    negative_share=0.6,
    mean_score=-0.25,
)


def burst(
    ticker: str = "ACME",
    n: int = 5,
    score: float = -0.7,
    start: datetime = T,
    step: timedelta = timedelta(minutes=10),
) -> list:
    return [make_score(ticker=ticker, score=score, published_at=start + i * step) for i in range(n)]


def run(engine: RiskEngine, scores: list) -> list:
    return [a for s in scores for a in engine.process(s).alerts]


def test_window_starts_are_aligned_and_contain_the_time() -> None:
    t = datetime(2026, 11, 3, 13, 40, tzinfo=UTC)
    starts = window_starts(t, timedelta(hours=2), timedelta(minutes=30))
    assert [s.strftime("%H:%M") for s in starts] == ["12:00", "12:30", "13:00", "13:30"]
    assert all(s <= t < s + timedelta(hours=2) for s in starts)


def test_a_negative_burst_fires_once_with_evidence() -> None:
    engine = RiskEngine([RULE])
    scores = burst(n=6)
    alerts = run(engine, scores)
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.state == AlertState.FIRING and alert.ticker == "ACME"
    assert alert.rule == "negative_surge" and alert.severity == Severity.WARNING
    assert alert.values["documents"] >= 4 and alert.values["negative_share"] == 1.0
    assert set(alert.evidence) <= {s.document_id for s in scores}
    assert "ACME" in alert.explanation and "60%" in alert.explanation


def test_a_surge_that_first_holds_with_twice_the_minimum_is_critical() -> None:
    mild = [
        make_score(score=-0.2, label="negative", published_at=T + timedelta(minutes=i))
        for i in range(7)
    ]
    engine = RiskEngine([RULE])
    assert run(engine, mild) == []  # all negative, but the mean is not below -0.25 yet
    (alert,) = run(engine, [make_score(score=-0.9, published_at=T + timedelta(minutes=8))])
    assert alert.severity == Severity.CRITICAL and alert.values["documents"] == 8


def test_scattered_or_mild_negatives_do_not_fire() -> None:
    engine = RiskEngine([RULE])
    assert run(engine, burst(n=6, step=timedelta(hours=3))) == []
    assert run(engine, burst(ticker="MILD", n=6, score=-0.1)) == []
    mixed = burst(ticker="MIX", n=3) + burst(
        ticker="MIX", n=4, score=0.6, start=T + timedelta(minutes=1)
    )
    assert run(engine, sorted(mixed, key=lambda s: s.published_at)) == []


def test_redelivered_scores_change_nothing() -> None:
    engine = RiskEngine([RULE])
    scores = burst(n=5)
    first = run(engine, scores)
    updates = [engine.process(s) for s in scores]
    assert len(first) == 1
    assert all(u.row is None and u.alerts == [] for u in updates)


def test_tickers_have_their_own_windows() -> None:
    engine = RiskEngine([RULE])
    interleaved = [s for pair in zip(burst("AAA", 2), burst("BBB", 2), strict=True) for s in pair]
    assert run(engine, interleaved) == []
    assert {a.ticker for a in run(engine, burst("AAA", 3, start=T + timedelta(minutes=30)))} == {
        "AAA"
    }


def test_the_alert_resolves_when_a_calm_window_follows() -> None:
    engine = RiskEngine([RULE])
    (fired,) = run(engine, burst(n=5))
    calm = burst(n=3, score=0.5, start=T + timedelta(hours=5))
    (resolved,) = run(engine, calm)
    assert resolved.id == fired.id and resolved.state == AlertState.RESOLVED
    assert resolved.event_time == calm[0].published_at
    assert "resolved at" in resolved.explanation


def test_the_same_scores_in_any_arrival_order_alert_the_same_tickers() -> None:
    scores = (
        burst("AAA", 6)
        + burst("BBB", 5, start=T + timedelta(days=1))
        + burst("CCC", 6, score=0.4)
        + burst("DDD", 6, step=timedelta(hours=4))
    )
    expected = {a.ticker for a in run(RiskEngine([RULE]), scores) if a.state == AlertState.FIRING}
    assert expected == {"AAA", "BBB"}
    for seed in range(5):
        shuffled = list(scores)
        random.Random(seed).shuffle(shuffled)
        fired = {
            a.ticker for a in run(RiskEngine([RULE]), shuffled) if a.state == AlertState.FIRING
        }
        assert fired == expected


def test_rows_carry_the_trailing_window_and_the_run_id() -> None:
    engine = RiskEngine([RULE], run_id="replay-1")
    rows = [engine.process(s).row for s in burst(n=3, score=-0.3)]
    assert [r["window_documents"] for r in rows] == [1, 2, 3]
    assert rows[-1]["window_mean_score"] == -0.3 and rows[-1]["run_id"] == "replay-1"
    assert engine.process(make_score(ticker=None)).row is None


def test_a_busy_window_evicts_in_bulk_and_reads_only_what_it_keeps() -> None:
    """Eviction moves a start index and deletes in bulk: at every step the window holds exactly
    the events within its horizon, a window reaching further back counts only those, an evicted
    document is not a duplicate, and a checkpoint restores the same window."""
    horizon = timedelta(minutes=100)
    window = TickerWindow("market", horizon)
    added = []
    for i in range(1000):
        event = Event(T + timedelta(minutes=i), f"d{i}", (i % 7 - 3) / 4, i % 3 == 0)
        assert window.add(event)
        added.append(event)
        kept = [e for e in added if e.published_at >= event.published_at - horizon]
        if i % 37 == 0 or i > 990:
            assert window.events == kept
            assert window.stats_at(event.published_at, 2 * horizon).documents == len(kept)
            assert window.count_between(T, event.published_at) == len(kept) - 1
    assert len(window._events) < 2 * len(window.events) + 64  # deleted, not only skipped
    evicted = added[0]
    assert window.add(evicted)  # too late to keep, and no longer known as a duplicate
    assert window.events == kept and not window.add(kept[0])
    stats = window.stats_at(kept[-1].published_at, horizon)
    restored = TickerWindow("market", horizon)
    restored.restore(json.loads(json.dumps(window.state())))
    assert restored.events == kept
    assert restored.stats_at(kept[-1].published_at, horizon) == stats


def test_trailing_windows_are_exact_whatever_the_order_evictions_or_rebuilds() -> None:
    """The prefix sums give each window's figures as if summed exactly: the same bits in any
    arrival order and after a rebuild from stored events, and equal to a direct computation."""
    rng = random.Random(5)
    events = [
        Event(T + timedelta(seconds=rng.randint(0, 6 * 3600)), f"d{i}", rng.uniform(-1, 1),
              rng.random() < 0.4, "", rng.random())
        for i in range(400)
    ]  # fmt: skip
    in_order = TickerWindow("ACME", timedelta(hours=3))
    shuffled = TickerWindow("ACME", timedelta(hours=3))
    for e in sorted(events):
        in_order.add(e)
    for e in rng.sample(events, len(events)):
        shuffled.add(e)  # out of order: inserts before others, and evictions on the way
    rebuilt = TickerWindow("ACME", timedelta(hours=3))
    rebuilt.replay(in_order.events)
    assert in_order.events == shuffled.events == rebuilt.events
    for minutes in (1, 15, 60, 120):
        for k in range(0, 180, 7):
            end = in_order.high_water - timedelta(minutes=k)
            length = timedelta(minutes=minutes)
            stats = in_order.stats_at(end, length)
            assert stats == shuffled.stats_at(end, length) == rebuilt.stats_at(end, length)
            inside = [e for e in in_order.events if end - length < e.published_at <= end]
            assert stats.documents == len(inside)
            if inside:
                scores = [Fraction(e.score) for e in inside]
                mean = sum(scores) / len(scores)
                variance = sum(s * s for s in scores) / len(scores) - mean * mean
                assert stats.mean_score == pytest.approx(float(mean), abs=1e-15)
                assert stats.dispersion == pytest.approx(math.sqrt(variance), abs=1e-9)
                assert stats.negative_share == sum(e.negative for e in inside) / len(inside)
                assert stats.disagreement == pytest.approx(
                    sum(e.disagreement for e in inside) / len(inside), abs=1e-15
                )
    same = TickerWindow("ACME", timedelta(hours=3))
    for i in range(5):
        same.add(Event(T + timedelta(minutes=i), f"s{i}", -0.3))
    flat = same.stats_at(T + timedelta(minutes=4), timedelta(hours=1))
    assert (flat.mean_score, flat.dispersion) == (-0.3, 0.0)


def test_an_engine_restored_from_a_checkpoint_continues_exactly_as_one_never_stopped() -> None:
    rng = random.Random(7)
    scores = []
    for i in range(400):
        ticker = rng.choice(["ACME", "BOLT", "CRUX"])
        bad = ticker == "ACME" and 100 <= i < 160
        scores.append(
            make_score(ticker=ticker, score=-0.8 if bad else rng.uniform(-0.5, 0.8),
                       published_at=T + timedelta(minutes=3 * i))
        )  # fmt: skip
    whole = RiskEngine([RULE], run_id="r", lateness=timedelta(0))
    expected = [whole.process(s) for s in scores]
    assert any(u.alerts for u in expected)
    for cut in (1, 120, 140, 399):
        first = RiskEngine([RULE], run_id="r", lateness=timedelta(0))
        before = [first.process(s) for s in scores[:cut]]
        state = json.loads(json.dumps(first.state()))  # what a checkpoint stores
        second = RiskEngine([RULE], run_id="r", lateness=timedelta(0))
        second.restore(state)
        after = [second.process(s) for s in scores[cut:]]
        assert before + after == expected, cut


def test_each_rule_keeps_its_own_state_and_alert_identity() -> None:
    quick = NegativeSurgeRule(name="quick", min_documents=3)
    slow = NegativeSurgeRule(name="slow", min_documents=5)
    engine = RiskEngine([quick, slow])
    alerts = run(engine, burst(n=6))
    assert [a.rule for a in alerts] == ["quick", "slow"]
    assert alerts[0].id != alerts[1].id
    assert alerts[0].thresholds["min_documents"] == 3.0


def test_rule_names_must_be_unique_in_one_engine() -> None:
    with pytest.raises(ValueError, match="unique"):
        RiskEngine([RULE, RULE])


def test_copies_of_one_story_count_once_in_a_window() -> None:
    """Fifty outlets syndicating one story are one piece of evidence, not fifty."""
    engine = RiskEngine([RULE])
    scores = burst(n=6)
    story = scores[0].document_id
    copies = [s.model_copy(update={"story_id": story}) for s in scores]
    updates = [engine.process(s) for s in copies]
    assert updates[0].row is not None and all(u.row is None for u in updates[1:])
    assert not [a for u in updates for a in u.alerts]
    assert updates[0].row["window_documents"] == 1
    # the same scores as separate stories fire as before
    assert len(run(RiskEngine([RULE]), scores)) == 1


def test_a_checkpoint_from_before_stories_and_buckets_still_restores() -> None:
    engine = RiskEngine([RULE])
    run(engine, burst(n=3))
    state = engine.state()
    old = {  # the plain four-field event lists of older checkpoints
        **state,
        "windows": {t: [e[:4] for e in w["events"]] for t, w in state["windows"].items()},
    }
    restored = RiskEngine([RULE])
    restored.restore(json.loads(json.dumps(old)))
    again = restored.state()["windows"]["ACME"]
    assert [e[:4] for e in again["events"]] == [e[:4] for e in state["windows"]["ACME"]["events"]]

    def counts(buckets: dict) -> dict:  # old checkpoints knew no disagreement
        return {hop: [cell[:5] for cell in cells] for hop, cells in buckets.items()}

    assert counts(again["buckets"]) == counts(state["windows"]["ACME"]["buckets"])
