from datetime import date

from django.core.management.base import BaseCommand

from billing.statements import close_cycles


class Command(BaseCommand):
    help = (
        "Freeze one numbered statement per user per billing cycle that has ended (run daily "
        "from cron; safe to run twice, even at once). --as-of closes as if that day were today."
    )

    def add_arguments(self, parser):
        parser.add_argument("--as-of", type=date.fromisoformat, help="YYYY-MM-DD; default today")

    def handle(self, *args, as_of=None, **options):
        closed = close_cycles(as_of)
        numbers = ", ".join(s.number for s in closed.created) or "none"
        self.stdout.write(
            f"Closed {len(closed.created)} statement(s) for {closed.accounts} account(s): "
            f"{numbers}."
        )
