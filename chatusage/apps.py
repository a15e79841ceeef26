from django.apps import AppConfig


class ChatusageConfig(AppConfig):
    name = "chatusage"

    def ready(self):
        from chatusage import checks  # noqa: F401 (registers the deploy check)
