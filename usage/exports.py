"""Generations as CSV: the user's export (/usage/export.csv) and the admin's action."""

import csv
from collections.abc import AsyncIterator, Iterable, Iterator
from zoneinfo import ZoneInfo

from django.db.models import Q, QuerySet
from django.http import HttpResponse, StreamingHttpResponse

from chatusage import cache as shared_cache
from chatusage.db import step
from usage.models import Generation

PAGE_SIZE = 2000  # generations read per database step
EXPORTS_AT_ONCE = 2  # per user: a third waits for one of them to finish
EXPORT_SLOT_SECONDS = 3600  # a slot a crashed export never gave back frees itself

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
    "charge_usd",  # what the user is charged
    "cost_estimated",
    "latency_ms",
]
STAFF_COLUMNS = [*COLUMNS, "cost_usd", "markup_percent", "user", "error"]


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
            g.charge,
            g.cost_estimated,
            "" if g.latency_ms is None else g.latency_ms,
        ]
        if staff:
            row += [g.cost, g.markup_percent, g.user.get_username(), g.error]
        yield writer.writerow([safe_cell(value) for value in row])


def _page(generations: QuerySet, after: tuple | None) -> list[Generation]:
    if after is not None:
        created_at, pk = after
        generations = generations.filter(
            Q(created_at__gt=created_at) | Q(created_at=created_at, pk__gt=pk)
        )
    return list(generations.order_by("created_at", "pk")[:PAGE_SIZE])


async def csv_pages(generations: QuerySet, tz: ZoneInfo, staff: bool = False) -> AsyncIterator[str]:
    """csv_lines() a page at a time, each page read in a short database step.

    Under ASGI a response's sync iterator is read whole before the first byte goes out, so
    300,000 generations were held in memory and the download waited 10 s to start. Here the
    first bytes go after one page, and memory holds one page, whatever the export's size.
    Keyset pages (created_at, id): each is one indexed query, however deep.
    """
    after = None
    header = True
    while True:
        page = await step(_page, generations, after)
        lines = list(csv_lines(page, tz, staff))
        yield "".join(lines if header else lines[1:])
        header = False
        if len(page) < PAGE_SIZE:
            return
        after = (page[-1].created_at, page[-1].pk)


class ExportResponse(StreamingHttpResponse):
    """A download that gives its export slot back when it ends, however it ends (the server
    closes every response, read to the end or not)."""

    def __init__(self, content, slot: str, filename: str):
        super().__init__(content, content_type="text/csv; charset=utf-8")
        self._slot = slot
        self["Content-Disposition"] = f'attachment; filename="{filename}"'

    def close(self):
        try:
            shared_cache.delete(self._slot)
        finally:
            super().close()


def csv_response(
    user, generations: QuerySet, tz: ZoneInfo, filename: str, staff: bool = False
) -> HttpResponse:
    """The export as a streamed download, or 429 while the user already runs
    EXPORTS_AT_ONCE of them."""
    for slot in range(EXPORTS_AT_ONCE):
        key = f"export:{user.pk}:{slot}"
        if shared_cache.add(key, 1, EXPORT_SLOT_SECONDS, when_down=True):
            break
    else:
        response = HttpResponse(
            "You are already downloading exports; try again when one has finished.",
            status=429,
            content_type="text/plain; charset=utf-8",
        )
        response["Retry-After"] = "30"
        return response
    if staff:
        generations = generations.select_related("user")
    return ExportResponse(csv_pages(generations, tz, staff), key, filename)
