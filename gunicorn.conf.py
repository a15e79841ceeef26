"""gunicorn settings for chatusage: `gunicorn -c gunicorn.conf.py chatusage.wsgi`."""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"  # threads keep streamed answers from blocking a whole worker
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 30
accesslog = "-"


def worker_exit(server, worker):
    # Deliver queued $ai_generation events before the worker goes; the SDK alone waits ~1 s.
    from chatusage import analytics

    analytics.shutdown()
