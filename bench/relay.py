"""A bare ASGI relay: what relaying a model's answer costs with no framework and no database.

POST /api/chat/ {"prompt", "stream"?}: it asks the model (RELAY_MODEL_URL, OpenAI's wire
format) with an async HTTP client and writes the same `delta`/`done` server-sent events as
the product (or one JSON answer). Served by the same gunicorn command and worker class as
the product (bench/turn_cpu.py), it is the floor a chat turn's CPU is measured against.
"""

import contextlib
import json
import os
import subprocess
import sys
import time

import httpx2

MODEL_URL = os.environ.get("RELAY_MODEL_URL", "http://127.0.0.1:1")
_client: httpx2.AsyncClient | None = None


def _http() -> httpx2.AsyncClient:
    global _client
    if _client is None:
        _client = httpx2.AsyncClient(timeout=60, limits=httpx2.Limits(max_connections=1000))
    return _client


async def _body(receive) -> dict:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return json.loads(b"".join(chunks) or b"{}")


def _event(name: str, data: dict) -> dict:
    body = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
    return {"type": "http.response.body", "body": body, "more_body": True}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    request = await _body(receive)
    stream = bool(request.get("stream"))
    payload = {
        "model": "relay",
        "messages": [{"role": "user", "content": request.get("prompt", "")}],
        "max_tokens": 100,
        "stream": stream,
    }
    url = f"{MODEL_URL}/v1/chat/completions"
    if not stream:
        answer = (await _http().post(url, json=payload)).json()
        body = json.dumps({"response": answer["choices"][0]["message"]["content"]}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    text = []
    async with _http().stream("POST", url, json=payload) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices") or []:
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    text.append(delta)
                    await send(_event("delta", {"text": delta}))
    await send(_event("done", {"response": "".join(text)}))
    await send({"type": "http.response.body", "body": b""})


@contextlib.contextmanager
def served(model_url: str):
    """The relay under the product's command (`gunicorn -c gunicorn.conf.py`, preload off:
    nothing to share), relaying `model_url`: (its URL, the gunicorn master's pid)."""
    import requests

    from bench.common import ROOT
    from tests.e2e.harness.servers import free_port

    port = free_port()
    env = {
        **os.environ,
        "RELAY_MODEL_URL": model_url,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_PRELOAD": "false",
        "GUNICORN_ACCESS_LOG": "",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "bench.relay:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                requests.post(f"{url}/api/chat/", json={"prompt": "up?"}, timeout=5)
                break
            except requests.RequestException:
                time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)
