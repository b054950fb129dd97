"""The API's alert side: API keys, subscriptions (webhook or server-sent events), the SSE streams,
delivery state, and the history of alerts and ticker scores.

Every key sees only its own subscriptions (another key's are answered 404, as if they did not
exist). Lists are paginated with opaque cursors (keyset, so a page never shifts under a reader).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from ingest.feeds import health_worst_first
from riskwire.delivery import keys
from riskwire.delivery.model import AlertFilter, DeliveryError, check_webhook_url, sector_map
from riskwire.service_metrics import ServiceMetrics
from riskwire.settings import Settings
from storage import delivery as store
from storage.repository import evidence_documents
from storage.tables import (
    AlertEventRow,
    AlertRow,
    ApiKeyRow,
    DeliveryRow,
    SubscriptionRow,
    TickerSentimentRow,
)

Severity = Literal["info", "warning", "critical"]
DeliveryStatus = Annotated[
    Literal["pending", "delivered", "dead", "cancelled"] | None, Query(alias="status")
]
LIVE_PAGE = Path(__file__).resolve().parent / "static" / "live.html"


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key (its id and scopes), the configured admin token, or anyone when
    the API runs open (no ``RISKWIRE_API_TOKEN``, no key presented)."""

    key_id: str | None
    scopes: tuple[str, ...]


def _upper(values: list[str]) -> list[str]:
    return sorted({v.strip().upper() for v in values if v.strip()})


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    scopes: list[str] = Field(min_length=1)


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    channel: Literal["webhook", "sse"]
    url: str | None = Field(None, max_length=2000)
    tickers: list[str] = Field(default_factory=list, max_length=1000)
    sectors: list[str] = Field(default_factory=list, max_length=100)
    rules: list[str] = Field(default_factory=list, max_length=100)
    min_severity: Severity = "info"

    @field_validator("tickers")
    @classmethod
    def _tickers(cls, value: list[str]) -> list[str]:
        return _upper(value)


class SubscriptionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    url: str | None = Field(None, max_length=2000)
    tickers: list[str] | None = Field(None, max_length=1000)
    sectors: list[str] | None = Field(None, max_length=100)
    rules: list[str] | None = Field(None, max_length=100)
    min_severity: Severity | None = None
    active: bool | None = None

    @field_validator("tickers")
    @classmethod
    def _tickers(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _upper(value)


class SubscriptionOut(BaseModel):
    id: str
    name: str
    channel: str
    url: str | None
    tickers: list[str]
    sectors: list[str]
    rules: list[str]
    min_severity: str
    active: bool
    created_at: datetime
    updated_at: datetime
    secret: str | None = Field(
        None, description="the webhook signing secret: returned once, when created"
    )


class Page(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(*parts: Any) -> str:
    raw = json.dumps([p.isoformat() if isinstance(p, datetime) else p for p in parts])
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str | None, size: int) -> list[Any] | None:
    if cursor is None:
        return None
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        assert isinstance(parts, list) and len(parts) == size
        return parts
    except Exception:
        raise HTTPException(422, "cursor is not one this API gave out") from None


def keyset_page(
    sessions: sessionmaker[Session],
    query: Any,
    order: tuple[Any, Any],
    newest_first: bool,
    cursor: str | None,
    limit: int,
    render: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """One page of ``query`` ordered by ``order`` (a time column, then a unique id column), after
    ``cursor`` (keyset pagination: a page never shifts while rows are added), with the cursor of the
    next page when there is one."""
    when, ident = order
    after = decode_cursor(cursor, 2)
    if after:
        t = datetime.fromisoformat(after[0])
        if newest_first:
            query = query.where(or_(when < t, and_(when == t, ident < after[1])))
        else:
            query = query.where(or_(when > t, and_(when == t, ident > after[1])))
    columns = (when.desc(), ident.desc()) if newest_first else (when, ident)
    with sessions() as session:
        rows = list(session.scalars(query.order_by(*columns).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows else None
    return {
        "items": [render(r) for r in rows],
        "next_cursor": encode_cursor(getattr(last, when.key), getattr(last, ident.key))
        if more
        else None,
    }


def _subscription_out(row: SubscriptionRow, secret: str | None = None) -> dict[str, Any]:
    return {
        "id": row.id, "name": row.name, "channel": row.channel, "url": row.url,
        "tickers": row.tickers, "sectors": row.sectors, "rules": row.rules,
        "min_severity": row.min_severity, "active": row.active, "created_at": row.created_at,
        "updated_at": row.updated_at, "secret": secret,
    }  # fmt: skip


def _alert_out(row: AlertRow) -> dict[str, Any]:
    return {
        "id": row.id, "rule": row.rule, "ticker": row.ticker, "severity": row.severity,
        "state": row.state, "window_start": row.window_start.isoformat(),
        "window_end": row.window_end.isoformat(), "fired_at": row.fired_at.isoformat(),
        "resolved_at": row.resolved_at.isoformat() if row.resolved_at else None,
        "values": row.measured, "thresholds": row.thresholds, "evidence": row.evidence,
        "explanation": row.explanation,
    }  # fmt: skip


def _sentiment_out(r: TickerSentimentRow) -> dict[str, Any]:
    return {
        "document_id": r.document_id, "published_at": r.published_at.isoformat(),
        "score": r.score, "window_documents": r.window_documents,
        "window_mean_score": r.window_mean_score,
        "window_negative_share": r.window_negative_share,
    }  # fmt: skip


def _delivery_out(row: DeliveryRow) -> dict[str, Any]:
    return {
        "id": row.id, "event_id": row.event_id, "target": row.target,
        "subscription_id": row.subscription_id, "status": row.status, "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at.isoformat() if row.status == "pending" else None,
        "last_error": row.last_error, "response": row.response,
        "created_at": row.created_at.isoformat(),
        "delivered_at": row.delivered_at.isoformat() if row.delivered_at else None,
    }  # fmt: skip


def sse_event(row: AlertEventRow) -> str:
    data = json.dumps({"seq": row.seq, "event_id": row.id, **row.alert}, separators=(",", ":"))
    return f"id: {row.seq}\nevent: alert\ndata: {data}\n\n"


Require = Callable[[str], Callable[..., Principal]]


def make_auth(settings: Settings, sessions: sessionmaker[Session]) -> Require:
    """``require(scope)``: a dependency that answers 401 without a valid key or token and 403 without
    the scope. With no ``RISKWIRE_API_TOKEN`` set, a request without any key may read alerts and
    run replays (local use); subscriptions always belong to a key."""

    def identify(token: str | None) -> Principal | None:
        if token is None:
            return None
        if settings.api_token is not None and secrets.compare_digest(
            token.encode(), settings.api_token.encode()
        ):
            return Principal(None, ("admin",))
        parsed = keys.parse_token(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        with sessions.begin() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None or row.revoked_at is not None:
                return None
            if not keys.secret_matches(secret, row.secret_hash):
                return None
            now = datetime.now(UTC)
            if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
                row.last_used_at = now
            return Principal(row.id, tuple(row.scopes))

    def require(scope: str) -> Callable[..., Principal]:
        def dependency(
            authorization: Annotated[str | None, Header()] = None,
            access_token: Annotated[
                str | None,
                Query(description="the key, for clients that cannot set headers (EventSource)"),
            ] = None,
        ) -> Principal:
            token = None
            if authorization:
                scheme, _, value = authorization.partition(" ")
                token = value if scheme.lower() == "bearer" else None
                if token is None:
                    raise HTTPException(401, "use Authorization: Bearer <key>")
            token = token or access_token
            principal = identify(token)
            if principal is None:
                open_api = settings.api_token is None and token is None
                if open_api and scope in ("alerts:read", "replays"):
                    return Principal(None, ("alerts:read", "replays"))
                raise HTTPException(
                    status.HTTP_401_UNAUTHORIZED,
                    "a valid API key is required" if token else "missing API key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not keys.allows(list(principal.scopes), scope):
                raise HTTPException(status.HTTP_403_FORBIDDEN, f"this key lacks scope {scope!r}")
            return principal

        return dependency

    return require


def delivery_router(
    settings: Settings,
    sessions: sessionmaker[Session],
    require: Require,
    poll_s: float = 0.5,
    heartbeat_s: float = 15.0,
    metrics: ServiceMetrics | None = None,
) -> APIRouter:
    router = APIRouter()
    counted = metrics if metrics is not None else ServiceMetrics()
    sector_of = sector_map(settings)

    def owner(principal: Principal) -> str:
        if principal.key_id is None:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, "subscriptions belong to API keys; use one"
            )
        return principal.key_id

    def own(session: Session, principal: Principal, sid: str) -> SubscriptionRow:
        row = session.get(SubscriptionRow, sid)
        if row is None or row.api_key_id != owner(principal):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no subscription {sid!r}")
        return row

    def check_url(channel: str, url: str | None) -> None:
        if channel == "webhook":
            if not url:
                raise HTTPException(422, "a webhook subscription needs a url")
            try:
                check_webhook_url(url, settings.webhook_allow_private)
            except DeliveryError as exc:
                raise HTTPException(422, str(exc)) from None
        elif url:
            raise HTTPException(
                422, "an sse subscription has no url: read /subscriptions/{id}/events"
            )

    writer = Depends(require("subscriptions:write"))
    reader = Depends(require("alerts:read"))

    admin = Depends(require("admin"))

    @router.post("/keys", status_code=201, tags=["keys"])
    def create_key(body: KeyIn, principal: Principal = admin) -> dict[str, Any]:
        """Create an API key (admin); its token is in this answer only, and only its hash is kept."""
        try:
            with sessions.begin() as session:
                token = store.create_api_key(session, body.name, body.scopes, datetime.now(UTC))
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        key_id = keys.parse_token(token)[0]  # type: ignore[index]
        return {"id": key_id, "name": body.name, "scopes": sorted(set(body.scopes)), "token": token}

    @router.get("/keys", tags=["keys"])
    def list_keys(principal: Principal = admin) -> list[dict[str, Any]]:
        """Keys with their scopes and last use, never their secrets (admin)."""
        with sessions() as session:
            return [
                {
                    "id": k.id, "name": k.name, "scopes": k.scopes, "created_at": k.created_at,
                    "last_used_at": k.last_used_at, "revoked_at": k.revoked_at,
                }
                for k in session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))
            ]  # fmt: skip

    @router.delete("/keys/{key_id}", status_code=204, tags=["keys"])
    def revoke_key(key_id: str, principal: Principal = admin) -> Response:
        """Revoke a key at once (admin)."""
        with sessions.begin() as session:
            if not store.revoke_api_key(session, key_id, datetime.now(UTC)):
                raise HTTPException(404, f"no active key {key_id!r}")
        return Response(status_code=204)

    @router.post(
        "/subscriptions", status_code=201, response_model=SubscriptionOut, tags=["subscriptions"]
    )
    def create_subscription(
        body: SubscriptionIn, response: Response, principal: Principal = writer
    ) -> dict[str, Any]:
        """Subscribe this key to alerts. A webhook's signing secret is in this answer only."""
        check_url(body.channel, body.url)
        now = datetime.now(UTC)
        secret = secrets.token_urlsafe(32) if body.channel == "webhook" else None
        row = SubscriptionRow(
            id=secrets.token_hex(8), api_key_id=owner(principal), name=body.name,
            channel=body.channel, url=body.url, secret=secret, tickers=body.tickers,
            sectors=body.sectors, rules=body.rules, min_severity=body.min_severity, active=True,
            created_at=now, updated_at=now,
        )  # fmt: skip
        with sessions.begin() as session:
            session.add(row)
        response.headers["Location"] = f"/subscriptions/{row.id}"
        return _subscription_out(row, secret)

    @router.get("/subscriptions", response_model=list[SubscriptionOut], tags=["subscriptions"])
    def list_subscriptions(principal: Principal = writer) -> list[dict[str, Any]]:
        """This key's subscriptions (never another key's)."""
        with sessions() as session:
            rows = session.scalars(
                select(SubscriptionRow)
                .where(SubscriptionRow.api_key_id == owner(principal))
                .order_by(SubscriptionRow.created_at, SubscriptionRow.id)
            )
            return [_subscription_out(r) for r in rows]

    @router.get("/subscriptions/{sid}", response_model=SubscriptionOut, tags=["subscriptions"])
    def get_subscription(sid: str, principal: Principal = writer) -> dict[str, Any]:
        with sessions() as session:
            return _subscription_out(own(session, principal, sid))

    @router.patch("/subscriptions/{sid}", response_model=SubscriptionOut, tags=["subscriptions"])
    def update_subscription(
        sid: str, body: SubscriptionPatch, principal: Principal = writer
    ) -> dict[str, Any]:
        """Change filters, address, name, or pause (``active: false``) a subscription."""
        with sessions.begin() as session:
            row = own(session, principal, sid)
            changes = body.model_dump(exclude_unset=True)
            if "url" in changes:
                check_url(row.channel, changes["url"])
            for name, value in changes.items():
                if value is not None:
                    setattr(row, name, value)
            row.updated_at = datetime.now(UTC)
            return _subscription_out(row)

    @router.delete("/subscriptions/{sid}", status_code=204, tags=["subscriptions"])
    def delete_subscription(sid: str, principal: Principal = writer) -> Response:
        """Delete it; deliveries still queued for it end as dead, with that reason."""
        with sessions.begin() as session:
            session.delete(own(session, principal, sid))
        return Response(status_code=204)

    @router.get("/subscriptions/{sid}/deliveries", response_model=Page, tags=["subscriptions"])
    def subscription_deliveries(
        sid: str,
        principal: Principal = writer,
        state: DeliveryStatus = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Where each alert sent to this subscription stands: attempts, last error, delivered."""
        with sessions() as session:
            own(session, principal, sid)
        return deliveries_page(DeliveryRow.subscription_id == sid, state, limit, cursor)

    @router.get("/deliveries", response_model=Page, tags=["subscriptions"])
    def all_deliveries(
        principal: Principal = Depends(require("admin")),
        target: Literal["webhook", "grafana", "alertmanager"] | None = None,
        state: DeliveryStatus = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Every delivery, to every destination (admin)."""
        where = DeliveryRow.target == target if target else DeliveryRow.id.is_not(None)
        return deliveries_page(where, state, limit, cursor)

    def deliveries_page(
        where: Any, state: str | None, limit: int, cursor: str | None
    ) -> dict[str, Any]:
        query = select(DeliveryRow).where(where)
        if state:
            query = query.where(DeliveryRow.status == state)
        order = (DeliveryRow.created_at, DeliveryRow.id)
        return keyset_page(sessions, query, order, True, cursor, limit, _delivery_out)

    async def event_stream(
        request: Request, after: int, wanted: AlertFilter, limit: int | None
    ) -> AsyncIterator[str]:
        counted.sse_clients.inc()
        try:
            async for chunk in _event_stream(request, after, wanted, limit):
                yield chunk
        finally:  # the client went, or the stream ended
            counted.sse_clients.dec()

    async def _event_stream(
        request: Request, after: int, wanted: AlertFilter, limit: int | None
    ) -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        sent, last, quiet = 0, after, 0.0
        while not await request.is_disconnected():
            rows = await asyncio.to_thread(_events_after, last)
            for row in rows:
                last = row.seq
                if row.suppressed is None and wanted.matches({"ticker": row.ticker, "rule": row.rule,
                                   "severity": row.severity}, sector_of):  # fmt: skip
                    yield sse_event(row)
                    counted.sse_events.inc()
                    sent += 1
                    if limit is not None and sent >= limit:
                        return
            if rows:
                quiet = 0.0
                continue
            await asyncio.sleep(poll_s)
            quiet += poll_s
            if quiet >= heartbeat_s:  # proxies close connections that stay silent
                quiet = 0.0
                yield ": keep-alive\n\n"

    def _events_after(seq: int) -> list[AlertEventRow]:
        with sessions() as session:
            rows = store.events_after(session, seq, 500)
            session.expunge_all()
            return rows

    def start_after(last_event_id: str | None, since: int | None) -> int:
        if last_event_id is not None:
            try:
                return int(last_event_id)
            except ValueError:
                raise HTTPException(
                    422, "Last-Event-ID must be an event id this API sent"
                ) from None
        if since is not None:
            return since
        with sessions() as session:
            return store.last_event_seq(session)

    sse_headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

    @router.get("/alerts/stream", tags=["alerts"], response_class=StreamingResponse)
    def alert_stream(
        request: Request,
        principal: Principal = reader,
        tickers: Annotated[list[str] | None, Query()] = None,
        sectors: Annotated[list[str] | None, Query()] = None,
        rules: Annotated[list[str] | None, Query()] = None,
        min_severity: Severity = "info",
        since: Annotated[int | None, Query(ge=0, description="stream events after this id")] = None,
        recent: Annotated[
            int | None, Query(ge=1, le=1000, description="begin with the last N events")
        ] = None,
        limit: Annotated[int | None, Query(ge=1, description="close after this many")] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Server-sent events of live alerts as they fire and resolve, filtered here; a client that
        reconnects with ``Last-Event-ID`` gets what it missed."""
        wanted = AlertFilter(
            tuple(_upper(tickers or [])), tuple(sectors or []), tuple(rules or []), min_severity
        )
        after = start_after(last_event_id, since)
        if recent is not None and last_event_id is None and since is None:
            after = max(0, after - recent)
        return StreamingResponse(
            event_stream(request, after, wanted, limit), media_type="text/event-stream",
            headers=sse_headers,
        )  # fmt: skip

    @router.get(
        "/subscriptions/{sid}/events", tags=["subscriptions"], response_class=StreamingResponse
    )
    def subscription_stream(
        sid: str,
        request: Request,
        principal: Principal = writer,
        since: Annotated[int | None, Query(ge=0)] = None,
        limit: Annotated[int | None, Query(ge=1)] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Server-sent events of the alerts this subscription's filters match."""
        with sessions() as session:
            row = own(session, principal, sid)
            wanted = store.filter_of(row)
        after = start_after(last_event_id, since)
        return StreamingResponse(
            event_stream(request, after, wanted, limit), media_type="text/event-stream",
            headers=sse_headers,
        )  # fmt: skip

    @router.get("/alerts", response_model=Page, tags=["alerts"])
    def alert_history(
        principal: Principal = reader,
        ticker: str | None = None,
        rule: str | None = None,
        severity: Severity | None = None,
        state: Literal["firing", "resolved"] | None = None,
        since: AwareDatetime | None = None,
        until: AwareDatetime | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Live alerts, newest first, filtered; ``next_cursor`` fetches the next page."""
        query = select(AlertRow).where(AlertRow.run_id == "live")
        if ticker:
            query = query.where(AlertRow.ticker == ticker.upper())
        if rule:
            query = query.where(AlertRow.rule == rule)
        if severity:
            query = query.where(AlertRow.severity == severity)
        if state:
            query = query.where(AlertRow.state == state)
        if since:
            query = query.where(AlertRow.fired_at >= since)
        if until:
            query = query.where(AlertRow.fired_at < until)
        order = (AlertRow.fired_at, AlertRow.id)
        return keyset_page(sessions, query, order, True, cursor, limit, _alert_out)

    @router.get("/alerts/live", response_class=HTMLResponse, tags=["alerts"])
    def live_page() -> HTMLResponse:
        """A page of live alerts with filters, updated over SSE (pass ``?access_token=KEY`` when the
        API needs a key)."""
        return HTMLResponse(LIVE_PAGE.read_text(encoding="utf-8"))

    @router.get("/alerts/{alert_id}", tags=["alerts"])
    def get_alert(alert_id: str, principal: Principal = reader) -> dict[str, Any]:
        """One alert: measured values against thresholds, window, explanation, and its evidence:
        the documents that weighed most, each with its fused score and its members' votes."""
        with sessions() as session:
            row = session.get(AlertRow, alert_id)
            if row is None:
                raise HTTPException(404, f"no alert {alert_id!r}")
            return _alert_out(row) | {"documents": evidence_documents(session, row)}

    @router.get("/feeds", tags=["ingest"])
    def feed_health(principal: Principal = reader) -> list[dict[str, Any]]:
        """Every polled feed's health: status (ok, failing, silent), last success, last new item,
        consecutive errors, items per minute. Failing and silent feeds first."""
        with sessions() as session:
            rows = health_worst_first(session)
        return [
            {
                "source": r.source, "kind": r.kind, "url": r.url, "status": r.status,
                "last_poll_at": r.last_poll_at, "last_success_at": r.last_success_at,
                "last_item_at": r.last_item_at, "consecutive_errors": r.consecutive_errors,
                "last_error": r.last_error, "items_total": r.items_total,
                "items_per_minute": round(r.items_per_minute, 3),
                "silent_after_s": r.silent_after_s,
            }
            for r in rows
        ]  # fmt: skip

    @router.get("/tickers/{ticker}/scores", response_model=Page, tags=["alerts"])
    def ticker_scores(
        ticker: str,
        principal: Principal = reader,
        since: AwareDatetime | None = None,
        until: AwareDatetime | None = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 500,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """A ticker's scored documents over time with the trailing window's sentiment, oldest
        first."""
        t = TickerSentimentRow
        query = select(t).where(t.run_id == "live", t.ticker == ticker.upper())
        if since:
            query = query.where(t.published_at >= since)
        if until:
            query = query.where(t.published_at < until)
        order = (t.published_at, t.document_id)
        return keyset_page(sessions, query, order, False, cursor, limit, _sentiment_out)

    return router
