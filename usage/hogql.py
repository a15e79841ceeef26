"""The one module that talks to PostHog's query API.

https://posthog.com/docs/api/queries : POST {api host}/api/projects/{id}/query/
with a personal API key (scope query:read) as Bearer. Inputs go in `values`
and appear in the HogQL text only as {placeholders}, never spliced in.
"""

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from django.conf import settings

log = logging.getLogger(__name__)

REFRESH_MODES = {"blocking", "force_blocking"}


class PostHogError(Exception):
    """Base of the query API failures. Messages never contain the key."""


class PostHogUnavailable(PostHogError):
    """Timeout, connection error, 5xx, or throttled: try again later."""

    def __init__(self, message: str, retry_after: int | None = None):
        self.retry_after = retry_after
        super().__init__(message)


class PostHogQueryError(PostHogError):
    """400: the query was refused (syntax, unknown field, missing placeholder)."""


class PostHogAuthError(PostHogError):
    """401/403: the personal API key is wrong, lacks query:read, or the project is wrong."""


class PostHogNotConfigured(PostHogError):
    pass


class PostHogConfigError(PostHogError):
    """404: no such project (a wrong POSTHOG_PROJECT_ID or API host). Not transient."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[dict[str, Any]]
    is_cached: bool
    hogql: str | None = None


_local = threading.local()


def _session() -> requests.Session:
    """One Session per thread: connection reuse across calls without sharing across threads."""
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    return session


def is_configured() -> bool:
    return bool(settings.POSTHOG_PROJECT_ID and settings.POSTHOG_PERSONAL_API_KEY)


def query_url() -> str:
    return f"{settings.POSTHOG_API_HOST}/api/projects/{settings.POSTHOG_PROJECT_ID}/query/"


def _retry_after(response: requests.Response) -> int | None:
    value = response.headers.get("Retry-After", "")
    return int(value) if value.isdigit() else None


def _detail(status: int, body: bytes) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return f"HTTP {status}"
    if isinstance(payload, dict):
        return str(payload.get("detail") or payload.get("code") or f"HTTP {status}")
    return f"HTTP {status}"


def _read_by(response: requests.Response, deadline: float) -> bytes:
    """The whole body, or PostHogUnavailable once `deadline` (monotonic) has passed.

    requests' read timeout bounds each read, not the answer: a server that sends a byte now
    and then would hold the page for as long as it liked. So the body is read a socket read
    at a time, each allowed only the time left.
    """
    raw = response.raw
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    chunks = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PostHogUnavailable("PostHog did not answer in time.")
            if sock is not None:
                sock.settimeout(left)
            chunk = raw.read1(64 * 1024, decode_content=True)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        if isinstance(exc, TimeoutError | urllib3.exceptions.TimeoutError):
            raise PostHogUnavailable("PostHog did not answer in time.") from exc
        raise PostHogUnavailable(f"PostHog could not be read ({type(exc).__name__}).") from exc
    finally:
        # Read to the end, urllib3 has already put the connection back for the next query;
        # cut off half way, this closes it, so nobody reads the rest as another answer.
        response.close()


def run(query: str, values: dict[str, Any], name: str, refresh: str = "blocking") -> QueryResult:
    """Run one HogQL query; rows come back as dicts keyed by column name.

    The whole call, from connecting to the last byte, takes at most the sum of
    POSTHOG_QUERY_TIMEOUT (connect, read): a page waiting on it is never held longer.
    """
    if not is_configured():
        raise PostHogNotConfigured("PostHog's project id and personal API key are not set.")
    if refresh not in REFRESH_MODES:
        raise ValueError(f"refresh must be one of {sorted(REFRESH_MODES)}")
    body = {
        "query": {"kind": "HogQLQuery", "query": query, "values": values},
        "name": name,
        "refresh": refresh,
    }
    deadline = time.monotonic() + sum(settings.POSTHOG_QUERY_TIMEOUT)
    try:
        response = _session().post(
            query_url(),
            json=body,
            headers={"Authorization": f"Bearer {settings.POSTHOG_PERSONAL_API_KEY}"},
            timeout=settings.POSTHOG_QUERY_TIMEOUT,
            stream=True,
        )
    except requests.Timeout as exc:
        raise PostHogUnavailable("PostHog did not answer in time.") from exc
    except requests.RequestException as exc:
        raise PostHogUnavailable(f"PostHog could not be reached ({type(exc).__name__}).") from exc
    content = _read_by(response, deadline)

    status = response.status_code
    if status == 200:
        try:
            payload = json.loads(content)
            columns = list(payload["columns"])
            rows = [dict(zip(columns, row, strict=True)) for row in payload["results"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise PostHogUnavailable("PostHog sent a response that could not be read.") from exc
        return QueryResult(columns, rows, bool(payload.get("is_cached")), payload.get("hogql"))
    detail = _detail(status, content)
    log.warning("PostHog query %r failed: HTTP %s %s", name, status, detail)
    if status == 400:
        raise PostHogQueryError(f"PostHog refused the query: {detail}")
    if status in (401, 403):
        raise PostHogAuthError(f"PostHog refused the credentials (HTTP {status}): {detail}")
    if status == 404:
        raise PostHogConfigError(
            f"PostHog has no project {settings.POSTHOG_PROJECT_ID} at "
            f"{settings.POSTHOG_API_HOST} (HTTP 404): check POSTHOG_PROJECT_ID and "
            "POSTHOG_API_HOST."
        )
    if status == 429:
        raise PostHogUnavailable("PostHog is throttling queries.", _retry_after(response))
    raise PostHogUnavailable(f"PostHog failed to answer (HTTP {status}).")
