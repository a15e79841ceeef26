"""Answers render as markdown on the server: code, tables, lists, links, never a script."""

import json

import pytest

from chat.render import markdown_html
from tests.helpers import OPENAI_COMPLETION, post, sse_events

pytestmark = pytest.mark.django_db

MARKDOWN = """# Plan

Use **bold**, *italic* and `inline()`.

```python
def f():
    return 1
```

| model | cost |
|:--|--:|
| gpt-4o | $1.00 |

1. first
2. second

[docs](https://example.com/docs) and [mail](mailto:a@example.com)
"""

HOSTILE = (
    "<script>document.title='pwned'</script> <img src=x onerror='alert(1)'> "
    "[click](javascript:alert(1)) <a href='https://evil.example' onclick='x()'>a</a>"
)


def test_markdown_becomes_html_with_highlighted_code_and_safe_links():
    html = markdown_html(MARKDOWN)
    assert "<h1>Plan</h1>" in html
    assert "<strong>bold</strong>" in html and "<em>italic</em>" in html
    assert "<code>inline()</code>" in html
    assert '<pre class="highlight"><code class="language-python">' in html
    assert '<span class="k">def</span>' in html  # Pygments tokens
    assert "<table>" in html and '<td style="text-align:right">$1.00</td>' in html
    assert "<ol>" in html and "<li>first</li>" in html
    assert '<a href="https://example.com/docs" rel="noopener nofollow">docs</a>' in html
    assert 'href="mailto:a@example.com"' in html


def test_html_in_model_output_is_shown_as_text_never_run():
    html = markdown_html(HOSTILE)
    # Every tag the model wrote is text on the page; no element, no handler, no js: link.
    assert "<script" not in html and "<img" not in html and "<a href='https" not in html
    assert "&lt;script&gt;" in html and "&lt;img" in html
    assert 'href="javascript' not in html and "<a " not in html


def test_a_markdown_answer_renders_streamed_and_after_reload(alice_client, openai_mock):
    body = json.loads(json.dumps(OPENAI_COMPLETION))
    body["choices"][0]["message"]["content"] = MARKDOWN + HOSTILE
    openai_mock.answer(body=body)
    data = post(alice_client, {"prompt": "markdown please"}).json()
    page = alice_client.get(f"/chat/{data['conversation_id']}/").content.decode()
    assert '<pre class="highlight"><code class="language-python">' in page
    assert '<td style="text-align:right">$1.00</td>' in page
    assert "<script>document.title" not in page and "<img src=x" not in page
    # The user's own prompt is plain text, line breaks kept.
    assert "markdown please" in page


def test_the_streamed_done_event_carries_the_same_rendering(alice_client, settings):
    settings.OPENAI_API_KEY = ""  # the demo model answers code when asked for code
    response = post(alice_client, {"prompt": "show me some python code", "stream": True})
    kind, done = sse_events(response)[-1]
    assert kind == "done"
    assert done["html"] == markdown_html(done["response"])
    assert '<pre class="highlight"><code class="language-python">' in done["html"]
