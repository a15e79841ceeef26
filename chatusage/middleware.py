"""The middleware stack, able to run in Django's async middleware chain.

WhiteNoise's middleware is sync-only. Under ASGI one sync middleware at the top makes
Django run every request's whole chain in a worker thread that waits on the event loop,
and a long model call holds that thread for its whole length. Finding a static file is a
dict lookup, so the same middleware can serve both modes.
"""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from csp import middleware as _csp
from django.conf import settings as _settings
from django.contrib.auth import middleware as _auth
from django.contrib.messages import middleware as _messages
from django.contrib.sessions import middleware as _sessions
from django.middleware import clickjacking as _clickjacking
from django.middleware import common as _common
from django.middleware import csrf as _csrf
from django.middleware import security as _security
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response, *args, **kwargs):
        super().__init__(get_response, *args, **kwargs)
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def _static_file(self, request):
        if self.autorefresh:
            return self.find_file(request.path_info)
        return self.files.get(request.path_info)

    def __call__(self, request):
        if self._async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        static_file = self._static_file(request)
        if static_file is not None:
            return self.serve(static_file, request)
        return await self.get_response(request)


# --- Django's own middleware, in the event loop --------------------------------------
#
# Under ASGI, Django runs each hook of a MiddlewareMixin middleware through sync_to_async:
# a hand-off to a thread and back, about 15 of them per request with the stack below,
# which profiled as the largest share of a chat turn's CPU. The hooks here do no I/O
# (headers, cookies, redirects, lazy objects), so they run in the event loop as they are;
# the two that can write (a modified session, messages to store) still go to the thread
# in exactly the cases where they write.


class InLoop:
    """For a MiddlewareMixin whose hooks never do I/O: under ASGI they run in the event
    loop, not a thread each. Sync mode (WSGI, the test client) is Django's own."""

    def __init__(self, get_response):
        super().__init__(get_response)
        if self.async_mode and hasattr(self, "process_view"):
            in_loop = self.process_view

            async def process_view(request, view_func, view_args, view_kwargs):
                return in_loop(request, view_func, view_args, view_kwargs)

            self.process_view = process_view  # Django leaves a coroutine function as it is

    def writes(self, request, response) -> bool:
        """Whether process_response must do I/O for this request (then it goes to a thread)."""
        return False

    async def __acall__(self, request):
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            if self.writes(request, response):
                return await sync_to_async(self.process_response)(request, response)
            response = self.process_response(request, response)
        return response


class SecurityMiddleware(InLoop, _security.SecurityMiddleware):
    pass


class CommonMiddleware(InLoop, _common.CommonMiddleware):
    pass


class CsrfViewMiddleware(InLoop, _csrf.CsrfViewMiddleware):
    """The token lives in a cookie (CSRF_USE_SESSIONS is off): no I/O either way."""

    def __init__(self, get_response):
        if _settings.CSRF_USE_SESSIONS:
            raise ValueError("chatusage's CSRF middleware expects CSRF_USE_SESSIONS off.")
        super().__init__(get_response)


class AuthenticationMiddleware(InLoop, _auth.AuthenticationMiddleware):
    """Sets the lazy request.user and request.auser(); loading them is the view's."""


class SessionMiddleware(InLoop, _sessions.SessionMiddleware):
    def writes(self, request, response) -> bool:
        session = request.session
        return (session.modified or _settings.SESSION_SAVE_EVERY_REQUEST) and not (
            session.is_empty()
        )


class MessageMiddleware(InLoop, _messages.MessageMiddleware):
    def writes(self, request, response) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class XFrameOptionsMiddleware(InLoop, _clickjacking.XFrameOptionsMiddleware):
    pass


class CSPMiddleware(InLoop, _csp.CSPMiddleware):
    pass
