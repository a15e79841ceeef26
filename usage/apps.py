from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "usage"
    verbose_name = "Usage and billing"

    def ready(self):
        from usage import signals  # noqa: F401
