import time
from datetime import date
from decimal import Decimal
from uuid import UUID

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from chatusage import analytics
from usage import hogql
from usage.cycles import cycle_containing, cycle_for
from usage.models import Generation, UsageAccount
from usage.pricing import MILLION
from usage.reports import GENERATIONS_IN_CYCLE, query_values

# https://posthog.com/docs/api/queries : one row per generation_id the ledger also knows.
RECONCILE_QUERY = """
SELECT
    toString(properties.generation_id) AS generation_id,
    count() AS events,
    coalesce(sum(toFloat(properties.$ai_total_cost_usd)), 0) AS cost_usd
{GENERATIONS_IN_CYCLE}
GROUP BY generation_id
ORDER BY generation_id
LIMIT 50000
""".replace("{GENERATIONS_IN_CYCLE}", GENERATIONS_IN_CYCLE.strip())


THROTTLE_RETRIES = 3


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
        "timestamp": generation.settled_at,
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

        problems = []
        checked = sent = 0
        for account in accounts:
            user_cycle = (
                cycle_containing(account.billing_anchor.day, cycle) if cycle else cycle_for(account)
            )
            found = self._compare(account, user_cycle, tolerance)
            checked += found["checked"]
            problems.extend(found["problems"])
            if backfill and found["missing"]:
                sent += self._backfill(found["missing"])

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
            kind: sum(1 for p in problems if p["problem"] == kind)
            for kind in ("missing", "mismatch", "duplicate", "unknown")
        }
        summary = (
            f"Checked {checked} generations for {accounts.count()} users: "
            f"{counts['missing']} missing in PostHog, {counts['mismatch']} cost mismatches, "
            f"{counts['duplicate']} duplicated, {counts['unknown']} unknown to the ledger"
        )
        if backfill:
            summary += f"; backfilled {sent}"
        self.stdout.write(summary + ".")
        unresolved = [p for p in problems if not (backfill and p["problem"] == "missing")]
        if unresolved:
            raise CommandError(f"{len(unresolved)} difference(s) exceed the tolerance.")

    def _compare(self, account, cycle, tolerance) -> dict:
        ledger = {
            str(g.pk): g
            for g in Generation.objects.filter(
                user_id=account.user_id,
                status__in=[Generation.Status.OK, Generation.Status.ERROR],
                settled_at__gte=cycle.start,
                settled_at__lt=cycle.end,
            )
        }
        result = self._query(account.user_id, cycle)
        seen = {row["generation_id"]: row for row in result.rows}
        name = account.user.get_username()
        problems, missing = [], []
        for gid, generation in ledger.items():
            row = seen.get(gid)
            if row is None:
                missing.append(generation)
                problems.append(
                    {
                        "user": name,
                        "generation_id": gid,
                        "problem": "missing",
                        "ledger": f"{generation.cost:.8f}",
                        "posthog": "—",
                    }
                )
                continue
            posthog_cost = Decimal(repr(float(row["cost_usd"] or 0)))
            if int(row["events"]) > 1:
                problems.append(
                    {
                        "user": name,
                        "generation_id": gid,
                        "problem": "duplicate",
                        "ledger": f"{generation.cost:.8f}",
                        "posthog": f"{posthog_cost:.8f}",
                    }
                )
            elif abs(posthog_cost - generation.cost) > tolerance:
                problems.append(
                    {
                        "user": name,
                        "generation_id": gid,
                        "problem": "mismatch",
                        "ledger": f"{generation.cost:.8f}",
                        "posthog": f"{posthog_cost:.8f}",
                    }
                )
        in_flight = set(
            Generation.objects.filter(
                pk__in=[gid for gid in seen if gid not in ledger and _is_uuid(gid)],
                status=Generation.Status.PENDING,
            ).values_list("pk", flat=True)
        )
        for gid, row in seen.items():
            if gid not in ledger and not (_is_uuid(gid) and UUID(gid) in in_flight):
                problems.append(
                    {
                        "user": name,
                        "generation_id": gid or "(none)",
                        "problem": "unknown",
                        "ledger": "—",
                        "posthog": f"{Decimal(repr(float(row['cost_usd'] or 0))):.8f}",
                    }
                )
        return {"checked": len(ledger), "problems": problems, "missing": missing}

    def _query(self, user_id, cycle) -> hogql.QueryResult:
        """One user's events. Outside a web request, so a throttled query waits and retries
        (PostHog allows 240 queries a minute per project); other failures stop the run."""
        for attempt in range(THROTTLE_RETRIES + 1):
            try:
                return hogql.run(
                    RECONCILE_QUERY,
                    query_values(user_id, cycle, time_zone=False),
                    name="chatusage reconcile",
                    refresh="force_blocking",
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

    def _backfill(self, generations) -> int:
        client = analytics.client()
        for generation in generations:
            client.capture("$ai_generation", **backfill_event(generation))
        client.flush()
        return len(generations)
