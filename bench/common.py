"""Shared set-up for the benchmarks: each runs in its own process on its own database."""

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def setup_django(database_url: str | None = None, **env) -> Path:
    """Production-like settings (DEBUG off) on a throwaway database; returns the work dir."""
    workdir = Path(tempfile.mkdtemp(prefix="chatusage-bench-"))
    os.environ.update(
        {
            "DEBUG": "false",
            "SECRET_KEY": "bench-only-secret-key-" + "x" * 40,
            "ALLOWED_HOSTS": "testserver,127.0.0.1",
            "SECURE_SSL_REDIRECT": "false",
            "DATABASE_URL": database_url or f"sqlite:///{workdir / 'bench.sqlite3'}",
            "STATIC_ROOT": str(workdir / "static"),
            "LOG_LEVEL": "ERROR",
            "OPENAI_API_KEY": "",
            "POSTHOG_API_KEY": "",
            "DEMO_STREAM_DELAY": "0",
            "CHAT_RATE_LIMIT": "0/60",
            **env,
        }
    )
    os.environ["DJANGO_SETTINGS_MODULE"] = "chatusage.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    return workdir


def harness_ready() -> bool:
    """Django set up as the end-to-end harness (tests/e2e/harness) needs it in this process;
    False when PostgreSQL does not answer (the caller then reports the bench skipped)."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatusage.settings")
    os.environ.setdefault("SECRET_KEY", "bench")
    import django

    django.setup()
    from tests.e2e.harness.launch import postgres_answers

    return postgres_answers()


@contextmanager
def postgres_database():
    """A new PostgreSQL database for one benchmark, dropped afterwards: yields its URL."""
    from tests.e2e.harness.launch import fresh_database

    with fresh_database("chatusage_bench") as name:
        try:
            yield f"postgres://postgres@127.0.0.1:5432/{name}"
        finally:
            if "django" in sys.modules:
                from django.db import connections

                connections.close_all()


@contextmanager
def server_process(*args: str, stdin: str = ""):
    """A tests/e2e/harness/servers.py server in a process of its own, so that it takes no GIL time
    from what is measured: yields its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.harness.servers", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if stdin:
            process.stdin.write(stdin + "\n")
            process.stdin.flush()
        yield process.stdout.readline().strip()
    finally:
        process.stdin.close()
        process.wait(timeout=10)


def _cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def workers_cpu(master_pid: int, loop_only: bool = False) -> float:
    """CPU seconds the master's children (the workers) have used so far; with `loop_only`,
    only their main threads (the event loops), not the threads sync code runs in."""
    children = []
    for task in Path(f"/proc/{master_pid}/task").iterdir():
        children += (task / "children").read_text().split()
    if loop_only:
        return sum(_cpu(Path(f"/proc/{pid}/task/{pid}/stat")) for pid in children)
    return sum(_cpu(Path(f"/proc/{pid}/stat")) for pid in children)


class CpuSamples:
    """The workers' CPU seconds (workers_cpu) sampled every `every` seconds by a thread while
    a load runs; used(start, end): what they spent between two time.monotonic() moments."""

    def __init__(self, master_pid: int, every: float = 0.02):
        self.master_pid, self.every = master_pid, every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), workers_cpu(self.master_pid)))
            self._stop.wait(self.every)

    def __enter__(self) -> "CpuSamples":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def used(self, start: float, end: float) -> float:
        def at(moment: float) -> float:
            return min(self.samples, key=lambda sample: abs(sample[0] - moment))[1]

        return at(end) - at(start)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def spread_ms(samples: list[float], prefix: str = "") -> dict:
    """median, min, max and n: where the runs sat, how wide they were, and how many."""
    return {
        f"{prefix}ms": round(median_ms(samples), 3),
        f"{prefix}min_ms": round(min(samples) * 1000, 3),
        f"{prefix}max_ms": round(max(samples) * 1000, 3),
        f"{prefix}n": len(samples),
    }


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


@contextlib.contextmanager
def profiled(master_pid: int, what: str):
    """Mark the measured part of a run of the product's server (gunicorn master
    `master_pid`) for bench/profile.py, which samples its workers between the marks."""
    print(f"PROFILE start {master_pid} {what}", flush=True)
    try:
        yield
    finally:
        print(f"PROFILE stop {master_pid}", flush=True)


def emit(**figures) -> None:
    """One JSON line on stdout for the runner to collect."""
    print("BENCH " + json.dumps(figures), flush=True)
