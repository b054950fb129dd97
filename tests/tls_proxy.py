"""A TLS-terminating TCP proxy in front of a plaintext broker, for the Kafka security tests.

The embedded broker (Tansu 0.6) cannot serve TLS itself, so the tests put this in front of a real
one, as a load balancer terminating TLS would be: the broker advertises the proxy's address, so
every connection a client makes (bootstrap, then each broker the metadata names) goes through it.
Nothing of the Kafka protocol is looked at or changed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from types import TracebackType

from riskwire.broker import free_port


class TlsProxy:
    def __init__(
        self, target: tuple[str, int], context: ssl.SSLContext, host: str = "127.0.0.1"
    ) -> None:
        self.target = target
        self.context = context
        self.host = host
        self.port = free_port(host)  # known before the broker starts, which advertises it
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> TlsProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        self._server = future.result(10)
        return self

    async def _serve(self) -> asyncio.Server:
        return await asyncio.start_server(
            self._handle, self.host, self.port, ssl=self.context, ssl_handshake_timeout=10
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # cancelled on stop
        task.add_done_callback(self._tasks.discard)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
                writer.close()

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def __enter__(self) -> TlsProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
