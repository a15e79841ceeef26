"""Generations as CSV: the user's export (/usage/export.csv) and the admin's action."""

import csv
from collections.abc import Iterable, Iterator
from zoneinfo import ZoneInfo

from usage.models import Generation

COLUMNS = [
    "created_at",
    "settled_at",
    "generation_id",
    "model",
    "provider",
    "status",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "cost_usd",
    "cost_estimated",
    "latency_ms",
]
STAFF_COLUMNS = [*COLUMNS, "user", "error"]


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """A text cell a spreadsheet would run as a formula gets a leading apostrophe.

    https://owasp.org/www-community/attacks/CSV_Injection
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class _Echo:
    """A file-like object whose write() returns the line, for streaming csv.writer output."""

    def write(self, value):
        return value


def csv_lines(
    generations: Iterable[Generation], tz: ZoneInfo, staff: bool = False
) -> Iterator[str]:
    """The header, then one line per generation; staff also see the user and the error."""
    writer = csv.writer(_Echo())
    yield writer.writerow(STAFF_COLUMNS if staff else COLUMNS)
    for g in generations:
        row = [
            g.created_at.astimezone(tz).isoformat(),
            g.settled_at.astimezone(tz).isoformat() if g.settled_at else "",
            g.id,
            g.model,
            g.provider,
            g.status,
            g.input_tokens,
            g.cached_input_tokens,
            g.output_tokens,
            g.cost,
            g.cost_estimated,
            "" if g.latency_ms is None else g.latency_ms,
        ]
        if staff:
            row += [g.user.get_username(), g.error]
        yield writer.writerow([safe_cell(value) for value in row])
