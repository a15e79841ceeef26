"""Django's deploy checks for the security, clickjacking and CSRF middleware look for
Django's own dotted paths; chatusage runs subclasses of them (chatusage/middleware.py), so
settings.py silences those three and this check asks the same question of the classes."""

from django.conf import settings
from django.core.checks import Tags, Warning, register
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.module_loading import import_string

REQUIRED = [
    ("chatusage.W001", SecurityMiddleware, "SECURE_* settings would have no effect."),
    ("chatusage.W002", XFrameOptionsMiddleware, "pages would have no X-Frame-Options header."),
    ("chatusage.W003", CsrfViewMiddleware, "forms would have no CSRF protection."),
]


@register(Tags.security, deploy=True)
def security_middleware(app_configs, **kwargs):
    installed = [import_string(path) for path in settings.MIDDLEWARE]
    return [
        Warning(f"No {required.__name__} (or a subclass) in MIDDLEWARE: {what}", id=check_id)
        for check_id, required, what in REQUIRED
        if not any(issubclass(cls, required) for cls in installed if isinstance(cls, type))
    ]
