"""Answers as HTML: markdown rendered on the server, highlighted, then sanitised.

markdown-it-py parses (CommonMark plus tables and strikethrough, raw HTML disabled so it
shows as text), Pygments highlights fenced code with a language, and nh3 (the Ammonia
sanitiser) keeps only the tags and attributes below, links only to http(s) and mailto,
each with rel="noopener nofollow". Model output can hold anything; what reaches the page
cannot run.
"""

import nh3
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

TAGS = {
    "p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "span", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td", "a", "div",
}  # fmt: skip
ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},
    "pre": {"class"},
    "span": {"class"},
    "div": {"class"},
    "th": {"style"},
    "td": {"style"},
    "ol": {"start"},
}
# Table alignment from markdown-it; nothing else may style.
STYLE_PROPERTIES = {"text-align"}
SCHEMES = {"http", "https", "mailto"}

_formatter = HtmlFormatter(nowrap=True)


def _highlight(code: str, language: str, _attrs) -> str:
    """A fenced block with a known language, as Pygments' token spans; else plain."""
    try:
        lexer = get_lexer_by_name(language) if language else None
    except ClassNotFound:
        lexer = None
    if lexer is None:
        return ""  # markdown-it escapes and wraps it itself
    return highlight(code, lexer, _formatter)


_markdown = MarkdownIt("commonmark", {"html": False, "highlight": _highlight}).enable(
    ["table", "strikethrough"]
)


def _wrap_code_blocks(rendered: str) -> str:
    # Pygments' classes (".k", ".s"…) apply inside .highlight (static/chatusage/code.css).
    return rendered.replace("<pre><code", '<pre class="highlight"><code')


def markdown_html(text: str) -> str:
    """Safe HTML for a model's markdown answer."""
    rendered = _wrap_code_blocks(_markdown.render(text))
    return nh3.clean(
        rendered,
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes=SCHEMES,
        link_rel="noopener nofollow",
        filter_style_properties=STYLE_PROPERTIES,
    )
