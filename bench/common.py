"""Shared set-up for the benchmarks: each runs in its own process on its own database."""

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
            "USAGE_DEFAULT_BUDGET_USD": "0",
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


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def spread_ms(samples: list[float], prefix: str = "") -> dict:
    """min, max and n beside a median: how wide the runs were, and how many."""
    return {
        f"{prefix}min_ms": round(min(samples) * 1000, 3),
        f"{prefix}max_ms": round(max(samples) * 1000, 3),
        f"{prefix}n": len(samples),
    }


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def emit(**figures) -> None:
    """One JSON line on stdout for the runner to collect."""
    print("BENCH " + json.dumps(figures), flush=True)
