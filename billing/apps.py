from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self):
        from billing.meters import MeterEventOutbox
        from billing.statements import reconcile_check
        from usage import hooks

        hooks.reconcile_checks.append(reconcile_check)
        hooks.settle_outboxes.append(MeterEventOutbox())
