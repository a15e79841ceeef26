"""The sign-in backend (accounts.backends.UserBackend): Django's ModelBackend with the
signed-in user's row read by one plain statement. Same user, same refusals, sessions from
before it still signed in, a failed sign-in hashed once."""

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.backends import UserBackend
from tests.accounts.test_accounts import CountingHasher
from tests.helpers import PASSWORD

pytestmark = pytest.mark.django_db

OURS = "accounts.backends.UserBackend"
DJANGOS = "django.contrib.auth.backends.ModelBackend"


def _login(client, password=PASSWORD, username="alice"):
    return client.post("/accounts/login/", {"username": username, "password": password})


def test_signing_in_uses_it(alice):
    client = Client()
    assert _login(client).status_code == 302
    assert client.session[BACKEND_SESSION_KEY] == OURS
    assert client.get("/usage/").status_code == 200
    assert client.get("/api/usage/").status_code == 200


def test_the_user_is_the_one_the_orm_loads(alice):
    alice.first_name, alice.is_staff = "Alice", True
    alice.last_login = timezone.now() - timedelta(days=3, microseconds=7)
    alice.save()
    expected, ours = ModelBackend().get_user(alice.pk), UserBackend()
    for loaded in (ours.get_user(alice.pk), async_to_sync(ours.aget_user)(alice.pk)):
        assert type(loaded) is User and not loaded._state.adding
        assert loaded._state.db == expected._state.db
        for field in User._meta.concrete_fields:
            ours, orms = getattr(loaded, field.attname), getattr(expected, field.attname)
            assert (ours, type(ours)) == (orms, type(orms)), field.name
        assert loaded.last_login.tzinfo is not None  # SQLite stores it naive


def test_one_statement_loads_the_user(alice):
    with CaptureQueriesContext(connection) as queries:
        assert UserBackend().get_user(alice.pk) == alice
    assert len(queries) == 1
    assert queries[0]["sql"].startswith("SELECT ") and "auth_user" in queries[0]["sql"]


def test_an_inactive_or_deleted_user_is_nobody(alice):
    client = Client()
    client.force_login(alice)
    assert client.get("/api/usage/").status_code == 200
    User.objects.filter(pk=alice.pk).update(is_active=False)
    assert UserBackend().get_user(alice.pk) is None
    assert client.get("/api/usage/").status_code == 401
    User.objects.filter(pk=alice.pk).delete()
    assert UserBackend().get_user(alice.pk) is None


def test_a_session_signed_in_before_stays_signed_in(alice):
    client = Client()
    client.force_login(alice, backend=DJANGOS)
    assert client.session[BACKEND_SESSION_KEY] == DJANGOS
    assert client.get("/usage/").status_code == 200
    assert DJANGOS in settings.AUTHENTICATION_BACKENDS


def test_a_changed_password_signs_other_sessions_out(alice):
    """Django's session check (the password's hash) runs on the user this backend loads."""
    elsewhere = Client()
    assert _login(elsewhere).status_code == 302
    alice.set_password("another-long-password-42")
    alice.save()
    response = elsewhere.get("/usage/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("username", ["alice", "nobody"])
def test_a_failed_sign_in_hashes_the_password_once(alice, settings, username):
    """ModelBackend, listed after ours for old sessions, must not check the password again
    (twice the work for every wrong password); the failure is still recorded once."""
    settings.PASSWORD_HASHERS = ["tests.accounts.test_accounts.CountingHasher"]
    CountingHasher.hashed = 0
    response = _login(Client(), password="wrong-password", username=username)
    assert response.status_code == 200 and "sessionid" not in response.cookies
    assert CountingHasher.hashed == 1
    assert AccessAttempt.objects.get(username=username).failures_since_start == 1
