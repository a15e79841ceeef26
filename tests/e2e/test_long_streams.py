"""Hundreds of long streamed answers at once under the production command (ASGI), on
PostgreSQL, against a fake model that streams each answer in 30 chunks over three seconds."""

import json
import statistics
import threading
import time
from collections import Counter

import pytest
import requests

from chatusage.views import HEALTH_APPLICATION_NAME
from tests.e2e.harness.client import clone, wait_for
from tests.e2e.harness.launch import fake_model_env, gunicorn_app, postgres_answers
from tests.e2e.harness.servers import CaptureSink, FakeModel

pytestmark = pytest.mark.e2e

STREAMS = 256
USERS = 16
STREAM_SECONDS = 3.0
WORKERS = 2
POOL_MAX = 10  # DB_POOL_MAX_SIZE per worker
OLD_THREADS = WORKERS * 8  # what the thread-based server could hold at once
HEALTH_TIMEOUT = 120  # as long as the streams themselves may take
K = 5  # the budget user's budget fits exactly K calls ($1.00 worst case each)


@pytest.fixture(scope="module")
def streams_app(tmp_path_factory):
    if not postgres_answers():
        pytest.skip("PostgreSQL is not answering on 127.0.0.1:5432")
    model, sink = FakeModel(stream_seconds=STREAM_SECONDS, pieces=30), CaptureSink()
    env = fake_model_env(
        model.url,
        POSTHOG_API_KEY="phc_e2e",
        POSTHOG_HOST=sink.url,
        DB_POOL_MAX_SIZE=str(POOL_MAX),
    )
    users = [(f"s{i}", None) for i in range(USERS)] + [("kbudget", f"{K}.00")]
    try:
        with gunicorn_app(
            tmp_path_factory.mktemp("asgi"), env, users, workers=WORKERS, proxy=False
        ) as app:
            app.model, app.sink = model, sink
            yield app
    finally:
        model.stop()
        sink.stop()


def stream_once(session, url, prompt) -> dict:
    """One streamed message read to its end: what ended it, and when the words came."""
    started = time.monotonic()
    result = {"end": None, "first_word": None}
    response = session.post(
        f"{url}/api/chat/", json={"prompt": prompt, "stream": True}, stream=True, timeout=120
    )
    result["status"] = response.status_code
    if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
        result["code"] = response.json().get("code")
        return result
    event = None
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            event = line[7:]
            if event == "delta" and result["first_word"] is None:
                result["first_word"] = time.monotonic() - started
        elif line.startswith("data: ") and event in ("start", "done", "error"):
            payload = json.loads(line[6:])
            if event == "start":
                result["generation_id"] = payload["generation_id"]
            else:
                result["end"] = event
                result["code"] = payload.get("code")
    result["seconds"] = time.monotonic() - started
    return result


class Watch(threading.Thread):
    """Polls /healthz and the app's pooled PostgreSQL connections while the load runs.

    It asserts that every health check answered 200, not how fast: that depends on the
    machine and is a benchmark figure (bench/streams.py). The timeout only keeps a hung
    server from hanging the test.
    """

    def __init__(self, app):
        super().__init__(daemon=True)
        self.app = app
        self.stop = threading.Event()
        self.health: list[tuple[int, float]] = []
        self.most_connections = 0

    def run(self):
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                status = requests.get(f"{self.app.url}/healthz", timeout=HEALTH_TIMEOUT).status_code
            except requests.RequestException:
                status = 0
            self.health.append((status, time.monotonic() - started))
            [(count,)] = self.app.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid() AND application_name <> %s",
                self.app.dbname,
                HEALTH_APPLICATION_NAME,
            )
            self.most_connections = max(self.most_connections, count)
            self.stop.wait(0.25)


def run_at_once(sessions, url, prompts) -> list[dict]:
    barrier = threading.Barrier(len(prompts))
    results: list[dict] = []
    lock = threading.Lock()

    def go(session, prompt):
        barrier.wait(timeout=60)
        outcome = stream_once(session, url, prompt)
        with lock:
            results.append(outcome)

    threads = [
        threading.Thread(target=go, args=pair) for pair in zip(sessions, prompts, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    return results


def test_256_streams_at_once_all_finish_and_each_is_settled_and_captured_once(streams_app):
    app = streams_app
    logins = [app.login(f"s{i}") for i in range(USERS)]
    lone = stream_once(logins[0], app.url, "a lone stream, for the baseline")
    assert lone["end"] == "done"
    app.model.most_at_once = 0
    sessions = [clone(logins[i % USERS]) for i in range(STREAMS)]
    watch = Watch(app)
    watch.start()
    try:
        results = run_at_once(sessions, app.url, [f"stream {n}" for n in range(STREAMS)])
    finally:
        watch.stop.set()
        watch.join()

    assert Counter(r["end"] for r in results) == {"done": STREAMS}, Counter(
        (r["status"], r["end"], r.get("code")) for r in results
    )
    # Concurrency is bounded by the model, not by a thread count.
    assert app.model.most_at_once > OLD_THREADS, app.model.most_at_once
    assert watch.health and all(status == 200 for status, _ in watch.health), watch.health
    assert watch.most_connections <= WORKERS * POOL_MAX, watch.most_connections

    ids = {r["generation_id"] for r in results}
    assert len(ids) == STREAMS
    rows = app.sql(
        "SELECT g.id::text, g.status FROM usage_generation g JOIN auth_user u "
        "ON u.id = g.user_id WHERE u.username LIKE 's%%'"
    )
    statuses = dict(rows)
    assert ids <= set(statuses)
    assert Counter(statuses.values()) == {"ok": STREAMS + 1}  # and the lone one; no pending

    def all_captured():
        seen = Counter(e["properties"].get("generation_id") for e in app.sink.generations())
        return all(seen[gid] >= 1 for gid in ids)

    assert wait_for(all_captured, 30), "not every generation reached the capture sink"
    seen = Counter(e["properties"].get("generation_id") for e in app.sink.generations())
    assert all(seen[gid] == 1 for gid in ids)

    seconds = sorted(r["seconds"] for r in results)
    p95 = seconds[int(len(seconds) * 0.95) - 1]
    print(
        f"\n{STREAMS} streams: lone {lone['seconds']:.2f} s, p50 "
        f"{statistics.median(seconds):.2f} s, p95 {p95:.2f} s "
        f"({p95 / lone['seconds']:.2f}x), model saw {app.model.most_at_once} at once, "
        f"{watch.most_connections} PostgreSQL connections at most, /healthz worst "
        f"{max(s for _, s in watch.health):.3f} s"
    )


def test_a_budget_for_exactly_k_calls_gets_exactly_k_of_50_streams(streams_app):
    app = streams_app
    login = app.login("kbudget")
    sessions = [clone(login) for _ in range(50)]
    results = run_at_once(sessions, app.url, [f"spend {n}" for n in range(50)])
    outcomes = Counter((r["status"], r["end"] or r.get("code")) for r in results)
    assert outcomes == {(200, "done"): K, (429, "usage_limit_reached"): 50 - K}, outcomes
    [(spent, pending)] = app.sql(
        "SELECT sum(cost), count(*) FILTER (WHERE status = 'pending') FROM usage_generation g "
        "JOIN auth_user u ON u.id = g.user_id WHERE u.username = 'kbudget'"
    )
    assert (spent, pending) == (K, 0)
