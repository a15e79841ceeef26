"""The ledger's per-message statements, for chatusage.db.batch() to send several in one round
trip.

reserve() and settle() (usage/limits.py) run on every chat message, so each of their
statements is plain SQL (the ORM spent more time compiling queries than PostgreSQL took
answering them), the same text on SQLite and PostgreSQL where both allow it, and
batch() sends a transaction's statements together: on PostgreSQL in pipeline mode, one
round trip for all of them. The server still runs them one after another and, under READ
COMMITTED, gives each its own snapshot: a read queued after a `FOR UPDATE` sees everything
the transactions it waited for committed, exactly as if it had been sent alone.

Only table and column names from the models are written into the SQL text; every value
is a parameter.
"""
# ruff: noqa: S608 (see above: no value is ever formatted into a statement)

from datetime import date, datetime
from decimal import Decimal
from uuid import UUID

from chatusage.db import params, postgres
from usage.models import Alert, DailyUsage, Generation, UsageAccount

GENERATION = Generation._meta.db_table
DAILY = DailyUsage._meta.db_table
ACCOUNT = UsageAccount._meta.db_table
ALERT = Alert._meta.db_table
PENDING = Generation.Status.PENDING.value


# --- reserve() ---------------------------------------------------------------------

ACCOUNT_FIELDS = [
    "id",
    "billing_anchor",
    "budget_usd",
    "message_limit",
    "alert_thresholds",
    "blocked",
    "email_verified",
    "stripe_customer_id",
]


def lock_account(user_id: int) -> tuple[str, list]:
    """The user's account row, locked until the transaction ends. SQLite has no row locks:
    its transactions are IMMEDIATE (settings.py), so the whole database is held instead."""
    lock = " FOR UPDATE" if postgres() else ""
    sql = f"SELECT {', '.join(ACCOUNT_FIELDS)} FROM {ACCOUNT} WHERE user_id = %s{lock}"
    return sql, [user_id]


def read_account(user_id: int) -> tuple[str, list]:
    """The user's account row, as lock_account() reads it, without the lock."""
    return f"SELECT {', '.join(ACCOUNT_FIELDS)} FROM {ACCOUNT} WHERE user_id = %s", [user_id]


def account_from(user_id: int, row: tuple) -> UsageAccount:
    values = dict(zip(ACCOUNT_FIELDS, row, strict=True))
    if isinstance(values["billing_anchor"], str):  # SQLite answers text and numbers
        values["billing_anchor"] = date.fromisoformat(values["billing_anchor"])
    if values["budget_usd"] is not None:
        values["budget_usd"] = Decimal(str(values["budget_usd"])).quantize(Decimal("0.01"))
    values["blocked"] = bool(values["blocked"])
    values["email_verified"] = bool(values["email_verified"])
    return UsageAccount(user_id=user_id, **values)


# Settled spend per local day since `since`, then one row (day NULL) for the calls in flight:
# their worst cases, how many, and how many have a lapsed lease (their turn stopped). Per day, so
# the read can go out before the account (and so its billing cycle) is known: the caller
# sums the days of the cycle. Settled and pending come from one statement, one snapshot:
# two reads could see a settle commit in between and count that call twice or not at all.
SPEND_SQL = f"""
SELECT d.day, SUM(d.charge), SUM(d.generations), 0
  FROM {DAILY} d
 WHERE d.user_id = %(user)s AND d.day >= %(since)s
 GROUP BY d.day
UNION ALL
SELECT NULL, COALESCE(SUM(g.reserved_cost), 0), COUNT(*),
       COALESCE(SUM(CASE WHEN COALESCE(g.lease_until, g.created_at) < %(now)s
                         THEN 1 ELSE 0 END), 0)
  FROM {GENERATION} g
 WHERE g.user_id = %(user)s AND g.status = %(pending)s
"""


def spend(user_id: int, since: date, now: datetime) -> tuple[str, dict]:
    return SPEND_SQL, params({"user": user_id, "since": since, "now": now, "pending": PENDING})


GENERATION_FIELDS = [
    "id",
    "user_id",
    "conversation_id",
    "model",
    "provider",
    "status",
    "reserved_cost",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "cost",
    "charge",
    "markup_percent",
    "cost_estimated",
    "exceeded_reservation",
    "error",
    "price_input_per_1m",
    "price_cached_input_per_1m",
    "price_output_per_1m",
    "created_at",
    "lease_until",
]
INSERT_SQL = (
    f"INSERT INTO {GENERATION} ({', '.join(GENERATION_FIELDS)}) "
    f"VALUES ({', '.join(['%s'] * len(GENERATION_FIELDS))})"
)


def insert_reservation(reservation, conversation_id, lease_until: datetime) -> tuple[str, list]:
    """A pending generation holding `reservation`'s worst case (a limits.Reservation):
    settle() fills in the rest."""
    price = reservation.price
    values = {
        "id": reservation.generation_id,
        "user_id": reservation.user_id,
        "conversation_id": conversation_id,
        "model": reservation.model,
        "provider": reservation.provider,
        "status": PENDING,
        "reserved_cost": reservation.reserved_cost,
        "input_tokens": 0,
        "cached_input_tokens": 0,
        "output_tokens": 0,
        "cost": Decimal(0),
        "charge": Decimal(0),
        "markup_percent": reservation.markup_percent,
        "cost_estimated": False,
        "exceeded_reservation": False,
        "error": "",
        "price_input_per_1m": price.input_per_1m,
        "price_cached_input_per_1m": price.cached_input_per_1m,
        "price_output_per_1m": price.output_per_1m,
        "created_at": reservation.reserved_at,
        "lease_until": lease_until,
    }
    return INSERT_SQL, params([values[field] for field in GENERATION_FIELDS])


def take_back(insert: tuple[str, list]) -> tuple[str, list]:
    """Delete the row that `insert` (from insert_reservation()) inserted."""
    return f"DELETE FROM {GENERATION} WHERE id = %s", [insert[1][0]]


def renew_lease(generation_id: UUID, until: datetime) -> tuple[str, list]:
    """Extend a pending call's lease; a settled row is left as it is."""
    return (
        f"UPDATE {GENERATION} SET lease_until = %s WHERE id = %s AND status = %s",
        params([until, generation_id, PENDING]),
    )


# --- settle() ----------------------------------------------------------------------

SETTLED_FIELDS = [
    "status",
    "cost",
    "charge",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "cost_estimated",
    "exceeded_reservation",
    "latency_ms",
    "http_status",
    "settled_at",
    "error",
]
_SET = ", ".join(f"{field} = %({field})s" for field in SETTLED_FIELDS)
_UPDATE = (
    f"UPDATE {GENERATION} SET {_SET} WHERE id = %(id)s AND status IN (%(pending)s, %(abandoned)s)"
)
# Add the call to its (user, day, model) row, or start that row: the unique constraint
# arbitrates between concurrent settles, so no lock is needed.
_ROLLUP = f"""
INSERT INTO {DAILY} AS d (user_id, day, model, generations, errors, input_tokens,
                          cached_input_tokens, output_tokens, cost, charge)
SELECT {{user}}, %(day)s, {{model}}, %(ok)s, %(failed)s, %(input_tokens)s,
       %(cached_input_tokens)s, %(output_tokens)s, %(cost)s, %(charge)s
  {{source}}
ON CONFLICT (user_id, day, model) DO UPDATE SET
    generations = d.generations + excluded.generations,
    errors = d.errors + excluded.errors,
    input_tokens = d.input_tokens + excluded.input_tokens,
    cached_input_tokens = d.cached_input_tokens + excluded.cached_input_tokens,
    output_tokens = d.output_tokens + excluded.output_tokens,
    cost = d.cost + excluded.cost,
    charge = d.charge + excluded.charge
RETURNING user_id
"""
# What an outbox (usage/hooks.py) reads of the row a settle left: the relation `settled`.
SETTLED = "id, user_id, model, status, charge, settled_at"
# PostgreSQL: one statement. The UPDATE decides who settles (a second settle finds the row
# settled and changes nothing); the rollup adds, and the outboxes' INSERTs (as more
# `outbox_N AS (...)` after it) record, only what it returned.
SETTLE_POSTGRES = f"""
WITH settled AS ({_UPDATE} RETURNING {SETTLED}){{outboxes}}
{_ROLLUP.format(user="settled.user_id", model="settled.model", source="FROM settled")}
"""
# SQLite has no UPDATE inside WITH: two statements in the caller's transaction, the second
# adding to the rollup only if the first changed a row (changes(): the last statement's),
# then each outbox's reading the row as it now stands: settled by this call, or by the one
# before it, whose outbox rows are in already (the INSERTs skip what is there).
SETTLE_SQLITE = [
    _UPDATE,
    _ROLLUP.format(user="%(user)s", model="%(model)s", source="WHERE changes() = 1"),
]
SETTLED_SQLITE = f"WITH settled AS (SELECT {SETTLED} FROM {GENERATION} WHERE id = %(id)s)\n"


def settle(
    generation_id: UUID, user_id: int, model: str, day: date, fields: dict, outboxes=()
) -> tuple[list, int]:
    """The statements that settle one generation, and which of them returns a row if this
    call settled it. On SQLite, run them in one transaction.

    `outboxes`: INSERT ... SELECT ... FROM settled statements with named parameters (an
    outbox's of usage/hooks.py), recorded with the settle: on PostgreSQL inside its one
    statement, so they add no statement of their own.
    """
    ok = fields["status"] == Generation.Status.OK
    values = {
        **fields,
        "id": generation_id,
        "user": user_id,
        "model": model,
        "day": day,
        "ok": int(ok),
        "failed": int(not ok),
        "pending": PENDING,
        "abandoned": Generation.Status.ABANDONED.value,
    }
    if postgres():
        written = "".join(f",\noutbox_{n} AS ({sql})" for n, (sql, _) in enumerate(outboxes))
        for _, extra in outboxes:
            values |= extra
        return [(SETTLE_POSTGRES.format(outboxes=written), values)], 0
    statements = [(sql, params(values)) for sql in SETTLE_SQLITE]
    statements += [
        (SETTLED_SQLITE + sql, params({"id": generation_id, **extra})) for sql, extra in outboxes
    ]
    return statements, len(SETTLE_SQLITE) - 1


# --- alerts (usage/alerts.py), in the transaction that settles or refuses ---------------

ALERT_FIELDS = [
    "id",
    "user_id",
    "kind",
    "threshold",
    "cycle_start",
    "cycle_end",
    "spent",
    "budget",
    "created_at",
    "next_attempt_at",
    "refused_for",
]
# Insert unless (user, cycle, kind, threshold) has one already; RETURNING says whether this
# transaction made it (PostgreSQL, and SQLite since 3.35).
RECORD_ALERT_SQL = (
    f"INSERT INTO {ALERT} ({', '.join(ALERT_FIELDS)}, attempts, last_error) "
    f"VALUES ({', '.join(['%s'] * len(ALERT_FIELDS))}, 0, '') "
    "ON CONFLICT (user_id, cycle_start, kind, threshold) DO NOTHING RETURNING id"
)


def record_alert(**values) -> tuple[str, list]:
    return RECORD_ALERT_SQL, params([values[field] for field in ALERT_FIELDS])
