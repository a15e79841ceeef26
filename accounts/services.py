"""Sign-up, address verification and the mails they send.

Sign-up never tells whether an address is registered: with verification on, a sign-up
with a known address creates nothing and mails the address's owner instead, and the page,
the cookies and the work done (a password hashed, a mail sent) are the same as for a new
account. Nobody is logged in by signing up then: the verification link logs the new
account in, once. Without verification, addresses are not unique.
"""

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from django.core import signing
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.urls import reverse

from usage.models import UsageAccount

VERIFY_SALT = "chatusage.verify-email"
VERIFY_MAX_AGE = 3 * 24 * 3600  # seconds a verification link works


def _mail(template: str, to: str, context: dict) -> None:
    subject, _, body = render_to_string(template, context).partition("\n")
    send_mail(subject.strip(), body.lstrip(), None, [to])


def site_url(path: str) -> str:
    """An absolute link for a mail: SITE_URL, never the request's Host header (which the
    client chooses, so a link built from it could point anywhere)."""
    return settings.SITE_URL + path


def verification_token(user: User) -> str:
    return signing.dumps({"user": user.pk, "email": user.email}, salt=VERIFY_SALT)


def send_verification(request, user: User) -> None:
    link = site_url(reverse("verify_email", args=[verification_token(user)]))
    _mail("registration/verify_email.txt", user.email, {"user": user, "link": link})


def verify(token: str) -> tuple[User | None, bool]:
    """The user a valid, unexpired link was made for (their address now confirmed), or None;
    and whether this use confirmed it (False when it was confirmed before)."""
    try:
        data = signing.loads(token, salt=VERIFY_SALT, max_age=VERIFY_MAX_AGE)
        user = User.objects.get(pk=data["user"], email=data["email"])
    except (signing.BadSignature, User.DoesNotExist, KeyError, TypeError):
        return None, False
    confirmed = UsageAccount.objects.filter(user=user, email_verified=False).update(
        email_verified=True
    )
    return user, bool(confirmed)


def sign_up(request, form) -> User | None:
    """Create the account from a valid SignupForm; None when the address is already taken
    (its owner is told by mail instead, and the caller shows the same page)."""
    email = form.cleaned_data["email"]
    if settings.ACCOUNTS_VERIFY_EMAIL and User.objects.filter(email__iexact=email).exists():
        make_password(form.cleaned_data["password1"])  # the work a new account's save does
        login_url = site_url(reverse("login"))
        reset_url = site_url(reverse("password_reset"))
        _mail(
            "registration/already_registered.txt",
            email,
            {"login_url": login_url, "reset_url": reset_url},
        )
        return None
    user = form.save()
    if settings.ACCOUNTS_VERIFY_EMAIL:
        UsageAccount.objects.filter(user=user).update(email_verified=False)
        send_verification(request, user)
    return user
