import time

from django.core.management.base import BaseCommand

from usage import alerts


class Command(BaseCommand):
    help = (
        "Deliver budget alerts that are due (new, or failed before and due for a retry with "
        "exponential backoff): mail and the signed webhook. Run from cron every minute, or "
        "with --loop as a small service. Safe to run in several places at once."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--loop", type=float, metavar="SECONDS", help="Keep running, every SECONDS."
        )

    def handle(self, *args, loop=None, **options):
        while True:
            delivered, failed = alerts.deliver_due()
            self.stdout.write(f"Delivered {delivered} alert(s), {failed} failed (will retry).")
            if not loop:
                return
            time.sleep(loop)
