"""The production server's worker: uvicorn under gunicorn, with the limits uvicorn lacks.

- A header-read timeout (SERVER_HEADER_TIMEOUT, 10 s): uvicorn keeps a connection that never
  sends, or trickles, its request headers for ever, and enough of them exhaust the file
  limit. A connection must now send a request's headers within that time of opening, or of
  starting the request; a keep-alive connection idles under gunicorn's `keepalive` instead.
- A concurrency limit per worker (SERVER_MAX_CONNECTIONS, 1000): above it uvicorn answers 503.
- A graceful shutdown that outlasts the deadline: on a reload or stop, streams in flight
  run to their end (every turn is over by OPENAI_DEADLINE), then any turn still running is
  cancelled and settles what it delivered, before gunicorn's graceful_timeout (which
  gunicorn.conf.py keeps 20 s above uvicorn's) would kill the worker. uvicorn stops telling
  gunicorn it is alive once it starts shutting down, so gunicorn killed a draining worker
  after `timeout` (60 s): the worker's heartbeat now beats from its event loop until it exits.
"""

import asyncio
import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

HEADER_TIMEOUT = float(os.environ.get("SERVER_HEADER_TIMEOUT", "10"))
MAX_CONNECTIONS = int(os.environ.get("SERVER_MAX_CONNECTIONS", "1000"))
SETTLE_SECONDS = 20  # after uvicorn cancels what still runs, before gunicorn kills


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a deadline for each request's headers."""

    _header_timer = None

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


class Worker(UvicornWorker):
    async def _serve(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await super()._serve()
        finally:
            heartbeat.cancel()

    async def _heartbeat(self) -> None:
        """Tell gunicorn this worker is alive, as uvicorn does while it serves, but through
        the drain after a reload or stop too. From the event loop: a stuck loop still misses
        its beats and is killed."""
        while True:
            self.notify()
            await asyncio.sleep(self.timeout)  # gunicorn's: half the configured timeout

    @property
    def CONFIG_KWARGS(self) -> dict:  # noqa: N802 (uvicorn_worker's name)
        return {
            "http": GuardedHttpToolsProtocol,
            "limit_concurrency": MAX_CONNECTIONS,
            "timeout_graceful_shutdown": max(self.cfg.graceful_timeout - SETTLE_SECONDS, 1),
        }
