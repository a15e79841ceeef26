"""Small helpers for the JSON endpoints: errors are JSON, never Django's HTML pages."""

import json
from functools import wraps

from asgiref.sync import iscoroutinefunction
from django.contrib.auth import get_user
from django.http import JsonResponse

from chatusage.db import step


def error(message: str, code: str, status: int, **extra) -> JsonResponse:
    return JsonResponse({"error": message, "code": code, **extra}, status=status)


def _method_not_allowed(methods: tuple[str, ...]) -> JsonResponse:
    response = error(f"Use {' or '.join(methods)}.", "method_not_allowed", 405)
    response["Allow"] = ", ".join(methods)
    return response


def _not_authenticated() -> JsonResponse:
    return error("Log in first.", "not_authenticated", 401)


def api_view(methods: tuple[str, ...]):
    """Login required (401 JSON) and allowed methods (405 JSON) for an /api/ view.

    Works on sync and async views; an async view finds the user loaded in request.user.
    """

    def decorator(view):
        if iscoroutinefunction(view):

            @wraps(view)
            async def async_wrapper(request, *args, **kwargs):
                if request.method not in methods:
                    return _method_not_allowed(methods)
                # The user is loaded in a short step that gives its connection back:
                # an async view may then wait on a model without holding one.
                request.user = await step(get_user, request)
                if not request.user.is_authenticated:
                    return _not_authenticated()
                return await view(request, *args, **kwargs)

            return async_wrapper

        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method not in methods:
                return _method_not_allowed(methods)
            if not request.user.is_authenticated:
                return _not_authenticated()
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def json_body(request) -> dict:
    """The request's JSON object, or ValueError with a message for the user."""
    if request.content_type != "application/json":
        raise ValueError("Send a JSON body with Content-Type: application/json.")
    try:
        data = json.loads(request.body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError("The body is not valid UTF-8.") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"The body is not valid JSON: {exc.msg}.") from exc
    except RecursionError as exc:  # "[" * 100000 fits in the size limit
        raise ValueError("The body is nested too deeply.") from exc
    if not isinstance(data, dict):
        raise ValueError("The body must be a JSON object.")
    return data


def csrf_failure(request, reason=""):
    """CSRF_FAILURE_VIEW: JSON for the API, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return error(
            "CSRF check failed: send the csrftoken cookie's value as X-CSRFToken.",
            "csrf_failed",
            403,
        )
    from django.views.csrf import csrf_failure as default

    return default(request, reason=reason)
