"""Sign-up, address verification and the login lock's page. The mails and the rules behind
them are in accounts/services.py; Django's own auth views serve login, logout and password
reset (accounts/urls.py)."""

from axes.helpers import get_client_ip_address
from axes.models import AccessAttempt
from axes.utils import reset as reset_lockout
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts import services
from accounts.forms import SignupForm
from chatusage import ratelimit
from usage.models import UsageAccount

SIGN_IN_BACKEND = "accounts.backends.UserBackend"


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
            user = services.sign_up(request, form)
            if user is None or settings.ACCOUNTS_VERIFY_EMAIL:
                # The same page and no login either way: it must not tell which addresses
                # have accounts. The link in the mail logs a new account in.
                return render(
                    request, "registration/check_email.html", {"email": form.cleaned_data["email"]}
                )
            login(request, user, backend=SIGN_IN_BACKEND)
            return redirect("chat:index")
    return render(request, "registration/signup.html", {"form": form})


@require_GET
def verify_email(request: HttpRequest, token: str) -> HttpResponse:
    user, confirmed = services.verify(token)
    if user is None:
        return render(request, "registration/verify_failed.html", status=400)
    if confirmed:  # the first use of the link logs the new account in
        login(request, user, backend=SIGN_IN_BACKEND)
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
        services.send_verification(request, request.user)
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


class LoginView(auth_views.LoginView):
    """Django's login, saying after a failure how many attempts are left before the lock."""

    def form_invalid(self, form):
        username = form.data.get("username", "")
        failures = sum(
            AccessAttempt.objects.filter(
                username=username, ip_address=get_client_ip_address(self.request)
            ).values_list("failures_since_start", flat=True)
        )
        left = max(settings.AXES_FAILURE_LIMIT - failures, 0)
        return self.render_to_response(self.get_context_data(form=form, attempts_left=left))


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """A completed reset proves the account is its owner's: it lifts the login lock on that
    username (the lock page itself says to reset the password)."""

    def form_valid(self, form):
        response = super().form_valid(form)
        reset_lockout(username=form.user.get_username())
        return response


class PasswordResetView(auth_views.PasswordResetView):
    """Django's reset, its mail's link built from SITE_URL rather than the request's Host."""

    @property
    def extra_email_context(self):  # read per request: SITE_URL may differ in tests
        return {"site_url": settings.SITE_URL}
