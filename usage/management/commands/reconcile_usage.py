import time
from contextlib import contextmanager
from datetime import date, timedelta
from decimal import Decimal
from uuid import UUID

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.utils import timezone

from chatusage import analytics
from usage import hogql, hooks
from usage.cycles import NoSuchCycle, account_cycle, cycle_for
from usage.models import Backfill, Generation, UsageAccount
from usage.pricing import MILLION
from usage.reports import GENERATIONS_IN_CYCLE, query_values

# https://posthog.com/docs/api/queries : one row per generation_id, a page at a time (a heavy
# user has more generations in a cycle than one answer may hold).
RECONCILE_QUERY = """
SELECT
    toString(properties.generation_id) AS generation_id,
    count() AS events,
    coalesce(sum(toFloat(properties.$ai_total_cost_usd)), 0) AS cost_usd
{GENERATIONS_IN_CYCLE}
    AND toString(properties.generation_id) > {after}
GROUP BY generation_id
ORDER BY generation_id
LIMIT {page_size}
""".replace("{GENERATIONS_IN_CYCLE}", GENERATIONS_IN_CYCLE.strip())

# Right before a backfill: which of these generations has PostHog received meanwhile?
RECHECK_QUERY = """
SELECT DISTINCT toString(properties.generation_id) AS generation_id
FROM events
WHERE event = '$ai_generation'
    AND distinct_id = {distinct_id}
    AND toString(properties.generation_id) IN {generation_ids}
LIMIT 50000
"""

PAGE_SIZE = 10000
THROTTLE_RETRIES = 3
# Events reach PostHog's queries seconds to minutes after capture (plus the SDK's flush
# interval): generations settled more recently are left for the next run.
INGESTION_LAG = timedelta(minutes=15)
# Each one fails the run. Unbilled: the ledger abandoned a call ($0) that PostHog saw answered.
PROBLEMS = ("missing", "mismatch", "duplicate", "unknown", "unbilled")
# Interrupted streams settle at a flagged estimate while PostHog's event has no tokens:
# their costs differ by design, so they are listed on their own and fail nothing. Backfilled:
# sent by an earlier run and not ingested yet; sent again only after RESEND_AFTER.
NOTICES = ("estimated", "backfilled")
RESEND_AFTER = timedelta(days=1)
# Two runs must not overlap (PostgreSQL advisory lock; the claims in Backfill make each
# backfill happen once even without it).
LOCK_KEY = 0x63686174  # "chat"


def _is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except (ValueError, TypeError):
        return False
    return True


def backfill_event(generation: Generation) -> dict:
    """The $ai_generation event the wrapper would have sent, with the original time and id."""
    properties = {
        "$ai_provider": generation.provider,
        "$ai_model": generation.model,
        "$ai_input_tokens": generation.input_tokens,
        "$ai_output_tokens": generation.output_tokens,
        "$ai_input_token_price": float(generation.price_input_per_1m / MILLION),
        "$ai_output_token_price": float(generation.price_output_per_1m / MILLION),
        "$ai_cache_read_token_price": float(generation.price_cached_input_per_1m / MILLION),
        "$ai_http_status": generation.http_status or (200 if generation.status == "ok" else 0),
        "generation_id": str(generation.pk),
        analytics.RESERVED_AT: generation.created_at.isoformat(),
        analytics.MARKUP_PERCENT: float(generation.markup_percent),
        "chatusage_backfill": True,
    }
    if generation.cached_input_tokens:
        properties["$ai_cache_read_input_tokens"] = generation.cached_input_tokens
    if generation.latency_ms is not None:
        properties["$ai_latency"] = generation.latency_ms / 1000
    if generation.conversation_id:
        properties["$ai_trace_id"] = str(generation.conversation_id)
        properties["conversation_id"] = str(generation.conversation_id)
    if generation.status == Generation.Status.ERROR:
        properties["$ai_is_error"] = True
        properties["$ai_error"] = generation.error.split(":", 1)[0]
    return {
        "distinct_id": str(generation.user_id),
        "properties": properties,
        "timestamp": generation.created_at,  # a call is dated when it was reserved
        # The generation id as the event uuid: a second backfill of the same call is
        # deduplicated by PostHog instead of counted twice.
        "uuid": str(generation.pk),
    }


class Command(BaseCommand):
    help = (
        "Compare the ledger with PostHog per user for a billing cycle (messages and cost, by "
        "generation_id), print the differences and exit non-zero when any exceeds the "
        "tolerance. --backfill sends the generations PostHog is missing, with their original "
        "timestamp and generation_id. Safe to run twice."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--cycle",
            type=date.fromisoformat,
            help="A day (YYYY-MM-DD) in the cycle to check; default: current.",
        )
        parser.add_argument("--user", help="Username or id; default: every user with usage.")
        parser.add_argument(
            "--backfill", action="store_true", help="Send the generations PostHog is missing."
        )
        parser.add_argument(
            "--tolerance",
            type=Decimal,
            default=Decimal("0.000001"),
            help="Largest cost difference (USD) per generation to accept.",
        )

    def handle(self, *args, cycle=None, user=None, backfill=False, tolerance, **options):
        if not hogql.is_configured():
            raise CommandError("Set POSTHOG_PROJECT_ID and POSTHOG_PERSONAL_API_KEY first.")
        if backfill and not settings.POSTHOG_API_KEY:
            raise CommandError("--backfill needs POSTHOG_API_KEY (the project token).")
        accounts = UsageAccount.objects.select_related("user").order_by("user_id")
        if user:
            lookup = {"user__pk": int(user)} if user.isdigit() else {"user__username": user}
            accounts = accounts.filter(**lookup)
            if not accounts.exists():
                raise CommandError(f"No user {user!r}.")
        else:
            accounts = accounts.filter(user__in=Generation.objects.values("user"))

        with _run_lock():
            self._reconcile(accounts, cycle, backfill, tolerance)

    def _reconcile(self, accounts, cycle, backfill, tolerance):
        problems = []
        checked = sent = 0
        settled_before = timezone.now() - INGESTION_LAG
        for account in accounts:
            try:
                user_cycle = account_cycle(account, cycle) if cycle else cycle_for(account)
            except NoSuchCycle:  # joined after that day, or it has not started for them
                continue
            found = self._compare(account, user_cycle, tolerance, settled_before)
            checked += found["checked"]
            problems.extend(found["problems"])
            if backfill and found["missing"]:
                sent += self._backfill(account.user_id, found["missing"])

        if problems:
            self.stdout.write(
                f"{'user':<12} {'generation_id':<36} {'problem':<10} "
                f"{'ledger $':>14} {'posthog $':>14}"
            )
            for p in problems:
                self.stdout.write(
                    f"{p['user']:<12} {p['generation_id']:<36} {p['problem']:<10} "
                    f"{p['ledger']:>14} {p['posthog']:>14}"
                )
        counts = {
            kind: sum(1 for p in problems if p["problem"] == kind) for kind in PROBLEMS + NOTICES
        }
        summary = (
            f"Checked {checked} generations for {accounts.count()} users "
            f"(settled more than {INGESTION_LAG.seconds // 60} minutes ago): "
            f"{counts['missing']} missing in PostHog, {counts['mismatch']} cost mismatches, "
            f"{counts['duplicate']} duplicated, {counts['unknown']} unknown to the ledger, "
            f"{counts['unbilled']} answered in PostHog but abandoned unbilled, "
            f"{counts['estimated']} estimated (interrupted streams, not counted), "
            f"{counts['backfilled']} backfilled earlier and not in PostHog yet"
        )
        if backfill:
            summary += f"; backfilled {sent}"
        self.stdout.write(summary + ".")
        # What the apps built on the ledger check (billing: statements against the ledger).
        for check in hooks.reconcile_checks:
            for line in check():
                self.stdout.write(line)
                problems.append({"problem": "statement"})
        unresolved = [
            p
            for p in problems
            if p["problem"] in (*PROBLEMS, "statement")
            and not (backfill and p["problem"] == "missing")
        ]
        if unresolved:
            raise CommandError(f"{len(unresolved)} difference(s) exceed the tolerance.")

    def _compare(self, account, cycle, tolerance, settled_before) -> dict:
        ledger = {
            str(g.pk): g
            for g in Generation.objects.filter(
                user_id=account.user_id,
                status__in=[Generation.Status.OK, Generation.Status.ERROR],
                created_at__gte=cycle.start,  # the cycle a call was reserved in
                created_at__lt=cycle.end,
                settled_at__lt=settled_before,
            )
        }
        seen = {row["generation_id"]: row for row in self._events(account.user_id, cycle)}
        name = account.user.get_username()
        problems, missing = [], []

        def problem(gid, kind, ledger_cost="—", posthog_cost="—"):
            problems.append(
                {
                    "user": name,
                    "generation_id": gid or "(none)",
                    "problem": kind,
                    "ledger": ledger_cost,
                    "posthog": posthog_cost,
                }
            )

        recently_sent = set(
            Backfill.objects.filter(
                generation__in=ledger.values(), sent_at__gte=timezone.now() - RESEND_AFTER
            ).values_list("generation_id", flat=True)
        )
        for gid, generation in ledger.items():
            row = seen.get(gid)
            if row is None and generation.pk in recently_sent:
                problem(gid, "backfilled", f"{generation.cost:.8f}")
                continue
            if row is None:
                missing.append(generation)
                problem(gid, "missing", f"{generation.cost:.8f}")
                continue
            posthog_cost = Decimal(repr(float(row["cost_usd"] or 0)))
            if int(row["events"]) > 1:
                problem(gid, "duplicate", f"{generation.cost:.8f}", f"{posthog_cost:.8f}")
            elif abs(posthog_cost - generation.cost) > tolerance:
                kind = "estimated" if generation.cost_estimated else "mismatch"
                problem(gid, kind, f"{generation.cost:.8f}", f"{posthog_cost:.8f}")
        # Unknown: PostHog has it and the ledger has no such generation at all (one settled
        # within the lag, or still pending, is known: it is simply not compared yet).
        others = [gid for gid in seen if gid not in ledger and _is_uuid(gid)]
        known = {
            str(pk): status
            for pk, status in Generation.objects.filter(
                user_id=account.user_id, pk__in=others
            ).values_list("pk", "status")
        }
        for gid, row in seen.items():
            posthog_cost = Decimal(repr(float(row["cost_usd"] or 0)))
            if gid not in ledger and gid not in known:
                problem(gid, "unknown", posthog_cost=f"{posthog_cost:.8f}")
            elif known.get(gid) == Generation.Status.ABANDONED and posthog_cost > 0:
                problem(gid, "unbilled", "0.00000000", f"{posthog_cost:.8f}")
        return {"checked": len(ledger), "problems": problems, "missing": missing}

    def _events(self, user_id, cycle) -> list[dict]:
        """Every generation PostHog has for the user in the cycle, a page at a time."""
        rows, after = [], ""
        while True:
            values = {
                **query_values(user_id, cycle, time_zone=False),
                "after": after,
                "page_size": PAGE_SIZE,
            }
            page = self._query(RECONCILE_QUERY, values).rows
            rows.extend(page)
            if len(page) < PAGE_SIZE:
                return rows
            after = page[-1]["generation_id"]

    def _query(self, query: str, values: dict) -> hogql.QueryResult:
        """Outside a web request, so a throttled query waits and retries (PostHog allows
        240 queries a minute per project); other failures stop the run."""
        for attempt in range(THROTTLE_RETRIES + 1):
            try:
                return hogql.run(
                    query, values, name="chatusage reconcile", refresh="force_blocking"
                )
            except hogql.PostHogUnavailable as exc:
                if attempt == THROTTLE_RETRIES:
                    raise CommandError(f"PostHog is unavailable: {exc}") from exc
                wait = min(exc.retry_after or 2 ** (attempt + 1), 60)
                self.stderr.write(f"{exc} Retrying in {wait} s.")
                time.sleep(wait)
            except hogql.PostHogError as exc:
                raise CommandError(str(exc)) from exc
        raise AssertionError("unreachable")

    def _backfill(self, user_id, generations) -> int:
        """Send what PostHog still lacks, asking it once more right before: a generation
        that arrived since the comparison (or was backfilled by another run) is skipped."""
        arrived = {
            row["generation_id"]
            for row in self._query(
                RECHECK_QUERY,
                {
                    "distinct_id": str(user_id),
                    "generation_ids": [str(g.pk) for g in generations],
                },
            ).rows
        }
        client = analytics.client()
        sent = 0
        for generation in generations:
            if str(generation.pk) not in arrived and _claim(generation):
                client.capture("$ai_generation", **backfill_event(generation))
                sent += 1
        client.flush()
        return sent


def _claim(generation: Generation) -> bool:
    """Record that this run sends the generation; False if another run did so lately."""
    now = timezone.now()
    _, created = Backfill.objects.get_or_create(generation=generation, defaults={"sent_at": now})
    if created:
        return True
    resend = Backfill.objects.filter(generation=generation, sent_at__lt=now - RESEND_AFTER)
    return bool(resend.update(sent_at=now))


@contextmanager
def _run_lock():
    """One reconcile run at a time: PostgreSQL's advisory lock, held by this session."""
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY])
        if not cursor.fetchone()[0]:
            raise CommandError("Another reconcile_usage run is in progress; try again later.")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
