import time

from django.core.management.base import BaseCommand

from billing import meters


class Command(BaseCommand):
    help = (
        "Send Stripe what the outbox still owes it (metered billing): answers' charges as "
        "meter events, staff corrections as invoice items. New rows, and failed ones due for "
        "a retry with backoff; rows Stripe refused for good are parked for staff. Run from "
        "cron every minute, or with --loop as a small service. Safe to run in several places "
        "at once."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--loop", type=float, metavar="SECONDS", help="Keep running, every SECONDS."
        )

    def handle(self, *args, loop=None, **options):
        while True:
            counts = meters.deliver_due()
            self.stdout.write(
                f"Sent {counts['sent']}, {counts['pending']} failed (will retry), "
                f"{counts['parked']} parked."
            )
            if not loop:
                return
            time.sleep(loop)
