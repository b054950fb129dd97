"""What a replay found, against a baseline run: alerts matched, gained and lost, label flips, and a
per-ticker timeline, as a JSON report (stored with the job), a table and a PNG plot.

``compare_runs`` compares any two runs over a period, so the same code answers "replay against live"
and "model version A against model version B" (two replays of one period).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, aliased

from riskwire.replay_plot import plot_report
from storage.tables import AlertRow, DocumentTickerRow, ReplayRunRow, ScoreRow, TickerSentimentRow

log = logging.getLogger(__name__)
TIMELINE_TICKERS = 8


@dataclass(frozen=True)
class Scope:
    start: datetime | None
    end: datetime | None
    tickers: tuple[str, ...] = ()


def _in_scope(column: Any, scope: Scope) -> list[Any]:
    where = []
    if scope.start is not None:
        where.append(column >= scope.start)
    if scope.end is not None:
        where.append(column < scope.end)
    return where


def compare_scores(session: Session, run: str, baseline: str, scope: Scope) -> dict[str, Any]:
    """Label agreement and flips between two runs' scores of the same documents."""
    a, b = aliased(ScoreRow), aliased(ScoreRow)
    query = (
        select(a.label, b.label, func.count(), func.sum(func.abs(a.score - b.score)))
        .join(b, and_(b.document_id == a.document_id, b.run_id == baseline))
        .where(a.run_id == run, *_in_scope(a.published_at, scope))
        .group_by(a.label, b.label)
    )
    if scope.tickers:
        mentions = select(DocumentTickerRow.document_id).where(
            DocumentTickerRow.ticker.in_(scope.tickers)
        )
        query = query.where(a.document_id.in_(mentions))
    compared = same = 0
    change = 0.0
    flips: dict[str, int] = {}
    for label, base_label, n, delta in session.execute(query):
        compared += n
        change += float(delta or 0.0)
        if label == base_label:
            same += n
        else:
            flips[f"{base_label}->{label}"] = int(n)
    return {
        "compared": compared,
        "agreement": same / compared if compared else None,
        "flips": dict(sorted(flips.items())),
        "flipped": compared - same,
        "mean_abs_score_change": change / compared if compared else None,
    }


def _alerts(session: Session, run: str, scope: Scope) -> dict[tuple[str, str, str], AlertRow]:
    query = select(AlertRow).where(AlertRow.run_id == run)
    if scope.start is not None:
        query = query.where(AlertRow.window_end > scope.start)
    if scope.end is not None:
        query = query.where(AlertRow.window_start < scope.end)
    if scope.tickers:
        query = query.where(AlertRow.ticker.in_(scope.tickers))
    return {(r.rule, r.ticker, r.window_start.isoformat()): r for r in session.scalars(query)}


def compare_alerts(session: Session, run: str, baseline: str | None, scope: Scope) -> list[dict]:
    """Every alert of either run in the period, marked against the baseline:

    - ``matched``: the same rule, ticker and window;
    - ``shifted``: the same rule and ticker, an overlapping window that starts elsewhere (the same
      episode, caught on another aligned window: live saw the documents in another order);
    - ``gained`` (this run only) or ``lost`` (the baseline only).
    """
    ours = _alerts(session, run, scope)
    theirs = _alerts(session, baseline, scope) if baseline else {}
    partner: dict[tuple[str, str, str], tuple[str, str, str]] = {}
    for key in ours:
        if key in theirs:
            partner[key] = key
    taken = set(partner.values())
    for key, row in sorted(ours.items(), key=lambda kv: kv[1].window_start):
        if key in partner:
            continue
        for other, base in sorted(theirs.items(), key=lambda kv: kv[1].window_start):
            if (
                other not in taken
                and (base.rule, base.ticker) == (row.rule, row.ticker)
                and base.window_start < row.window_end
                and row.window_start < base.window_end
            ):
                partner[key] = other
                taken.add(other)
                break
    out = []
    for key, ours_row in ours.items():
        pair = partner.get(key)
        if baseline is None:
            status = "fired"
        elif pair is None:
            status = "gained"
        else:
            status = "matched" if pair == key else "shifted"
        out.append(_alert_entry(ours_row, status, theirs[pair] if pair else None))
    out += [_alert_entry(lost, "lost", None) for key, lost in theirs.items() if key not in taken]
    return sorted(out, key=lambda a: (a["window_start"], a["ticker"], a["rule"], a["status"]))


def _alert_entry(row: AlertRow, status: str, base: AlertRow | None) -> dict[str, Any]:
    return {
        "rule": row.rule, "ticker": row.ticker, "severity": row.severity, "state": row.state,
        "window_start": row.window_start.isoformat(), "window_end": row.window_end.isoformat(),
        "status": status,
        "baseline_window_start": base.window_start.isoformat() if base else None,
        "baseline_severity": base.severity if base else None,
        "explanation": row.explanation, "evidence": list(row.evidence),
    }  # fmt: skip


def _bucket(scope: Scope, first: datetime, last: datetime) -> timedelta:
    span = (scope.end or last) - (scope.start or first)
    minutes = max(15, int(span.total_seconds() // 60 // 96))
    for step in (15, 30, 60, 120, 240, 360, 720, 1440):
        if minutes <= step:
            return timedelta(minutes=step)
    return timedelta(days=max(1, round(minutes / 1440)))


def timeline(
    session: Session, run: str, scope: Scope, tickers: list[str]
) -> tuple[int, dict[str, list[list[Any]]]]:
    """Per ticker: [bucket start, documents, mean score] over the period, bucketed in Python so
    SQLite and PostgreSQL give the same answer."""
    if not tickers:
        return 0, {}
    query = select(
        TickerSentimentRow.ticker, TickerSentimentRow.published_at, TickerSentimentRow.score
    ).where(
        TickerSentimentRow.run_id == run,
        TickerSentimentRow.ticker.in_(tickers),
        *_in_scope(TickerSentimentRow.published_at, scope),
    )
    rows = session.execute(query).all()
    if not rows:
        return 0, {}
    first = min(r[1] for r in rows)
    last = max(r[1] for r in rows)
    step = _bucket(scope, first, last)
    origin = datetime(1970, 1, 1, tzinfo=UTC)
    sums: dict[str, dict[datetime, list[float]]] = defaultdict(dict)
    for ticker, t, score in rows:
        b = origin + ((t - origin) // step) * step
        acc = sums[ticker].setdefault(b, [0, 0.0])
        acc[0] += 1
        acc[1] += score
    return int(step.total_seconds() // 60), {
        ticker: [[b.isoformat(), int(n), round(s / n, 4)] for b, (n, s) in sorted(buckets.items())]
        for ticker, buckets in sorted(sums.items())
    }


def _timeline_tickers(session: Session, run: str, scope: Scope, alerts: list[dict]) -> list[str]:
    chosen = list(dict.fromkeys(a["ticker"] for a in alerts))[:TIMELINE_TICKERS]
    if len(chosen) < TIMELINE_TICKERS:
        busiest = session.execute(
            select(TickerSentimentRow.ticker, func.count())
            .where(
                TickerSentimentRow.run_id == run, *_in_scope(TickerSentimentRow.published_at, scope)
            )
            .group_by(TickerSentimentRow.ticker)
            .order_by(func.count().desc(), TickerSentimentRow.ticker)
            .limit(TIMELINE_TICKERS)
        ).all()
        for ticker, _ in busiest:
            if ticker not in chosen and len(chosen) < TIMELINE_TICKERS:
                chosen.append(ticker)
    return chosen


def against_analysts(
    session: Session, run: str, baseline: str | None, scope: Scope
) -> dict[str, Any] | None:
    """The run's and the baseline's scores against the analysts' labels of the period's documents
    (``riskwire labels``), per model version: which model a desk's own judgement prefers. None
    when no document of the period is labelled."""
    from riskwire.labels import agreement
    from storage.labels import LabelSelection

    selection = LabelSelection(published_from=scope.start, published_to=scope.end,
                               tickers=scope.tickers)  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {}
    resolution = None
    for run_id in (run, baseline):
        if run_id is not None:
            versions, resolution = agreement(session, selection, run_id)
            runs[run_id] = [v.as_dict() for v in versions]
    if resolution is None or not resolution.labels:
        return None
    return {"documents": len(resolution.labels), "tied": len(resolution.tied), "runs": runs}


def build_report(
    session: Session, run: str, baseline: str | None, scope: Scope, **meta: Any
) -> dict[str, Any]:
    alerts = compare_alerts(session, run, baseline, scope)
    firing = [a for a in alerts if a["status"] != "lost"]
    tickers = _timeline_tickers(session, run, scope, firing)
    step, line = timeline(session, run, scope, tickers)
    counts = {
        s: sum(a["status"] == s for a in alerts) for s in ("matched", "shifted", "gained", "lost")
    }
    return {
        **meta,
        "run_id": run,
        "baseline": baseline,
        "period": [
            scope.start.isoformat() if scope.start else None,
            scope.end.isoformat() if scope.end else None,
        ],
        "tickers": list(scope.tickers),
        "alerts": alerts,
        "alert_counts": {
            "run": len(firing),
            "baseline": counts["matched"] + counts["shifted"] + counts["lost"]
            if baseline
            else None,
            **(counts if baseline else {}),
        },
        "scores": compare_scores(session, run, baseline, scope) if baseline else None,
        "analysts": against_analysts(session, run, baseline, scope),
        "timeline": {"bucket_minutes": step, "tickers": line},
    }


def finish_report(
    session: Session,
    job: ReplayRunRow,
    out_dir: Path,
    draw: Callable[[dict[str, Any], Path], Path] = plot_report,
) -> dict[str, Any]:
    """Build a job's report, store it and its summary columns, and draw its plot with ``draw``
    (``plot_report``, or the same run somewhere else: a replay's writer process)."""
    scope = Scope(job.period_start, job.period_end, tuple(job.tickers))
    baseline = job.baseline_run if job.baseline_run != job.run_id else None
    report = build_report(
        session, job.run_id, baseline, scope, job=job.id, kind=job.kind,
        model_version=job.model_version, documents=job.processed, rescored=job.rescored,
        cached=job.cached, rejected=job.rejected,
    )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = out_dir / f"{job.id}.png"
    draw(report, plot)
    report["plot"] = str(plot)
    job.report = report
    counts, scores = report["alert_counts"], report["scores"] or {}
    job.baseline_alerts = counts.get("baseline")
    job.alerts_matched = counts.get("matched")
    job.alerts_shifted = counts.get("shifted")
    job.alerts_gained = counts.get("gained")
    job.alerts_lost = counts.get("lost")
    job.documents_compared = scores.get("compared")
    job.label_agreement = scores.get("agreement")
    job.label_flips = scores.get("flipped")
    return report


def render_report(report: dict[str, Any], console: Console) -> None:
    """The report as tables: alerts (with their status against the baseline) and score agreement."""
    table = Table(title=f"alerts of {report['run_id']} against {report['baseline'] or 'nothing'}")
    for column in ("status", "ticker", "rule", "severity", "window", "explanation"):
        table.add_column(column)
    for a in report["alerts"]:
        style = {"gained": "green", "lost": "red", "shifted": "yellow"}.get(a["status"])
        window = f"{a['window_start'][:16]} → {a['window_end'][11:16]}"
        if a.get("baseline_window_start") and a["status"] == "shifted":
            window += f" (baseline from {a['baseline_window_start'][11:16]})"
        severity = a["severity"]
        if a.get("baseline_severity") and a["baseline_severity"] != severity:
            severity += f" (baseline {a['baseline_severity']})"
        table.add_row(
            a["status"], a["ticker"], a["rule"], severity, window, a["explanation"], style=style
        )
    console.print(table)
    scores = report.get("scores")
    if scores and scores["compared"]:
        summary = Table(title="scores against the baseline")
        summary.add_column("measure")
        summary.add_column("value", justify="right")
        summary.add_row("documents compared", str(scores["compared"]))
        summary.add_row("label agreement", f"{scores['agreement']:.1%}")
        summary.add_row("mean |score change|", f"{scores['mean_abs_score_change']:.4f}")
        for flip, n in scores["flips"].items():
            summary.add_row(f"flip {flip}", str(n))
        console.print(summary)
    analysts = report.get("analysts")
    if analysts:
        judged = Table(title=f"against analysts' labels ({analysts['documents']} documents)")
        for column in ("run", "model version", "documents", "accuracy", "macro-F1", "ECE"):
            judged.add_column(
                column, justify="left" if column in ("run", "model version") else "right"
            )
        for run_id, versions in analysts["runs"].items():
            for v in versions:
                judged.add_row(run_id, v["model_version"], str(v["n"]), f"{v['accuracy']:.3f}",
                               f"{v['macro_f1']:.3f}", f"{v['ece']:.3f}")  # fmt: skip
        console.print(judged)
    counts = report["alert_counts"]
    console.print(
        "alerts: "
        + ", ".join(f"{k} {v}" for k, v in counts.items() if v is not None)
        + (f"; plot: {report['plot']}" if report.get("plot") else "")
    )
