from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver

from usage.models import UsageAccount


@receiver(post_save, sender=settings.AUTH_USER_MODEL)
def create_usage_account(sender, instance, created, raw=False, **kwargs):
    """Every user gets an account anchored on the day they joined."""
    if created and not raw:
        UsageAccount.objects.for_user(instance)
