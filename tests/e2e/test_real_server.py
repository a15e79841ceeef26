"""The app under gunicorn with real sockets: concurrency, budgets, faults and recovery."""

import json
import threading
from collections import Counter

import pytest
import requests

from tests.e2e.harness.client import chat, wait_for

pytestmark = pytest.mark.e2e

USERS = 20
MESSAGES_PER_USER = 6
STALL_LIMIT = 300  # seconds; only so that a hung server cannot hang the suite


def test_twenty_concurrent_users_each_message_is_settled_once_and_captured_once(app):
    results: list[tuple[str, int, dict]] = []
    lock = threading.Lock()

    def user(name):
        session = app.login(name)
        for n in range(MESSAGES_PER_USER):
            status, data = chat(session, app.url, f"{name} message {n}", stream=n % 2 == 0)
            with lock:
                results.append((name, status, data))

    threads = [threading.Thread(target=user, args=(f"load{i}",)) for i in range(USERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=STALL_LIMIT)

    statuses = Counter(status for _, status, _ in results)
    assert statuses == {200: USERS * MESSAGES_PER_USER}, statuses
    answered = {data["generation_id"]: name for name, _, data in results}
    assert len(answered) == USERS * MESSAGES_PER_USER

    rows = app.sql(
        "SELECT g.id::text, u.username, g.status FROM usage_generation g "
        "JOIN auth_user u ON u.id = g.user_id WHERE u.username LIKE 'load%%'"
    )
    assert len(rows) == len(answered)  # one ledger row per answered message, no extras
    for gid, username, status in rows:
        assert answered[gid] == username and status == "ok"

    def all_captured():
        seen = Counter(e["properties"].get("generation_id") for e in app.sink.generations())
        return all(seen[gid] >= 1 for gid in answered)

    assert wait_for(all_captured), "not every generation reached the capture sink"
    events = [e for e in app.sink.generations() if e["properties"].get("generation_id") in answered]
    assert Counter(e["properties"]["generation_id"] for e in events) == Counter(set(answered))
    for event in events:
        name = answered[event["properties"]["generation_id"]]
        assert event["distinct_id"] == str(app.user_ids[name])
        assert "message" not in json.dumps(event["properties"].get("$ai_input"))  # privacy mode


def test_a_user_with_a_budget_for_three_calls_gets_exactly_three(app):
    sessions = [app.login("budget") for _ in range(8)]
    outcomes = []
    barrier = threading.Barrier(len(sessions))

    def go(session):
        barrier.wait()
        outcomes.append(chat(session, app.url, "spend it all"))

    threads = [threading.Thread(target=go, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    statuses = Counter(status for status, _ in outcomes)
    assert statuses == {200: 3, 429: 5}, statuses
    assert {data["code"] for status, data in outcomes if status == 429} == {"usage_limit_reached"}
    status, data = chat(sessions[0], app.url, "one more?")
    assert (status, data["code"]) == (429, "usage_limit_reached")
    [(spent,)] = app.sql(
        "SELECT sum(cost) FROM usage_generation g JOIN auth_user u ON u.id = g.user_id "
        "WHERE u.username = 'budget'"
    )
    assert spent == 3


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("429", 502, "provider_rate_limited"),
        ("500", 502, "provider_error"),
        ("slow", 504, "provider_timeout"),
        ("garbage", 502, "provider_bad_response"),
    ],
)
def test_model_faults_give_clear_errors_keep_the_prompt_and_recover(app, mode, status, code):
    session = app.login("load0")
    app.model.mode = mode
    try:
        got, data = chat(session, app.url, f"fault {mode}")
    finally:
        app.model.mode = "ok"
    assert (got, data["code"]) == (status, code)
    [(failed,)] = app.sql(
        "SELECT m.failed FROM chat_message m WHERE m.content = %s", f"fault {mode}"
    )
    assert failed is True
    [(row_status, cost)] = app.sql(
        "SELECT g.status, g.cost FROM usage_generation g JOIN chat_message m "
        "ON m.generation_id = g.id WHERE m.content = %s",
        f"fault {mode}",
    )
    assert (row_status, cost) == ("error", 0)
    # The provider is back: the retry of the same prompt is answered, reusing the message.
    got, data = chat(session, app.url, f"fault {mode}", conversation_id=data["conversation_id"])
    assert got == 200
    [(failed,)] = app.sql("SELECT failed FROM chat_message WHERE content = %s", f"fault {mode}")
    assert failed is False


def test_a_capture_sink_that_hangs_or_refuses_never_affects_chat(app):
    session = app.login("load1")
    app.sink.mode = "hang"
    assert chat(session, app.url, "sink hangs")[0] == 200
    app.sink.mode = "ok"
    app.sink.stop()
    try:
        assert chat(session, app.url, "sink refuses")[0] == 200
        assert chat(session, app.url, "sink refuses, streamed", stream=True)[0] == 200
    finally:
        app.sink.start()
    status, data = chat(session, app.url, "sink is back")
    assert status == 200
    assert wait_for(
        lambda: any(
            e["properties"].get("generation_id") == data["generation_id"]
            for e in app.sink.generations()
        ),
        30,
    )


def test_healthz_reports_a_database_outage_and_recovers_by_itself(app):
    assert requests.get(f"{app.url}/healthz", timeout=5).status_code == 200
    app.proxy.cut()
    try:
        assert wait_for(
            lambda: requests.get(f"{app.url}/healthz", timeout=10).status_code == 503, 15
        )
        response = requests.get(f"{app.url}/healthz", timeout=10)
        assert response.json()["database"] == "down"
    finally:
        app.proxy.resume()
    assert wait_for(lambda: requests.get(f"{app.url}/healthz", timeout=10).status_code == 200, 15)

    def chat_works():
        # Each worker sweeps its pool's dead connections every few seconds
        # (chatusage.db.watch_pool): a client retrying now and then gets through.
        try:
            return chat(app.login("load2"), app.url, "after the outage")[0] == 200
        except (requests.RequestException, AssertionError):
            return False

    assert wait_for(chat_works, 15)
