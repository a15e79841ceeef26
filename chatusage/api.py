"""Small helpers for the JSON endpoints: errors are JSON, never Django's HTML pages."""

import json
from functools import wraps

from asgiref.sync import iscoroutinefunction
from django.contrib.auth import get_user
from django.http import JsonResponse

from chatusage import errors
from chatusage.db import step


def error(code: str, details: dict | None = None, **extra) -> JsonResponse:
    """The JSON answer for an error of the catalogue (chatusage/errors.py)."""
    return JsonResponse(errors.body(code, details, **extra), status=errors.status(code))


def error_response(exc: errors.ApiError) -> JsonResponse:
    response = JsonResponse(exc.as_dict(), status=exc.status)
    if exc.retry_after:
        response["Retry-After"] = str(exc.retry_after)
    return response


def _method_not_allowed(methods: tuple[str, ...]) -> JsonResponse:
    response = error("method_not_allowed", {"detail": f"Use {' or '.join(methods)}."})
    response["Allow"] = ", ".join(methods)
    return response


def _not_authenticated() -> JsonResponse:
    return error("not_authenticated")


def api_view(methods: tuple[str, ...], *, loads_user: bool = True):
    """Login required (401 JSON) and allowed methods (405 JSON) for an /api/ view.

    Works on sync and async views; an async view finds the user loaded in request.user.
    With `loads_user` off, an async view loads the user (and answers not_authenticated)
    itself, in its first step beside its own database work: one thread hand-off and one
    pooled connection instead of two.
    """

    def decorator(view):
        if iscoroutinefunction(view):

            @wraps(view)
            async def async_wrapper(request, *args, **kwargs):
                if request.method not in methods:
                    return _method_not_allowed(methods)
                if not loads_user:
                    return await view(request, *args, **kwargs)
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
        return error("csrf_failed")
    from django.views.csrf import csrf_failure as default

    return default(request, reason=reason)
