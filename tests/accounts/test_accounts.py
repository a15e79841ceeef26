import re
from io import StringIO
from unittest import mock

import pytest
from django.contrib.auth.hashers import MD5PasswordHasher
from django.contrib.auth.models import User
from django.db import DatabaseError
from django.test import Client
from django.urls import reverse

from tests.helpers import PASSWORD, PRODUCTION_ENV, manage


def test_a_new_person_can_sign_up_and_is_logged_in(client, db, django_user_model):
    response = client.post(
        reverse("signup"),
        {
            "username": "newperson",
            "email": "new@example.com",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert response.status_code == 302
    user = django_user_model.objects.get(username="newperson")
    assert user.usage_account.billing_anchor == user.date_joined.date()
    assert client.get(reverse("chat:index")).status_code == 200


def test_sign_up_shows_password_validation_errors(client, db, django_user_model):
    response = client.post(
        reverse("signup"),
        {"username": "weak", "email": "weak@example.com", "password1": "123", "password2": "123"},
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "This password is too short" in body
    assert "This password is entirely numeric" in body
    assert not django_user_model.objects.filter(username="weak").exists()


def sign_up(client, username, email="new@example.com"):
    return client.post(
        reverse("signup"),
        {"username": username, "email": email, "password1": PASSWORD, "password2": PASSWORD},
    )


def test_sign_up_never_tells_whether_an_address_has_an_account(
    client, alice, settings, mailoutbox, django_user_model
):
    settings.ACCOUNTS_VERIFY_EMAIL = True
    taken = sign_up(client, "alice2", "ALICE@example.com")
    fresh = sign_up(Client(), "carol", "carol@example.com")
    assert taken.status_code == fresh.status_code == 200
    assert "Check your email" in taken.content.decode() and "already" not in taken.content.decode()
    assert not django_user_model.objects.filter(username="alice2").exists()
    # The owner of the known address hears of it; the new address gets its link.
    to = {m.to[0]: m for m in mailoutbox}
    assert "already has one" in to["ALICE@example.com"].body
    assert "/accounts/verify/" in to["carol@example.com"].body


def test_an_unverified_account_cannot_chat_until_it_follows_its_link(
    client, db, settings, mailoutbox, openai_mock
):
    settings.ACCOUNTS_VERIFY_EMAIL = True
    sign_up(client, "carol", "carol@example.com")
    assert "_auth_user_id" not in client.session  # signing up logs nobody in
    client.post(reverse("login"), {"username": "carol", "password": PASSWORD})
    refused = client.post("/api/chat/", {"prompt": "hi"}, content_type="application/json")
    assert (refused.status_code, refused.json()["code"]) == (403, "email_not_verified")
    assert openai_mock.requests == []
    assert "Send the link again" in client.get("/chat/").content.decode()
    [mail] = mailoutbox
    link = next(word for word in mail.body.split() if "/accounts/verify/" in word)
    assert client.get(link.replace("http://testserver", "")).status_code == 302
    ok = client.post("/api/chat/", {"prompt": "hi"}, content_type="application/json")
    assert ok.status_code == 200


def test_the_verification_link_logs_a_new_account_in_once(client, db, settings, mailoutbox):
    settings.ACCOUNTS_VERIFY_EMAIL = True
    settings.SITE_URL = "https://chat.example.com"
    sign_up(client, "carol", "carol@example.com")
    [mail] = mailoutbox
    link = next(w for w in mail.body.split() if "/accounts/verify/" in w)
    assert link.startswith("https://chat.example.com/")  # SITE_URL, not the request's host
    link = link.removeprefix("https://chat.example.com")
    assert client.get(link).url == reverse("chat:index")
    assert client.session["_auth_user_id"] == str(User.objects.get(username="carol").pk)
    again = Client().get(link)  # a used link is no key to the account
    assert again.url == reverse("login")


class CountingHasher(MD5PasswordHasher):
    """Counts the passwords hashed, to compare the work two sign-ups do."""

    algorithm = "counting-md5"
    hashed = 0

    def encode(self, password, salt):
        type(self).hashed += 1
        return super().encode(password, salt)


def test_sign_up_with_a_known_address_looks_and_works_like_a_new_one(alice, settings, mailoutbox):
    """B4: a new address got a session cookie, "Chat" in the nav and took 0.27 s; a known
    one none of that and 0.01 s."""
    settings.ACCOUNTS_VERIFY_EMAIL = True
    settings.PASSWORD_HASHERS = ["tests.accounts.test_accounts.CountingHasher"]

    def attempt(username, email):
        client = Client()
        client.get(reverse("signup"))
        CountingHasher.hashed, sent = 0, len(mailoutbox)
        response = sign_up(client, username, email)
        body = response.content.decode().replace(email, "EMAIL")
        return response, body, set(response.cookies), CountingHasher.hashed, len(mailoutbox) - sent

    known = attempt("alice2", "alice@example.com")
    new = attempt("carol", "carol@example.com")
    assert known[0].status_code == new[0].status_code == 200
    assert re.sub(r'value="[^"]+"', "", known[1]) == re.sub(r'value="[^"]+"', "", new[1])
    assert known[2] == new[2] and "sessionid" not in new[2]  # no login on either path
    assert known[3] == new[3] == 1  # one password hashed on each path
    assert known[4] == new[4] == 1  # one mail on each path


def test_a_tampered_verification_link_is_refused(client, db):
    assert client.get("/accounts/verify/not-a-token/").status_code == 400


def test_sign_ups_from_one_address_are_throttled(client, db, settings):
    settings.SIGNUP_RATE_LIMIT = "2/3600"
    assert sign_up(Client(), "one", "one@example.com").status_code == 302
    assert sign_up(Client(), "two", "two@example.com").status_code == 302
    third = sign_up(Client(), "three", "three@example.com")
    assert third.status_code == 429 and int(third["Retry-After"]) > 0


def test_sign_up_can_be_closed(client, db, settings):
    settings.ACCOUNTS_SIGNUP = "closed"
    assert sign_up(client, "nobody").status_code == 403
    assert 'href="/accounts/signup/"' not in client.get(reverse("login")).content.decode()


def _fail_login(client, username, times):
    for _ in range(times):
        client.post(reverse("login"), {"username": username, "password": "wrong-password"})


def test_repeated_failed_logins_lock_the_account_with_a_clear_message(alice, settings):
    client = Client()
    _fail_login(client, "alice", settings.AXES_FAILURE_LIMIT)
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert int(response["Retry-After"]) == settings.AXES_COOLOFF_TIME.total_seconds()


def test_the_lock_holds_a_username_from_one_address_not_the_others_behind_it(alice, bob, settings):
    """Failures locked the whole address: one person locked out a shared office."""
    office = Client(REMOTE_ADDR="10.1.1.1")
    _fail_login(office, "alice", settings.AXES_FAILURE_LIMIT)
    locked = office.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert locked.status_code == 429
    colleague = Client(REMOTE_ADDR="10.1.1.1")
    ok = colleague.post(reverse("login"), {"username": "bob", "password": PASSWORD})
    assert ok.status_code == 302


def test_a_failed_login_says_how_many_attempts_are_left(alice, settings):
    client = Client()
    response = client.post(reverse("login"), {"username": "alice", "password": "wrong-password"})
    left = settings.AXES_FAILURE_LIMIT - 1
    assert f"{left} more failed attempts from here will lock this account" in (
        response.content.decode()
    )


def test_a_completed_password_reset_lifts_the_lock(client, alice, settings, mailoutbox):
    """After 5 failures the page says "reset your password"; after the reset the user was
    still refused (429, the same advice)."""
    _fail_login(client, "alice", settings.AXES_FAILURE_LIMIT)
    client.post(reverse("password_reset"), {"email": "alice@example.com"})
    [mail] = mailoutbox
    link = next(word for word in mail.body.split() if "/accounts/reset/" in word)
    form_url = client.get(link.replace("http://testserver", ""), follow=True).redirect_chain[-1][0]
    new = "A-new-Pass-2027!"
    client.post(form_url, {"new_password1": new, "new_password2": new})
    response = client.post(reverse("login"), {"username": "alice", "password": new})
    assert response.status_code == 302


def test_staff_can_unlock_a_locked_account(alice, settings):
    from django.core.management import call_command

    client = Client()
    _fail_login(client, "alice", settings.AXES_FAILURE_LIMIT)
    call_command("axes_reset_username", "alice", stdout=StringIO())
    call_command("axes_reset_ip", "127.0.0.1", stdout=StringIO())
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302


def test_a_forgotten_password_can_be_reset_by_email(client, alice, mailoutbox, settings):
    settings.SITE_URL = "https://chat.example.com"
    response = client.post(reverse("password_reset"), {"email": "alice@example.com"})
    assert response.status_code == 302
    [mail] = mailoutbox
    link = next(word for word in mail.body.split() if "/accounts/reset/" in word)
    assert link.startswith("https://chat.example.com/accounts/reset/")
    form_url = client.get(link.replace("http://testserver", ""), follow=True).redirect_chain[-1][0]
    done = client.post(
        form_url, {"new_password1": "A-new-Pass-2027!", "new_password2": "A-new-Pass-2027!"}
    )
    assert done.status_code == 302
    assert (
        Client()
        .post(reverse("login"), {"username": "alice", "password": "A-new-Pass-2027!"})
        .status_code
        == 302
    )


def test_login_and_logout(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert response.url == reverse("chat:index")
    assert client.get(reverse("usage:dashboard")).status_code == 200
    assert client.get(reverse("logout")).status_code == 405  # logout is POST only
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert client.get(reverse("usage:dashboard")).status_code == 302


def test_a_wrong_password_shows_an_error(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert "didn't match" in response.content.decode()


def test_password_change(client, alice):
    client.force_login(alice)
    new = "another-Long-pass-2027"
    response = client.post(
        reverse("password_change"),
        {"old_password": PASSWORD, "new_password1": new, "new_password2": new},
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password(new)


@pytest.mark.parametrize(
    "name", ["chat:index", "chat:home", "usage:dashboard", "usage:export", "password_change"]
)
def test_pages_require_login(client, db, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_navigation_shows_admin_only_to_staff(client, alice, staff):
    client.force_login(alice)
    assert 'href="/admin/"' not in client.get("/chat/").content.decode()
    client.force_login(staff)
    assert 'href="/admin/"' in client.get("/chat/").content.decode()


def test_healthz_answers_200_with_the_database_up(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "up", "cache": "up"}


def test_healthz_says_degraded_but_200_when_the_cache_is_down(client, db):
    from django.test import override_settings

    from chatusage import cache as shared_cache

    dead_redis = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    shared_cache.shared.cache_clear()
    try:
        with override_settings(CACHES=dead_redis):
            response = client.get("/healthz")
    finally:
        shared_cache.shared.cache_clear()
    assert response.status_code == 200
    assert response.json() == {"status": "degraded", "database": "up", "cache": "down"}


def test_healthz_answers_503_when_the_database_is_down(client, db):
    from django.db import connection

    from chatusage import views

    if connection.vendor == "postgresql":
        # The check's own connection goes to a port where no database listens.
        views.close_health_connection()
        with mock.patch.dict(connection.settings_dict, {"PORT": "1"}):
            response = client.get("/healthz")
    else:
        with mock.patch(
            "django.db.backends.utils.CursorWrapper.execute", side_effect=DatabaseError
        ):
            response = client.get("/healthz")
    assert response.status_code == 503
    assert client.get("/healthz").status_code == 200  # and back once it answers


def test_check_deploy_is_clean_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "SECRET_KEY"}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "SECRET_KEY is required when DEBUG is off" in result.stderr
