import logging
import threading

from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from chatusage import api
from chatusage import cache as shared_cache

log = logging.getLogger(__name__)


HEALTH_DB_TIMEOUT = 2  # seconds: a load balancer must get an answer, not a hang
_health_lock = threading.Lock()
_health_conn = None  # PostgreSQL: one connection of its own, outside the pool
HEALTH_APPLICATION_NAME = "chatusage-healthz"  # how it shows in pg_stat_activity


def _database_answers() -> bool:
    """Whether the database answers a query now.

    On PostgreSQL the check keeps a connection of its own outside Django's pool: under a
    burst of chats every pooled connection may be busy for a while, which says nothing
    about the database, and while the database is down the pool retries for its whole
    timeout, far longer than a health check may take.
    """
    if connection.vendor != "postgresql":
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        except DatabaseError:
            return False
        return True
    import psycopg

    global _health_conn
    with _health_lock:
        try:
            if _health_conn is None or _health_conn.closed:
                params = connection.get_connection_params()
                params.update(
                    connect_timeout=HEALTH_DB_TIMEOUT,
                    autocommit=True,
                    application_name=HEALTH_APPLICATION_NAME,
                )
                _health_conn = psycopg.connect(**params)
            _health_conn.execute("SELECT 1")
        except psycopg.Error:
            if _health_conn is not None:
                _health_conn.close()
            _health_conn = None
            return False
    return True


def close_health_connection() -> None:
    global _health_conn
    with _health_lock:
        if _health_conn is not None:
            _health_conn.close()
        _health_conn = None


def health() -> tuple[int, dict]:
    """/healthz's answer, (status, body): 503 when the database does not answer; 200
    otherwise, "degraded" without the cache.

    Without the cache the app still serves everything (the rate limit lets requests
    through, reports skip their copies), and every server shares the same cache, so
    taking this one out of the load balancer would help nobody: 200, flagged.
    """
    cache_up = shared_cache.answers()
    if not _database_answers():
        log.warning("healthz: database unreachable")
        cache = "up" if cache_up else "down"
        return 503, {"status": "unavailable", "database": "down", "cache": cache}
    if not cache_up:
        log.warning("healthz: cache unreachable")
        return 200, {"status": "degraded", "database": "up", "cache": "down"}
    return 200, {"status": "ok", "database": "up", "cache": "up"}


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """health() through Django's request cycle (its test client, a WSGI server). Under the
    ASGI application, chatusage.asgi answers /healthz itself, with the same health()."""
    status, body = health()
    return JsonResponse(body, status=status)


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception=None) -> HttpResponse:
    if _wants_json(request):
        return api.error("not_found")
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if _wants_json(request):
        return api.error("server_error")
    return render(request, "500.html", status=500)


def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico whatever the page's <link> says."""
    return redirect(static("chatusage/favicon.svg"), permanent=True)
