"""Small real servers on 127.0.0.1 for the end-to-end tests: an OpenAI-compatible model,
a PostHog capture sink, PostHog's query API, and a TCP proxy that can cut the app off from
PostgreSQL."""

import contextlib
import gzip
import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from chat import demo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # hundreds of streams connect at once in the load tests


class _Server:
    def __init__(self, handler_class, port: int = 0):
        self.port = port or free_port()
        self._handler_class = handler_class
        self._server = None
        self.start()

    def start(self):
        handler = type("Handler", (self._handler_class,), {"owner": self})
        self._server = _ThreadingServer(("127.0.0.1", self.port), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self):
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Small SSE frames must not wait for Nagle's algorithm (40 ms stalls otherwise).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(
        self,
        payload: bytes,
        status: int = 200,
        content_type: str = "application/json",
        **headers: str,
    ) -> None:
        """A whole answer with its length: JSON unless said otherwise."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(payload)


def endless_frames(word: str = "more "):
    """A provider that never stops: chunks of `word` for ever, past any max_tokens."""
    chunk = {
        "id": "chatcmpl-endless",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "endless",
        "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
    }
    frame = f"data: {json.dumps(chunk)}\n\n".encode()
    while True:
        yield frame


class _ModelHandler(_Quiet):
    def do_GET(self):
        owner: FakeModel = self.owner
        with owner.lock:
            payload = json.dumps(
                {"requests": owner.requests, "most_at_once": owner.most_at_once}
            ).encode()
        self._answer(payload)

    def do_POST(self):
        owner: FakeModel = self.owner
        body = self._body()
        owner.requests += 1
        mode = owner.mode
        if mode == "slow":
            time.sleep(owner.slow_seconds)
        if mode in ("429", "500"):
            payload = json.dumps({"error": {"message": f"fake {mode}", "type": "fake"}}).encode()
            self._answer(payload, int(mode), retry_after_ms="10")
            return
        if mode == "endless":
            self.send_response(200)
            with contextlib.suppress(OSError):  # it streams until the app hangs up
                self._stream(endless_frames(), owner.endless_delay)
            return
        if mode == "garbage":
            self._answer(b"<html>this is not an OpenAI answer")
            return
        # The offline demo model speaks the wire format, streamed or not.
        reply = demo.reply(body, self.path, owner.pieces)
        self.send_response(reply.status)
        if reply.frames is not None:
            with owner.lock:
                owner.streaming += 1
                owner.most_at_once = max(owner.most_at_once, owner.streaming)
            try:
                self._stream(reply.frames, owner.stream_seconds / max(len(reply.frames) - 2, 1))
            finally:
                with owner.lock:
                    owner.streaming -= 1
        else:
            payload = json.dumps(reply.json).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    def _stream(self, frames, delay: float):
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        last = len(frames) - 1 if isinstance(frames, list) else -1
        for index, frame in enumerate(frames):
            if delay and 0 < index != last:
                time.sleep(delay)
            self.wfile.write(f"{len(frame):x}\r\n".encode() + frame + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


class FakeModel(_Server):
    """An OpenAI-compatible chat-completions server. mode: ok, 429, 500, slow, garbage, or
    endless (a stream that never ends, a chunk every `endless_delay` s).

    A stream sends its answer in `pieces` chunks (or a word a chunk) evenly paced over
    `stream_seconds`; `most_at_once` is the most streams it served at the same time.
    """

    def __init__(self, stream_seconds: float = 0.0, pieces: int | None = None):
        self.mode = "ok"
        self.slow_seconds = 3.0
        self.endless_delay = 0.01
        self.stream_seconds = stream_seconds
        self.pieces = pieces
        self.requests = 0
        self.streaming = 0
        self.most_at_once = 0
        self.lock = threading.Lock()
        super().__init__(_ModelHandler)


class _SinkHandler(_Quiet):
    def do_GET(self):  # GET /stats: what it has received
        owner: CaptureSink = self.owner
        self._answer(json.dumps({"generations": len(owner.generations())}).encode())

    def do_POST(self):
        owner: CaptureSink = self.owner
        body = self._body()
        if owner.mode == "hang":
            time.sleep(owner.hang_seconds)
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        try:
            batch = json.loads(body).get("batch", [])
        except ValueError:
            batch = []
        with owner.lock:
            owner.events.extend(batch)
        self._answer(b'{"status": 1}')


class CaptureSink(_Server):
    """Receives PostHog's /batch/ posts. mode: ok or hang; stop() refuses connections."""

    def __init__(self):
        self.mode = "ok"
        self.hang_seconds = 20.0
        self.events: list[dict] = []
        self.lock = threading.Lock()
        super().__init__(_SinkHandler)

    def generations(self) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e.get("event") == "$ai_generation"]


QUERY_COLUMNS = [
    "day",
    "model",
    "is_error",
    "generations",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "cost_usd",
]


class _QueryHandler(_Quiet):
    def setup(self):
        super().setup()
        with self.owner.lock:
            self.owner.connections += 1

    def do_POST(self):
        owner: FakePostHogQuery = self.owner
        query = json.loads(self._body())["query"]
        with owner.lock:
            owner.queries.append(query)
        mode = owner.mode
        if mode == "slow":
            time.sleep(owner.delay)
        payload = json.dumps(
            {
                "columns": QUERY_COLUMNS,
                "results": owner.results,
                "is_cached": False,
                "hogql": query["query"],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if mode != "drip":
            self.wfile.write(payload)
            return
        for byte in payload:  # a byte at a time: each read well within any read timeout
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:  # the client gave up
                return
            time.sleep(owner.delay)


class FakePostHogQuery(_Server):
    """PostHog's query API (POST /api/projects/<id>/query/). mode: ok, slow (answers after
    `delay` s) or drip (a byte every `delay` s). `results` are the rows it answers,
    `queries` what it was asked (the tests check each with hogql-parser), over
    `connections` TCP connections."""

    def __init__(self):
        self.mode = "ok"
        self.connections = 0
        self.delay = 1.0
        self.results: list[list] = []
        self.queries: list[dict] = []
        self.lock = threading.Lock()
        super().__init__(_QueryHandler)


class _WebhookHandler(_Quiet):
    def do_POST(self):
        owner: WebhookReceiver = self.owner
        body = self._body()
        with owner.lock:
            owner.received.append((dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


class WebhookReceiver(_Server):
    """Records every POST (headers, raw body) and answers 200: an alert webhook's receiver."""

    def __init__(self):
        self.received: list[tuple[dict, bytes]] = []
        self.lock = threading.Lock()
        super().__init__(_WebhookHandler)


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; cut() drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = None
        self.resume()

    def resume(self):
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener.settimeout(0.2)
        self._running = True
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def cut(self):
        with self._lock:
            self._running = False
        self._listener.close()
        # The kernel keeps the port listening while the acceptor still waits in poll() on
        # the closed socket: wait for it, or resume() could not bind the port again.
        self._acceptor.join(timeout=2)
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self):
        listener = self._listener
        while self._running:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if not self._running:  # cut meanwhile: no connection may outlive the cut
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket):
        pair = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select(list(pair), [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()


if __name__ == "__main__":
    # A server in a process of its own, for the benchmarks, so it shares no GIL with what
    # they measure: `model <stream seconds> <pieces>`, `sink` or `posthog`. Prints its URL,
    # answers GET /stats (model, sink) and stops when its standard input closes.
    import os
    import sys

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatusage.settings")
    os.environ.setdefault("SECRET_KEY", "fake-server")
    import django

    django.setup()
    kind = sys.argv[1]
    if kind == "model":
        server = FakeModel(stream_seconds=float(sys.argv[2]), pieces=int(sys.argv[3]))
    elif kind == "sink":
        server = CaptureSink()
    else:
        server = FakePostHogQuery()
        server.results = json.loads(sys.stdin.readline())
    print(server.url, flush=True)
    sys.stdin.read()
    server.stop()


class _StripeHandler(_Quiet):
    def do_GET(self):  # Checkout's payment page, as far as a browser test needs it
        page = b"<!doctype html><title>Stripe Checkout</title><h1>Pay with Stripe</h1>"
        self._answer(page, content_type="text/html")

    def do_POST(self):
        from urllib.parse import parse_qs

        owner: FakeStripe = self.owner
        form = {k: v[0] for k, v in parse_qs(self._body().decode()).items()}
        path = self.path.split("?")[0]
        with owner.lock:
            owner.requests.append((path, dict(self.headers), form))
            number = len(owner.requests)
        if path == "/v1/customers":
            body = {"id": f"cus_e2e_{form['metadata[chatusage_user_id]']}", "object": "customer"}
        elif path == "/v1/billing/meter_events":
            if owner.mode == "fail":
                return self._answer(b'{"error": {"type": "api_error"}}', status=500)
            if owner.mode == "hang":
                with owner.lock:
                    owner.hanging += 1
                owner.release.wait(timeout=120)
            with owner.lock:
                owner.meter_events.append(form)
            body = {"object": "billing.meter_event", "identifier": form["identifier"]}
        elif path == "/v1/checkout/sessions":
            session = f"cs_e2e_{number}"
            with owner.lock:
                owner.sessions[session] = form
            body = {
                "id": session,
                "object": "checkout.session",
                "url": f"{owner.url}/pay/{session}",
            }
        else:
            return self._answer(b'{"error": {"type": "invalid_request_error"}}', status=404)
        self._answer(json.dumps(body).encode())


class FakeStripe(_Server):
    """Stripe's API on the loopback, as much of it as chatusage calls: customers, meter
    events (accepted, failing with 500, or hanging until release is set), Checkout
    Sessions. Records every request (path, headers, form)."""

    def __init__(self):
        self.requests: list[tuple[str, dict, dict]] = []
        self.meter_events: list[dict] = []
        self.sessions: dict[str, dict] = {}
        self.mode = "ok"
        self.hanging = 0
        self.release = threading.Event()
        self.lock = threading.Lock()
        super().__init__(_StripeHandler)
