"""gunicorn settings for chatusage. Production is one command: `gunicorn -c gunicorn.conf.py`.

ASGI under uvicorn's gunicorn worker: model answers stream for seconds to minutes, so each
worker serves every conversation from one event loop instead of one thread per stream.
"""

import math
import os
import resource

wsgi_app = "chatusage.asgi:application"
# uvicorn's worker with a header-read timeout, a concurrency limit and a graceful shutdown
# that outlasts the deadline (chatusage/server.py).
worker_class = "chatusage.server.Worker"
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
# Seconds a worker may go without a heartbeat; async workers beat while streams wait.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
# On a reload (HUP) or stop (TERM), streams in flight finish: every turn is over by
# OPENAI_DEADLINE, and this leaves 30 s more to settle (uvicorn cancels what still runs 20 s
# before gunicorn would kill the worker, and cancelled turns settle what they delivered).
# A kill would skip all of that and leave delivered answers unbilled, so it is never less.
_deadline = float(os.environ.get("OPENAI_DEADLINE", "120"))
graceful_timeout = max(
    int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "0")), math.ceil(_deadline) + 30
)
# Client addresses come from Django (TRUSTED_PROXY_COUNT), never from uvicorn: trusting
# X-Forwarded-For from 127.0.0.1 (uvicorn's default) would let a proxy on the same host that
# passes the client's header through spoof the login lock and the sign-up limit.
forwarded_allow_ips = ""
# Every stream and idle connection holds a file: use all the process may have.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft < _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))
keepalive = 5
# Load the app once in the master and fork the workers from it: with pre_fork below, each
# worker holds about 38 MB less of its own (README, Benchmarks). New code then needs a full
# restart: a HUP forks new workers from the code the master already holds.
preload_app = os.environ.get("GUNICORN_PRELOAD", "true").lower() in ("1", "true", "yes")
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-") or None


def pre_fork(server, worker):
    """In the master, before each worker is forked (with preload_app): import what the first
    request would (every view, the OpenAI SDK with the modules its first client loads,
    PostHog's wrapper), hold no database connection a child could inherit, and freeze the
    garbage collector's view of it all, so the workers' collections never write to (and so
    copy) the pages they share."""
    if not server.cfg.preload_app:
        return
    import gc

    from django.db import connections
    from django.urls import get_resolver

    # The URLconf imports every view, and the chat views the OpenAI SDK and PostHog's wrapper.
    get_resolver().url_patterns  # noqa: B018
    from chat import llm

    llm.load_sdk()  # 0.7 s of the SDK's modules a worker's first chat would wait for
    connections.close_all()
    gc.freeze()


def post_worker_init(worker):
    # Replace dead pooled database connections in bulk after a database restart.
    from chatusage.db import watch_pool

    watch_pool()


def worker_exit(server, worker):
    # Deliver queued $ai_generation events before the worker goes; the SDK alone waits ~1 s.
    from chatusage import analytics

    analytics.shutdown()
