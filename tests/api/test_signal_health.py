"""The Signal Health page and report: real data, auth, the flag, and a real headless Chromium."""

from __future__ import annotations

import asyncio
import shutil
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from pydantic import ValidationError

from api.app import create_app
from api.routes.signal_health import COOKIE
from core.control_plane import ControlPlane
from core.models import Actor, Role, utcnow
from core.ops.signal_health import Freshness
from tests.conftest import (
    ADMIN_TOKEN,
    VIEWER_TOKEN,
    WEBHOOK_TOKEN,
    PlaneFactory,
    SettingsFactory,
    auth,
)
from tests.fakes.loopback import LoopbackServer
from tests.support.cores import BuyEveryTick, CrashTwice
from tests.support.http import serve
from tests.support.payloads import am_alert, am_payload

QUIET = {"core_tick_seconds": 3600, "venue_probe_seconds": 3600}
ADMIN = Actor.system("test")


async def _with_data(plane: ControlPlane, client: httpx.AsyncClient) -> None:
    """A signalling core, a crashing core, a switched-off core, an incident, an answer."""
    plane.trading.register(BuyEveryTick())
    plane.trading.register(CrashTwice())
    await plane.trading.run_core("buyer")
    await plane.trading.run_core("crashy")
    await plane.trading.toggle_core("momentum", ADMIN, enabled=False, confirm=True)
    sent = await client.post(
        "/api/v1/alerts/alertmanager",
        json=am_payload(am_alert("ExchangeLatencyHigh", severity="warning")),
        headers=auth(WEBHOOK_TOKEN),
    )
    assert sent.status_code == 200, sent.text
    await plane.assistant.ask("what is the status?", ADMIN)


@pytest.fixture
async def plane(make_plane: PlaneFactory) -> ControlPlane:
    return await make_plane(**QUIET)


@pytest.fixture
async def client(plane: ControlPlane) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(plane))
    return httpx.AsyncClient(transport=transport, base_url="http://lunia.test")


async def test_report_shows_cores_venues_assistant_and_incidents(
    plane: ControlPlane, client: httpx.AsyncClient
) -> None:
    await _with_data(plane, client)
    response = await client.get("/api/v1/signal-health", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 200, response.text
    report = response.json()
    cores = {c["name"]: c for c in report["cores"]}
    assert cores["buyer"]["freshness"] == "fresh"
    assert cores["buyer"]["last_signal_at"] is not None
    assert cores["buyer"]["signals_per_minute"] > 0
    assert cores["buyer"]["ticks_per_minute"] > 0
    assert cores["crashy"]["freshness"] == "crashing"
    assert cores["crashy"]["last_error"] == "RuntimeError: boom 1"
    assert cores["momentum"]["freshness"] == "off"
    assert cores["mean_reversion"]["freshness"] == "stale"  # running, but has never ticked
    assert report["status"] == "degraded"
    assert {v["name"] for v in report["venues"]} == {"binance", "okx"}
    assert report["assistant"] == {
        "answering_with": "fallback",
        "circuit": "closed",
        "llm_answers": 0,
        "fallback_answers": 1,
        "llm_share": 0.0,
    }
    titles = {i["title"]: i for i in report["incidents"]}
    assert set(titles) == {"ExchangeLatencyHigh", "Core crashy crashed"}
    assert titles["ExchangeLatencyHigh"]["state"] == "triggered"
    assert report["open_incidents"]["warning"] == 2  # the alert, and a non-essential core's crash


async def test_freshness_goes_stale_after_three_missed_ticks(plane: ControlPlane) -> None:
    plane.trading.register(BuyEveryTick())
    await plane.trading.run_core("buyer")
    info = plane.trading.core("buyer")
    tick = plane.settings.core_tick_seconds
    soon = info.last_run_at + timedelta(seconds=tick * 3) if info.last_run_at else utcnow()
    assert plane.signal_health.freshness(info, soon) is Freshness.FRESH
    later = soon + timedelta(seconds=1)
    assert plane.signal_health.freshness(info, later) is Freshness.STALE


async def test_page_needs_a_token_and_the_form_moves_it_into_a_cookie(
    plane: ControlPlane, client: httpx.AsyncClient
) -> None:
    bare = await client.get("/signal-health")
    assert bare.status_code == 401
    assert '<form method="post" action="/signal-health">' in bare.text
    assert 'type="password" name="token"' in bare.text
    assert "text/html" in bare.headers["content-type"]
    assert "form-action 'self'" in bare.headers["content-security-policy"]

    wrong = await client.post("/signal-health", data={"token": "not-a-token-at-all-xxxxxx"})
    assert wrong.status_code == 401
    assert "invalid bearer token" in wrong.text

    handed = await client.post("/signal-health", data={"token": VIEWER_TOKEN})
    assert handed.status_code == 303
    assert handed.headers["location"] == "/signal-health"
    cookie = handed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/signal-health" in cookie
    assert "Secure" not in cookie  # plain HTTP from no trusted proxy
    assert handed.headers["cache-control"] == "no-store"

    page = await client.get("/signal-health")  # the client kept the cookie
    assert page.status_code == 200
    assert '<meta http-equiv="refresh" content="15">' in page.text
    assert "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]

    client.cookies.clear()
    assert (await client.get("/signal-health")).status_code == 401
    header = await client.get("/signal-health", headers=auth(ADMIN_TOKEN))
    assert header.status_code == 200
    by_header = await client.post("/signal-health", headers=auth(VIEWER_TOKEN))
    assert by_header.status_code == 303 and COOKIE in by_header.headers["set-cookie"]


async def test_a_token_in_the_url_is_refused_and_points_to_the_form(
    client: httpx.AsyncClient,
) -> None:
    for response in (
        await client.get("/signal-health", params={"token": VIEWER_TOKEN}),
        await client.post("/signal-health", params={"token": VIEWER_TOKEN}),
        # Not even alongside a good header: the URL is where the token must never be.
        await client.get("/signal-health", params={"token": "x"}, headers=auth(VIEWER_TOKEN)),
    ):
        assert response.status_code == 400
        assert "not accepted in the URL" in response.text
        assert '<form method="post" action="/signal-health">' in response.text
        assert "set-cookie" not in response.headers
        assert VIEWER_TOKEN not in response.text


async def test_a_body_that_is_not_a_form_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/signal-health", json={"token": VIEWER_TOKEN})
    assert response.status_code == 400
    assert "set-cookie" not in response.headers


async def _sign_in(plane: ControlPlane, client_host: str, proto: str | None) -> str:
    """The Set-Cookie of a form sign-in arriving from ``client_host`` over plain HTTP."""
    app = create_app(plane)
    transport = httpx.ASGITransport(app=app, client=(client_host, 40000))
    headers = {"x-forwarded-proto": proto} if proto else {}
    async with httpx.AsyncClient(transport=transport, base_url="http://lunia.test") as c:
        response = await c.post("/signal-health", data={"token": VIEWER_TOKEN}, headers=headers)
    assert response.status_code == 303, response.text
    return response.headers["set-cookie"]


@pytest.mark.slow
async def test_cookie_is_secure_over_tls_from_a_trusted_proxy_only(
    make_plane: PlaneFactory,
) -> None:
    trusting = await make_plane(trusted_proxies="10.0.0.0/8,192.0.2.7", **QUIET)
    assert "Secure" in await _sign_in(trusting, "10.1.2.3", "https")
    assert "Secure" in await _sign_in(trusting, "192.0.2.7", "https")
    assert "Secure" not in await _sign_in(trusting, "10.1.2.3", "http")
    # Anyone else saying "https" is not believed.
    assert "Secure" not in await _sign_in(trusting, "198.51.100.9", "https")
    # By default no proxy is trusted, not even loopback.
    default = await make_plane(**QUIET)
    assert "Secure" not in await _sign_in(default, "127.0.0.1", "https")
    # TLS straight to the app needs no proxy to say so.
    transport = httpx.ASGITransport(app=create_app(default))
    async with httpx.AsyncClient(transport=transport, base_url="https://lunia.test") as c:
        direct = await c.post("/signal-health", data={"token": VIEWER_TOKEN})
    assert "Secure" in direct.headers["set-cookie"]


def test_trusted_proxies_must_be_ips_or_networks(make_settings: SettingsFactory) -> None:
    assert make_settings(trusted_proxies=" 10.0.0.0/8, ::1 ").trusted_proxies == [
        "10.0.0.0/8",
        "::1",
    ]
    assert make_settings().trusted_proxies == []
    with pytest.raises(ValidationError, match="expected comma-separated IPs or CIDRs"):
        make_settings(trusted_proxies="proxy.internal")


async def test_a_revoked_temporary_token_stops_the_page_on_its_next_reload(
    plane: ControlPlane, client: httpx.AsyncClient
) -> None:
    issued = await plane.temporary_tokens.issue(ADMIN, name="wallboard", role=Role.VIEWER, ttl="1h")
    handed = await client.post("/signal-health", data={"token": issued.value.get_secret_value()})
    assert handed.status_code == 303
    assert (await client.get("/signal-health")).status_code == 200
    await plane.temporary_tokens.revoke(ADMIN, issued.token.id)
    refused = await client.get("/signal-health")
    assert refused.status_code == 401
    assert "token revoked" in refused.text


async def test_everything_is_escaped(plane: ControlPlane, client: httpx.AsyncClient) -> None:
    sent = await client.post(
        "/api/v1/alerts/alertmanager",
        json=am_payload(am_alert("<script>alert(1)</script>")),
        headers=auth(WEBHOOK_TOKEN),
    )
    assert sent.status_code == 200
    page = await client.get("/signal-health", headers=auth(VIEWER_TOKEN))
    assert "<script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


async def test_absent_while_the_flag_is_off(plane: ControlPlane, client: httpx.AsyncClient) -> None:
    unknown = await client.get("/no-such-page", headers=auth(VIEWER_TOKEN))
    await plane.flags.set("FRONTEND_SIGNAL_HEALTH_ENABLED", False, ADMIN)
    for path in ("/signal-health", "/api/v1/signal-health"):
        gone = await client.get(path, headers=auth(VIEWER_TOKEN))
        assert gone.status_code == 404
        assert gone.json() == unknown.json()
    await plane.flags.set("FRONTEND_SIGNAL_HEALTH_ENABLED", True, ADMIN)
    assert (await client.get("/signal-health", headers=auth(VIEWER_TOKEN))).status_code == 200


def _chromium_dom(url: str, profile: Path) -> str:
    """What headless Chromium shows for ``url`` after redirects (the rendered DOM)."""
    import subprocess

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make system-deps` installs it"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=2000",
        "--dump-dom",
    ]
    done = subprocess.run(  # noqa: S603
        [chromium, *flags, url], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class SignInHelper(LoopbackServer):
    """A page on another loopback port (the same site) that submits the sign-in form, as a
    person pasting the token would: headless Chromium cannot type."""

    name = "sign-in page"
    form: tuple[str, str] = ("", "")

    def build_app(self) -> web.Application:
        """``GET /``: the form, submitted on load."""

        async def page(request: web.Request) -> web.Response:
            api, token = self.form
            html = (
                f'<form method="post" action="{api}/signal-health">'
                f'<input name="token" value="{token}"></form>'
                "<script>document.forms[0].submit()</script>"
            )
            return web.Response(text=html, content_type="text/html")

        app = web.Application()
        app.router.add_get("/", page)
        return app


@pytest.mark.slow
async def test_page_renders_real_data_in_headless_chromium(
    plane: ControlPlane, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    await _with_data(plane, client)
    async with serve(plane) as url, SignInHelper() as helper:

        async def sign_in_page(api: str, token: str) -> str:
            helper.form = (api, token)
            return f"{helper.origin}/"

        dom = await asyncio.to_thread(
            _chromium_dom, await sign_in_page(url, VIEWER_TOKEN), tmp_path / "chromium"
        )
        assert "<h1>Signal Health" in dom
        assert 'data-core="buyer" data-freshness="fresh"' in dom
        assert 'data-core="crashy" data-freshness="crashing"' in dom
        assert 'data-core="momentum" data-freshness="off"' in dom
        assert 'data-venue="binance"' in dom and "◀ active" in dom
        assert "ExchangeLatencyHigh" in dom
        assert "0 LLM / 1 fallback answers since start" in dom
        assert VIEWER_TOKEN not in dom

        await plane.flags.set("FRONTEND_SIGNAL_HEALTH_ENABLED", False, ADMIN)
        gone = await asyncio.to_thread(
            _chromium_dom, await sign_in_page(url, VIEWER_TOKEN), tmp_path / "chromium2"
        )
        assert "Signal Health" not in gone
        assert "no such endpoint" in gone
