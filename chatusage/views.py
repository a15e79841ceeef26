import logging
import threading

from axes.helpers import get_client_ip_address
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from chatusage import accounts, api, ratelimit
from chatusage import cache as shared_cache
from chatusage.forms import SignupForm
from usage.models import UsageAccount

log = logging.getLogger(__name__)


def _too_many(request, message: str, wait: int) -> HttpResponse:
    response = render(request, "registration/too_many.html", {"message": message}, status=429)
    response["Retry-After"] = str(wait)
    return response


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("chat:index")
    if settings.ACCOUNTS_SIGNUP == "closed":
        return render(request, "registration/signup_closed.html", status=403)
    form = SignupForm(request.POST or None)
    if request.method == "POST":
        address = get_client_ip_address(request) or "unknown"
        wait = ratelimit.wait_seconds(f"signup:{address}", settings.SIGNUP_RATE_LIMIT)
        if wait:
            return _too_many(
                request, "Too many accounts were created from your network just now.", wait
            )
        if form.is_valid():
            user = accounts.sign_up(request, form)
            if user is None or settings.ACCOUNTS_VERIFY_EMAIL:
                # The same page and no login either way: it must not tell which addresses
                # have accounts. The link in the mail logs a new account in.
                return render(
                    request, "registration/check_email.html", {"email": form.cleaned_data["email"]}
                )
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect("chat:index")
    return render(request, "registration/signup.html", {"form": form})


@require_GET
def verify_email(request: HttpRequest, token: str) -> HttpResponse:
    user, confirmed = accounts.verify(token)
    if user is None:
        return render(request, "registration/verify_failed.html", status=400)
    if confirmed:  # the first use of the link logs the new account in
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    elif request.user != user:  # a used link is no key: log in with the password
        messages.info(request, "Your address was already confirmed. Log in to chat.")
        return redirect("login")
    messages.success(request, "Your address is confirmed: you can chat now.")
    return redirect("chat:index")


@login_required
@require_POST
def resend_verification(request: HttpRequest) -> HttpResponse:
    account = UsageAccount.objects.for_user(request.user)
    if account.email_verified:
        return redirect("chat:index")
    if ratelimit.wait_seconds(f"verify-resend:{request.user.pk}", "3/3600"):
        messages.info(request, "We sent a link recently; please look for it in your inbox.")
    else:
        accounts.send_verification(request, request.user)
        messages.success(request, f"We sent a new link to {request.user.email}.")
    return redirect("chat:index")


def locked_out(request, response, credentials) -> HttpResponse:
    """django-axes' lockout: a clear page, 429 with Retry-After (AXES_LOCKOUT_CALLABLE)."""
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    return _too_many(
        request,
        f"Too many failed logins for this account or from your network. Try again in "
        f"{minutes} minutes, or reset your password.",
        int(settings.AXES_COOLOFF_TIME.total_seconds()),
    )


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


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """503 when the database does not answer; 200 otherwise, "degraded" without the cache.

    Without the cache the app still serves everything (the rate limit lets requests
    through, reports skip their copies), and every server shares the same cache, so
    taking this one out of the load balancer would help nobody: 200, flagged.
    """
    cache_up = shared_cache.answers()
    if not _database_answers():
        log.warning("healthz: database unreachable")
        return JsonResponse(
            {"status": "unavailable", "database": "down", "cache": "up" if cache_up else "down"},
            status=503,
        )
    if not cache_up:
        log.warning("healthz: cache unreachable")
        return JsonResponse({"status": "degraded", "database": "up", "cache": "down"})
    return JsonResponse({"status": "ok", "database": "up", "cache": "up"})


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
