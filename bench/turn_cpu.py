"""CPU per chat turn under the production command, beside a bare relay (bench/relay.py).

Both run as `gunicorn -c gunicorn.conf.py` (2 uvicorn workers) against the same fake model
(30 chunks an answer), driven by one asyncio client with 8 turns in flight. The product
has PostgreSQL, Redis and PostHog capture (to a loopback sink) on. The figure is the
worker processes' CPU time (user + system, from /proc) over the turns, divided by the
turns (and the share the workers' event-loop threads used; the rest ran in the threads sync
code runs in): for streamed and for plain turns, then each as a ratio to the relay's, and
again with metered Stripe billing on (the meter-event outbox, and its sender, against a
loopback Stripe), as what billing adds to a turn. Those turns each start a conversation;
`continued` turns (plain) go on in conversations of CONVERSATION_TURNS, as people chat: the
same figure for a turn that reads its conversation's history first.
"""

import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import emit, harness_ready, profiled, server_process, workers_cpu

TURNS = int(os.environ.get("BENCH_TURNS", "400"))
AT_ONCE = 8
ANSWER_SECONDS = 0.6  # the fake model's pace: 30 chunks over this
CHUNKS = 30
CONVERSATION_TURNS = 10  # continued turns: each client's conversation, then a new one
ALL_KINDS = ("streamed", "plain", "continued")


async def one_turn(
    client, url, stream, cookies, headers, conversation_id=None
) -> tuple[bool, str | None]:
    """One turn: whether it was answered, and its conversation's id (the relay has none)."""
    body = {"prompt": "tell me about relays", "stream": stream}
    if conversation_id:
        body["conversation_id"] = conversation_id
    if not stream:
        response = await client.post(
            f"{url}/api/chat/", json=body, cookies=cookies, headers=headers
        )
        if response.status_code != 200:
            return False, None
        return True, response.json().get("conversation_id")
    async with client.stream(
        "POST", f"{url}/api/chat/", json=body, cookies=cookies, headers=headers
    ) as response:
        started, done = None, False
        async for line in response.aiter_lines():
            if started is None and line.startswith("data: "):  # the product's start event
                started = json.loads(line[6:]).get("conversation_id")
            done = done or line == "event: done"
        return done, started


async def turns(url, count, kind, cookies=None, headers=None) -> int:
    """`count` turns of `kind` (streamed, plain, continued) from AT_ONCE clients: how many
    were answered."""
    import httpx2

    async with httpx2.AsyncClient(timeout=120) as client:

        async def one_client(share):
            answered, conversation = 0, None
            for number in range(share):
                if number % CONVERSATION_TURNS == 0 or kind != "continued":
                    conversation = None
                stream = kind == "streamed"
                ok, conversation = await one_turn(
                    client, url, stream, cookies, headers, conversation
                )
                answered += ok
            return answered

        shares = [count // AT_ONCE + (i < count % AT_ONCE) for i in range(AT_ONCE)]
        return sum(await asyncio.gather(*[one_client(share) for share in shares]))


def per_turn(master_pid, url, kind, cookies=None, headers=None, label="") -> dict:
    """The workers' CPU per turn of `kind`; with a `label`, the measured turns are marked for
    bench/profile.py."""
    asyncio.run(turns(url, 2 * AT_ONCE, kind, cookies, headers))  # warm up
    before, started = workers_cpu(master_pid), time.monotonic()
    loop_before = workers_cpu(master_pid, loop_only=True)
    with profiled(master_pid, label) if label else contextlib.nullcontext():
        ok = asyncio.run(turns(url, TURNS, kind, cookies, headers))
    cpu = workers_cpu(master_pid) - before
    loop = workers_cpu(master_pid, loop_only=True) - loop_before
    return {
        "ms": round(cpu / TURNS * 1000, 2),
        "loop_ms": round(loop / TURNS * 1000, 2),  # the rest ran in threads
        "ok": ok,
        "wall_s": round(time.monotonic() - started, 1),
    }


def relay(model_url) -> dict:
    from bench.relay import served

    with served(model_url) as (url, pid):
        return {"streamed": per_turn(pid, url, "streamed"), "plain": per_turn(pid, url, "plain")}


def product(model_url, billing: str = "", kinds=("streamed", "plain")) -> dict:
    """The product's CPU per turn of each of `kinds`; with `billing`, metered Stripe billing
    on: every answer written to the meter-event outbox in its settle ("writes"), and also
    sent to a loopback Stripe by the worker after commit ("sends")."""
    from tests.e2e.harness.launch import fake_model_env, gunicorn_app
    from tests.e2e.harness.servers import CaptureSink, FakeStripe

    sink = CaptureSink()
    env = fake_model_env(model_url, POSTHOG_API_KEY="phc_bench", POSTHOG_HOST=sink.url)
    stripe = FakeStripe() if billing else None
    if stripe:
        env |= {
            "BILLING_MODE": "metered",
            "STRIPE_API_KEY": "sk_test_bench",
            "STRIPE_API_BASE": stripe.url,
            "STRIPE_SEND_AFTER_COMMIT": str(billing == "sends").lower(),
        }
    try:
        with gunicorn_app(Path(tempfile.mkdtemp()), env, [("cpu", "100000")], proxy=False) as app:
            session = app.login("cpu")
            cookies, headers = dict(session.cookies), dict(session.headers)
            billed = f"-{billing}" if billing else ""
            return {
                kind: per_turn(app.process.pid, app.url, kind, cookies, headers, kind + billed)
                for kind in kinds
            }
    finally:
        sink.stop()
        if stripe:
            stripe.stop()


def main():
    if not harness_ready():
        emit(bench="turn_cpu", skipped="PostgreSQL is not answering")
        return
    with server_process("model", str(ANSWER_SECONDS), str(CHUNKS)) as model_url:
        runs, writes, sends = [], [], []
        for _ in range(3):  # side by side
            runs.append((relay(model_url), product(model_url, kinds=ALL_KINDS)))
            writes.append(product(model_url, billing="writes"))
            sends.append(product(model_url, billing="sends"))
    figures = {}
    for kind in ("streamed", "plain"):
        bare = statistics.median(r[kind]["ms"] for r, _ in runs)
        ours = statistics.median(p[kind]["ms"] for _, p in runs)
        figures[kind] = {
            "product_ms": ours,
            "relay_ms": bare,
            "ratio": round(ours / bare, 2) if bare else None,
            "product_loop_ms": statistics.median(p[kind]["loop_ms"] for _, p in runs),
            "product_all_ms": [p[kind]["ms"] for _, p in runs],
            "relay_all_ms": [r[kind]["ms"] for r, _ in runs],
            "ok": [p[kind]["ok"] for _, p in runs],
        }
        for name, billed in (("outbox_writes", writes), ("outbox_and_sending", sends)):
            on = statistics.median(b[kind]["ms"] for b in billed)
            figures[kind] |= {
                f"metered_{name}_ms": on,
                f"metered_{name}_added_ms": round(on - ours, 2),
                f"metered_{name}_all_ms": [b[kind]["ms"] for b in billed],
            }
    figures["continued"] = {
        "product_ms": statistics.median(p["continued"]["ms"] for _, p in runs),
        "product_loop_ms": statistics.median(p["continued"]["loop_ms"] for _, p in runs),
        "product_all_ms": [p["continued"]["ms"] for _, p in runs],
        "ok": [p["continued"]["ok"] for _, p in runs],
    }
    emit(
        bench="turn_cpu",
        turns=TURNS,
        at_once=AT_ONCE,
        chunks=CHUNKS,
        conversation_turns=CONVERSATION_TURNS,
        **figures,
    )


if __name__ == "__main__":
    main()
