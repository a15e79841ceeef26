"""The process's one PostHog capture client, shared by chat (via the OpenAI wrapper) and the
staff commands (backfill). Disabled, sending nothing, without POSTHOG_API_KEY.
https://posthog.com/docs/libraries/python
"""

import atexit
import logging
import threading

import posthog
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

log = logging.getLogger(__name__)

_lock = threading.RLock()
_client: posthog.Posthog | None = None
_listeners: list = []  # called after a reset, so dependants drop what they built on it


def _on_capture_error(error: Exception, batch) -> None:
    # The batch holds event properties and the error may hold the URL; neither holds the key.
    log.warning(
        "PostHog capture failed, %d events dropped: %s", len(batch or []), type(error).__name__
    )


# The property that carries when a generation's call was reserved (ISO 8601, UTC).
RESERVED_AT = "chatusage_reserved_at"
# The markup (percent) snapshotted on the generation: its charge = cost x (1 + this / 100).
MARKUP_PERCENT = "chatusage_markup_percent"


def _dated_at_reservation(event: dict) -> dict:
    """An $ai_generation event is dated when its call was reserved, not when the wrapper
    captured it at the end: the ledger charges a call to the day and cycle it began in, and
    PostHog's queries (which filter on the event's timestamp) must agree with it."""
    reserved_at = (event.get("properties") or {}).get(RESERVED_AT)
    if reserved_at:
        event["timestamp"] = reserved_at
    return event


def client() -> posthog.Posthog:
    global _client
    with _lock:
        if _client is None:
            _client = posthog.Posthog(
                settings.POSTHOG_API_KEY or "disabled",
                host=settings.POSTHOG_HOST,
                disabled=not settings.POSTHOG_API_KEY,
                privacy_mode=settings.POSTHOG_PRIVACY_MODE,
                on_error=_on_capture_error,
                before_send=_dated_at_reservation,
                timeout=5,
                max_retries=3,
            )
        return _client


def on_reset(callback) -> None:
    _listeners.append(callback)


def reset(flush: bool = True) -> None:
    """Drop the client (after a settings change); with `flush`, deliver its queue first."""
    global _client
    with _lock:
        if _client is not None and flush:
            _client.shutdown()
        _client = None
    for callback in _listeners:  # outside the lock: a listener may be building a client
        callback()


def shutdown() -> None:
    """Flush queued events. atexit, and gunicorn's worker_exit: the SDK alone waits ~1 s."""
    with _lock:
        ph = _client
    if ph is not None:
        ph.flush()
        ph.shutdown()


atexit.register(shutdown)


@receiver(setting_changed)
def _settings_changed(setting, **kwargs):
    if setting.startswith(("OPENAI_", "POSTHOG_")):
        reset(flush=False)
