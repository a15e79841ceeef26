from django.core.management.base import BaseCommand, CommandError

from chat import spool


class Command(BaseCommand):
    help = (
        "Save the answers that were delivered while the database was away (kept on disk in "
        "CHAT_SPOOL_DIR): each is billed and added to its conversation exactly as its turn "
        "would have done, once. Run it from cron every minute."
    )

    def handle(self, *args, **options):
        saved, failed = spool.save_all()
        self.stdout.write(f"Saved {saved} kept answer(s); {failed} still waiting.")
        if failed:
            raise CommandError(f"{failed} kept answer(s) could not be saved yet.")
