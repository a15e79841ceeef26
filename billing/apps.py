from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self):
        from billing.statements import reconcile_check
        from usage import hooks

        hooks.reconcile_checks.append(reconcile_check)
