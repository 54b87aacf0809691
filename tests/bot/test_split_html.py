"""``split_html``: long Telegram HTML cut into messages that each parse, fit, and lose nothing.

Each part is parsed by the fake Bot API's re-implementation of Telegram's HTML parser, so "well
formed" means what Telegram would accept, and formatting is compared character by character
through the entities Telegram would build.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bot.render import LIMIT, e, split_html
from tests.fakes.telegram import check_text, parse_html, utf16_len

RESERVE = 200  # split_html's room for closing and reopening tags; a longer line is cut inside

# The examples are pure functions of their input: no database, and no deadline on a loaded box.
EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_OPENERS = {
    "b": "<b>",
    "i": "<i>",
    "u": "<u>",
    "s": "<s>",
    "code": "<code>",
    "pre": "<pre>",
    "a": '<a href="https://ops.example/runbook?a=1&amp;b=2">',
    "spoiler": '<span class="tg-spoiler">',
}
_CLOSERS = {"spoiler": "span"}

# Letters, digits, spaces, and the characters that escaping turns into entities.
_plain = st.text(alphabet="abcxyz 019&<>\"'é€—", min_size=1, max_size=40).map(e)
# A long run without a newline is cut inside the line (still never inside a tag or an entity).
_long = st.integers(min_value=RESERVE, max_value=400).map(lambda n: "word &amp; " * (n // 10))
_CLOSE = "</>"
_tokens = st.lists(
    st.one_of(st.sampled_from(sorted(_OPENERS)), st.just(_CLOSE), _plain, st.just("\n"), _long),
    min_size=1,
    max_size=60,
)


def _document(tokens: list[str], depth: int = 3) -> str:
    """Balanced HTML from a token list: tags open and close where drawn (possibly spanning
    lines), nested at most ``depth`` deep as render's output is; any left open close at the end."""
    out: list[str] = []
    stack: list[str] = []
    for token in tokens:
        if token in _OPENERS:
            if len(stack) < depth:
                stack.append(token)
                out.append(_OPENERS[token])
        elif token == _CLOSE:
            if stack:
                out.append(f"</{_CLOSERS.get(stack[-1], stack[-1])}>")
                stack.pop()
        else:
            out.append(token)
    out += [f"</{_CLOSERS.get(name, name)}>" for name in reversed(stack)]
    return "".join(out)


documents = _tokens.map(_document)
short_lines = st.lists(
    st.one_of(st.sampled_from(sorted(_OPENERS)), st.just(_CLOSE), _plain, st.just("\n")),
    min_size=1,
    max_size=60,
).map(_document)
limits = st.integers(min_value=RESERVE + 50, max_value=RESERVE + 250)


Styled = list[tuple[str, frozenset[tuple[str, str]]]]


def formatted(html: str) -> Styled:
    """Each visible character with the set of entities (type, url/language) covering it."""
    text, entities = parse_html(html)
    marks: list[set[tuple[str, str]]] = [set() for _ in text]
    for entity in entities:
        # The alphabet is in the BMP, so UTF-16 offsets are character indexes.
        detail = str(entity.get("url", entity.get("language", "")))
        for index in range(entity["offset"], entity["offset"] + entity["length"]):
            marks[index].add((entity["type"], detail))
    return [(char, frozenset(mark)) for char, mark in zip(text, marks, strict=True)]


def rejoined(parts: list[str], original: str) -> Styled:
    """The parts' formatted characters, with the newline each line-boundary cut dropped put
    back (a cut inside an over-long line drops nothing)."""
    whole = formatted(original)
    out: Styled = []
    for index, part in enumerate(parts):
        if index and len(out) < len(whole) and whole[len(out)][0] == "\n":
            out.append(whole[len(out)])
        out.extend(formatted(part))
    return out


@EXAMPLES
@given(documents, limits)
def test_every_part_fits_parses_and_keeps_text_and_formatting(html: str, limit: int) -> None:
    parts = split_html(html, limit)
    assert all(utf16_len(part) <= limit for part in parts), [utf16_len(p) for p in parts]
    # Every part on its own is a text Telegram accepts: tags balanced, entities whole, and
    # some non-blank text once parsed (Telegram refuses an empty message).
    blank = not parse_html(html)[0].strip()  # nothing to show: no part can show anything
    for part in parts:
        shown, _ = parse_html(part)
        assert blank or shown.strip(), part
        if not blank:
            check_text(part, limit=limit)
    # Nothing lost, duplicated or reordered, and every character keeps its formatting.
    assert rejoined(parts, html) == formatted(html)


@EXAMPLES
@given(short_lines, limits)
def test_lines_that_fit_are_never_cut_inside(html: str, limit: int) -> None:
    assume(all(len(line) <= limit - RESERVE for line in html.split("\n")))
    lines = parse_html(html)[0].split("\n")
    parts = split_html(html, limit)
    assert "\n".join(parse_html(part)[0] for part in parts).split("\n") == lines


@pytest.mark.parametrize(
    "html",
    [
        "<pre>\n" + "x" * 5000 + "</pre>",
        "<pre>\n" + "x" * 4090 + "\n</pre>",
        "<b>\n\n<i>\n" + "word " * 1500 + "\n</i>\n</b>\n",
        "<blockquote>\n" + "🚀" * 3000 + "\n</blockquote>",
    ],
)
def test_no_part_is_blank(html: str) -> None:
    """A line holding only an opening (or closing) tag next to a cut never becomes a part of
    its own: "<pre></pre>" is an empty message, which Telegram refuses."""
    parts = split_html(html)
    assert len(parts) > 1
    for part in parts:
        text, _ = check_text(part)
        assert text is not None and text.strip()
    # Every non-blank character is kept, in order.
    kept = "".join(char for part in parts for char in parse_html(part)[0] if not char.isspace())
    assert kept == "".join(char for char in parse_html(html)[0] if not char.isspace())


def test_text_within_the_limit_is_one_unchanged_message() -> None:
    html = "<b>short</b>\n" + "x" * (LIMIT - 13)
    assert len(html) == LIMIT
    assert split_html(html) == [html]


def test_a_pre_block_cut_in_two_is_closed_and_reopened() -> None:
    rows = [f"row {i:04d} {'x' * 60}" for i in range(120)]
    html = "<b>Audit</b>\n<pre>" + "\n".join(rows) + "</pre>\nend"
    parts = split_html(html)
    assert len(parts) == 3
    assert all(len(part) <= LIMIT for part in parts)
    assert parts[0].endswith("</pre>")
    assert parts[1].startswith("<pre>row ") and parts[1].endswith("</pre>")
    assert parts[2].startswith("<pre>row ") and parts[2].endswith("</pre>\nend")
    shown = [line for part in parts for line in parse_html(part)[0].split("\n")]
    assert shown == ["Audit", *rows, "end"]


def test_an_over_long_line_is_cut_between_entities_never_inside_one() -> None:
    html = "&lt;tag&gt; " * 1000  # 12,000 characters, no newline
    parts = split_html(html)
    assert len(parts) > 2
    for part in parts:
        assert len(part) <= LIMIT
        assert parse_html(part)  # a cut inside "&lt;" would not parse
    assert "".join(parts) == html


def test_a_blank_run_longer_than_a_message_is_dropped_not_sent_empty() -> None:
    """A checklist line whose name is 8,141 newlines (found by hypothesis): no blank part."""
    html = "⚠️ <b>" + "\n" * 8141 + "</b>: &lt;b&gt;"
    parts = split_html(html)
    for part in parts:
        check_text(part)  # Telegram answers 400 "message text is empty" to a blank part
    assert "".join(parse_html(p)[0] for p in parts).split() == ["⚠️", ":", "<b>"]
