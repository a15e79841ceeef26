"""Chat requests per second under the production command (2 uvicorn workers) on PostgreSQL,
demo model.

Non-streamed messages from 16 logged-in users at once for a fixed time, every request a
full tracked turn: prompt saved, budget reserved, PostHog-wrapped call, ledger settled.
"""

import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench.common import ROOT, emit

CLIENTS = 16
SECONDS = 15


def main():
    sys.path.insert(0, str(ROOT))
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatusage.settings")
    os.environ.setdefault("SECRET_KEY", "bench")
    from tests.e2e.launch import gunicorn_app, postgres_answers
    from tests.e2e.servers import CaptureSink

    if not postgres_answers():
        emit(bench="throughput", skipped="PostgreSQL is not answering")
        return
    sink = CaptureSink()
    env = {
        "OPENAI_API_KEY": "",
        "DEMO_STREAM_DELAY": "0",
        "POSTHOG_API_KEY": "phc_bench",
        "POSTHOG_HOST": sink.url,
    }
    users = [(f"load{i}", None) for i in range(CLIENTS)]
    statuses: Counter = Counter()
    lock = threading.Lock()
    with gunicorn_app(Path(tempfile.mkdtemp()), env, users, proxy=False) as app:
        sessions = [app.login(name) for name, _ in users]
        stop_at = time.monotonic() + SECONDS

        def client(session):
            while time.monotonic() < stop_at:
                response = session.post(
                    f"{app.url}/api/chat/", json={"prompt": "Benchmark me"}, timeout=30
                )
                with lock:
                    statuses[response.status_code] += 1

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(s,)) for s in sessions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    sink.stop()
    total = sum(statuses.values())
    emit(
        bench="throughput",
        db="postgres",
        clients=CLIENTS,
        seconds=round(elapsed, 1),
        requests=total,
        ok=statuses[200],
        rps=round(statuses[200] / elapsed, 1),
        non_200=sum(v for k, v in statuses.items() if k != 200),
    )


if __name__ == "__main__":
    main()
