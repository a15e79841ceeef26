"""Chat pages and /api/chat/. The views that call the model are async: a streamed answer
holds no thread and no database connection while the model works (chat/services.py)."""

import json

from django.contrib import messages
from django.contrib.auth import get_user
from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from billing import credits
from chat import services
from chat.models import Conversation
from chatusage.api import api_view, error_response, json_body
from chatusage.db import step
from chatusage.errors import ApiError
from usage import alerts
from usage.cycles import cycle_for, local_day
from usage.models import UsageAccount

CONVERSATIONS_PER_PAGE = 50


def _page(request, conversation=None, *, prompt="", error_message="", status=200):
    """The chat page; a failed call (5xx) offers Retry, a refusal (4xx) only its reason."""
    account = UsageAccount.objects.for_user(request.user)
    search = request.GET.get("q", "").strip()[:100]
    listed = Conversation.objects.filter(user=request.user).only("id", "title", "updated_at")
    if search:
        listed = listed.filter(title__icontains=search)
    conversations = Paginator(listed, CONVERSATIONS_PER_PAGE).get_page(request.GET.get("page"))
    groups = _by_date(conversations.object_list)
    shown = services.shown_messages(conversation) if conversation else []
    return render(
        request,
        "chat/chat.html",
        {
            "account": account,
            "budget": services.budget_view(request.user, account),
            "credit": credits.balance_for(request.user.pk) if credits.prepaid() else None,
            "estimate": services.estimate_basis(conversation),
            "alert_banner": alerts.banner_alerts(request.user, cycle_for(account)),
            "conversation": conversation,
            "conversations": conversations,
            "conversation_groups": groups,
            "search": search,
            "chat_messages": shown,
            "prompt": prompt,
            "error_message": error_message,
            "retryable": bool(error_message) and status >= 500,
        },
        status=status,
    )


def _by_date(conversations) -> list[tuple[str, list]]:
    """Conversations under Today, Yesterday, Previous 7 days, Previous 30 days and Older
    (by their last message, in the billing zone), newest first, as chat products list them."""
    today = local_day(timezone.now())
    groups: dict[str, list] = {}
    for conversation in conversations:
        age = (today - local_day(conversation.updated_at)).days
        if age <= 0:
            label = "Today"
        elif age == 1:
            label = "Yesterday"
        elif age <= 7:
            label = "Previous 7 days"
        elif age <= 30:
            label = "Previous 30 days"
        else:
            label = "Older"
        groups.setdefault(label, []).append(conversation)
    return list(groups.items())


async def _post_without_js(request, conversation):
    """The plain form: post, redirect, the page shows the answer (or the error and the prompt)."""
    prompt = request.POST.get("prompt", "")
    try:
        turn = await services.astart_turn(
            request.user, prompt, conversation.pk if conversation else None
        )
        answer = await services.answer(turn)
    except services.ChatError as exc:
        conversation_id = exc.extra.get("conversation_id")
        if conversation is None and conversation_id:
            conversation = await step(services.conversation_for, request.user, conversation_id)
        response = await step(
            _page,
            request,
            conversation,
            prompt=prompt,
            error_message=exc.message,
            status=exc.status,
        )
        if exc.retry_after:
            response["Retry-After"] = str(exc.retry_after)
        return response
    return redirect("chat:conversation", conversation_id=answer.conversation.pk)


@login_required
@require_http_methods(["GET", "POST"])
async def index(request: HttpRequest) -> HttpResponse:
    request.user = await request.auser()
    if request.method == "POST":
        return await _post_without_js(request, None)
    return await step(_page, request)


@login_required
@require_http_methods(["GET", "POST"])
async def conversation(request: HttpRequest, conversation_id) -> HttpResponse:
    request.user = await request.auser()
    conv = await step(services.conversation_for, request.user, conversation_id)
    if request.method == "POST":
        return await _post_without_js(request, conv)
    return await step(_page, request, conv)


async def _sse(events):
    # Bytes, not text: Django would look its charset setting up to encode each event.
    async for event, data in events:
        yield f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class EventStreamResponse(StreamingHttpResponse):
    """A turn's server-sent events. However the response ends, the turn is settled.

    Django's ASGI handler closes the iterator it got from __aiter__ when the client goes
    away, so that close is passed on to the turn's generator at once (its finally settles
    what was delivered). A response closed before the stream began settles in close().
    """

    def __init__(self, turn: services.Turn):
        self._turn = turn
        self._events = services.stream_events(turn)
        super().__init__(_sse(self._events), content_type="text/event-stream")
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"  # let nginx pass tokens through as they come

    async def __aiter__(self):
        try:
            async for part in super().__aiter__():
                yield part
        finally:
            await self._events.aclose()

    def close(self):
        try:
            services.release_unstarted(self._turn)
        finally:
            super().close()


def _begin(request: HttpRequest) -> tuple[services.Turn, bool]:
    """All that comes before the model is called, in one step (one thread hand-off, one
    pooled connection): the user, the request's body, the turn's start (the rate limit, the
    reservation and the prompt). Raises ApiError with the answer: not_authenticated first,
    so a logged-out client learns nothing from the body's checks."""
    request.user = get_user(request)
    if not request.user.is_authenticated:
        raise ApiError("not_authenticated")
    try:
        body = json_body(request)
    except RequestDataTooBig as exc:
        raise ApiError("body_too_large") from exc
    except ValueError as exc:
        raise ApiError("invalid_json", {"detail": str(exc)}) from exc
    conversation_id = body.get("conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        raise ApiError("invalid_conversation_id")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError("invalid_stream")
    try:
        return services.start_turn(request.user, body.get("prompt"), conversation_id), stream
    except Http404 as exc:
        raise ApiError("not_found") from exc


@api_view(("POST",), loads_user=False)
async def api_chat(request: HttpRequest) -> HttpResponse:
    """POST {"prompt", "conversation_id"?, "stream"?} -> {"response", "conversation_id", ...}."""
    try:
        turn, stream = await step(_begin, request)
        if stream:
            return EventStreamResponse(turn)
        answer = await services.answer(turn)
    except ApiError as exc:
        return error_response(exc)
    return JsonResponse(
        {
            "response": answer.message.content,
            "conversation_id": str(answer.conversation.pk),
            "generation_id": str(answer.generation_id),
            "usage": answer.usage,
            "budget": answer.budget,
        }
    )


@login_required
@require_POST
def rename(request: HttpRequest, conversation_id) -> HttpResponse:
    conversation = services.conversation_for(request.user, conversation_id)
    title = " ".join(request.POST.get("title", "").split())[:120]
    if title:
        Conversation.objects.filter(pk=conversation.pk).update(title=title)
    return redirect("chat:conversation", conversation_id=conversation.pk)


@login_required
@require_http_methods(["GET", "POST"])
def delete(request: HttpRequest, conversation_id) -> HttpResponse:
    """Delete a conversation and its messages, once confirmed: GET asks, POST deletes. Its
    generations stay in the ledger: what was spent is history, and the usage page and
    exports still count it."""
    conversation = services.conversation_for(request.user, conversation_id)
    if request.method == "GET":
        return render(
            request,
            "chat/delete.html",
            {"conversation": conversation, "messages_count": conversation.messages.count()},
        )
    conversation.delete()
    messages.success(request, "Conversation deleted. Its costs stay in your usage.")
    return redirect("chat:index")
