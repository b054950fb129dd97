"""``riskwire api``: the HTTP API (FastAPI; OpenAPI docs at ``/docs``).

It serves
- replay jobs: create, list, status (with progress and ETA), cancel, resume, results and the report's
  plot. Jobs run in a worker thread of the API process, one at a time, through the same
  ``ReplayRunner`` as the CLI; their state lives in the database, so the CLI sees and can cancel
  them. A job only reads documents from the database (an archive is a server path: backfills stay
  on the CLI);
- alerts (``riskwire.delivery.api``): subscriptions, server-sent events, delivery state, history;
  and the outbox dispatcher runs in this process unless ``RISKWIRE_DELIVER_IN_API=false``;
- dead letters (``riskwire.deadletters_api``, admin scope): list, summary, one whole, redrive.

Authentication: API keys (``riskwire keys create``) with scopes, sent as ``Authorization: Bearer``;
``RISKWIRE_API_TOKEN`` is an admin token. With no token set, requests without a key may read
alerts and run replays (local use only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Response, status
from fastapi.responses import FileResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.push import push_router
from models.ensemble import Ensemble
from riskwire.deadletters_api import deadletters_router
from riskwire.delivery.api import delivery_router, make_auth
from riskwire.delivery.dispatcher import Dispatcher, start_in_thread
from riskwire.exceptions import RiskwireError
from riskwire.labels_api import labels_router
from riskwire.replay import (
    CANCELLING,
    DONE,
    RUNNING,
    ReplayRunner,
    ReplaySpec,
    create_job,
    describe_job,
    request_cancel,
)
from riskwire.service_metrics import ServiceMetrics
from riskwire.settings import Settings
from storage import make_engine, session_factory
from storage.tables import ReplayRunRow
from streams.pipeline.rules import parse_rules

log = logging.getLogger(__name__)


class ReplayRequest(BaseModel):
    """A replay of stored documents; ``rules`` has the shape of a rules file (default: live's)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: AwareDatetime = Field(alias="from")
    end: AwareDatetime = Field(alias="to")
    tickers: list[str] = Field(default_factory=list, max_length=1000)
    model_version: str | None = None
    rules: dict[str, Any] | None = None
    source: Literal["db"] = "db"
    baseline: str | None = "live"
    rescore: bool = False


class Job(BaseModel):
    id: str
    run_id: str
    kind: str
    status: str
    source: str
    period: list[str | None]
    tickers: list[str]
    model_version: str | None
    baseline: str | None
    processed: int
    total: int
    rescored: int
    cached: int
    rejected: int
    alerts: int
    eta_s: float | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RequestMetrics:
    """Count each request by method, route template and status, and time it to the response's
    start (``riskwire_http_requests_total``, ``riskwire_http_request_seconds``)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, code = time.perf_counter(), 500  # an exception is the server error it becomes

        def route() -> str:  # the router puts the matched route in the scope
            return str(getattr(scope.get("route"), "path", "unmatched"))

        async def counted(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
                self.metrics.request_seconds.labels(route()).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.requests.labels(scope["method"], route(), str(code)).inc()


def create_api(
    settings: Settings, ensemble_factory: Callable[[], Ensemble] | None = None
) -> FastAPI:
    engine = make_engine(settings.resolved_database_url)
    sessions = session_factory(engine)
    runner = ReplayRunner(settings, sessions, ensemble_factory)
    executor = ThreadPoolExecutor(1, "replay-job")
    metrics = ServiceMetrics(sessions)

    submitted: dict[str, Future[str]] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        dispatcher = None
        if settings.deliver_in_api:
            dispatcher = Dispatcher(settings, sessions, metrics=metrics)
            thread, stop = start_in_thread(dispatcher)
        yield
        if dispatcher is not None:
            stop.set()
            thread.join(timeout=30)
            dispatcher.close()
        close_pushes()
        # shutting down: queued jobs are dropped (still pending, resumable), a running one stops
        # after its current page as cancelled, with its checkpoint
        executor.shutdown(wait=False, cancel_futures=True)
        for job_id, future in submitted.items():
            if not future.done():
                request_cancel(sessions, job_id)
        executor.shutdown(wait=True)
        engine.dispose()

    app = FastAPI(
        title="riskwire",
        summary="Financial sentiment streams, risk alerts and historical replays.",
        lifespan=lifespan,
    )
    app.state.executor = executor
    # a plain ASGI middleware: Starlette's BaseHTTPMiddleware wraps every response, and some of
    # its versions hid a client's disconnect from streaming endpoints (an event stream would run
    # on for a client long gone; tests/delivery/test_api.py checks that it ends)
    app.add_middleware(RequestMetrics, metrics=metrics)

    def job_row(job_id: str) -> ReplayRunRow:
        with sessions() as session:
            job = session.get(ReplayRunRow, job_id)
            if job is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"no replay job {job_id!r}")
            session.expunge(job)
            return job

    def start(job_id: str, resume: bool = False) -> None:
        submitted[job_id] = executor.submit(runner.run, job_id, None, resume)

    require = make_auth(settings, sessions)
    auth = [Depends(require("replays"))]
    app.include_router(delivery_router(settings, sessions, require, metrics=metrics))
    app.include_router(deadletters_router(settings, sessions, require))
    app.include_router(labels_router(sessions, require))
    pushes, close_pushes = push_router(settings, require)
    app.include_router(pushes)

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["meta"], response_class=PlainTextResponse)
    def prometheus_metrics() -> Response:
        """Prometheus metrics: deliveries, feeds and replay jobs (``riskwire/service_metrics.py``).
        Unauthenticated, like ``/healthz``: counts and feed names only, no alert or document."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/replays", status_code=status.HTTP_202_ACCEPTED, response_model=Job, dependencies=auth,
        tags=["replays"],
    )  # fmt: skip
    def create_replay(request: ReplayRequest, response: Response) -> dict[str, Any]:
        """Queue a replay of stored documents; poll ``GET /replays/{id}`` for progress."""
        try:
            rules = parse_rules(request.rules, "rules") if request.rules is not None else None
            spec = ReplaySpec(
                start=request.start, end=request.end,
                tickers=tuple(t.strip().upper() for t in request.tickers if t.strip()),
                model_version=request.model_version, rules=rules, source="db",
                baseline=request.baseline, rescore=request.rescore,
            )  # fmt: skip
            job_id = create_job(sessions, settings, spec)
        except RiskwireError as exc:
            raise HTTPException(422, str(exc)) from None
        start(job_id)
        response.headers["Location"] = f"/replays/{job_id}"
        return describe_job(job_row(job_id))

    @app.get("/replays", response_model=list[Job], dependencies=auth, tags=["replays"])
    def list_replays(
        state: Annotated[str | None, Query(alias="status")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[dict[str, Any]]:
        """Jobs, newest first."""
        query = select(ReplayRunRow).order_by(ReplayRunRow.created_at.desc(), ReplayRunRow.id)
        if state:
            query = query.where(ReplayRunRow.status == state)
        with sessions() as session:
            return [describe_job(j) for j in session.scalars(query.limit(limit).offset(offset))]

    @app.get("/replays/{job_id}", response_model=Job, dependencies=auth, tags=["replays"])
    def get_replay(job_id: str) -> dict[str, Any]:
        """A job's parameters, progress and estimated time left."""
        return describe_job(job_row(job_id))

    @app.post(
        "/replays/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=Job,
        dependencies=auth, tags=["replays"],
    )  # fmt: skip
    def cancel_replay(job_id: str) -> dict[str, Any]:
        """Stop a job after its current page; it keeps its checkpoint and can be resumed."""
        job_row(job_id)
        request_cancel(sessions, job_id)
        return describe_job(job_row(job_id))

    @app.post(
        "/replays/{job_id}/resume", status_code=status.HTTP_202_ACCEPTED, response_model=Job,
        dependencies=auth, tags=["replays"],
    )  # fmt: skip
    def resume_replay(job_id: str) -> dict[str, Any]:
        """Continue a cancelled or failed job, or one left pending by a restart, from its last
        checkpoint."""
        job = job_row(job_id)
        if job.status == DONE:
            raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} is already done")
        if job.status in (RUNNING, CANCELLING):  # after a crash: the CLI's --force
            raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} is {job.status}")
        if job_id in submitted and not submitted[job_id].done():
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"job {job_id} is {job.status} but its earlier run is still queued here; resume it "
                "once that run has left the queue",
            )
        start(job_id, resume=True)
        return describe_job(job_row(job_id))

    @app.get("/replays/{job_id}/results", dependencies=auth, tags=["replays"])
    def replay_results(job_id: str) -> dict[str, Any]:
        """The report: alerts against the baseline, label agreement, per-ticker timeline."""
        job = job_row(job_id)
        if job.status != DONE or job.report is None:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"job {job_id} is {job.status}; results come when done"
            )
        return job.report

    @app.get(
        "/replays/{job_id}/report.png", response_class=FileResponse, dependencies=auth,
        tags=["replays"],
    )  # fmt: skip
    def replay_plot(job_id: str) -> FileResponse:
        job = job_row(job_id)
        plot = Path((job.report or {}).get("plot") or "")
        if job.status != DONE or not plot.is_file():
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no plot")
        return FileResponse(plot, media_type="image/png")

    return app
