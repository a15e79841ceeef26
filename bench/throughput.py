"""Chat requests per second under the production command (2 uvicorn workers), straight to
PostgreSQL (no proxy), demo model, and each worker's memory after the load.

Non-streamed messages from 16 logged-in users at once for a fixed time, every request a
full tracked turn: prompt saved, budget reserved (the default budget, so settles also watch
for alerts), PostHog-wrapped call captured to a sink, ledger settled. Memory: RSS, and PSS
and USS from /proc/<pid>/smaps_rollup, which tell what the workers share (PSS splits shared
pages between the processes that map them; USS is what a worker alone holds). The
production config preloads the app in the master; `no-preload` measures without.
"""

import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench.common import emit, harness_ready, server_process, spread_ms

CLIENTS = 16
SECONDS = 15


def memory(pid: int) -> dict:
    """RSS, PSS and USS of a process, in MB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0])
    uss = fields["Private_Clean"] + fields["Private_Dirty"]
    return {"rss": fields["Rss"] / 1024, "pss": fields["Pss"] / 1024, "uss": uss / 1024}


def workers(master: int) -> list[int]:
    with open(f"/proc/{master}/task/{master}/children") as children:
        return [int(pid) for pid in children.read().split()]


def main(mode="default"):
    ready = harness_ready()
    from tests.e2e.harness.launch import gunicorn_app

    if not ready:
        emit(bench="throughput", skipped="PostgreSQL is not answering")
        return
    users = [(f"load{i}", None) for i in range(CLIENTS)]
    statuses: Counter = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    with server_process("sink") as sink:
        env = {
            "OPENAI_API_KEY": "",
            "DEMO_STREAM_DELAY": "0",
            "POSTHOG_API_KEY": "phc_bench",
            "POSTHOG_HOST": sink,
            "USAGE_DEFAULT_BUDGET_USD": "5.00",
            "GUNICORN_PRELOAD": "false" if mode == "no-preload" else "true",
        }
        with gunicorn_app(Path(tempfile.mkdtemp()), env, users, proxy=False) as app:
            sessions = [app.login(name) for name, _ in users]
            for session in sessions:  # every worker has imported, connected, built clients
                session.post(f"{app.url}/api/chat/", json={"prompt": "Warm up"}, timeout=30)
            stop_at = time.monotonic() + SECONDS

            def client(session):
                while time.monotonic() < stop_at:
                    started = time.perf_counter()
                    response = session.post(
                        f"{app.url}/api/chat/", json={"prompt": "Benchmark me"}, timeout=30
                    )
                    with lock:
                        latencies.append(time.perf_counter() - started)
                        statuses[response.status_code] += 1

            started = time.monotonic()
            threads = [threading.Thread(target=client, args=(s,)) for s in sessions]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
            pids = workers(app.process.pid)
            sizes = [memory(pid) for pid in pids]
            master = memory(app.process.pid)
    emit(
        bench="throughput",
        db="postgres",
        mode=mode,
        clients=CLIENTS,
        seconds=round(elapsed, 1),
        ok=statuses[200],
        rps=round(statuses[200] / elapsed, 1),
        non_200=sum(v for k, v in statuses.items() if k != 200),
        **spread_ms(latencies, "latency_"),
        workers=len(pids),
        worker_rss_mb=[round(s["rss"], 1) for s in sizes],
        worker_pss_mb=[round(s["pss"], 1) for s in sizes],
        worker_uss_mb=[round(s["uss"], 1) for s in sizes],
        master_pss_mb=round(master["pss"], 1),
        total_pss_mb=round(sum(s["pss"] for s in sizes) + master["pss"], 1),
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
