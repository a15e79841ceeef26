from django.core.management.base import BaseCommand

from usage.limits import expire_stale_reservations


class Command(BaseCommand):
    help = (
        "Mark pending generations whose turn stopped renewing its lease "
        "(RESERVATION_LEASE_SECONDS) as abandoned, so they stop holding budget. reserve() does "
        "this on the fly for the user it serves; run this from cron to tidy up users who are "
        "not chatting."
    )

    def handle(self, *args, **options):
        count = expire_stale_reservations()
        self.stdout.write(f"Marked {count} stale reservation(s) abandoned.")
