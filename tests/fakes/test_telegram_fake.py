"""Drive FakeTelegram with a real aiogram Bot over loopback HTTP."""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.filters import CommandStart
from aiogram.methods import SendMessage
from aiogram.types import (
    BotCommand,
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
)
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web

from tests.fakes.telegram import (
    NOT_MODIFIED,
    PNG_SIGNATURE,
    ApiError,
    FakeTelegram,
    FloodLimits,
    HtmlParseError,
    check_reply_markup,
    check_text,
    parse_html,
)

CHAT = 4242
USER = 4242
GROUP = -4001


def tiny_png(width: int = 3, height: int = 2) -> bytes:
    """A valid RGB PNG built by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + b"\x10\x80\xf0" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def keyboard(*pairs: tuple[str, str]) -> InlineKeyboardMarkup:
    """One row of callback buttons."""
    buttons = [InlineKeyboardButton(text=text, callback_data=data) for text, data in pairs]
    return InlineKeyboardMarkup(inline_keyboard=[buttons])


def make_bot(fake: FakeTelegram, token: str | None = None) -> Bot:
    """A real aiogram Bot whose session talks to the fake."""
    session = AiohttpSession(api=TelegramAPIServer.from_base(fake.base))
    return Bot(token or fake.token, session=session)


@pytest.fixture
async def fake_tg() -> AsyncIterator[FakeTelegram]:
    """A started fake, stopped after the test."""
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def bot(fake_tg: FakeTelegram) -> AsyncIterator[Bot]:
    """A bot bound to the fake; its session is closed after the test."""
    instance = make_bot(fake_tg)
    try:
        yield instance
    finally:
        await instance.session.close()


async def test_get_me_and_commands(fake_tg: FakeTelegram, bot: Bot) -> None:
    """getMe describes the bot; setMyCommands round-trips through getMyCommands."""
    me = await bot.get_me()
    assert (me.id, me.is_bot, me.username) == (fake_tg.bot_id, True, fake_tg.bot_username)
    await bot.set_my_commands([BotCommand(command="status", description="Engine status")])
    commands = await bot.get_my_commands()
    assert [(c.command, c.description) for c in commands] == [("status", "Engine status")]
    with pytest.raises(TelegramBadRequest, match="BOT_COMMAND_INVALID"):
        await bot.set_my_commands([BotCommand(command="Bad-Name", description="x")])
    call = fake_tg.calls_to("setMyCommands")[0]
    assert call.params["commands"] == [{"command": "status", "description": "Engine status"}]


async def test_send_then_edit(fake_tg: FakeTelegram, bot: Bot) -> None:
    """sendMessage renders HTML into text+entities; editMessageText updates state and counts."""
    markup = keyboard(("Ack", "ack:1"), ("Mute", "mute:1"))
    sent = await bot.send_message(
        CHAT, "<b>BTC</b> down &amp; out", parse_mode="HTML", reply_markup=markup
    )
    assert sent.text == "BTC down & out"
    assert sent.entities is not None and sent.entities[0].type == "bold"
    assert (sent.entities[0].offset, sent.entities[0].length) == (0, 3)
    assert sent.from_user is not None and sent.from_user.id == fake_tg.bot_id
    assert sent.chat.id == CHAT and sent.chat.type == "private"
    assert sent.reply_markup is not None
    assert sent.reply_markup.model_dump() == markup.model_dump()

    second = await bot.send_message(CHAT, "second")
    assert second.message_id == sent.message_id + 1

    edited = await bot.edit_message_text(
        "<i>acked</i>", chat_id=CHAT, message_id=sent.message_id, parse_mode="HTML"
    )
    assert isinstance(edited, Message)
    assert edited.text == "acked" and edited.edit_date is not None
    assert edited.reply_markup is None  # no markup in the edit removes the keyboard

    state = fake_tg.messages(CHAT)
    assert [m.message_id for m in state] == [sent.message_id, second.message_id]
    assert state[0].text == "acked" and state[0].html == "<i>acked</i>" and state[0].edits == 1
    assert state[0].reply_markup is None and state[1].edits == 0

    call = fake_tg.calls_to("sendMessage")[0]
    assert call.params["chat_id"] == CHAT
    assert call.params["reply_markup"] == markup.model_dump(exclude_none=True)


async def test_message_not_modified_and_missing(fake_tg: FakeTelegram, bot: Bot) -> None:
    """Editing to identical content or a missing message fails like Telegram."""
    markup = keyboard(("Ack", "ack:1"))
    sent = await bot.send_message(CHAT, "same", reply_markup=markup)
    with pytest.raises(TelegramBadRequest) as info:
        await bot.edit_message_text(
            "same", chat_id=CHAT, message_id=sent.message_id, reply_markup=markup
        )
    assert info.value.message == NOT_MODIFIED
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_reply_markup(
            chat_id=CHAT, message_id=sent.message_id, reply_markup=markup
        )
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("x", chat_id=CHAT, message_id=9999)
    assert await bot.delete_message(CHAT, sent.message_id) is True
    assert fake_tg.messages(CHAT) == []
    with pytest.raises(TelegramBadRequest, match="message to delete not found"):
        await bot.delete_message(CHAT, sent.message_id)


async def test_retry_after_surfaces(fake_tg: FakeTelegram, bot: Bot) -> None:
    """An injected 429 reaches aiogram as TelegramRetryAfter with the same retry_after."""
    fake_tg.fail_next("sendMessage", 429, "Too Many Requests: retry after 7", retry_after=7)
    with pytest.raises(TelegramRetryAfter) as info:
        await bot.send_message(CHAT, "hello")
    assert info.value.retry_after == 7
    failed = fake_tg.calls_to("sendMessage")[0]
    assert failed.status == 429
    assert failed.response == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 7",
        "parameters": {"retry_after": 7},
    }
    assert fake_tg.messages(CHAT) == []
    await bot.send_message(CHAT, "hello")
    assert [m.text for m in fake_tg.messages(CHAT)] == ["hello"]


async def test_a_held_method_answers_only_once_released(fake_tg: FakeTelegram, bot: Bot) -> None:
    """A slow Telegram: a held getMe is recorded on arrival and answered on release; other
    methods answer meanwhile."""
    fake_tg.hold("getMe")
    asking = asyncio.create_task(bot.get_me())
    [held] = await fake_tg.wait_for_call("getMe")
    assert held.status is None and not asking.done()
    await bot.send_message(CHAT, "meanwhile")
    assert not asking.done()
    fake_tg.release("getMe")
    me = await asyncio.wait_for(asking, 5)
    assert me.username == fake_tg.bot_username and held.status == 200
    await asyncio.wait_for(bot.get_me(), 5)  # released: answered at once from now on


async def test_flood_limits_opt_in() -> None:
    """With flood limits on, a second send to one chat within the window gets a 429."""
    async with FakeTelegram(flood_limits=FloodLimits(per_chat=(1, 2.0))) as fake:
        bot = make_bot(fake)
        try:
            await bot.send_message(CHAT, "one")
            with pytest.raises(TelegramRetryAfter) as info:
                await bot.send_message(CHAT, "two")
            assert info.value.retry_after in (1, 2)
            await bot.send_message(CHAT + 1, "other chat is fine")
        finally:
            await bot.session.close()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("<b>open", 'Can\'t find end tag corresponding to start tag "b"'),
        ("<b><i>x</b></i>", 'Unmatched end tag at byte offset 7, expected "</i>", found "</b>"'),
        ("a<br>b", 'Unsupported start tag "br" at byte offset 1'),
        ("P&L", 'Character "&" at byte offset 1 must start an HTML entity'),
        ("x < y", 'Unsupported start tag "" at byte offset 2'),
        ("done</b>", "Unexpected end tag at byte offset 4"),
    ],
)
async def test_cant_parse_entities(
    fake_tg: FakeTelegram, bot: Bot, text: str, fragment: str
) -> None:
    """Bad HTML is refused with Telegram's 400 and surfaces as TelegramBadRequest."""
    with pytest.raises(TelegramBadRequest) as info:
        await bot.send_message(CHAT, text, parse_mode="HTML")
    assert info.value.message.startswith("Bad Request: can't parse entities: ")
    assert fragment in info.value.message
    plain = await bot.send_message(CHAT, text)  # the plain-text fallback goes through
    assert plain.text == text


def test_parse_html_entities() -> None:
    """Nested tags, entity decoding and UTF-16 offsets match Telegram's parser."""
    text, entities = parse_html(
        '🚀 <b>PnL <i>&lt;+5%&gt;</i></b> <a href="https://x.test/?a=1&amp;b=2">chart</a>'
        ' <pre><code class="language-python">x = 1</code></pre>'
        ' <span class="tg-spoiler">s</span> &#128640;'
    )
    assert text == "🚀 PnL <+5%> chart x = 1 s 🚀"
    assert entities == [
        {"type": "bold", "offset": 3, "length": 9},
        {"type": "italic", "offset": 7, "length": 5},
        {"type": "text_link", "offset": 13, "length": 5, "url": "https://x.test/?a=1&b=2"},
        {"type": "pre", "offset": 19, "length": 5, "language": "python"},
        {"type": "spoiler", "offset": 25, "length": 1},
    ]
    with pytest.raises(HtmlParseError, match='Tag "span" must have class'):
        parse_html("<span>x</span>")
    assert parse_html("a > b <u></u>") == ("a > b ", [])


@pytest.mark.parametrize(
    "html",
    [
        "<b>b</b><strong>b</strong><i>i</i><em>i</em><u>u</u><ins>u</ins>",
        "<s>s</s><strike>s</strike><del>s</del>",
        '<span class="tg-spoiler">x</span><tg-spoiler>x</tg-spoiler>',
        "<b>bold <i>italic <s>strike <tg-spoiler>spoiler</tg-spoiler></s></i></b>",
        '<a href="http://www.example.com/">web</a> <a href="https://x.test/a?b=1&amp;c=2">s</a>',
        '<a href="tg://user?id=123456789">mention</a>',
        '<tg-emoji emoji-id="5368324170671202286">👍</tg-emoji>',
        '<tg-time unix="1647531900" format="wDT">22:45</tg-time> <tg-time unix="1">x</tg-time>',
        "<code>inline</code> <pre>block</pre>",
        '<pre><code class="language-python">x = 1</code></pre>',
        '<pre><code language="language-python">x = 1</code></pre>',  # what aiogram emits
        "<blockquote>quote</blockquote> <blockquote expandable>more</blockquote>",
        "&lt; &gt; &amp; &quot; &#128640; &#x1F680;",
        "\u200f\u202eמערכת\u202c 🚀 " + "😀" * 2042,  # RTL marks; 4,096 UTF-16 units in all
    ],
)
def test_the_strict_fake_accepts_what_telegram_accepts(html: str) -> None:
    """Every tag, entity and link the Bot API's HTML mode lists parses."""
    text, _ = check_text(html)
    assert text


@pytest.mark.parametrize(
    ("html", "description"),
    [
        (
            "<foo>x</foo>",
            'Bad Request: can\'t parse entities: Unsupported start tag "foo" at byte offset 0',
        ),
        ("<p>x</p>", 'Unsupported start tag "p"'),
        ("<b>x", 'Can\'t find end tag corresponding to start tag "b"'),
        ("<b><i>x</b></i>", "Unmatched end tag"),
        ("&nbsp;", 'Character "&" at byte offset 0 must start an HTML entity'),
        ("&#0;", 'Character "&" at byte offset 0 must start an HTML entity'),
        ("AT&T", 'Character "&" at byte offset 2'),
        ("1 < 2", 'Unsupported start tag ""'),
        ('<span class="x">x</span>', 'Tag "span" must have class "tg-spoiler"'),
        (
            '<a href="javascript:alert(1)">x</a>',
            'Unsupported URL protocol "javascript" in the tag "a" at byte offset 0',
        ),
        ('<a href="data:text/html,x">x</a>', 'Unsupported URL protocol "data"'),
        ('<a href="file:///etc/passwd">x</a>', 'Unsupported URL protocol "file"'),
        ('<a href="https://">x</a>', "URL host is empty"),
        ('<a href="http://a b">x</a>', "Wrong URL"),
        ("<a>javascript:x</a>", 'Unsupported URL protocol "javascript"'),
        ('<tg-time unix="x">t</tg-time>', 'Tag "tg-time" must have attribute "unix"'),
        ('<tg-time unix="1" format="rt">t</tg-time>', "Invalid date-time format"),
        ("<b></b> \n ", "Bad Request: message text is empty"),
        ("x" * 4097, "Bad Request: message is too long"),
        ("😀" * 2049, "Bad Request: message is too long"),  # 2,049 chars, 4,098 UTF-16 units
        ("<b>" + "&amp;" * 4097 + "</b>", "Bad Request: message is too long"),
    ],
)
def test_the_strict_fake_refuses_what_telegram_refuses(html: str, description: str) -> None:
    """Each thing the Bot API refuses is a 400 with Telegram's description."""
    with pytest.raises(ApiError) as info:
        check_text(html)
    assert info.value.status == 400
    assert description in info.value.description
    assert info.value.description.startswith("Bad Request: ")


def test_text_length_is_counted_after_entity_parsing() -> None:
    """Markup does not count: 4,096 visible characters inside tags and entities pass."""
    text, _ = check_text("<b>" + "&lt;" * 4096 + "</b>")
    assert text == "<" * 4096
    with pytest.raises(ApiError, match="message caption is too long"):
        check_text("é" * 1025, limit=1024, too_long="Bad Request: message caption is too long")


@pytest.mark.parametrize(
    ("markup", "description"),
    [
        ({"inline_keyboard": [[{"text": "Go", "callback_data": "d" * 65}]]}, "BUTTON_DATA_INVALID"),
        ({"inline_keyboard": [[{"text": "Go", "callback_data": "é" * 33}]]}, "BUTTON_DATA_INVALID"),
        ({"inline_keyboard": [[{"text": "Go", "callback_data": ""}]]}, "BUTTON_DATA_INVALID"),
        ({"inline_keyboard": [{"text": "Go"}]}, "should be an Array of Arrays"),
        ({"inline_keyboard": [[{"callback_data": "x"}]]}, 'Field "text" must be of type String'),
        ({"inline_keyboard": [[{"text": "Go"}]]}, "Text buttons are unallowed"),
        ({"inline_keyboard": [[{"text": "Go", "url": "javascript:x"}]]}, "wrong HTTP URL"),
        ("[]", "can't parse reply keyboard markup JSON object"),
    ],
)
def test_the_strict_fake_refuses_bad_keyboards(markup: object, description: str) -> None:
    """callback_data is 1-64 bytes; keyboards are arrays of arrays of typed buttons."""
    with pytest.raises(ApiError) as info:
        check_reply_markup(markup)
    assert info.value.status == 400
    assert description in info.value.description


def test_the_strict_fake_accepts_good_keyboards() -> None:
    """64 bytes of callback_data (32 two-byte characters) and URL buttons pass."""
    markup = {
        "inline_keyboard": [
            [{"text": "Go", "callback_data": "é" * 32}],
            [{"text": "Open", "url": "https://x.test/"}],
        ]
    }
    assert check_reply_markup(markup) == markup


async def test_a_javascript_link_is_a_400_on_the_wire(fake_tg: FakeTelegram, bot: Bot) -> None:
    """Through aiogram and HTTP: the refused link surfaces as TelegramBadRequest."""
    with pytest.raises(TelegramBadRequest, match="Unsupported URL protocol"):
        await bot.send_message(CHAT, '<a href="javascript:alert(1)">x</a>', parse_mode="HTML")
    assert fake_tg.messages(CHAT) == []


async def test_migrate_and_kicked(fake_tg: FakeTelegram, bot: Bot) -> None:
    """A migrated group answers TelegramMigrateToChat; a kicked one TelegramForbiddenError."""
    new_id = -1001234567890
    fake_tg.migrate_chat(GROUP, new_id)
    with pytest.raises(TelegramMigrateToChat) as info:
        await bot.send_message(GROUP, "alert")
    assert info.value.migrate_to_chat_id == new_id
    assert fake_tg.calls_to("sendMessage")[0].response == {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: group chat was upgraded to a supergroup chat",
        "parameters": {"migrate_to_chat_id": new_id},
    }
    moved = await bot.send_message(new_id, "alert")
    assert moved.chat.type == "supergroup"

    fake_tg.kick_bot(-555)
    with pytest.raises(TelegramForbiddenError, match="bot was kicked from the group chat"):
        await bot.send_message(-555, "alert")
    fake_tg.restore_chat(-555)
    await bot.send_message(-555, "back")


async def test_send_photo_stores_png(fake_tg: FakeTelegram, bot: Bot) -> None:
    """sendPhoto uploads multipart bytes; the fake keeps them and reports the image size."""
    png = tiny_png(3, 2)
    sent = await bot.send_photo(
        CHAT, BufferedInputFile(png, filename="pnl.png"), caption="<b>PnL</b>", parse_mode="HTML"
    )
    assert sent.photo is not None
    assert (sent.photo[-1].width, sent.photo[-1].height) == (3, 2)
    assert sent.caption == "PnL"
    [stored] = fake_tg.messages(CHAT)
    assert stored.photo == png and stored.photo.startswith(PNG_SIGNATURE)
    upload = fake_tg.calls_to("sendPhoto")[0].upload("photo")
    assert upload is not None and upload.filename == "pnl.png" and upload.data == png
    assert fake_tg.file_bytes(sent.photo[-1].file_id) == png
    with pytest.raises(TelegramBadRequest, match="IMAGE_PROCESS_FAILED"):
        await bot.send_photo(CHAT, BufferedInputFile(b"not an image", filename="x.png"))

    document = await bot.send_document(CHAT, BufferedInputFile(b"a,b\n1,2\n", "report.csv"))
    assert document.document is not None and document.document.file_name == "report.csv"
    assert document.document.mime_type == "text/csv"
    assert await bot.send_chat_action(CHAT, "typing") is True


async def test_long_text_refused(fake_tg: FakeTelegram, bot: Bot) -> None:
    """6,000 characters are refused; exactly 4,096 pass."""
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(CHAT, "x" * 6000)
    sent = await bot.send_message(CHAT, "y" * 4096)
    assert sent.text is not None and len(sent.text) == 4096
    with pytest.raises(TelegramBadRequest, match="message text is empty"):
        await bot.send_message(CHAT, "<b></b>", parse_mode="HTML")


async def test_callback_data_limit(fake_tg: FakeTelegram, bot: Bot) -> None:
    """callback_data over 64 bytes is BUTTON_DATA_INVALID; 64 bytes pass."""
    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        await bot.send_message(CHAT, "x", reply_markup=keyboard(("Go", "é" * 33)))
    await bot.send_message(CHAT, "x", reply_markup=keyboard(("Go", "d" * 64)))


async def test_unauthorized_and_unknown_method(fake_tg: FakeTelegram) -> None:
    """A wrong token is 401; an unknown method is 404; JSON and GET bodies are accepted."""
    wrong = make_bot(fake_tg, token="987654321:WRONG-token")
    try:
        with pytest.raises(TelegramUnauthorizedError):
            await wrong.get_me()
    finally:
        await wrong.session.close()
    base = f"{fake_tg.base}/bot{fake_tg.token}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/noSuchMethod") as resp:
            assert resp.status == 404
            assert await resp.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
        async with http.post(f"{base}/sendMessage", json={"chat_id": CHAT, "text": "j"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["result"]["text"] == "j"
        async with http.get(f"{base}/sendMessage", params={"chat_id": CHAT, "text": "g"}) as resp:
            assert (await resp.json())["result"]["message_id"] == 2


@pytest.mark.slow
async def test_long_polling_semantics(fake_tg: FakeTelegram, bot: Bot) -> None:
    """getUpdates waits for an update, returns promptly, and offset confirms."""
    started = time.monotonic()
    assert await bot.get_updates(timeout=0) == []
    assert time.monotonic() - started < 1.0

    poll = asyncio.create_task(bot.get_updates(timeout=10))
    await fake_tg.wait_for_call("getUpdates", count=2)
    update_id = fake_tg.push_message(CHAT, USER, "/status now")
    updates = await asyncio.wait_for(poll, 3)
    assert [u.update_id for u in updates] == [update_id]
    message = updates[0].message
    assert message is not None and message.text == "/status now"
    assert message.entities is not None and message.entities[0].type == "bot_command"
    assert message.entities[0].length == len("/status")

    again = await bot.get_updates(timeout=0)
    assert [u.update_id for u in again] == [update_id]  # not confirmed yet
    assert await bot.get_updates(offset=update_id + 1, timeout=0) == []
    assert fake_tg.pending_updates == []


@pytest.mark.slow
async def test_concurrent_pollers_and_stop(fake_tg: FakeTelegram, bot: Bot) -> None:
    """A second getUpdates terminates the first with 409; stop() answers pending polls."""
    first = asyncio.create_task(bot.get_updates(timeout=20))
    await fake_tg.wait_for_call("getUpdates")
    second = asyncio.create_task(bot.get_updates(timeout=20))
    with pytest.raises(TelegramConflictError, match="terminated by other getUpdates request"):
        await asyncio.wait_for(first, 3)
    await fake_tg.wait_for_call("getUpdates", count=2)
    started = time.monotonic()
    await fake_tg.stop()
    assert await asyncio.wait_for(second, 3) == []
    assert time.monotonic() - started < 2.0


@pytest.mark.slow
async def test_offline_modes(fake_tg: FakeTelegram, bot: Bot) -> None:
    """Offline drops connections (network error) or answers 502 (server error)."""
    fake_tg.set_offline(True)
    with pytest.raises(TelegramNetworkError):
        await bot.send_message(CHAT, "lost")
    fake_tg.set_offline(True, mode="502")
    with pytest.raises(TelegramServerError, match="Bad Gateway"):
        await bot.send_message(CHAT, "lost")
    fake_tg.set_offline(False)
    poll = asyncio.create_task(bot.get_updates(timeout=20))
    await fake_tg.wait_for_call("getUpdates")
    fake_tg.set_offline(True)  # a pending long poll is cut off too
    with pytest.raises(TelegramNetworkError):
        await asyncio.wait_for(poll, 3)
    fake_tg.set_offline(False)
    await bot.send_message(CHAT, "back")
    assert [m.text for m in fake_tg.messages(CHAT)] == ["back"]
    assert [c.status for c in fake_tg.calls_to("sendMessage")] == [0, 502, 200]
    assert len(fake_tg.calls_to("sendMessage", ok=True)) == 1


def build_router() -> Router:
    """Handlers for the polling test (built per dispatcher)."""
    router = Router()

    @router.message(CommandStart())
    async def on_start(message: Message) -> None:
        await message.answer("<b>Welcome</b>", reply_markup=keyboard(("Status", "status")))

    @router.callback_query(F.data == "status")
    async def on_status(query: CallbackQuery) -> None:
        await query.answer("Engine OK")
        if isinstance(query.message, Message):
            await query.message.edit_text("Engine: <code>running</code>")

    return router


@pytest.mark.slow
async def test_dispatcher_polling_round_trip(fake_tg: FakeTelegram) -> None:
    """A real Dispatcher polls the fake, handles /start and a button press, and stops cleanly."""
    bot = Bot(
        fake_tg.token,
        session=AiohttpSession(api=TelegramAPIServer.from_base(fake_tg.base)),
        default=DefaultBotProperties(parse_mode="HTML"),
    )
    dispatcher = Dispatcher()
    dispatcher.include_router(build_router())
    polling = asyncio.create_task(
        dispatcher.start_polling(bot, handle_signals=False, polling_timeout=5)
    )
    try:
        await fake_tg.wait_for_call("getUpdates")
        fake_tg.push_message(CHAT, USER, "/start", username="alice")
        [welcome] = await fake_tg.wait_for(lambda: fake_tg.messages(CHAT), 5)
        assert welcome.text == "Welcome" and welcome.buttons[0]["callback_data"] == "status"

        fake_tg.push_callback(CHAT, USER, welcome.message_id, "status")
        await fake_tg.wait_for(lambda: fake_tg.messages(CHAT)[0].edits == 1, 5)
        [edited] = fake_tg.messages(CHAT)
        assert edited.text == "Engine: running" and edited.entities[0]["type"] == "code"
        assert list(fake_tg.callback_answers.values()) == [{"text": "Engine OK"}]
        allowed = fake_tg.calls_to("getUpdates")[-1].params["allowed_updates"]
        assert set(allowed) == {"callback_query", "message"}
    finally:
        await dispatcher.stop_polling()
        await asyncio.wait_for(polling, 5)
        await bot.session.close()


async def test_webhook_mode(fake_tg: FakeTelegram, bot: Bot) -> None:
    """setWebhook blocks getUpdates with 409; deliveries carry the secret header."""
    received: list[int] = []
    dispatcher = Dispatcher()
    router = Router()

    @router.message()
    async def on_message(message: Message) -> SendMessage:
        received.append(message.message_id)
        return SendMessage(chat_id=message.chat.id, text=f"<b>pong</b> {message.text}")

    dispatcher.include_router(router)
    app = web.Application()
    SimpleRequestHandler(
        dispatcher, bot, secret_token="s3cret-token", handle_in_background=False
    ).register(app, path="/tg")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/tg"
        assert await bot.set_webhook(url, secret_token="s3cret-token") is True
        info = await bot.get_webhook_info()
        assert info.url == url
        with pytest.raises(TelegramConflictError, match="webhook is active"):
            await bot.get_updates()

        update_id = fake_tg.push_message(CHAT, USER, "hello")
        assert await fake_tg.deliver_to_webhook(update_id, secret_token="wrong") == 401
        assert (await bot.get_webhook_info()).pending_update_count == 1
        assert await fake_tg.deliver_pending() == [200]
        assert received == [1]
        [reply] = fake_tg.calls_to("sendMessage")  # the method returned in the webhook response
        assert reply.source == "webhook_reply" and reply.ok
        assert [m.text for m in fake_tg.messages(CHAT)] == ["<b>pong</b> hello"]
        assert (await bot.get_webhook_info()).pending_update_count == 0

        assert await bot.delete_webhook() is True
        assert await bot.get_updates(timeout=0) == []
    finally:
        await runner.cleanup()
