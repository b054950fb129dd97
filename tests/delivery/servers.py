"""Local HTTP servers the delivery tests talk to: a webhook receiver that can fail or go down, a
stand-in for Grafana that checks every request against Grafana's documented annotations API, and
a real Prometheus Alertmanager (the Debian package), started and stopped here."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class _Server:
    """A threaded HTTP server on a fixed port that can be taken down and brought back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, request: Request) -> tuple[int, Any]:
        raise NotImplementedError

    def up(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(
                    self.command, self.path, dict(self.headers.items()),
                    self.rfile.read(length), time.time(),
                )  # fmt: skip
                with owner.lock:
                    owner.requests.append(request)
                    code, payload = owner.answer(request)
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        """Stop answering: connections are refused until ``up()``."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.down()


class Receiver(_Server):
    """A webhook receiver: records every request and answers 500 to the first ``fail_first``."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        super().__init__()

    def answer(self, request: Request) -> tuple[int, Any]:
        if len(self.requests) <= self.fail_first:
            return 500, {"error": "not now"}
        return 200, {"ok": True}

    def accepted(self) -> list[Request]:
        """Requests answered 200 (every one after the failures)."""
        with self.lock:
            return self.requests[self.fail_first :]


ANNOTATION_FIELDS = {"dashboardUID", "dashboardId", "panelId", "time", "timeEnd", "tags", "text"}


@dataclass
class FakeGrafana(_Server):
    """Grafana's HTTP API for annotations, as documented (POST /api/annotations, epoch-millisecond
    ``time``/``timeEnd``, string ``tags``, a non-empty ``text``, a bearer token): every request is
    checked and any mismatch is recorded in ``violations`` and answered 400."""

    token: str = "glsa_test"
    violations: list[str] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def answer(self, request: Request) -> tuple[int, Any]:
        problems = self.check(request)
        if problems:
            self.violations.extend(problems)
            return 400, {"message": "; ".join(problems)}
        body = request.json()
        self.annotations.append(body)
        return 200, {"message": "Annotation added", "id": len(self.annotations)}

    def check(self, request: Request) -> list[str]:
        if (request.method, request.path) != ("POST", "/api/annotations"):
            return [f"unexpected {request.method} {request.path}"]
        problems = []
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            problems.append("missing or wrong bearer token")
        if "application/json" not in request.headers.get("Content-Type", ""):
            problems.append("body is not declared as JSON")
        try:
            body = request.json()
        except ValueError:
            return [*problems, "body is not JSON"]
        unknown = set(body) - ANNOTATION_FIELDS
        if unknown:
            problems.append(f"unknown fields {sorted(unknown)}")
        for name in ("time", "timeEnd"):
            value = body.get(name)
            if not isinstance(value, int) or value < 10**12:  # epoch milliseconds
                problems.append(f"{name} must be epoch milliseconds, got {value!r}")
        if isinstance(body.get("time"), int) and isinstance(body.get("timeEnd"), int):
            if body["timeEnd"] < body["time"]:
                problems.append("timeEnd before time")
        tags = body.get("tags")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            problems.append("tags must be a list of strings")
        if not isinstance(body.get("text"), str) or not body["text"]:
            problems.append("text must be a non-empty string")
        return problems


class Alertmanager:
    """A real Prometheus Alertmanager on a free port, with a null receiver."""

    BINARY = "prometheus-alertmanager"

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which(self.BINARY)
        if binary is None:
            raise RuntimeError(
                f"{self.BINARY} is not installed (apt-get install -y prometheus-alertmanager; "
                "`make test` installs it where it can)"
            )
        self.port = free_port()
        config = workdir / "alertmanager.yml"
        config.write_text(
            "route:\n  receiver: 'null'\n  group_wait: 0s\nreceivers:\n  - name: 'null'\n",
            encoding="utf-8",
        )
        self.log = (workdir / "alertmanager.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=", f"--storage.path={workdir / 'data'}",
            ],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/healthy", timeout=1).is_success:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.close()
        raise RuntimeError(f"Alertmanager did not start; see {workdir / 'alertmanager.log'}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alerts(self, **params: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v2/alerts", params=params, timeout=5)
        answer.raise_for_status()
        return list(answer.json())

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free port in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
