from datetime import date

import stripe
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from billing import stripe_api
from billing.models import StripeOutbox
from usage.cycles import NoSuchCycle, account_cycle
from usage.models import Generation, UsageAccount


class Command(BaseCommand):
    help = (
        "Compare what Stripe's meter holds for each customer in a billing cycle (meter event "
        "summaries) with the ledger's charges settled in it, print the differences, and "
        "exit non-zero when there are any. Needs STRIPE_API_KEY and STRIPE_METER_ID."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--cycle",
            type=date.fromisoformat,
            required=True,
            help="A day (YYYY-MM-DD) in the cycle to check.",
        )

    def handle(self, *args, cycle, **options):
        if not stripe_api.enabled() or not settings.STRIPE_METER_ID:
            raise CommandError("Set STRIPE_API_KEY and STRIPE_METER_ID first.")
        accounts = UsageAccount.objects.exclude(stripe_customer_id="").order_by("user_id")
        differences = checked = 0
        for account in accounts:
            try:
                bounds = account_cycle(account, cycle)
            except NoSuchCycle:  # joined after that day, or it has not started for them
                continue
            # Meter events carry the moment an answer settled: compare by that, not by the
            # local day the call began on.
            settled = Generation.objects.filter(
                user_id=account.user_id,
                status=Generation.Status.OK,
                charge__gt=0,
                settled_at__gte=bounds.start,
                settled_at__lt=bounds.end,
            ).values_list("charge", flat=True)
            ledger = sum(stripe_api.micro_usd(charge) for charge in settled)
            try:
                metered = self._metered(account.stripe_customer_id, bounds)
            except stripe.StripeError as error:
                raise CommandError(stripe_api.describe(error)) from error
            checked += 1
            if metered == ledger:
                continue
            differences += 1
            waiting = StripeOutbox.objects.filter(
                user_id=account.user_id,
                kind=StripeOutbox.Kind.METER_EVENT,
                occurred_at__gte=bounds.start,
                occurred_at__lt=bounds.end,
            ).exclude(status=StripeOutbox.Status.SENT)
            parked = waiting.filter(status=StripeOutbox.Status.PARKED).count()
            self.stdout.write(
                f"user {account.user_id} ({account.stripe_customer_id}), cycle "
                f"{bounds.start_date}..{bounds.end_date}: ledger {ledger} micro-USD, Stripe "
                f"{metered} (difference {ledger - metered}); {waiting.count() - parked} "
                f"not sent yet, {parked} parked"
            )
        self.stdout.write(f"Checked {checked} customer(s): {differences} with differences.")
        if differences:
            raise CommandError(f"{differences} customer(s) differ from the ledger.")

    def _metered(self, customer: str, bounds) -> int:
        summaries = stripe_api.client().v1.billing.meters.event_summaries.list(
            settings.STRIPE_METER_ID,
            params={
                "customer": customer,
                "start_time": int(bounds.start.timestamp()),
                "end_time": int(bounds.end.timestamp()),
                "limit": 100,
            },
        )
        total = 0
        for summary in summaries.auto_paging_iter():
            total += round(summary.aggregated_value)
        return total
