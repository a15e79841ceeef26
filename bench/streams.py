"""N long streamed answers at once under the production command (`gunicorn -c
gunicorn.conf.py`: uvicorn workers), PostgreSQL, against a fake model that streams each answer
in 30 chunks 0.1 s apart (3 s alone), and the same burst against the bare relay
(bench/relay.py) under the same command: the first word's wait is compared to the relay's.

The load generator is one asyncio process (no thread per stream) and the fake model runs in
a process of its own, so neither steals the GIL from the other. Reports p50 and p95 time to
the `done` event against a lone stream measured on the same server, the most calls the model
saw at once, the most pooled PostgreSQL connections, and /healthz during the load (p99 and
slowest, asked every 0.1 s). What the first words wait for: the workers' CPU from the burst's
start to the p95 first word, per stream, beside the relay's, and the cores they had then.
"""

import asyncio
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import CpuSamples, emit, harness_ready, profiled, server_process

STREAMS = int(sys.argv[1]) if len(sys.argv) > 1 else 256
STREAM_SECONDS = 3.0
CHUNKS = 30  # 0.1 s apart, as a real model streams a short answer
USERS = 16


async def one_stream(client, url, cookies, headers, prompt) -> dict:
    import httpx2

    started = time.monotonic()
    first = None
    began = None
    ended = None
    async with client.stream(
        "POST",
        f"{url}/api/chat/",
        json={"prompt": prompt, "stream": True},
        cookies=cookies,
        headers=headers,
        timeout=httpx2.Timeout(180),
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: start"):
                began = time.monotonic() - started
            if line.startswith("event: delta") and first is None:
                first = time.monotonic() - started
            elif line.startswith("event: "):
                ended = line[7:] if line[7:] in ("done", "error") else ended
    return {"end": ended, "start": began, "first": first, "seconds": time.monotonic() - started}


async def load(url, logins, streams) -> list[dict]:
    import httpx2

    limits = httpx2.Limits(max_connections=streams + 10, max_keepalive_connections=streams)
    async with httpx2.AsyncClient(limits=limits) as client:
        tasks = [
            one_stream(client, url, *logins[n % len(logins)], f"stream {n}") for n in range(streams)
        ]
        return await asyncio.gather(*tasks)


def percentile(values, percent):
    ordered = sorted(values)
    return ordered[max(math.ceil(len(ordered) * percent / 100) - 1, 0)]


def p95(values):
    return percentile(values, 95)


def main():
    ready = harness_ready()
    import requests

    from bench.relay import served
    from chatusage.views import HEALTH_APPLICATION_NAME
    from tests.e2e.harness.launch import fake_model_env, gunicorn_app
    from tests.e2e.harness.servers import CaptureSink

    if not ready:
        emit(bench="streams", skipped="PostgreSQL is not answering")
        return
    sink = CaptureSink()
    # A budget (the load model's calls cost up to $1): settles watch for alerts, as with
    # production's default budget.
    users = [(f"s{i}", "100000") for i in range(USERS)]
    try:
        with server_process("model", str(STREAM_SECONDS), str(CHUNKS)) as model_url:
            env = fake_model_env(model_url, POSTHOG_API_KEY="phc_bench", POSTHOG_HOST=sink.url)
            with gunicorn_app(Path(tempfile.mkdtemp()), env, users, proxy=False) as app:
                sessions = [app.login(name) for name, _ in users]
                logins = [(dict(s.cookies), dict(s.headers)) for s in sessions]
                for _ in range(4):  # warm both workers: first calls build clients, open pools
                    asyncio.run(load(app.url, logins, 2))
                lone = [asyncio.run(load(app.url, logins, 1))[0]["seconds"] for _ in range(5)]
                stop = threading.Event()
                health, connections = [], []

                def watch():
                    while not stop.is_set():
                        started = time.monotonic()
                        try:
                            requests.get(f"{app.url}/healthz", timeout=10)
                        finally:
                            health.append(time.monotonic() - started)
                        connections.extend(
                            count
                            for (count,) in app.sql(
                                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                                "AND pid <> pg_backend_pid() AND application_name <> %s",
                                app.dbname,
                                HEALTH_APPLICATION_NAME,
                            )
                        )
                        stop.wait(0.1)

                watcher = threading.Thread(target=watch, daemon=True)
                watcher.start()
                started = time.monotonic()
                with (
                    profiled(app.process.pid, f"{STREAMS} streams"),
                    CpuSamples(app.process.pid) as cpu,
                ):
                    results = asyncio.run(load(app.url, logins, STREAMS))
                elapsed = time.monotonic() - started
                stop.set()
                watcher.join()
                stats = json.loads(requests.get(f"{model_url}/stats", timeout=5).text)
            with served(model_url) as (relay_url, relay_pid):
                anonymous = [({}, {})]
                for _ in range(4):
                    asyncio.run(load(relay_url, anonymous, 2))
                relay_started = time.monotonic()
                with CpuSamples(relay_pid) as relay_cpu:
                    relayed = asyncio.run(load(relay_url, anonymous, STREAMS))
    finally:
        sink.stop()
    done = [r for r in results if r["end"] == "done"]
    seconds = [r["seconds"] for r in done]
    lone_s = statistics.median(lone)
    first_word = p95([r["first"] for r in done])
    relay_first_word = p95([r["first"] for r in relayed if r["end"] == "done"])
    # What the first words waited for: the workers' CPU from the burst's start to the p95
    # first word, per stream (95% of them had begun), and how many cores they had meanwhile.
    to_first_words = cpu.used(started, started + first_word)
    relay_to_first_words = relay_cpu.used(relay_started, relay_started + relay_first_word)
    per_stream = 1000 / (0.95 * STREAMS)
    emit(
        bench="streams",
        db="postgres",
        streams=STREAMS,
        done=len(done),
        lone_s=round(lone_s, 2),
        p50_s=round(statistics.median(seconds), 2),
        p95_s=round(p95(seconds), 2),
        min_s=round(min(seconds), 2),
        max_s=round(max(seconds), 2),
        p95_ratio=round(p95(seconds) / lone_s, 2),
        start_event_p95_s=round(p95([r["start"] for r in done]), 2),
        first_word_p95_s=round(first_word, 2),
        relay_first_word_p95_s=round(relay_first_word, 2),
        relay_done=sum(r["end"] == "done" for r in relayed),
        first_word_ratio=round(first_word / relay_first_word, 2),
        cpu_to_first_words_ms=round(to_first_words * per_stream, 2),
        relay_cpu_to_first_words_ms=round(relay_to_first_words * per_stream, 2),
        cpu_to_first_words_ratio=round(to_first_words / relay_to_first_words, 2),
        cores_to_first_words=round(to_first_words / first_word, 2),
        relay_cores_to_first_words=round(relay_to_first_words / relay_first_word, 2),
        model_most_at_once=stats["most_at_once"],
        most_pg_connections=max(connections),
        healthz_p99_s=round(percentile(health, 99), 3),
        healthz_worst_s=round(max(health), 3),
        healthz_n=len(health),
        wall_s=round(elapsed, 1),
    )


if __name__ == "__main__":
    main()
