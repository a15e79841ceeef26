"""gunicorn settings for chatusage. Production is one command: `gunicorn -c gunicorn.conf.py`.

ASGI under uvicorn's gunicorn worker: model answers stream for seconds to minutes, so each
worker serves every conversation from one event loop instead of one thread per stream.
"""

import os

wsgi_app = "chatusage.asgi:application"
worker_class = "uvicorn_worker.UvicornWorker"
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
# Seconds a worker may go without a heartbeat; async workers beat while streams wait.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
# On SIGTERM, streams in flight get this long to finish; a call cut by the kill leaves a
# pending reservation that expiry releases once OPENAI_DEADLINE and its margin have passed.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
# Load the app once in the master and fork the workers from it (see the README's figures).
preload_app = os.environ.get("GUNICORN_PRELOAD", "false").lower() in ("1", "true", "yes")
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-") or None


def post_worker_init(worker):
    # Replace dead pooled database connections in bulk after a database restart.
    from chatusage.db import watch_pool

    watch_pool()


def worker_exit(server, worker):
    # Deliver queued $ai_generation events before the worker goes; the SDK alone waits ~1 s.
    from chatusage import analytics

    analytics.shutdown()
