from django import template
from django.utils.safestring import mark_safe

from chat.render import markdown_html

register = template.Library()


@register.filter
def markdown(text: str) -> str:
    """A model's answer as sanitised HTML (chat/render.py)."""
    return mark_safe(markdown_html(text))  # noqa: S308 - nh3 has cleaned it
