"""chat/llm.py builds the SDK's chat answers and chunks with pydantic's validator when they
are exactly of their declared shape, and the SDK's own way otherwise: the objects must be
the same either way, and the answer the user gets too."""

import copy

import openai
import pydantic
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from posthog import Posthog

from chat import llm
from tests.helpers import OPENAI_COMPLETION, post, sse_events

CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1764000000, "model": "m"}
ANSWER = {"id": "c1", "object": "chat.completion", "created": 1764000000, "model": "m"}
USAGE = {
    "prompt_tokens": 5,
    "completion_tokens": 7,
    "total_tokens": 12,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
LOGPROB = {"token": "x", "logprob": 0, "bytes": [120], "top_logprobs": []}
TOOL_CALL = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}

SHAPES = {
    # What OpenAI sends.
    "first chunk": (
        ChatCompletionChunk,
        CHUNK
        | {
            "system_fingerprint": "fp",
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        },
    ),
    "last chunk": (
        ChatCompletionChunk,
        CHUNK | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None},
    ),
    "usage chunk": (ChatCompletionChunk, CHUNK | {"choices": [], "usage": USAGE}),
    "logprobs with a whole number": (
        ChatCompletionChunk,
        CHUNK
        | {
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "x"},
                    "logprobs": {"content": [LOGPROB]},
                }
            ]
        },
    ),
    "tool call chunk": (
        ChatCompletionChunk,
        CHUNK | {"choices": [{"index": 0, "delta": {"tool_calls": [TOOL_CALL | {"index": 0}]}}]},
    ),
    "answer": (ChatCompletion, OPENAI_COMPLETION),
    "answer with a tool call": (
        ChatCompletion,
        ANSWER
        | {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
                    "finish_reason": "tool_calls",
                }
            ]
        },
    ),
    "answer with a citation": (
        ChatCompletion,
        ANSWER
        | {
            "service_tier": "default",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "hi",
                        "annotations": [
                            {
                                "type": "url_citation",
                                "url_citation": {
                                    "start_index": 0,
                                    "end_index": 1,
                                    "url": "https://example.com",
                                    "title": "t",
                                },
                            }
                        ],
                    },
                    "finish_reason": "stop",
                }
            ],
        },
    ),
    # What other OpenAI-compatible servers send: these take the SDK's own way.
    "a field the SDK does not know": (
        ChatCompletionChunk,
        CHUNK | {"x_groq": {"id": "r"}, "choices": [{"index": 0, "delta": {"content": "x"}}]},
    ),
    "a delta field the SDK does not know": (
        ChatCompletionChunk,
        CHUNK | {"choices": [{"index": 0, "delta": {"content": "x", "reasoning_content": "r"}}]},
    ),
    "a finish reason the SDK does not list": (
        ChatCompletionChunk,
        CHUNK | {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "eos"}]},
    ),
    "a number as text": (
        ChatCompletionChunk,
        CHUNK | {"created": "1764000000", "choices": [{"index": 0, "delta": {"content": "x"}}]},
    ),
    "a field missing": (
        ChatCompletionChunk,
        {"id": "c1", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {}}]},
    ),
    "usage without its total": (
        ChatCompletion,
        OPENAI_COMPLETION | {"usage": {"prompt_tokens": 5, "completion_tokens": 7}},
    ),
}


def described(value):
    """Everything a reader of the object can see: types, values, set fields, extras."""
    if isinstance(value, pydantic.BaseModel):
        return (
            type(value),
            sorted(value.model_fields_set),
            described(value.__pydantic_extra__),
            {name: described(getattr(value, name, None)) for name in type(value).model_fields},
        )
    if isinstance(value, list):
        return [described(item) for item in value]
    if isinstance(value, dict):
        return {key: described(item) for key, item in value.items()}
    return (type(value), value)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_chat_objects_are_those_the_sdk_builds(shape):
    cast_to, data = SHAPES[shape]
    ours = llm.Client(api_key="sk-test", posthog_client=Posthog("unused", disabled=True))
    sdks = openai.AsyncOpenAI(api_key="sk-test")
    built = ours._process_response_data(data=copy.deepcopy(data), cast_to=cast_to, response=None)
    expected = sdks._process_response_data(data=copy.deepcopy(data), cast_to=cast_to, response=None)
    assert described(built) == described(expected)


@pytest.fixture
def sdk_constructions(monkeypatch) -> list:
    """Each time the SDK's own constructor builds a chat answer or chunk."""
    built = []
    original = openai._base_client.construct_type

    def counting(*, type_, value):
        built.append(type_)
        return original(type_=type_, value=value)

    monkeypatch.setattr(openai._base_client, "construct_type", counting)
    return built


@pytest.mark.parametrize("stream", [False, True])
def test_openais_answers_are_built_by_the_validator(
    alice_client, openai_mock, sdk_constructions, stream
):
    response = post(alice_client, {"prompt": "Tell me something", "stream": stream})
    assert response.status_code == 200
    answer = sse_events(response)[-1][1] if stream else response.json()
    assert answer["response"]
    assert answer["usage"]["output_tokens"] > 0
    assert sdk_constructions == []


def test_a_provider_with_fields_of_its_own_is_answered_as_before(
    alice_client, openai_mock, sdk_constructions
):
    openai_mock.answer(
        body=OPENAI_COMPLETION
        | {"x_provider": {"region": "eu"}, "usage": OPENAI_COMPLETION["usage"] | {"queue_ms": 3}}
    )
    response = post(alice_client, {"prompt": "What is the capital of France?"})
    assert response.status_code == 200
    assert response.json()["response"] == "Paris is the capital of France."
    assert response.json()["usage"]["output_tokens"] == 9
    assert sdk_constructions == [ChatCompletion]
