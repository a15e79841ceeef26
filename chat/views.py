import json

from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from chat import services
from chat.models import Conversation
from chatusage import ratelimit
from chatusage.api import api_view, error, json_body

RATE_LIMITED = services.ChatError(
    "rate_limited", "Too many messages in a short time. Wait a moment and try again.", 429
)


def _check_rate(user) -> None:
    if not ratelimit.hit(f"chat:{user.pk}"):
        raise RATE_LIMITED


def _page(request, conversation=None, *, prompt="", error_message="", status=200):
    conversations = Conversation.objects.filter(user=request.user).only("id", "title")[:50]
    messages = conversation.messages.all() if conversation else []
    return render(
        request,
        "chat/chat.html",
        {
            "conversation": conversation,
            "conversations": conversations,
            "chat_messages": messages,
            "prompt": prompt,
            "error_message": error_message,
        },
        status=status,
    )


def _post_without_js(request, conversation):
    """The plain form: post, redirect, the page shows the answer (or the error and the prompt)."""
    prompt = request.POST.get("prompt", "")
    try:
        _check_rate(request.user)
        turn = services.start_turn(request.user, prompt, conversation.pk if conversation else None)
        answer = services.answer(turn)
    except services.ChatError as exc:
        conversation_id = exc.extra.get("conversation_id")
        if conversation is None and conversation_id:
            conversation = services.conversation_for(request.user, conversation_id)
        return _page(
            request, conversation, prompt=prompt, error_message=exc.message, status=exc.status
        )
    return redirect("chat:conversation", conversation_id=answer.conversation.pk)


@login_required
@require_http_methods(["GET", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _post_without_js(request, None)
    return _page(request)


@login_required
@require_http_methods(["GET", "POST"])
def conversation(request: HttpRequest, conversation_id) -> HttpResponse:
    conv = services.conversation_for(request.user, conversation_id)
    if request.method == "POST":
        return _post_without_js(request, conv)
    return _page(request, conv)


def _sse(events):
    for event, data in events:
        yield f"event: {event}\ndata: {json.dumps(data)}\n\n"


@api_view(("POST",))
def api_chat(request: HttpRequest) -> HttpResponse:
    """POST {"prompt", "conversation_id"?, "stream"?} -> {"response", "conversation_id", ...}."""
    try:
        body = json_body(request)
    except RequestDataTooBig:
        return error("The request body is too large.", "body_too_large", 413)
    except ValueError as exc:
        return error(str(exc), "invalid_json", 400)
    conversation_id = body.get("conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        return error("conversation_id must be a string.", "invalid_conversation_id", 400)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        return error("stream must be true or false.", "invalid_stream", 400)
    try:
        _check_rate(request.user)
        turn = services.start_turn(request.user, body.get("prompt"), conversation_id)
        if stream:
            response = StreamingHttpResponse(
                _sse(services.stream_events(turn)), content_type="text/event-stream"
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"  # let nginx pass tokens through as they come
            return response
        answer = services.answer(turn)
    except services.ChatError as exc:
        return error(exc.message, exc.code, exc.status, **exc.extra)
    except Http404:
        return error("No such conversation.", "not_found", 404)
    return JsonResponse(
        {
            "response": answer.message.content,
            "conversation_id": str(answer.conversation.pk),
            "generation_id": str(answer.generation_id),
            "usage": answer.usage,
        }
    )
