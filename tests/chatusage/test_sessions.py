"""The session engine (chatusage.sessions): Django's database sessions, read in one plain
statement, with Django's behaviour: signed-in requests stay signed in, expired and unknown
sessions are anonymous, sessions written by Django's own engine still load."""

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends import db as django_db
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chatusage.sessions import SessionStore
from tests.helpers import PASSWORD

pytestmark = pytest.mark.django_db


def test_the_project_uses_it():
    assert settings.SESSION_ENGINE == "chatusage.sessions"


def test_a_signed_in_client_stays_signed_in(alice):
    client = Client()
    assert client.post(
        "/accounts/login/", {"username": "alice", "password": PASSWORD}
    ).status_code in (302, 303)
    assert client.get("/usage/").status_code == 200
    assert client.get("/api/usage/").json()  # the JSON API reads the same session


def test_one_statement_reads_the_session(alice_client):
    key = alice_client.cookies[settings.SESSION_COOKIE_NAME].value
    with CaptureQueriesContext(connection) as queries:
        data = SessionStore(key).load()
    assert data[SESSION_KEY] == str(_alice_id())
    assert len(queries) == 1
    assert queries[0]["sql"].startswith("SELECT session_data FROM django_session")


def test_an_expired_session_is_anonymous(alice_client):
    key = alice_client.cookies[settings.SESSION_COOKIE_NAME].value
    Session.objects.filter(pk=key).update(expire_date=timezone.now() - timedelta(seconds=1))
    store = SessionStore(key)
    assert store.load() == {}
    assert store.session_key is None  # a save makes a new key, never revives this one
    response = alice_client.get("/usage/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_an_unknown_key_is_anonymous(db):
    store = SessionStore("x" * 32)
    assert store.load() == {}
    assert store.session_key is None


def test_a_session_written_by_djangos_engine_loads(alice):
    theirs = django_db.SessionStore()
    theirs["answer"] = 42
    theirs.create()
    assert SessionStore(theirs.session_key).load() == {"answer": 42}


def test_the_async_read_is_the_same(alice_client):
    key = alice_client.cookies[settings.SESSION_COOKIE_NAME].value
    store = SessionStore(key)
    assert async_to_sync(store.aload)()[SESSION_KEY] == str(_alice_id())
    assert async_to_sync(SessionStore("y" * 32).aload)() == {}


def _alice_id() -> int:
    from django.contrib.auth.models import User

    return User.objects.get(username="alice").pk
