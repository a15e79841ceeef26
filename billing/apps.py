from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self):
        from django.conf import settings
        from django.db.models.signals import post_save

        from billing import credits
        from billing.meters import MeterEventOutbox
        from billing.statements import reconcile_check
        from usage import hooks

        hooks.reconcile_checks.append(reconcile_check)
        hooks.settle_outboxes.append(MeterEventOutbox())
        hooks.reserve_limits.append(credits.CreditLimit())
        hooks.after_settle.append(credits.low_balance_check)
        post_save.connect(
            _signup_credit, sender=settings.AUTH_USER_MODEL, dispatch_uid="billing-signup"
        )


def _signup_credit(sender, instance, created, raw=False, **kwargs):
    if created and not raw:
        from billing import credits

        credits.signup_credit(instance)
