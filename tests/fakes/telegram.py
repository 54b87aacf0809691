"""Loopback fake of the Telegram Bot API that speaks the real HTTP protocol.

Point aiogram at it with ``AiohttpSession(api=TelegramAPIServer.from_base(fake.base))`` (or
``TELEGRAM_API_BASE=fake.base``) and the real client code path runs: form/multipart/JSON request
bodies, Telegram's response envelope, its error codes and descriptions, long polling, webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import enum
import inspect
import itertools
import json
import math
import mimetypes
import re
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import aiohttp
from aiohttp import web

from tests.fakes.loopback import LoopbackServer

T = TypeVar("T")
Json = dict[str, Any]
Handler = Callable[["Call"], Any]

DEFAULT_TOKEN = "123456789:AAFakeTokenForLuniaTests-0123456789ab"
MAX_TEXT_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024
MAX_CALLBACK_DATA_BYTES = 64

NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are"
    " exactly the same as a current content and reply markup of the message"
)
WEBHOOK_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active;"
    " use deleteWebhook to delete the webhook first"
)
POLLING_CONFLICT = (
    "Conflict: terminated by other getUpdates request;"
    " make sure that only one bot instance is running"
)
MIGRATED = "Bad Request: group chat was upgraded to a supergroup chat"
CALLBACK_TOO_OLD = (
    "Bad Request: query is too old and response timeout expired or query ID is invalid"
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_DEFAULT_DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
_INT_FIELDS = frozenset(
    {
        "chat_id",
        "from_chat_id",
        "message_id",
        "message_thread_id",
        "reply_to_message_id",
        "offset",
        "limit",
        "cache_time",
        "max_connections",
        "user_id",
        "duration",
        "width",
        "height",
    }
)
_NUMBER_FIELDS = frozenset({"timeout"})
_BOOL_FIELDS = frozenset(
    {
        "disable_notification",
        "protect_content",
        "show_alert",
        "drop_pending_updates",
        "disable_web_page_preview",
        "allow_sending_without_reply",
        "has_spoiler",
        "disable_content_type_detection",
        "show_caption_above_media",
        "allow_paid_broadcast",
    }
)
_JSON_FIELDS = frozenset(
    {
        "reply_markup",
        "entities",
        "caption_entities",
        "allowed_updates",
        "commands",
        "scope",
        "reply_parameters",
        "link_preview_options",
        "message_ids",
        "media",
    }
)
_CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
_BUTTON_KINDS = frozenset(
    {
        "url",
        "callback_data",
        "web_app",
        "login_url",
        "switch_inline_query",
        "switch_inline_query_current_chat",
        "switch_inline_query_chosen_chat",
        "copy_text",
        "callback_game",
        "pay",
    }
)
_FLOOD_METHODS = frozenset(
    {
        "sendmessage",
        "sendphoto",
        "senddocument",
        "editmessagetext",
        "editmessagecaption",
        "editmessagereplymarkup",
    }
)
_DEFAULT_UPDATE_TYPES = frozenset(
    {
        "message",
        "edited_message",
        "channel_post",
        "edited_channel_post",
        "inline_query",
        "chosen_inline_result",
        "callback_query",
        "shipping_query",
        "pre_checkout_query",
        "poll",
        "poll_answer",
        "my_chat_member",
        "chat_join_request",
    }
)
_COMMAND_RE = re.compile(r"/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?(?=\s|$)")
_BOT_COMMAND_RE = re.compile(r"[a-z0-9_]{1,32}")
_SECRET_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")
_HTML_ENTITY_RE = re.compile(r"&(?:#(\d{1,7})|#[xX]([0-9a-fA-F]{1,6})|([A-Za-z]+));")
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


# --------------------------------------------------------------------------- errors and records


class ApiError(Exception):
    """An error answer in Telegram's envelope."""

    def __init__(
        self,
        status: int,
        description: str,
        *,
        retry_after: int | None = None,
        migrate_to_chat_id: int | None = None,
    ) -> None:
        """Build an error with Telegram's status, description and optional parameters."""
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after
        self.migrate_to_chat_id = migrate_to_chat_id

    def body(self) -> Json:
        """Return the JSON body Telegram would send for this error."""
        body: Json = {"ok": False, "error_code": self.status, "description": self.description}
        parameters: Json = {}
        if self.retry_after is not None:
            parameters["retry_after"] = self.retry_after
        if self.migrate_to_chat_id is not None:
            parameters["migrate_to_chat_id"] = self.migrate_to_chat_id
        if parameters:
            body["parameters"] = parameters
        return body


class HtmlParseError(ValueError):
    """Raised by ``parse_html`` with tdlib-style wording."""


class _Dropped(Exception):
    """Internal: the request must be answered by dropping the connection."""


class _Unset(enum.Enum):
    """Sentinel for 'use the configured value'."""

    TOKEN = 0


@dataclass
class UploadedFile:
    """One file part of a multipart request."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Call:
    """One API request as the fake received it, with the answer it gave."""

    method: str
    params: Json
    at: float
    http_method: str = "POST"
    files: dict[str, UploadedFile] = field(default_factory=dict)
    token: str = ""
    source: Literal["http", "webhook_reply"] = "http"
    status: int | None = None
    response: Json | None = None

    @property
    def ok(self) -> bool:
        """Whether the call was answered with ok=true."""
        return self.status == 200

    @property
    def result(self) -> Any:
        """The ``result`` field of a successful answer (None otherwise)."""
        return self.response.get("result") if self.response else None

    @property
    def description(self) -> str | None:
        """The ``description`` field of the answer, if any."""
        return self.response.get("description") if self.response else None

    def upload(self, name: str) -> UploadedFile | None:
        """Return the file sent for parameter ``name`` (direct part or ``attach://`` reference)."""
        value = self.params.get(name)
        if isinstance(value, str) and value.startswith("attach://"):
            return self.files.get(value.removeprefix("attach://"))
        return self.files.get(name)


@dataclass
class StoredMessage:
    """Current state of one message in a chat (text is the rendered text, html the raw source)."""

    chat_id: int
    message_id: int
    date: int
    chat: Json
    sender: Json
    outgoing: bool
    text: str | None = None
    html: str | None = None
    parse_mode: str | None = None
    entities: list[Json] = field(default_factory=list)
    caption: str | None = None
    caption_entities: list[Json] = field(default_factory=list)
    reply_markup: Json | None = None
    reply_to: StoredMessage | None = None
    media: Json = field(default_factory=dict)
    photo: bytes | None = None
    document: bytes | None = None
    document_name: str | None = None
    edits: int = 0
    edit_date: int | None = None
    deleted: bool = False

    @property
    def buttons(self) -> list[Json]:
        """Flattened inline keyboard buttons."""
        if not self.reply_markup:
            return []
        return [button for row in self.reply_markup.get("inline_keyboard", []) for button in row]

    def to_api(self, *, with_reply: bool = True) -> Json:
        """Render as a Bot API ``Message`` object."""
        message: Json = {
            "message_id": self.message_id,
            "from": dict(self.sender),
            "chat": dict(self.chat),
            "date": self.date,
        }
        if self.edit_date is not None:
            message["edit_date"] = self.edit_date
        if with_reply and self.reply_to is not None:
            message["reply_to_message"] = self.reply_to.to_api(with_reply=False)
        if self.text is not None:
            message["text"] = self.text
            if self.entities:
                message["entities"] = copy.deepcopy(self.entities)
        message.update(copy.deepcopy(self.media))
        if self.caption is not None:
            message["caption"] = self.caption
            if self.caption_entities:
                message["caption_entities"] = copy.deepcopy(self.caption_entities)
        if self.reply_markup is not None:
            message["reply_markup"] = copy.deepcopy(self.reply_markup)
        return message


@dataclass
class WebhookDelivery:
    """One update POSTed to the webhook and the HTTP status it got."""

    update_id: int
    status: int
    at: float


@dataclass(frozen=True)
class FloodLimits:
    """Opt-in flood control as (max sends, window seconds) per chat, per group and overall."""

    per_chat: tuple[int, float] = (1, 1.0)
    per_group: tuple[int, float] = (20, 60.0)
    overall: tuple[int, float] = (30, 1.0)


@dataclass
class _Fault:
    """A queued injected failure."""

    method: str
    error: ApiError
    remaining: int


@dataclass
class _StoredFile:
    """A file the fake has accepted, addressable by file_id."""

    file_id: str
    file_unique_id: str
    data: bytes
    path: str
    kind: str
    meta: Json = field(default_factory=dict)


@dataclass
class _Chat:
    """A chat known to the fake."""

    id: int
    type: str
    title: str | None = None
    username: str | None = None
    first_name: str | None = None
    next_message_id: int = 1
    messages: dict[int, StoredMessage] = field(default_factory=dict)

    def api(self) -> Json:
        """Render as a Bot API ``Chat`` object."""
        chat: Json = {"id": self.id, "type": self.type}
        if self.type == "private":
            chat["first_name"] = self.first_name or f"User{self.id}"
        else:
            chat["title"] = self.title or f"Chat {self.id}"
        if self.username:
            chat["username"] = self.username
        return chat


# --------------------------------------------------------------------------- HTML entities


@dataclass
class _OpenTag:
    """A start tag waiting for its end tag."""

    name: str
    attrs: dict[str, str]
    offset: int
    text_start: int
    language: str | None = None
    source_start: int = 0


_ALLOWED_TAGS = frozenset(
    {
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "a",
        "code",
        "pre",
        "tg-spoiler",
        "span",
        "blockquote",
        "tg-emoji",
        "tg-time",
    }
)
_TAG_ENTITY = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "a": "text_link",
    "tg-emoji": "custom_emoji",
    "tg-time": "date_time",
}
# Schemes a text link may use: the web and Telegram's own links. Anything else (javascript:,
# data:, file:, ...) is not a link Telegram will show, and the message is refused.
_LINK_SCHEMES = frozenset({"http", "https", "tg"})
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(?!\d)")
_DATE_TIME_FORMAT_RE = re.compile(r"r|w?[dD]?[tT]?")


def link_problem(url: str) -> str | None:
    """Why Telegram would refuse ``url`` as a text link's target, or None when it is fine."""
    if not url or any(char.isspace() or ord(char) < 0x20 or char == "\x7f" for char in url):
        return "Wrong URL"
    scheme = _SCHEME_RE.match(url)
    if scheme is None:  # "example.com/x": Telegram assumes http://
        return None if url[0] not in "/:?#" else "Wrong URL"
    name = scheme.group(1).lower()
    if name not in _LINK_SCHEMES:
        return f'Unsupported URL protocol "{name}"'
    rest = url[scheme.end() :]
    if name != "tg" and (not rest.startswith("//") or rest[2:3] in ("", "/", "?", "#")):
        return "URL host is empty"
    return None


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units, the unit of Telegram entity offsets."""
    return len(text.encode("utf-16-le")) // 2


def _byte_offset(source: str, index: int) -> int:
    """UTF-8 byte offset of character ``index``, as tdlib reports positions."""
    return len(source[:index].encode())


def _decode_entity(source: str, index: int) -> tuple[str, int] | None:
    """Decode the HTML entity starting at ``index`` (strict: must end with ';')."""
    match = _HTML_ENTITY_RE.match(source, index)
    if match is None:
        return None
    decimal, hexadecimal, name = match.groups()
    if name is not None:
        char = _NAMED_ENTITIES.get(name)
        return (char, match.end()) if char is not None else None
    code = int(decimal) if decimal is not None else int(hexadecimal, 16)
    if code == 0 or code >= 0x110000 or 0xD800 <= code <= 0xDFFF:
        return None
    return chr(code), match.end()


class _HtmlParser:
    """A small re-implementation of Telegram's HTML entity parser."""

    def __init__(self, source: str) -> None:
        """Prepare to parse ``source``."""
        self.src = source
        self.pos = 0
        self.out: list[str] = []
        self.offset = 0
        self.stack: list[_OpenTag] = []
        self.entities: list[Json] = []

    def fail(self, message: str) -> HtmlParseError:
        """Build a parse error."""
        return HtmlParseError(message)

    def at(self, index: int) -> int:
        """Byte offset of a character index."""
        return _byte_offset(self.src, index)

    def emit(self, text: str) -> None:
        """Append rendered text."""
        self.out.append(text)
        self.offset += utf16_len(text)

    def run(self) -> tuple[str, list[Json]]:
        """Parse the whole source into (text, entities)."""
        src = self.src
        while self.pos < len(src):
            char = src[self.pos]
            if char == "&":
                self.entity()
            elif char == "<":
                if self.pos + 1 < len(src) and src[self.pos + 1] == "/":
                    self.end_tag()
                else:
                    self.start_tag()
            else:
                self.emit(char)
                self.pos += 1
        if self.stack:
            name = self.stack[-1].name
            raise self.fail(f'Can\'t find end tag corresponding to start tag "{name}"')
        self.entities.sort(key=lambda e: (e["offset"], -e["length"]))
        return "".join(self.out), self.entities

    def entity(self) -> None:
        """Consume an HTML character entity."""
        decoded = _decode_entity(self.src, self.pos)
        if decoded is None:
            raise self.fail(
                f'Character "&" at byte offset {self.at(self.pos)} must start an HTML entity'
                ' such as "&amp;"'
            )
        char, self.pos = decoded
        self.emit(char)

    def skip_spaces(self) -> None:
        """Skip whitespace."""
        while self.pos < len(self.src) and self.src[self.pos].isspace():
            self.pos += 1

    def start_tag(self) -> None:
        """Consume a start tag with its attributes."""
        src, begin = self.src, self.pos
        self.pos += 1
        while self.pos < len(src) and not src[self.pos].isspace() and src[self.pos] != ">":
            self.pos += 1
        if self.pos >= len(src):
            raise self.fail(f"Unclosed start tag at byte offset {self.at(begin)}")
        name = src[begin + 1 : self.pos].lower()
        if name not in _ALLOWED_TAGS:
            raise self.fail(f'Unsupported start tag "{name}" at byte offset {self.at(begin)}')
        attrs = self.attributes(name, begin)
        if name == "span" and attrs.get("class") != "tg-spoiler":
            raise self.fail('Tag "span" must have class "tg-spoiler"')
        if name == "tg-emoji" and not attrs.get("emoji-id", "").isdigit():
            raise self.fail('Tag "tg-emoji" must have attribute "emoji-id"')
        if name == "tg-time":
            if not attrs.get("unix", "").isdigit():
                raise self.fail('Tag "tg-time" must have attribute "unix"')
            if not _DATE_TIME_FORMAT_RE.fullmatch(attrs.get("format", "")):
                raise self.fail(f"Invalid date-time format at byte offset {self.at(begin)}")
        self.stack.append(_OpenTag(name, attrs, self.offset, len(self.out), source_start=begin))

    def attributes(self, tag: str, begin: int) -> dict[str, str]:
        """Consume the attributes of a start tag up to and including '>'."""
        src = self.src
        attrs: dict[str, str] = {}
        while True:
            self.skip_spaces()
            if self.pos >= len(src):
                raise self.fail(f"Unclosed start tag at byte offset {self.at(begin)}")
            if src[self.pos] == ">":
                self.pos += 1
                return attrs
            start = self.pos
            while self.pos < len(src) and not src[self.pos].isspace() and src[self.pos] not in "=>":
                self.pos += 1
            name = src[start : self.pos].lower()
            self.skip_spaces()
            if self.pos < len(src) and src[self.pos] != "=" and tag == "blockquote" and name:
                attrs[name] = ""
                continue
            if not name or self.pos >= len(src) or src[self.pos] != "=":
                raise self.fail(
                    "Expected equal sign in declaration of an attribute of the tag"
                    f' "{tag}" at byte offset {self.at(begin)}'
                )
            self.pos += 1
            self.skip_spaces()
            if self.pos >= len(src):
                raise self.fail(f"Unclosed start tag at byte offset {self.at(begin)}")
            attrs[name] = self.attribute_value(begin)

    def attribute_value(self, begin: int) -> str:
        """Consume a quoted string or a name token."""
        src = self.src
        quote = src[self.pos]
        if quote not in "'\"":
            start = self.pos
            while self.pos < len(src) and (src[self.pos].isalnum() or src[self.pos] in ".-"):
                self.pos += 1
            if self.pos < len(src) and not src[self.pos].isspace() and src[self.pos] != ">":
                raise self.fail(f"Unexpected end of name token at byte offset {self.at(start)}")
            return src[start : self.pos].lower()
        self.pos += 1
        value: list[str] = []
        while self.pos < len(src) and src[self.pos] != quote:
            if src[self.pos] == "&":
                decoded = _decode_entity(src, self.pos)
                if decoded is None:
                    raise self.fail(
                        f'Character "&" at byte offset {self.at(self.pos)} must start an HTML'
                        ' entity such as "&amp;"'
                    )
                value.append(decoded[0])
                self.pos = decoded[1]
                continue
            value.append(src[self.pos])
            self.pos += 1
        if self.pos >= len(src):
            raise self.fail(f"Unclosed start tag at byte offset {self.at(begin)}")
        self.pos += 1
        return "".join(value)

    def end_tag(self) -> None:
        """Consume an end tag and emit the entity it closes."""
        src, begin = self.src, self.pos
        self.pos += 2
        while self.pos < len(src) and not src[self.pos].isspace() and src[self.pos] != ">":
            self.pos += 1
        name = src[begin + 2 : self.pos].lower()
        self.skip_spaces()
        if self.pos >= len(src) or src[self.pos] != ">":
            raise self.fail(f"Unclosed end tag at byte offset {self.at(begin)}")
        self.pos += 1
        if not self.stack:
            raise self.fail(f"Unexpected end tag at byte offset {self.at(begin)}")
        open_tag = self.stack.pop()
        if name and name != open_tag.name:
            raise self.fail(
                f"Unmatched end tag at byte offset {self.at(begin)},"
                f' expected "</{open_tag.name}>", found "</{name}>"'
            )
        self.close(open_tag)

    def close(self, tag: _OpenTag) -> None:
        """Turn a closed tag into an entity (Telegram drops empty ones)."""
        length = self.offset - tag.offset
        parent = self.stack[-1] if self.stack else None
        if tag.name == "code" and parent is not None and parent.name == "pre":
            language = tag.attrs.get("class", "")
            if language.startswith("language-"):
                parent.language = language.removeprefix("language-")
            return
        if length <= 0:
            return
        entity: Json = {"type": _TAG_ENTITY[tag.name], "offset": tag.offset, "length": length}
        if tag.name == "a":
            url = tag.attrs.get("href") or "".join(self.out[tag.text_start :])
            problem = link_problem(url)
            if problem is not None:
                raise self.fail(
                    f'{problem} in the tag "a" at byte offset {self.at(tag.source_start)}'
                )
            entity["url"] = url
        elif tag.name == "pre" and tag.language:
            entity["language"] = tag.language
        elif tag.name == "blockquote" and "expandable" in tag.attrs:
            entity["type"] = "expandable_blockquote"
        elif tag.name == "tg-emoji":
            entity["custom_emoji_id"] = tag.attrs["emoji-id"]
        elif tag.name == "tg-time":
            entity["unix_time"] = int(tag.attrs["unix"])
            entity["date_time_format"] = tag.attrs.get("format", "")
        self.entities.append(entity)


def parse_html(source: str) -> tuple[str, list[Json]]:
    """Parse Telegram HTML into (plain text, entities) or raise ``HtmlParseError``."""
    return _HtmlParser(source).run()


def check_text(
    raw: str,
    parse_mode: str | None = "HTML",
    *,
    limit: int = MAX_TEXT_LENGTH,
    too_long: str = "Bad Request: message is too long",
    required: bool = True,
    entities: list[Json] | None = None,
) -> tuple[str | None, list[Json]]:
    """Telegram's checks on a message text or caption: parse it in ``parse_mode``, refuse what
    Telegram refuses (``ApiError`` with its description), and return (text, entities).

    The length is counted after entity parsing, in UTF-16 code units, as Telegram counts it;
    a text that is empty or only whitespace once parsed is "empty" (Telegram trims it)."""
    parsed, found = raw, list(entities or [])
    if parse_mode:
        lowered = parse_mode.lower()
        if lowered == "html":
            try:
                parsed, found = parse_html(raw)
            except HtmlParseError as exc:
                raise ApiError(400, f"Bad Request: can't parse entities: {exc}") from exc
        elif lowered not in ("markdown", "markdownv2"):
            raise ApiError(400, "Bad Request: unsupported parse_mode")
    if not parsed.strip():
        if required:
            raise ApiError(400, "Bad Request: message text is empty")
        return None, []
    if utf16_len(parsed) > limit:
        raise ApiError(400, too_long)
    return parsed, found


def check_reply_markup(markup: Any) -> Json | None:
    """Telegram's checks on ``reply_markup`` (``ApiError`` when refused); returns the inline
    keyboard it would echo back, or None."""
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
    if "inline_keyboard" not in markup:
        return None
    rows = markup["inline_keyboard"]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise ApiError(
            400,
            'Bad Request: field "inline_keyboard" of the InlineKeyboardMarkup should be'
            " an Array of Arrays",
        )
    for button in (button for row in rows for button in row):
        _check_button(button)
    if not any(rows):
        return None
    return {"inline_keyboard": copy.deepcopy(rows)}


def _check_button(button: Any) -> None:
    """Validate one inline keyboard button."""
    if not isinstance(button, dict) or not isinstance(button.get("text"), str):
        raise ApiError(
            400,
            'Bad Request: can\'t parse inline keyboard button: Field "text" must be of type String',
        )
    if "callback_data" in button:
        data = button["callback_data"]
        size = len(data.encode()) if isinstance(data, str) else 0
        if not 1 <= size <= MAX_CALLBACK_DATA_BYTES:
            raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
    if "url" in button and link_problem(str(button["url"])) is not None:
        raise ApiError(400, "Bad Request: wrong HTTP URL specified")
    if not _BUTTON_KINDS & button.keys():
        raise ApiError(
            400,
            "Bad Request: can't parse inline keyboard button: Text buttons are"
            " unallowed in the inline keyboard",
        )


# --------------------------------------------------------------------------- helpers


def _coerce(raw: Json) -> Json:
    """Turn form strings into the types Telegram would read them as."""
    params: Json = {}
    for key, value in raw.items():
        parsed = value
        if isinstance(value, str):
            if key in _INT_FIELDS and re.fullmatch(r"-?\d+", value):
                parsed = int(value)
            elif key in _NUMBER_FIELDS and re.fullmatch(r"-?\d+(\.\d+)?", value):
                parsed = float(value) if "." in value else int(value)
            elif key in _BOOL_FIELDS and value.lower() in ("true", "false"):
                parsed = value.lower() == "true"
            elif key in _JSON_FIELDS:
                try:
                    parsed = json.loads(value)
                except ValueError:
                    parsed = value
        params[key] = parsed
    return params


def _image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of a PNG (IHDR checked with its CRC) or baseline JPEG, else None."""
    if data.startswith(PNG_SIGNATURE) and len(data) >= 33 and data[12:16] == b"IHDR":
        (crc,) = struct.unpack(">I", data[29:33])
        if zlib.crc32(data[12:29]) != crc:
            return None
        width, height = struct.unpack(">II", data[16:24])
        return (width, height) if width and height else None
    if data.startswith(b"\xff\xd8"):
        index = 2
        while index + 9 <= len(data) and data[index] == 0xFF:
            marker = data[index + 1]
            if marker == 0x01 or 0xD0 <= marker <= 0xD8:
                index += 2
                continue
            (segment,) = struct.unpack(">H", data[index + 2 : index + 4])
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[index + 5 : index + 9])
                return width, height
            index += 2 + segment
    return None


def _user(user_id: int, username: str | None = None) -> Json:
    """A Bot API ``User`` object for a human."""
    user: Json = {
        "id": user_id,
        "is_bot": False,
        "first_name": username or f"User{user_id}",
        "language_code": "en",
    }
    if username:
        user["username"] = username
    return user


def _infer_chat_type(chat_id: int) -> str:
    """Chat type implied by an id: positive private, -100… supergroup, other negative group."""
    if chat_id > 0:
        return "private"
    return "supergroup" if chat_id <= -1_000_000_000_000 else "group"


def _default_description(status: int, retry_after: int | None) -> str:
    """Telegram's usual description for a status code."""
    if status == 429:
        return f"Too Many Requests: retry after {retry_after or 1}"
    return _DEFAULT_DESCRIPTIONS.get(status, "Internal Server Error")


# --------------------------------------------------------------------------- the fake


class FakeTelegram(LoopbackServer):
    """A loopback Telegram Bot API server with state, validation and fault injection."""

    name = "Telegram"
    shutdown_timeout = 1.0
    handler_cancellation = True

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        bot_username: str = "lunia_test_bot",
        bot_name: str = "Lunia Test Bot",
        flood_limits: FloodLimits | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """Configure the fake; nothing listens until ``start()``."""
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.bot_username = bot_username
        self.bot_name = bot_name
        super().__init__(host)
        self.flood_limits = flood_limits
        self.calls: list[Call] = []
        self.webhook_deliveries: list[WebhookDelivery] = []
        self.callback_answers: dict[str, Json] = {}
        self._closing = False
        self._offline: Literal["drop", "502"] | None = None
        self._faults: list[_Fault] = []
        self._held: dict[str, asyncio.Event] = {}
        self._chats: dict[int, _Chat] = {}
        self._migrated: dict[int, int] = {}
        self._kicked: dict[int, str] = {}
        self._updates: list[Json] = []
        self._next_update_id = 700_000_001
        self._allowed_updates: frozenset[str] = _DEFAULT_UPDATE_TYPES
        self._poll_generation = 0
        self._changed = asyncio.Event()
        self._updates_changed = asyncio.Event()
        self._callbacks: dict[str, bool] = {}
        self._callback_seq = itertools.count(4_000_000_000_000_000_001)
        self._file_seq = itertools.count(1)
        self._files: dict[str, _StoredFile] = {}
        self._files_by_path: dict[str, _StoredFile] = {}
        self._commands: dict[tuple[str, str], list[Json]] = {}
        self._flood: dict[tuple[str, int], deque[float]] = {}
        self.webhook_url = ""
        self.webhook_secret: str | None = None
        self.webhook_allowed_updates: list[str] | None = None
        self.webhook_max_connections = 40
        self._webhook_last_error: tuple[int, str] | None = None
        self._handlers: dict[str, Handler] = {
            "getme": self._get_me,
            "logout": self._ok_true,
            "close": self._ok_true,
            "getupdates": self._get_updates,
            "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "setmycommands": self._set_my_commands,
            "getmycommands": self._get_my_commands,
            "deletemycommands": self._delete_my_commands,
            "sendmessage": self._send_message,
            "editmessagetext": self._edit_message_text,
            "editmessagecaption": self._edit_message_caption,
            "editmessagereplymarkup": self._edit_message_reply_markup,
            "deletemessage": self._delete_message,
            "answercallbackquery": self._answer_callback_query,
            "sendphoto": self._send_photo,
            "senddocument": self._send_document,
            "sendchataction": self._send_chat_action,
            "getchat": self._get_chat,
            "getfile": self._get_file,
        }

    # ------------------------------------------------------------------ lifecycle

    @property
    def base(self) -> str:
        """Base URL to pass as TELEGRAM_API_BASE / ``TelegramAPIServer.from_base``."""
        return self.origin

    def build_app(self) -> web.Application:
        """The Bot API, file downloads, and a 404 in Telegram's shape for anything else."""
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_route("GET", "/file/bot{token}/{path:.+}", self._handle_file)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
        return app

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._closing = False
        await super().start()

    async def stop(self) -> None:
        """Answer pending long polls and close every socket."""
        self._closing = True
        self._wake_pollers()
        for method in list(self._held):
            self.release(method)
        await super().stop()

    # ------------------------------------------------------------------ fault injection

    def fail_next(
        self,
        method: str,
        status: int,
        description: str | None = None,
        *,
        retry_after: int | None = None,
        migrate_to_chat_id: int | None = None,
        count: int = 1,
    ) -> None:
        """Make the next ``count`` calls of ``method`` ("*" for any) fail with this error."""
        error = ApiError(
            status,
            description or _default_description(status, retry_after),
            retry_after=retry_after,
            migrate_to_chat_id=migrate_to_chat_id,
        )
        self._faults.append(_Fault(method.lower(), error, count))

    def hold(self, method: str) -> None:
        """Keep every call of ``method`` waiting for its answer until ``release(method)`` (a slow
        Telegram); the calls are recorded as they arrive, without a status while held."""
        self._held.setdefault(method.lower(), asyncio.Event())

    def release(self, method: str) -> None:
        """Answer the held calls of ``method``, and later ones at once."""
        gate = self._held.pop(method.lower(), None)
        if gate is not None:
            gate.set()

    def clear_faults(self) -> None:
        """Forget queued injected failures."""
        self._faults.clear()

    def migrate_chat(self, chat_id: int, new_chat_id: int) -> None:
        """Upgrade group ``chat_id`` to supergroup ``new_chat_id``: old id answers 400+migrate."""
        self._migrated[chat_id] = new_chat_id
        old = self._chats.get(chat_id)
        new = self._chat(new_chat_id, "supergroup")
        if old is not None and old.title and not new.title:
            new.title = old.title

    def kick_bot(self, chat_id: int, description: str | None = None) -> None:
        """Remove the bot from ``chat_id``: every call naming it answers 403."""
        if description is None:
            kind = _infer_chat_type(chat_id)
            if chat_id in self._chats:
                kind = self._chats[chat_id].type
            description = {
                "private": "Forbidden: bot was blocked by the user",
                "supergroup": "Forbidden: bot was kicked from the supergroup chat",
                "channel": "Forbidden: bot was kicked from the channel chat",
            }.get(kind, "Forbidden: bot was kicked from the group chat")
        self._kicked[chat_id] = description

    def restore_chat(self, chat_id: int) -> None:
        """Undo ``kick_bot`` and ``migrate_chat`` for ``chat_id``."""
        self._kicked.pop(chat_id, None)
        self._migrated.pop(chat_id, None)

    def set_offline(self, offline: bool = True, *, mode: Literal["drop", "502"] = "drop") -> None:
        """Simulate an outage: drop every connection (``drop``) or answer 502 Bad Gateway."""
        self._offline = mode if offline else None
        self._wake_pollers()

    # ------------------------------------------------------------------ inspection

    def calls_to(self, method: str, *, ok: bool | None = None) -> list[Call]:
        """Calls of ``method`` (case-insensitive), optionally only successful/failed ones."""
        wanted = method.lower()
        return [
            call
            for call in self.calls
            if call.method.lower() == wanted and (ok is None or call.ok == ok)
        ]

    def clear_calls(self) -> None:
        """Forget recorded calls."""
        self.calls.clear()

    def messages(self, chat_id: int, *, include_incoming: bool = False) -> list[StoredMessage]:
        """Snapshot of the live (not deleted) messages the bot sent to ``chat_id``, by id."""
        chat = self._chats.get(chat_id)
        if chat is None:
            return []
        return [
            copy.deepcopy(message)
            for _, message in sorted(chat.messages.items())
            if not message.deleted and (include_incoming or message.outgoing)
        ]

    def message(self, chat_id: int, message_id: int) -> StoredMessage | None:
        """Snapshot of one message (deleted ones included, see ``.deleted``)."""
        chat = self._chats.get(chat_id)
        found = chat.messages.get(message_id) if chat else None
        return copy.deepcopy(found) if found else None

    def commands(self, *, scope: Json | None = None, language_code: str = "") -> list[Json]:
        """Commands currently set for a scope/language."""
        return copy.deepcopy(self._commands.get(self._commands_key(scope, language_code), []))

    @property
    def pending_updates(self) -> list[Json]:
        """Updates queued and not yet confirmed."""
        return copy.deepcopy(self._updates)

    def file_bytes(self, file_id: str) -> bytes:
        """Bytes of a file the fake accepted."""
        return self._files[file_id].data

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float = 5.0) -> T:
        """Wait until ``predicate()`` is truthy (re-checked on every call/update) and return it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout} s")
            event = self._changed
            try:
                await asyncio.wait_for(event.wait(), min(remaining, 0.5))
            except TimeoutError:
                continue

    async def wait_for_call(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Call]:
        """Wait until ``count`` calls of ``method`` have arrived and return them."""
        return await self.wait_for(
            lambda: calls if len(calls := self.calls_to(method)) >= count else None,
            timeout,
        )

    # ------------------------------------------------------------------ updates

    def push_update(self, update: Json) -> int:
        """Queue a raw update (``update_id`` is assigned when missing) and return its id."""
        update = copy.deepcopy(update)
        if "update_id" not in update:
            update["update_id"] = self._next_update_id
        self._next_update_id = max(self._next_update_id, int(update["update_id"])) + 1
        self._updates.append(update)
        self._wake_pollers()
        self._notify()
        return int(update["update_id"])

    def push_message(
        self,
        chat_id: int,
        user_id: int,
        text: str,
        *,
        chat_type: str | None = None,
        username: str | None = None,
        reply_to_message_id: int | None = None,
        title: str | None = None,
    ) -> int:
        """Queue a ``message`` update from a user (chat type inferred from the id when None)."""
        return self.push_update(
            self.message_update(
                chat_id,
                user_id,
                text,
                chat_type=chat_type,
                username=username,
                reply_to_message_id=reply_to_message_id,
                title=title,
            )
        )

    def message_update(
        self,
        chat_id: int,
        user_id: int,
        text: str,
        *,
        chat_type: str | None = None,
        username: str | None = None,
        reply_to_message_id: int | None = None,
        title: str | None = None,
    ) -> Json:
        """A ``message`` update from a user, not queued: what Telegram would POST to a webhook."""
        chat = self._chat(chat_id, chat_type or _infer_chat_type(chat_id))
        if chat.type == "private":
            chat.first_name = chat.first_name or username
            chat.username = chat.username or username
        elif title:
            chat.title = title
        message = StoredMessage(
            chat_id=chat_id,
            message_id=self._next_message_id(chat),
            date=int(time.time()),
            chat=chat.api(),
            sender=_user(user_id, username),
            outgoing=False,
            text=text,
            html=text,
        )
        command = _COMMAND_RE.match(text)
        if command:
            message.entities = [{"type": "bot_command", "offset": 0, "length": command.end()}]
        if reply_to_message_id is not None:
            message.reply_to = chat.messages.get(reply_to_message_id)
        chat.messages[message.message_id] = message
        update_id, self._next_update_id = self._next_update_id, self._next_update_id + 1
        return {"update_id": update_id, "message": message.to_api()}

    def push_callback(self, chat_id: int, user_id: int, message_id: int, data: str) -> int:
        """Queue a ``callback_query`` update for a button press on ``message_id``."""
        chat = self._chat(chat_id, _infer_chat_type(chat_id))
        stored = chat.messages.get(message_id)
        if stored is not None and not stored.deleted:
            message = stored.to_api()
        else:
            message = {"chat": chat.api(), "message_id": message_id, "date": 0}
        query_id = str(next(self._callback_seq))
        self._callbacks[query_id] = False
        query: Json = {
            "id": query_id,
            "from": _user(user_id),
            "message": message,
            "chat_instance": str((chat_id * 2_654_435_761) % 10**19),
            "data": data,
        }
        return self.push_update({"callback_query": query})

    async def deliver_to_webhook(
        self,
        update: Json | int,
        *,
        secret_token: str | None | _Unset = _Unset.TOKEN,
        timeout: float = 10.0,
    ) -> int:
        """POST an update (or queued update id) to the webhook; 2xx confirms it; 0 = no answer."""
        if not self.webhook_url:
            raise RuntimeError("no webhook is set")
        if isinstance(update, int):
            matching = [u for u in self._updates if u["update_id"] == update]
            if not matching:
                raise KeyError(f"update {update} is not queued")
            update = matching[0]
        secret = self.webhook_secret if secret_token is _Unset.TOKEN else secret_token
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=client_timeout) as session,
                session.post(self.webhook_url, data=json.dumps(update), headers=headers) as resp,
            ):
                status = resp.status
                reply = await self._read_webhook_reply(resp) if 200 <= status < 300 else None
                reason = resp.reason or ""
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, reply, reason = 0, None, f"Connection failed: {type(exc).__name__}"
        self.webhook_deliveries.append(
            WebhookDelivery(update["update_id"], status, time.monotonic())
        )
        if 200 <= status < 300:
            self._updates = [u for u in self._updates if u["update_id"] != update["update_id"]]
            if reply is not None:
                method, params, files = reply
                with contextlib.suppress(_Dropped):
                    await self._execute(method, params, files, "POST", self.token, "webhook_reply")
        else:
            message = f"Wrong response from the webhook: {status} {reason}".strip()
            self._webhook_last_error = (int(time.time()), reason if status == 0 else message)
        self._notify()
        return status

    async def deliver_pending(self) -> list[int]:
        """Deliver queued updates in order, stopping at the first non-2xx; return statuses."""
        statuses: list[int] = []
        for update in list(self._updates):
            status = await self.deliver_to_webhook(update)
            statuses.append(status)
            if not 200 <= status < 300:
                break
        return statuses

    # ------------------------------------------------------------------ HTTP plumbing

    def _notify(self) -> None:
        """Wake ``wait_for`` callers."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _wake_pollers(self) -> None:
        """Wake pending getUpdates requests."""
        event, self._updates_changed = self._updates_changed, asyncio.Event()
        event.set()

    @staticmethod
    def _json(body: Json, status: int = 200) -> web.Response:
        """A JSON response."""
        return web.json_response(body, status=status)

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        """Close the connection without answering."""
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=502)

    async def _handle_unknown(self, request: web.Request) -> web.Response:
        """Anything outside the API paths."""
        if self._offline == "drop":
            return self._drop(request)
        if self._offline == "502":
            return self._json(ApiError(502, "Bad Gateway").body(), 502)
        return self._json(ApiError(404, "Not Found").body(), 404)

    async def _handle_file(self, request: web.Request) -> web.Response:
        """Serve a stored file by its file_path."""
        if self._offline is not None:
            return await self._handle_unknown(request)
        stored = self._files_by_path.get(request.match_info["path"])
        if request.match_info["token"] != self.token or stored is None:
            return self._json(ApiError(404, "Not Found").body(), 404)
        return web.Response(body=stored.data, content_type="application/octet-stream")

    async def _handle_api(self, request: web.Request) -> web.Response:
        """Entry point for ``/bot{token}/{method}``."""
        try:
            params, files = await self._read_params(request)
        except ApiError as error:
            if self._offline is not None:
                return await self._handle_unknown(request)
            return self._json(error.body(), error.status)
        try:
            call = await self._execute(
                request.match_info["method"],
                params,
                files,
                request.method,
                request.match_info["token"],
                "http",
            )
        except _Dropped:
            return self._drop(request)
        return self._json(call.response or {}, call.status or 500)

    async def _read_params(self, request: web.Request) -> tuple[Json, dict[str, UploadedFile]]:
        """Parse query string plus urlencoded, multipart or JSON body."""
        raw: Json = dict(request.query)
        files: dict[str, UploadedFile] = {}
        content_type = request.content_type
        if content_type == "application/json":
            try:
                body = await request.json()
            except ValueError as exc:
                raise ApiError(400, "Bad Request: can't parse JSON encoded request") from exc
            if not isinstance(body, dict):
                raise ApiError(400, "Bad Request: request body must be a JSON object")
            raw.update(body)
        elif content_type == "multipart/form-data":
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                name = part.name or ""
                if part.filename is not None:
                    data = bytes(await part.read())
                    content = part.headers.get("Content-Type")
                    files[name] = UploadedFile(name, part.filename, content, data)
                else:
                    raw[name] = await part.text()
        elif request.can_read_body:
            form = await request.post()
            raw.update({key: value for key, value in form.items() if isinstance(value, str)})
        return _coerce(raw), files

    async def _read_webhook_reply(
        self, resp: aiohttp.ClientResponse
    ) -> tuple[str, Json, dict[str, UploadedFile]] | None:
        """Parse a method call returned in a webhook response body, if any."""
        raw: Json = {}
        files: dict[str, UploadedFile] = {}
        if resp.content_type == "multipart/form-data":
            reader = aiohttp.MultipartReader(resp.headers, resp.content)
            while (part := await reader.next()) is not None:
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                name = part.name or ""
                if part.filename is not None:
                    data = bytes(await part.read())
                    files[name] = UploadedFile(name, part.filename, None, data)
                else:
                    raw[name] = await part.text()
        elif resp.content_type == "application/json":
            try:
                body = await resp.json()
            except ValueError:
                return None
            if isinstance(body, dict):
                raw.update(body)
        method = raw.pop("method", None)
        if not isinstance(method, str) or not method:
            return None
        return method, _coerce(raw), files

    async def _execute(
        self,
        method: str,
        params: Json,
        files: dict[str, UploadedFile],
        http_method: str,
        token: str,
        source: Literal["http", "webhook_reply"],
    ) -> Call:
        """Record, validate and run one API call; fills ``call.status``/``call.response``."""
        call = Call(method, params, time.monotonic(), http_method, files, token, source)
        self.calls.append(call)
        gate = self._held.get(method.lower())
        if gate is not None:
            self._notify()
            await gate.wait()
        try:
            result = self._dispatch(call)
            if inspect.isawaitable(result):
                result = await result
            call.status, call.response = 200, {"ok": True, "result": result}
            if isinstance(result, tuple):
                value, description = result
                call.response = {"ok": True, "result": value, "description": description}
        except ApiError as error:
            call.status, call.response = error.status, error.body()
        except _Dropped:
            call.status, call.response = 0, None
            raise
        finally:
            if call.status is None:
                call.status = 0
            self._notify()
        return call

    def _dispatch(self, call: Call) -> Any:
        """Run the pre-checks then the method handler."""
        self._check_offline()
        if call.token != self.token:
            raise ApiError(401, "Unauthorized")
        handler = self._handlers.get(call.method.lower())
        if handler is None:
            raise ApiError(404, "Not Found")
        self._check_faults(call)
        self._check_chat_state(call)
        flood_keys = self._check_flood(call)
        result = handler(call)
        for key in flood_keys:
            self._flood[key].append(time.monotonic())
        return result

    def _check_offline(self) -> None:
        """Behave like an unreachable API while offline."""
        if self._offline == "drop":
            raise _Dropped
        if self._offline == "502":
            raise ApiError(502, "Bad Gateway")

    def _check_faults(self, call: Call) -> None:
        """Raise the first injected failure matching this method."""
        name = call.method.lower()
        for fault in self._faults:
            if fault.remaining > 0 and fault.method in (name, "*"):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                raise fault.error

    def _check_chat_state(self, call: Call) -> None:
        """Answer like Telegram for migrated chats and chats the bot was removed from."""
        chat_id = call.params.get("chat_id")
        if not isinstance(chat_id, int):
            return
        if chat_id in self._migrated:
            raise ApiError(400, MIGRATED, migrate_to_chat_id=self._migrated[chat_id])
        if chat_id in self._kicked:
            raise ApiError(403, self._kicked[chat_id])

    def _check_flood(self, call: Call) -> list[tuple[str, int]]:
        """Apply opt-in flood limits; return the buckets to charge on success."""
        limits = self.flood_limits
        if limits is None or call.method.lower() not in _FLOOD_METHODS:
            return []
        chat_id = call.params.get("chat_id")
        buckets: list[tuple[tuple[str, int], tuple[int, float]]] = [(("all", 0), limits.overall)]
        if isinstance(chat_id, int):
            buckets.append((("chat", chat_id), limits.per_chat))
            if chat_id < 0:
                buckets.append((("group", chat_id), limits.per_group))
        now = time.monotonic()
        for key, (limit, window) in buckets:
            sent = self._flood.setdefault(key, deque())
            while sent and sent[0] <= now - window:
                sent.popleft()
            if len(sent) >= limit:
                retry_after = max(1, math.ceil(sent[0] + window - now))
                raise ApiError(
                    429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after
                )
        return [key for key, _ in buckets]

    # ------------------------------------------------------------------ state helpers

    def _chat(self, chat_id: int, chat_type: str) -> _Chat:
        """Get or create a chat."""
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = _Chat(chat_id, chat_type)
            self._chats[chat_id] = chat
        return chat

    def _next_message_id(self, chat: _Chat) -> int:
        """Allocate the chat's next message id."""
        message_id = chat.next_message_id
        chat.next_message_id += 1
        return message_id

    def _bot_user(self) -> Json:
        """The bot as a Bot API ``User``."""
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.bot_name,
            "username": self.bot_username,
        }

    def _resolve_chat(self, call: Call) -> _Chat:
        """The chat named by ``chat_id`` (numeric or @username)."""
        chat_id = call.params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise ApiError(400, "Bad Request: chat_id is empty")
        if isinstance(chat_id, str):
            for chat in self._chats.values():
                if chat.username and f"@{chat.username}".lower() == chat_id.lower():
                    return chat
            raise ApiError(400, "Bad Request: chat not found")
        if not isinstance(chat_id, int) or chat_id == 0:
            raise ApiError(400, "Bad Request: chat not found")
        return self._chat(chat_id, _infer_chat_type(chat_id))

    def _target(self, call: Call, not_found: str) -> tuple[_Chat, StoredMessage]:
        """The message named by chat_id + message_id."""
        if "inline_message_id" in call.params and "chat_id" not in call.params:
            raise ApiError(400, "Bad Request: MESSAGE_ID_INVALID")
        chat = self._resolve_chat(call)
        message_id = call.params.get("message_id")
        if message_id is None:
            raise ApiError(400, "Bad Request: message identifier is not specified")
        if not isinstance(message_id, int):
            raise ApiError(400, "Bad Request: MESSAGE_ID_INVALID")
        message = chat.messages.get(message_id)
        if message is None or message.deleted:
            raise ApiError(400, not_found)
        return chat, message

    def _render(
        self,
        call: Call,
        text_field: str,
        entities_field: str,
        *,
        limit: int,
        too_long: str,
        required: bool,
    ) -> tuple[str | None, list[Json]]:
        """Apply parse_mode to a text field: validate, then return (text, entities)."""
        raw = call.params.get(text_field)
        if raw is None or raw == "":
            if required:
                raise ApiError(400, "Bad Request: message text is empty")
            return None, []
        mode = call.params.get("parse_mode")
        given = call.params.get(entities_field)
        return check_text(
            raw if isinstance(raw, str) else str(raw),
            str(mode) if mode else None,
            limit=limit,
            too_long=too_long,
            required=required,
            entities=given if isinstance(given, list) and not mode else None,
        )

    def _markup(self, call: Call) -> Json | None:
        """Validate ``reply_markup``; return the inline keyboard Telegram echoes back."""
        return check_reply_markup(call.params.get("reply_markup"))

    def _reply_target(self, call: Call, chat: _Chat) -> StoredMessage | None:
        """The message a send replies to (reply_parameters or reply_to_message_id)."""
        params = call.params.get("reply_parameters")
        allow_missing = bool(call.params.get("allow_sending_without_reply"))
        message_id = call.params.get("reply_to_message_id")
        if isinstance(params, dict):
            message_id = params.get("message_id")
            allow_missing = bool(params.get("allow_sending_without_reply", allow_missing))
        if message_id is None:
            return None
        target = chat.messages.get(message_id) if isinstance(message_id, int) else None
        if (target is None or target.deleted) and not allow_missing:
            raise ApiError(400, "Bad Request: message to be replied not found")
        return target

    def _new_outgoing(self, chat: _Chat, call: Call, **fields: Any) -> StoredMessage:
        """Store a message the bot sent."""
        message = StoredMessage(
            chat_id=chat.id,
            message_id=self._next_message_id(chat),
            date=int(time.time()),
            chat=chat.api(),
            sender=self._bot_user(),
            outgoing=True,
            parse_mode=call.params.get("parse_mode"),
            **fields,
        )
        chat.messages[message.message_id] = message
        return message

    def _store_file(self, data: bytes, kind: str, extension: str, **meta: Any) -> _StoredFile:
        """Remember an uploaded file and mint ids for it."""
        seq = next(self._file_seq)
        prefix = {"photo": "AgACAgIAAxk", "document": "BQACAgIAAxk"}.get(kind, "CAACAgIAAxk")
        stored = _StoredFile(
            file_id=f"{prefix}{seq:08d}{zlib.crc32(data):08x}",
            file_unique_id=f"AQAD{seq:06d}",
            data=data,
            path=f"{kind}s/file_{seq}{extension}",
            kind=kind,
            meta=meta,
        )
        self._files[stored.file_id] = stored
        self._files_by_path[stored.path] = stored
        return stored

    def _input_file(self, call: Call, name: str) -> tuple[bytes, str | None, _StoredFile | None]:
        """Resolve an InputFile parameter: an upload or a known file_id."""
        upload = call.upload(name)
        if upload is not None:
            return upload.data, upload.filename, None
        value = call.params.get(name)
        if isinstance(value, str) and value in self._files:
            stored = self._files[value]
            return stored.data, stored.meta.get("file_name"), stored
        if value is None or value == "":
            raise ApiError(400, f"Bad Request: there is no {name} in the request")
        raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")

    @staticmethod
    def _commands_key(scope: Any, language_code: Any) -> tuple[str, str]:
        """Storage key for a command list."""
        scope_json = json.dumps(scope or {"type": "default"}, sort_keys=True)
        return scope_json, str(language_code or "")

    # ------------------------------------------------------------------ methods

    def _ok_true(self, call: Call) -> bool:
        """Methods that just answer true."""
        return True

    def _get_me(self, call: Call) -> Json:
        """getMe."""
        return {
            **self._bot_user(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(self, call: Call) -> list[Json]:
        """getUpdates with real long polling and offset confirmation."""
        if self.webhook_url:
            raise ApiError(409, WEBHOOK_CONFLICT)
        limit, timeout = self._confirm_updates(call.params)
        self._poll_generation += 1
        generation = self._poll_generation
        self._wake_pollers()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._check_offline()
            if generation != self._poll_generation:
                raise ApiError(409, POLLING_CONFLICT)
            if self.webhook_url:
                raise ApiError(409, WEBHOOK_CONFLICT)
            self._updates = [
                u for u in self._updates if self._update_type(u) in self._allowed_updates
            ]
            remaining = deadline - loop.time()
            if self._updates or remaining <= 0 or self._closing:
                return copy.deepcopy(self._updates[:limit])
            event = self._updates_changed
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                continue

    def _confirm_updates(self, params: Json) -> tuple[int, float]:
        """Apply getUpdates' offset/allowed_updates; return (limit, timeout seconds)."""
        offset = params.get("offset", 0)
        limit = params.get("limit", 100)
        timeout = params.get("timeout", 0)
        if not isinstance(offset, int) or not isinstance(limit, int):
            raise ApiError(400, "Bad Request: wrong parameter in request")
        allowed = params.get("allowed_updates")
        if isinstance(allowed, list):
            self._allowed_updates = frozenset(allowed) or _DEFAULT_UPDATE_TYPES
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif offset < 0:
            self._updates = self._updates[offset:]
        seconds = float(timeout) if isinstance(timeout, int | float) else 0.0
        return min(max(limit, 1), 100), max(0.0, seconds)

    @staticmethod
    def _update_type(update: Json) -> str:
        """The payload key of an update."""
        return next((key for key in update if key != "update_id"), "")

    def _set_webhook(self, call: Call) -> tuple[bool, str]:
        """setWebhook (an empty url removes the webhook)."""
        url = call.params.get("url") or ""
        if not url:
            return self._delete_webhook(call)
        if not isinstance(url, str) or not re.match(r"https?://[^/\s]+", url):
            raise ApiError(
                400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
            )
        secret = call.params.get("secret_token")
        if secret is not None and not (
            isinstance(secret, str) and _SECRET_TOKEN_RE.fullmatch(secret)
        ):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        if call.params.get("drop_pending_updates"):
            self._updates.clear()
        allowed = call.params.get("allowed_updates")
        self.webhook_allowed_updates = allowed if isinstance(allowed, list) else None
        if isinstance(allowed, list):
            self._allowed_updates = frozenset(allowed) or _DEFAULT_UPDATE_TYPES
        max_connections = call.params.get("max_connections")
        self.webhook_max_connections = max_connections if isinstance(max_connections, int) else 40
        already = self.webhook_url == url and self.webhook_secret == secret
        self.webhook_url, self.webhook_secret = url, secret
        self._webhook_last_error = None
        self._wake_pollers()
        return True, "Webhook is already set" if already else "Webhook was set"

    def _delete_webhook(self, call: Call) -> tuple[bool, str]:
        """deleteWebhook."""
        if call.params.get("drop_pending_updates"):
            self._updates.clear()
        was_set = bool(self.webhook_url)
        self.webhook_url, self.webhook_secret = "", None
        self.webhook_allowed_updates = None
        self._webhook_last_error = None
        return True, "Webhook was deleted" if was_set else "Webhook is already deleted"

    def _get_webhook_info(self, call: Call) -> Json:
        """getWebhookInfo."""
        info: Json = {
            "url": self.webhook_url,
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self.webhook_url:
            info["max_connections"] = self.webhook_max_connections
            info["ip_address"] = "127.0.0.1"
            if self.webhook_allowed_updates is not None:
                info["allowed_updates"] = list(self.webhook_allowed_updates)
        if self._webhook_last_error is not None:
            info["last_error_date"], info["last_error_message"] = self._webhook_last_error
        return info

    def _set_my_commands(self, call: Call) -> bool:
        """setMyCommands."""
        commands = call.params.get("commands")
        if not isinstance(commands, list):
            raise ApiError(400, "Bad Request: can't parse commands JSON object")
        if len(commands) > 100:
            raise ApiError(400, "Bad Request: BOT_COMMANDS_TOO_MUCH")
        cleaned: list[Json] = []
        for item in commands:
            if not isinstance(item, dict):
                raise ApiError(400, "Bad Request: can't parse BotCommand JSON object")
            command, description = item.get("command"), item.get("description")
            if not isinstance(command, str) or not _BOT_COMMAND_RE.fullmatch(command):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not isinstance(description, str) or not 1 <= len(description) <= 256:
                raise ApiError(400, "Bad Request: command description is empty")
            cleaned.append({"command": command, "description": description})
        key = self._commands_key(call.params.get("scope"), call.params.get("language_code"))
        self._commands[key] = cleaned
        return True

    def _get_my_commands(self, call: Call) -> list[Json]:
        """getMyCommands."""
        key = self._commands_key(call.params.get("scope"), call.params.get("language_code"))
        return copy.deepcopy(self._commands.get(key, []))

    def _delete_my_commands(self, call: Call) -> bool:
        """deleteMyCommands."""
        key = self._commands_key(call.params.get("scope"), call.params.get("language_code"))
        self._commands.pop(key, None)
        return True

    def _send_message(self, call: Call) -> Json:
        """sendMessage."""
        chat = self._resolve_chat(call)
        text, entities = self._render(
            call,
            "text",
            "entities",
            limit=MAX_TEXT_LENGTH,
            too_long="Bad Request: message is too long",
            required=True,
        )
        markup = self._markup(call)
        reply_to = self._reply_target(call, chat)
        message = self._new_outgoing(
            chat,
            call,
            text=text,
            html=call.params.get("text"),
            entities=entities,
            reply_markup=markup,
            reply_to=reply_to,
        )
        return message.to_api()

    def _edit_message_text(self, call: Call) -> Json:
        """editMessageText."""
        _, message = self._target(call, "Bad Request: message to edit not found")
        if not message.outgoing:
            raise ApiError(400, "Bad Request: message can't be edited")
        if message.text is None:
            raise ApiError(400, "Bad Request: there is no text in the message to edit")
        text, entities = self._render(
            call,
            "text",
            "entities",
            limit=MAX_TEXT_LENGTH,
            too_long="Bad Request: MESSAGE_TOO_LONG",
            required=True,
        )
        markup = self._markup(call)
        if (text, entities, markup) == (message.text, message.entities, message.reply_markup):
            raise ApiError(400, NOT_MODIFIED)
        message.text, message.entities, message.reply_markup = text, entities, markup
        message.html = call.params.get("text")
        message.parse_mode = call.params.get("parse_mode")
        self._touch(message)
        return message.to_api()

    def _edit_message_caption(self, call: Call) -> Json:
        """editMessageCaption."""
        _, message = self._target(call, "Bad Request: message to edit not found")
        if not message.outgoing:
            raise ApiError(400, "Bad Request: message can't be edited")
        if not message.media:
            raise ApiError(400, "Bad Request: there is no caption in the message to edit")
        caption, entities = self._render(
            call,
            "caption",
            "caption_entities",
            limit=MAX_CAPTION_LENGTH,
            too_long="Bad Request: message caption is too long",
            required=False,
        )
        markup = self._markup(call)
        current = (message.caption, message.caption_entities, message.reply_markup)
        if (caption, entities, markup) == current:
            raise ApiError(400, NOT_MODIFIED)
        message.caption, message.caption_entities, message.reply_markup = caption, entities, markup
        self._touch(message)
        return message.to_api()

    def _edit_message_reply_markup(self, call: Call) -> Json:
        """editMessageReplyMarkup (no markup removes the keyboard)."""
        _, message = self._target(call, "Bad Request: message to edit not found")
        if not message.outgoing:
            raise ApiError(400, "Bad Request: message can't be edited")
        markup = self._markup(call)
        if markup == message.reply_markup:
            raise ApiError(400, NOT_MODIFIED)
        message.reply_markup = markup
        self._touch(message)
        return message.to_api()

    @staticmethod
    def _touch(message: StoredMessage) -> None:
        """Count an edit."""
        message.edits += 1
        message.edit_date = int(time.time())

    def _delete_message(self, call: Call) -> bool:
        """deleteMessage."""
        _, message = self._target(call, "Bad Request: message to delete not found")
        message.deleted = True
        return True

    def _answer_callback_query(self, call: Call) -> bool:
        """answerCallbackQuery (each query can be answered once)."""
        query_id = call.params.get("callback_query_id")
        if not isinstance(query_id, str) or self._callbacks.get(query_id, True):
            raise ApiError(400, CALLBACK_TOO_OLD)
        text = call.params.get("text")
        if isinstance(text, str) and len(text) > 200:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        self._callbacks[query_id] = True
        self.callback_answers[query_id] = {
            key: call.params[key]
            for key in ("text", "show_alert", "url", "cache_time")
            if key in call.params
        }
        return True

    def _caption(self, call: Call) -> tuple[str | None, list[Json]]:
        """Validate a media caption."""
        return self._render(
            call,
            "caption",
            "caption_entities",
            limit=MAX_CAPTION_LENGTH,
            too_long="Bad Request: message caption is too long",
            required=False,
        )

    def _send_photo(self, call: Call) -> Json:
        """sendPhoto (PNG/JPEG uploads only, like Telegram's image processing)."""
        chat = self._resolve_chat(call)
        data, _, known = self._input_file(call, "photo")
        caption, caption_entities = self._caption(call)
        markup = self._markup(call)
        reply_to = self._reply_target(call, chat)
        if known is not None and known.kind == "photo":
            stored = known
        else:
            size = _image_size(data)
            if size is None:
                raise ApiError(400, "Bad Request: IMAGE_PROCESS_FAILED")
            stored = self._store_file(data, "photo", ".jpg", width=size[0], height=size[1])
        photo_size = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "width": stored.meta["width"],
            "height": stored.meta["height"],
        }
        message = self._new_outgoing(
            chat,
            call,
            caption=caption,
            caption_entities=caption_entities,
            reply_markup=markup,
            reply_to=reply_to,
            media={"photo": [photo_size]},
            photo=stored.data,
        )
        return message.to_api()

    def _send_document(self, call: Call) -> Json:
        """sendDocument."""
        chat = self._resolve_chat(call)
        data, filename, known = self._input_file(call, "document")
        if not data:
            raise ApiError(400, "Bad Request: file must be non-empty")
        caption, caption_entities = self._caption(call)
        markup = self._markup(call)
        reply_to = self._reply_target(call, chat)
        name = filename or "document"
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        stored = known or self._store_file(data, "document", "", file_name=name, mime_type=mime)
        document = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_name": name,
            "mime_type": mime,
        }
        message = self._new_outgoing(
            chat,
            call,
            caption=caption,
            caption_entities=caption_entities,
            reply_markup=markup,
            reply_to=reply_to,
            media={"document": document},
            document=stored.data,
            document_name=name,
        )
        return message.to_api()

    def _send_chat_action(self, call: Call) -> bool:
        """sendChatAction."""
        self._resolve_chat(call)
        if call.params.get("action") not in _CHAT_ACTIONS:
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    def _get_chat(self, call: Call) -> Json:
        """getChat."""
        return self._resolve_chat(call).api()

    def _get_file(self, call: Call) -> Json:
        """getFile."""
        stored = self._files.get(str(call.params.get("file_id", "")))
        if stored is None:
            raise ApiError(400, "Bad Request: invalid file_id")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.path,
        }
