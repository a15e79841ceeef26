"""Answers delivered while the database was away, kept on local disk until they are saved.

A turn whose settle still fails after its retries (chat/services.py) writes its
AnswerRecord here, one file per generation, written whole or not at all (a temporary file
renamed into place). `manage.py settle_spooled` (cron, every minute) saves each one exactly
as the turn would have, billed and shown in the conversation, and removes its file. Saving
is idempotent, so a file replayed twice bills once.
"""

import json
import logging
import os
import tempfile
from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from uuid import UUID

from django.conf import settings

from usage.limits import Reservation
from usage.pricing import Price, TokenUsage

log = logging.getLogger(__name__)


def directory() -> Path:
    path = Path(settings.CHAT_SPOOL_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _plain(value):
    if isinstance(value, UUID | Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def keep(record) -> Path:
    """Write `record` (a services.AnswerRecord) to disk; its path."""
    target = directory() / f"{record.reservation.generation_id}.json"
    data = json.dumps(asdict(record), default=_plain).encode()
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    log.error(
        "Answer of generation %s kept on disk until the database is back: %s",
        record.reservation.generation_id,
        target,
    )
    return target


def load(path: Path):
    """The services.AnswerRecord kept at `path`."""
    from chat.services import AnswerRecord

    data = json.loads(path.read_bytes())
    held = data["reservation"]
    price = held.pop("price")
    reservation = Reservation(
        **{
            **held,
            "generation_id": UUID(held["generation_id"]),
            "reserved_cost": Decimal(held["reserved_cost"]),
            "reserved_at": datetime.fromisoformat(held["reserved_at"]),
            "markup_percent": Decimal(held["markup_percent"]),
            "price": Price(
                price["model"],
                Decimal(price["input_per_1m"]),
                Decimal(price["cached_input_per_1m"]),
                Decimal(price["output_per_1m"]),
            ),
        }
    )
    return AnswerRecord(
        **{
            **data,
            "reservation": reservation,
            "usage": TokenUsage(**data["usage"]),
            "conversation_id": UUID(data["conversation_id"]),
        }
    )


def kept() -> list[Path]:
    return sorted(directory().glob("*.json"))


def save_all() -> tuple[int, int]:
    """Save every kept answer: (saved, still failing). A saved one's file is removed."""
    saved = failed = 0
    for path in kept():
        try:
            load(path).save()
        except Exception:
            log.warning("A kept answer could not be saved yet: %s", path, exc_info=True)
            failed += 1
            continue
        path.unlink(missing_ok=True)
        saved += 1
    return saved, failed
