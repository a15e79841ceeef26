"""The chat API as a client sees it over HTTP, and waiting on what the server does."""

import json
import time

import requests


def chat(session, url, prompt, stream=False, conversation_id=None) -> tuple[int, dict]:
    """One message; returns (status, data) where data holds generation_id when answered."""
    body = {"prompt": prompt, "stream": stream, "conversation_id": conversation_id}
    response = session.post(f"{url}/api/chat/", json=body, stream=stream, timeout=30)
    if not stream or not response.headers.get("Content-Type", "").startswith("text/event-stream"):
        return response.status_code, response.json()
    data, event = {}, None
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            payload = json.loads(line[6:])
            if event == "start":
                data["generation_id"] = payload["generation_id"]
            elif event == "done":
                data.update(payload)
            elif event == "error":
                return 502, payload
    return response.status_code, data


def wait_for(predicate, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def clone(session: requests.Session) -> requests.Session:
    """Another connection with the same login (requests sessions are not thread-safe)."""
    copy = requests.Session()
    copy.cookies.update(session.cookies)
    copy.headers.update(session.headers)
    return copy
