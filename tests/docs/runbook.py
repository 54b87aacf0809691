"""Read docs/RUNBOOK.md as a list of commands: ``lunia``, ``make``, Telegram, HTTP and shell.

Where commands are found: inline code spans anywhere, and every line of the fenced blocks
except ``text`` ones, which show what a screen shows (continuations with a trailing ``\\`` or
an open quote joined; ``# or: CMD`` comments are alternative commands; ``.venv/bin/lunia ...``
inside a comment is a command too, other comment text is prose). The first block that sets
``API=`` is the preamble (``API``, ``TOKEN`` and friends), not a command. ``a|b|c`` after
``lunia`` lists alternatives; ``\\|`` in a table is ``|``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "RUNBOOK.md"

HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
# Paths served outside /api/v1 that the runbook writes as a bare `/word` span; any other
# `/word` span is a Telegram command.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"})

_FENCE = re.compile(r"^[ \t]*```(\w*)[^\n]*\n(.*?)^[ \t]*```[^\n]*$", re.M | re.S)
_SPAN = re.compile(r"`([^`]+)`")
_ENV_PREFIX = re.compile(r"^(?:[A-Z][A-Z0-9_]*=\S*\s+)+")
_METHOD_SPAN = re.compile(
    rf"^((?:{'|'.join(HTTP_METHODS)})(?:\|(?:{'|'.join(HTTP_METHODS)}))*)\s+(/\S*)(?:\s+(.+))?$"
)
_TELEGRAM = re.compile(r"^/[a-z_]+(?:\s.*)?$")
_COMMENT_LUNIA = re.compile(r"\.venv/bin/lunia\s[^;)]*")
_OR_COMMENT = re.compile(r"^\s*#\s*or:\s*(.*)$")


class Kind(Enum):
    """What a runbook command is, and so how it is checked."""

    LUNIA = "lunia"
    MAKE = "make"
    TELEGRAM = "telegram"
    CURL = "curl"  # a shell line starting with curl
    HTTP = "http"  # a `METHOD /path [json body]` span
    PATH = "path"  # a bare `/api/...` or probe path span, no method
    SHELL = "shell"  # any other shell line (docker compose, ...)


@dataclass(frozen=True)
class Command:
    """One command as the runbook writes it (whitespace collapsed) and where."""

    kind: Kind
    text: str
    line: int
    fenced: bool = False  # a line of a bash block (a step), not an inline span (a mention)
    alternative: bool = False  # one of `lunia a|b|c`: names the command, runs nothing


@dataclass(frozen=True)
class Request:
    """The HTTP request a curl line or a METHOD span makes."""

    method: str
    target: str  # path and query, as written
    path: str  # without the query
    query: tuple[str, ...]  # parameter names
    body: str | None


def _collapse(text: str) -> str:
    return " ".join(text.replace("\\|", "|").split())


def _split_comment(line: str, quote: str | None) -> tuple[str, str, str | None]:
    """(code, comment, open quote at the end) of one physical line; ``quote`` is open before."""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i:], None
    return line, "", quote


def _block_lines(block: str, first_line: int) -> Iterator[tuple[int, str, str]]:
    """(line, command, its comments) for each logical line of a bash block."""
    buf, comments, start, quote, alternative = "", "", first_line, None, False
    for offset, raw in enumerate(block.splitlines()):
        line = raw
        if alternative and buf:  # continuation of a `# or:` command, itself commented out
            line = raw.replace("#", "", 1)
        elif not buf and (m := _OR_COMMENT.match(raw)):
            line, alternative = m.group(1), True
        if not buf:
            start = first_line + offset
        code, comment, quote = _split_comment(line, quote)
        comments += comment
        if quote:
            buf += code + "\n"
            continue
        if code.rstrip().endswith("\\"):
            buf += code.rstrip()[:-1] + " "
            continue
        buf += code
        if buf.strip() or comments.strip():
            yield start, buf.strip(), comments
        buf, comments, alternative = "", "", False


def classify(text: str, line: int, *, fenced: bool = False) -> list[Command]:
    """The commands one span or shell line names (none if it is not a command)."""
    text = _collapse(text)
    bare = _ENV_PREFIX.sub("", text)
    head, _, rest = bare.partition(" ")
    if head in ("lunia", ".venv/bin/lunia"):
        if not rest or "..." in rest:
            return []
        env = text[: len(text) - len(bare)]
        first, _, tail = rest.partition(" ")
        alternatives = first.split("|")
        return [
            Command(
                Kind.LUNIA,
                f"{env}lunia {alt} {tail}".strip(),
                line,
                fenced,
                alternative=len(alternatives) > 1,
            )
            for alt in alternatives
        ]
    if head == "make":
        return [Command(Kind.MAKE, text, line, fenced)] if rest else []
    if head == "curl":
        return [Command(Kind.CURL, text, line, fenced)]
    if head == "docker":
        return [Command(Kind.SHELL, text, line, fenced)]
    if _METHOD_SPAN.match(text):
        return [Command(Kind.HTTP, text, line)]
    if text.startswith("/") and "..." not in text:
        if text.count("/") > 1 or text in PROBE_PATHS:
            return [Command(Kind.PATH, text, line)]
        if _TELEGRAM.match(text):
            return [Command(Kind.TELEGRAM, text, line)]
    return []


def _line_of(doc: str, index: int) -> int:
    return doc.count("\n", 0, index) + 1


def runbook_commands(doc: str | None = None) -> tuple[str, list[Command]]:
    """The preamble (the block setting API=) and every command of the runbook, in order."""
    doc = RUNBOOK.read_text() if doc is None else doc
    found: list[Command] = []
    preamble = ""
    prose = doc
    for fence in _FENCE.finditer(doc):
        body_line = _line_of(doc, fence.start(2))
        # Keep line numbers: blank the block out of the text searched for inline spans.
        prose = (
            prose[: fence.start()] + re.sub(r"[^\n]", " ", fence.group(0)) + prose[fence.end() :]
        )
        if fence.group(1) == "text":  # what a screen shows (a chat message), not commands
            continue
        if not preamble and re.search(r"^API=", fence.group(2), re.M):
            preamble = fence.group(2)
            continue
        for line, code, comment in _block_lines(fence.group(2), body_line):
            if code:
                kinds = classify(code, line, fenced=True)
                found += kinds or [Command(Kind.SHELL, _collapse(code), line, True)]
            for ref in _COMMENT_LUNIA.findall(comment):
                found += classify(ref, line, fenced=True)
    for span in _SPAN.finditer(prose):
        found += classify(span.group(1), _line_of(prose, span.start()))
    found.sort(key=lambda c: c.line)
    return preamble, found


def _shell_words(command: str) -> list[str]:
    """Words of the first stage of a pipeline (quotes removed, like bash would)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars="|")
    lexer.whitespace_split = True
    words: list[str] = []
    for word in lexer:
        if word == "|":
            break
        words.append(word)
    return words


def _request(method: str, target: str, body: str | None) -> Request:
    path, _, query = target.partition("?")
    names = tuple(p.partition("=")[0] for p in query.split("&") if p)
    return Request(method, target, path, names, body)


def curl_request(command: str) -> Request:
    """Method, path and body of a curl line (POST when it has a body and no -X, as curl does)."""
    words = _shell_words(command)
    method, body, url = "GET", None, None
    for i, word in enumerate(words):
        if word in ("-X", "--request"):
            method = words[i + 1]
        elif word in ("-d", "--data", "--data-raw"):
            body = words[i + 1]
        elif word.startswith(("$API/", "http://", "https://")):
            url = word
    if body is not None and "-X" not in words and "--request" not in words:
        method = "POST"
    if url is None:
        raise ValueError(f"no URL in {command!r}")
    target = url.removeprefix("$API") if url.startswith("$API") else "/" + url.split("/", 3)[3]
    return _request(method, target, body)


def span_requests(command: str) -> list[Request]:
    """The requests of a `METHOD[|METHOD] /path [body]` span (one per method)."""
    match = _METHOD_SPAN.match(command)
    if match is None:
        raise ValueError(f"not a METHOD /path span: {command!r}")
    methods, target, body = match.groups()
    return [_request(m, target, body) for m in methods.split("|")]


def curl_has_fail_flag(command: str) -> bool:
    """Whether the curl invocation already fails on HTTP errors (-f, -fsS, --fail...)."""
    return any(
        w.startswith("--fail") or (re.fullmatch(r"-[A-Za-z]+", w) is not None and "f" in w)
        for w in _shell_words(command)
    )
