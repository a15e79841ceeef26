"""What the OpenAI SDK and PostHog's wrapper cost per call, in one process: the floor under a
chat turn's CPU that no change of ours can go below while every call goes through them.

Against the same fake model as bench/turn_cpu.py (30 chunks an answer), 8 calls in flight,
this process's CPU time per call, for three clients run side by side, round by round:
- `raw`: httpx2 posting the request and decoding the JSON or the SSE lines (what
  bench/relay.py does);
- `sdk`: openai.AsyncOpenAI's chat.completions.create (request building, the parameter
  transform, a pydantic object per answer or per chunk);
- `wrapped`: posthog.ai.openai.AsyncOpenAI (privacy mode, a distinct id, properties),
  capturing each `$ai_generation` to a loopback sink, messages given as `messages`;
- `validated`: chat/llm.py's `Client`, PostHog's wrapper building the SDK's chat objects
  with pydantic's validator, messages given as `messages`;
- `product`: that client with the messages in `extra_body` as chat/llm.py sends them when
  privacy mode is on (the SDK and the wrapper then skip their per-message work).

Each with two messages, and `wrapped`/`product` again with twenty (a conversation's history),
plain calls only: what a message costs.
"""

import asyncio
import json
import statistics
import time

from bench.common import emit, server_process, setup_django

CALLS = 200  # per round and client
ROUNDS = 5
AT_ONCE = 8
CHUNKS = 30
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "tell me about relays"},
]
HISTORY = [
    MESSAGES[0],
    *(
        {"role": ("user", "assistant")[n % 2], "content": "tell me about relays " * 10}
        for n in range(19)
    ),
]


async def _run(model_url: str, sink_url: str) -> dict:
    import httpx2
    import openai
    from posthog import Posthog
    from posthog.ai.openai import AsyncOpenAI

    from chat.llm import Client

    base = f"{model_url}/v1"
    http = httpx2.AsyncClient(timeout=60)
    bare = openai.AsyncOpenAI(api_key="sk-bench", base_url=base, max_retries=1)
    capture = Posthog("phc_bench", host=sink_url, privacy_mode=True)
    wrapped = AsyncOpenAI(api_key="sk-bench", base_url=base, max_retries=1, posthog_client=capture)
    ours = Client(api_key="sk-bench", base_url=base, max_retries=1, posthog_client=capture)

    async def raw(stream: bool):
        payload = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 100}
        if not stream:
            return (await http.post(f"{base}/chat/completions", json=payload)).json()
        payload |= {"stream": True, "stream_options": {"include_usage": True}}
        async with http.stream("POST", f"{base}/chat/completions", json=payload) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    json.loads(line[6:])

    async def through(client, stream: bool, messages=MESSAGES, as_extra=False, **posthog):
        options = {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 100}
        if as_extra:
            options |= {"messages": [], "extra_body": {"messages": messages}}
        if stream:
            options |= {"stream": True, "stream_options": {"include_usage": True}}
        answer = await client.chat.completions.create(**options, **posthog)
        if stream:
            async for _ in answer:
                pass

    posthog = {
        "posthog_distinct_id": "1",
        "posthog_privacy_mode": True,
        "posthog_properties": {"generation_id": "bench"},
    }
    clients = {
        "raw": raw,
        "sdk": lambda stream: through(bare, stream),
        "wrapped": lambda stream: through(wrapped, stream, **posthog),
        "validated": lambda stream: through(ours, stream, **posthog),
        "product": lambda stream: through(ours, stream, as_extra=True, **posthog),
    }
    long_clients = {
        "wrapped_20_messages": lambda stream: through(wrapped, stream, HISTORY, **posthog),
        "product_20_messages": lambda stream: through(
            ours, stream, HISTORY, as_extra=True, **posthog
        ),
    }

    async def calls(call, stream: bool, count: int) -> float:
        gate = asyncio.Semaphore(AT_ONCE)

        async def one():
            async with gate:
                await call(stream)

        started = time.process_time()
        await asyncio.gather(*[one() for _ in range(count)])
        return (time.process_time() - started) / count

    figures = {}
    for stream in (False, True):
        measured = clients if stream else clients | long_clients
        samples = {name: [] for name in measured}
        for call in measured.values():
            await calls(call, stream, 2 * AT_ONCE)  # warm up: imports, connections
        for _ in range(ROUNDS):
            for name, call in measured.items():
                samples[name].append(await calls(call, stream, CALLS))
        kind = "streamed" if stream else "plain"
        for name, values in samples.items():
            figures[f"{kind}_{name}_ms"] = round(statistics.median(values) * 1000, 2)
            figures[f"{kind}_{name}_all_ms"] = [round(v * 1000, 2) for v in values]
        figures[f"{kind}_added_ms"] = round(
            figures[f"{kind}_wrapped_ms"] - figures[f"{kind}_raw_ms"], 2
        )
        figures[f"{kind}_product_added_ms"] = round(
            figures[f"{kind}_product_ms"] - figures[f"{kind}_raw_ms"], 2
        )
    capture.shutdown()
    await http.aclose()
    return figures


def main():
    setup_django()
    with server_process("model", "0", str(CHUNKS)) as model_url, server_process("sink") as sink:
        figures = asyncio.run(_run(model_url, sink))
    emit(bench="sdk_floor", calls=CALLS, rounds=ROUNDS, at_once=AT_ONCE, chunks=CHUNKS, **figures)


if __name__ == "__main__":
    main()
