"""Aggregates, z-scores and the rule types beyond the negative surge, on synthetic data whose right
answer is known."""

from __future__ import annotations

import json
import math
import random
import statistics
from datetime import UTC, datetime, timedelta

import pytest

from riskwire.records import AlertState, Severity, group_key, group_kind
from streams.pipeline.risk import EPOCH, Event, RiskEngine, Rule, _BaselineSums
from streams.pipeline.rules import RulesError, parse_rules, rules_as_data
from tests.factories import make_score

DAY0 = datetime(2026, 10, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def history(ticker: str = "ACME", days: int = 10, per_hour: int = 1, score: float = 0.2) -> list:
    """A calm past: ``per_hour`` mildly positive documents every hour, scores jittered."""
    rng = random.Random(1)
    out = []
    for h in range(days * 24):
        for k in range(per_hour):
            t = DAY0 + h * HOUR + timedelta(minutes=7 + 13 * k)
            out.append(make_score(ticker=ticker, score=round(score + rng.uniform(-0.1, 0.1), 3),
                                  published_at=t))  # fmt: skip
    return out


def run(engine: RiskEngine, scores: list, key: str | None = None) -> list:
    return [a for s in scores for a in engine.process(s, key).alerts]


def engine_with(*rules: Rule, **kw: object) -> RiskEngine:
    return RiskEngine(rules, lateness=timedelta(0), baseline=timedelta(days=5), **kw)  # type: ignore[arg-type]


def test_aggregate_rows_hold_count_mean_share_dispersion_and_disagreement() -> None:
    engine = engine_with(Rule("s", "sentiment_z", window=HOUR))
    t = DAY0 + timedelta(minutes=10)
    scores = [-0.8, -0.4, 0.6]
    for i, s in enumerate(scores):
        engine.process(make_score(score=s, published_at=t + timedelta(minutes=i), disagreement=0.3))
    rows = {(r["window_minutes"], r["window_start"]): r for r in engine.drain_aggregates()}
    assert set(rows) == {(15, DAY0), (60, DAY0), (1440, DAY0)}
    hour = rows[(60, DAY0)]
    mean = sum(scores) / 3
    assert hour["documents"] == 3 and hour["mean_score"] == pytest.approx(mean)
    assert hour["negative_share"] == pytest.approx(2 / 3)
    assert hour["dispersion"] == pytest.approx(math.sqrt(sum((s - mean) ** 2 for s in scores) / 3))
    assert hour["disagreement"] == pytest.approx(0.3)
    assert hour["sentiment_z"] is None and hour["volume_z"] is None  # no baseline yet
    assert engine.drain_aggregates() == []  # only what changed since the last drain


def test_z_scores_measure_a_window_against_the_groups_own_past() -> None:
    engine = engine_with(Rule("s", "sentiment_z", window=HOUR))
    calm = history(days=6)
    for s in calm:
        engine.process(s)
    engine.drain_aggregates()
    t = DAY0 + timedelta(days=6, minutes=5)
    for i in range(6):
        engine.process(make_score(score=-0.7, published_at=t + timedelta(minutes=i)))
    (hour,) = [r for r in engine.drain_aggregates() if r["window_minutes"] == 60]
    past = [s.score for s in calm if s.published_at >= t - timedelta(days=5, minutes=5)]
    mu, sd = (
        sum(past) / len(past),
        math.sqrt(sum(x * x for x in past) / len(past) - (sum(past) / len(past)) ** 2),
    )
    assert hour["sentiment_z"] == pytest.approx((-0.7 - mu) / max(sd, 0.05), abs=1e-4)
    assert hour["volume_z"] == pytest.approx(6 - 1.0, abs=1e-6)  # 1 a window, spread 0: floor 1


def test_a_sentiment_shock_fires_on_its_z_score_and_a_calm_day_does_not() -> None:
    rule = Rule("shock", "sentiment_z", window=HOUR, conditions=(("sentiment_z", -3.0),),
                critical=(("sentiment_z", -6.0),))  # fmt: skip
    engine = engine_with(rule)
    assert run(engine, history(days=6)) == []
    t = DAY0 + timedelta(days=6, minutes=5)
    (alert,) = run(
        engine, [make_score(score=-0.7, published_at=t + timedelta(minutes=i)) for i in range(4)]
    )
    assert (
        alert.rule == "shock"
        and alert.values["sentiment_z"] <= -6
        and alert.severity == Severity.CRITICAL
    )
    assert alert.family == "sentiment_z" and "sentiment_z" in alert.explanation
    assert alert.window_end - alert.window_start == HOUR


def test_a_volume_spike_fires_on_many_more_documents_than_usual() -> None:
    rule = Rule(
        "spike", "volume_spike", window=HOUR, conditions=(("volume_z", 4.0), ("documents", 5))
    )
    engine = engine_with(rule)
    assert run(engine, history(days=6)) == []
    t = DAY0 + timedelta(days=6, minutes=5)
    burst = [make_score(score=0.3, published_at=t + timedelta(minutes=i)) for i in range(8)]
    alerts = run(engine, burst)
    assert [a.rule for a in alerts] == ["spike"]
    assert (
        alerts[0].values["volume_z"] >= 4 and alerts[0].values["documents"] == 5
    )  # 5 - 1 = 4 sigma


def test_a_sustained_drift_needs_its_windows_in_a_row() -> None:
    rule = Rule("drift", "drift", window=HOUR, consecutive=3,
                conditions=(("mean_score", -0.2), ("documents", 2)))  # fmt: skip
    engine = engine_with(rule)
    t = DAY0 + timedelta(minutes=5)
    two_bad = [make_score(score=-0.5, published_at=t + h * HOUR + timedelta(minutes=m))
               for h in range(2) for m in (0, 20)]  # fmt: skip
    calm = [
        make_score(score=0.4, published_at=t + 2 * HOUR + timedelta(minutes=m)) for m in (0, 20)
    ]
    assert run(engine, two_bad + calm) == []
    later = t + 5 * HOUR
    three_bad = [make_score(score=-0.5, published_at=later + h * HOUR + timedelta(minutes=m))
                 for h in range(3) for m in (0, 20)]  # fmt: skip
    (alert,) = run(engine, three_bad)
    assert alert.window_start == DAY0 + 7 * HOUR and alert.thresholds["consecutive"] == 3
    assert len(alert.evidence) == 5  # the most negative of the three windows


def test_a_disagreement_spike_fires_when_the_members_split() -> None:
    rule = Rule(
        "split", "disagreement", window=HOUR, conditions=(("disagreement", 0.5), ("documents", 3))
    )
    engine = engine_with(rule)
    t = DAY0 + timedelta(minutes=5)
    agreed = [
        make_score(score=0.1, disagreement=0.1, published_at=t + timedelta(minutes=i))
        for i in range(5)
    ]
    assert run(engine, agreed) == []
    split = [
        make_score(score=0.0, disagreement=0.8, published_at=t + HOUR + timedelta(minutes=i))
        for i in range(3)
    ]
    (alert,) = run(engine, split)
    assert alert.values["disagreement"] == pytest.approx(0.8) and alert.family == "disagreement"


def test_cooldown_keeps_a_rule_quiet_after_it_resolves() -> None:
    rule = Rule("d", "disagreement", window=HOUR, cooldown=timedelta(hours=6),
                conditions=(("disagreement", 0.5), ("documents", 2)))  # fmt: skip

    def split(at: datetime) -> list:
        return [
            make_score(disagreement=0.9, published_at=at + timedelta(minutes=i)) for i in range(2)
        ]

    def calm(at: datetime) -> list:
        return [
            make_score(disagreement=0.0, published_at=at + timedelta(minutes=i)) for i in range(2)
        ]

    engine = engine_with(rule)
    t = DAY0
    fired = run(engine, split(t) + calm(t + 2 * HOUR) + split(t + 3 * HOUR) + calm(t + 5 * HOUR))
    assert [a.state for a in fired] == [AlertState.FIRING, AlertState.RESOLVED]
    (again,) = run(engine, split(t + 7 * HOUR))
    assert again.state == AlertState.FIRING and again.window_start == t + 7 * HOUR


def test_rules_only_see_the_groups_of_their_kind() -> None:
    sector = Rule("sector_surge", "negative_surge", group="sector", hop=timedelta(minutes=30))
    engine = engine_with(sector)
    scores = [make_score(score=-0.8, published_at=DAY0 + timedelta(minutes=i)) for i in range(6)]
    assert run(engine, scores) == []  # a ticker group
    key = group_key("sector", "Energy")
    (alert,) = run(engine, scores, key)
    assert alert.ticker == "sector:Energy" and group_kind(alert.ticker) == "sector"
    assert group_key("market") == "market" and group_kind("market") == "market"


def test_an_engine_rebuilt_from_stored_events_continues_like_one_never_stopped() -> None:
    rules = (
        Rule("shock", "sentiment_z", window=HOUR),
        Rule("surge", "negative_surge", hop=timedelta(minutes=30)),
        Rule("drift", "drift", window=HOUR, consecutive=2),
    )
    rng = random.Random(3)
    scores = history(days=6, per_hour=2)
    t = DAY0 + timedelta(days=6)
    scores += [make_score(score=rng.uniform(-0.9, -0.3), published_at=t + timedelta(minutes=4 * i))
               for i in range(60)]  # fmt: skip
    whole = engine_with(*rules)
    expected = [whole.process(s) for s in scores]
    expected_rows = whole.drain_aggregates()
    assert any(u.alerts for u in expected)
    cut = len(scores) - 40
    first = engine_with(*rules)
    before = [first.process(s) for s in scores[:cut]]
    firing = list(first.firing.values())
    last = {r: s for (r, _), s in first.last_fired.items()}
    stored = [Event(s.published_at, s.document_id, s.score, s.label == "negative", "", s.disagreement)
              for s in reversed(scores[:cut])]  # any order  # fmt: skip
    second = engine_with(*rules)
    second.restore_group("ACME", stored, firing, last)
    after = [second.process(s) for s in scores[cut:]]
    assert before + after == expected
    rows = {(r["window_minutes"], r["window_start"]): r for r in second.drain_aggregates()}
    for r in expected_rows:
        if (r["window_minutes"], r["window_start"]) in rows:
            assert rows[(r["window_minutes"], r["window_start"])] == r


def test_a_document_later_than_the_allowed_lateness_is_reported_not_counted() -> None:
    engine = RiskEngine([Rule("s", "negative_surge")], lateness=timedelta(hours=1))
    engine.process(make_score(published_at=DAY0 + timedelta(days=2)))
    engine.drain_aggregates()
    update = engine.process(make_score(published_at=DAY0))
    assert update.late and update.row is not None and update.alerts == []
    assert engine.drain_aggregates() == [] and engine.late == 1


def test_new_rule_types_parse_and_round_trip() -> None:
    data = {"rules": [
        {"name": "shock", "type": "sentiment_z", "window_minutes": 60, "sentiment_z": -3,
         "critical": {"sentiment_z": -5}, "severity": "warning", "family": "sentiment"},
        {"name": "spike", "type": "volume_spike", "group": "sector", "volume_z": 4, "window_minutes": 60},
        {"name": "drift", "type": "drift", "window_minutes": 1440, "consecutive": 3, "mean_score": -0.1},
        {"name": "split", "type": "disagreement", "disagreement": 0.5, "cooldown_minutes": 240},
    ]}  # fmt: skip
    rules = parse_rules(data)
    assert [r.type for r in rules] == ["sentiment_z", "volume_spike", "drift", "disagreement"]
    assert rules[0].family_name == "sentiment" and rules[1].group == "sector"
    assert rules[3].quiet_period == timedelta(hours=4) and rules[2].span == timedelta(days=3)
    assert parse_rules(json.loads(json.dumps(rules_as_data(rules)))) == rules


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"type": "negative_surge", "sentiment_z": -3}, "z-scores are defined on tumbling windows"),
        ({"type": "drift", "group": "desk"}, "group: expected one of"),
        ({"type": "sentiment_z", "severity": "apocalyptic"}, "severity: expected"),
        ({"type": "sentiment_z", "critical": {"vibes": 1}}, "unknown metric 'vibes'"),
        ({"type": "volume_spike", "consecutive": 2}, "only drift rules"),
        ({"type": "disagreement", "disagreement": 2}, "0 <= disagreement <= 1"),
    ],
)
def test_bad_rules_of_the_new_types_are_refused(entry: dict, reason: str) -> None:
    with pytest.raises(RulesError, match=reason):
        parse_rules({"rules": [{"name": "x", **entry}]}, "r.yaml")


def test_baselines_swept_for_many_windows_equal_each_window_on_its_own() -> None:
    """``drain_aggregates`` sweeps the baselines of all the windows it rewrites; each must be what
    a window computed alone gets, and what the plain definition gives (the mean and spread of the
    per-window means, the mean and spread of the counts, over the baseline period)."""
    rng = random.Random(7)
    engine = engine_with(Rule("s", "sentiment_z", window=HOUR))
    window = engine.window_of("ACME")
    events = [
        Event(DAY0 + timedelta(minutes=rng.randrange(8 * 24 * 60)), f"d{i}",
              round(rng.uniform(-1, 1), 3), rng.random() < 0.3)
        for i in range(600)
    ]  # fmt: skip
    for event in events:  # out of order: the cache is dropped on every late event
        window.add(event)
    indices = sorted({(e.published_at - datetime(1970, 1, 1, tzinfo=UTC)) // HOUR for e in events})
    window.baselines.clear()
    window.prepare_baselines(HOUR, indices)
    swept = {i: window.baselines[(HOUR, i)] for i in indices}
    window.baselines.clear()
    span = (window.keep - window.horizon) // HOUR
    cells = window.buckets[HOUR]
    for i in indices:
        alone = window.baseline(HOUR, i)
        window.baselines.clear()
        assert swept[i] == alone
        past = [cells[k] for k in range(i - span, i) if k in cells]
        counts = [c[0] for c in past] + [0] * (span - len(past))
        means = [c[1] / c[0] for c in past]
        assert alone is not None and alone.active == len(means)
        assert alone.volume_mean == pytest.approx(sum(counts) / span)
        assert alone.volume_std == pytest.approx(statistics.pstdev(counts))
        if means:
            assert alone.sentiment_mean == pytest.approx(statistics.fmean(means), abs=1e-9)
            assert alone.sentiment_std == pytest.approx(statistics.pstdev(means), abs=1e-9)


def test_aggregates_do_not_depend_on_how_documents_are_batched_between_drains() -> None:
    scores = history(days=8, per_hour=2)
    rng = random.Random(3)
    rng.shuffle(scores[-100:])  # some out of order too

    def rows(drain_every: int) -> dict:
        engine = engine_with(Rule("s", "sentiment_z", window=HOUR))
        out = {}
        for i, s in enumerate(scores):
            engine.process(s)
            if i % drain_every == 0:
                out.update({(r["window_minutes"], r["window_start"]): r
                            for r in engine.drain_aggregates()})  # fmt: skip
        out.update({(r["window_minutes"], r["window_start"]): r for r in engine.drain_aggregates()})
        return out

    once = rows(len(scores) + 1)
    assert any(r["sentiment_z"] is not None for r in once.values())
    assert rows(1) == once and rows(37) == once


def test_baselines_carried_from_window_to_window_equal_the_sums_afresh() -> None:
    """In event-time order a window's baseline sums carry over to the next window asked for; asked
    for at any moment (the newest window, one ahead of the newest event, an older one), after late
    events and bucket pruning, each is exactly what summing its history afresh gives."""
    rng = random.Random(11)
    engine = RiskEngine(
        [Rule("s", "sentiment_z", window=HOUR)], lateness=timedelta(hours=6),
        baseline=timedelta(days=2),
    )  # fmt: skip
    window = engine.window_of("ACME")
    span = (window.keep - window.horizon) // HOUR
    t = DAY0
    checked = 0
    for i in range(3000):
        t += timedelta(minutes=rng.choice([1, 3, 7, 20, 45]))
        late = rng.random() < 0.02
        at = t - timedelta(hours=rng.randrange(1, 5)) if late else t
        window.add(Event(at, f"d{i}", round(rng.uniform(-1, 1), 3), rng.random() < 0.3))
        newest = (window.high_water - EPOCH) // HOUR
        asked = [newest, newest + 2, newest - rng.randrange(0, 30)]
        for index in asked if i % 5 == 0 else asked[:1]:
            got = window.baseline(HOUR, index)
            sums = _BaselineSums()
            cells = window.buckets[HOUR]
            for k in range(index - span, index):
                if k in cells:
                    sums.add(cells[k])
            assert got == sums.baseline(span), (i, index)
            checked += 1
    assert checked > 4000
    assert min(window.buckets[HOUR]) > (DAY0 - EPOCH) // HOUR + 20 * 24  # pruned on the way
