"""Budget alerts under the production command: delivered after commit, in the background,
to a webhook receiver on the loopback, signed."""

import json

import pytest

from tests.e2e.harness.client import chat, wait_for
from tests.e2e.harness.launch import fake_model_env, gunicorn_app, postgres_answers
from tests.e2e.harness.servers import FakeModel, WebhookReceiver
from tests.helpers import documented_verify

pytestmark = pytest.mark.e2e

SECRET = "e2e-webhook-secret"


@pytest.fixture(scope="module")
def alert_app(tmp_path_factory):
    if not postgres_answers():
        pytest.skip("PostgreSQL is not answering on 127.0.0.1:5432")
    model, receiver = FakeModel(), WebhookReceiver()
    env = fake_model_env(  # $1.00 a call
        model.url,
        USAGE_ALERT_THRESHOLDS="50",
        ALERT_WEBHOOK_URL=f"{receiver.url}/hooks/chatusage",
        ALERT_WEBHOOK_SECRET=SECRET,
    )
    try:
        with gunicorn_app(tmp_path_factory.mktemp("alerts"), env, [("spender", "3.00")]) as app:
            app.receiver = receiver
            yield app
    finally:
        model.stop()
        receiver.stop()


def test_crossing_a_threshold_and_the_limit_each_post_one_signed_event(alert_app):
    app = alert_app
    session = app.login("spender")
    verify = documented_verify()
    assert chat(session, app.url, "first dollar")[0] == 200
    assert chat(session, app.url, "second dollar", stream=True)[0] == 200  # 2.00 >= 50%
    assert wait_for(lambda: len(app.receiver.received) == 1, 15)
    assert chat(session, app.url, "third dollar")[0] == 200
    status, data = chat(session, app.url, "one too many")
    assert (status, data["code"]) == (429, "usage_limit_reached")
    assert chat(session, app.url, "still too many")[0] == 429
    assert wait_for(lambda: len(app.receiver.received) == 2, 15)
    events = []
    for headers, body in app.receiver.received:
        assert verify(body, headers["X-Chatusage-Signature"], SECRET)
        events.append(json.loads(body))
    assert [e["type"] for e in events] == ["usage.threshold_crossed", "usage.limit_reached"]
    assert events[0]["threshold"] == 50.0 and events[0]["spent"] == "2.000000"
    assert events[0]["user"]["username"] == "spender"
    [(delivered,)] = app.sql("SELECT count(*) FROM usage_alert WHERE delivered_at IS NOT NULL")
    assert delivered == 2
