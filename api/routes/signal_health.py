"""The Signal Health page (runbook §5, ``FRONTEND_SIGNAL_HEALTH_ENABLED``): HTML and JSON.

``GET /signal-health`` is a server-rendered page (no scripts, no front-end build) that reloads
itself every ``SIGNAL_HEALTH_REFRESH_SECONDS``; ``GET /api/v1/signal-health`` is the same report as
JSON. Both need a viewer token and both are absent (the ordinary 404) while the flag is off.

A browser cannot send a bearer header, so the page signs in with a small form: ``POST
/signal-health`` takes the token in the body (or an ``Authorization`` header), checks it, moves it
into an HttpOnly, SameSite=Strict cookie scoped to this page and redirects to the page. A token
is never taken from the URL (``?token=`` is refused): addresses end up in proxy logs and browser
history. The cookie is ``Secure`` when the request came over TLS, which behind a reverse proxy
means an ``X-Forwarded-Proto: https`` from one of ``TRUSTED_PROXIES`` (see ``api.app``). The
cookie holds the token itself, so expiry and revocation apply on the next reload.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Cookie, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api.deps import ActorDep, PlaneDep, caller_of
from api.schemas import ErrorBody
from core.control_plane import ControlPlane
from core.errors import PermissionDenied, Unauthenticated
from core.flags import FlagService
from core.models import Role
from core.ops.signal_health import Freshness, SignalHealth
from core.security.access import require

FLAG = "FRONTEND_SIGNAL_HEALTH_ENABLED"
PAGE = "/signal-health"
COOKIE = "lunia_signal_health"
COOKIE_MAX_AGE = 8 * 3600
FORM_TYPE = "application/x-www-form-urlencoded"
# The page's own policy: inline styles only, nothing else may load, run or frame; its one form
# posts back to this origin.
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_HTML_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": what}
    for code, what in (
        (400, "a token in the URL, or a body that is not a form"),
        (401, "the sign-in form"),
        (403, "the token's role may not see the page"),
    )
}

router = APIRouter(tags=["signal health"])


def _require_flag(flags: FlagService) -> None:
    """Behave exactly like an unknown route while the page is switched off."""
    if not flags.enabled(FLAG):
        raise HTTPException(404, "Not Found")


@router.get(
    "/api/v1/signal-health",
    response_model=SignalHealth,
    responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)
async def signal_health_json(plane: PlaneDep, actor: ActorDep) -> SignalHealth:
    """Per-core signal freshness and rates, venues, assistant split, open incidents (viewer)."""
    _require_flag(plane.flags)
    require(actor, Role.VIEWER, "the signal health report")
    return await plane.signal_health.report()


@router.get(PAGE, response_class=HTMLResponse, responses=_HTML_RESPONSES)
async def signal_health_page(
    request: Request, cookie: Annotated[str | None, Cookie(alias=COOKIE)] = None
) -> Response:
    """The page; authenticate with a bearer header or the cookie the sign-in form sets."""
    plane: ControlPlane = request.app.state.plane
    _require_flag(plane.flags)
    if "token" in request.query_params:
        return _token_in_url()
    presented = _bearer(request) or cookie
    if not presented:
        return _sign_in(401, "")
    refused = await _refusal(plane, request, presented)
    if refused is not None:
        return refused
    report = await plane.signal_health.report()
    return _html(200, render_page(report))


@router.post(
    PAGE,
    response_class=HTMLResponse,
    status_code=303,
    responses=_HTML_RESPONSES,
    openapi_extra={
        "requestBody": {
            "content": {
                FORM_TYPE: {
                    "schema": {
                        "type": "object",
                        "properties": {"token": {"type": "string", "format": "password"}},
                    }
                }
            }
        }
    },
)
async def signal_health_sign_in(request: Request) -> Response:
    """Sign in from the form (token in the body, or a bearer header): the token moves into the
    page's cookie and the browser is sent to the page."""
    plane: ControlPlane = request.app.state.plane
    _require_flag(plane.flags)
    if "token" in request.query_params:
        return _token_in_url()
    token = await _form_token(request)
    if token is None:
        return _page_error(400, "Not a form", f"Send the token as {FORM_TYPE} field 'token'.")
    presented = token or _bearer(request)
    if not presented:
        return _sign_in(401, "")
    refused = await _refusal(plane, request, presented)
    if refused is not None:
        return refused
    redirect = RedirectResponse(PAGE, status_code=303)
    redirect.set_cookie(
        COOKIE,
        presented,
        max_age=COOKIE_MAX_AGE,
        path=PAGE,
        httponly=True,
        samesite="strict",
        # TLS to us, or to a trusted proxy that said so (ProxyHeadersMiddleware set the scheme).
        secure=request.url.scheme == "https",
    )
    redirect.headers["cache-control"] = "no-store"
    return redirect


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() or None if header[:7].lower() == "bearer " else None


async def _form_token(request: Request) -> str | None:
    """The form's ``token`` field ("" when absent); None when the body is not a form."""
    body = await request.body()
    if not body:
        return ""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM_TYPE:
        return None
    try:
        fields = parse_qs(body.decode("ascii"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return None
    return (fields.get("token") or [""])[0].strip()


async def _refusal(plane: ControlPlane, request: Request, presented: str) -> Response | None:
    """The page to answer instead when ``presented`` may not see the page (None: it may)."""
    try:
        actor = await plane.authenticator.authenticate(presented, caller=caller_of(request))
        require(actor, Role.VIEWER, "the signal health page")
    except Unauthenticated as exc:
        response = _sign_in(401, f"{exc.message}.")
        response.delete_cookie(COOKIE, path=PAGE)
        return response
    except PermissionDenied as exc:
        return _page_error(403, "Not allowed", exc.message)
    return None


_SIGN_IN = (
    "Paste an API token (a viewer token is enough; an admin can issue a temporary one with "
    "/token issue NAME viewer 8h in a private chat with the bot). Scripts may send it as an "
    "Authorization: Bearer header instead."
)
_FORM = (
    f'<form method="post" action="{PAGE}"><label>Token <input type="password" name="token" '
    'autocomplete="off" required></label> <button type="submit">Open</button></form>'
)


def _sign_in(status: int, problem: str) -> HTMLResponse:
    text = f"{problem} {_SIGN_IN}".strip()
    body = f"<h1>Sign in</h1><p>{escape(text)}</p>{_FORM}"
    return _html(status, _document("Sign in", body, 0))


def _token_in_url() -> HTMLResponse:
    text = (
        "Tokens are not accepted in the URL: addresses end up in proxy logs and browser "
        "history, so consider this one exposed and have it revoked. Sign in with the form "
        "below (it sends the token in the request body) or an Authorization: Bearer header."
    )
    body = f"<h1>Not in the URL</h1><p>{escape(text)}</p>{_FORM}"
    return _html(400, _document("Not in the URL", body, 0))


def _html(status: int, body: str) -> HTMLResponse:
    return HTMLResponse(
        body,
        status_code=status,
        headers={"content-security-policy": PAGE_CSP, "cache-control": "no-store"},
    )


def _page_error(status: int, title: str, message: str) -> HTMLResponse:
    return _html(status, _document(title, f"<h1>{escape(title)}</h1><p>{escape(message)}</p>", 0))


# -- rendering ------------------------------------------------------------------------------

_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;padding:12px;background:#111;color:#eee}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;width:100%}td,th{padding:4px 6px;border-bottom:1px solid #333;
text-align:left;vertical-align:top}th{color:#aaa;font-weight:normal}
.ok,.fresh{color:#5d5}.degraded,.stale,.warning{color:#fc3}.crashing,.critical,.down{color:#f55}
.off,.muted,.info{color:#999}.num{text-align:right;font-variant-numeric:tabular-nums}
"""


def _document(title: str, body: str, refresh: int) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"{meta}<title>{escape(title)} · Lunia</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _row(cells: list[str], attrs: str = "") -> str:
    return f"<tr{attrs}>" + "".join(cells) + "</tr>"


def _td(text: object, cls: str = "") -> str:
    klass = f' class="{escape(cls)}"' if cls else ""
    return f"<td{klass}>{escape(str(text))}</td>"


def _table(headers: list[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render_page(report: SignalHealth) -> str:
    """The whole page for one report (every dynamic value escaped)."""
    engine = report.engine
    mode = engine.mode.value
    header = (
        f'<h1>Signal Health <span class="{report.status}" id="status">{report.status}</span></h1>'
        f'<p class="muted">engine {escape(mode)} on {escape(engine.active_venue)} · '
        f"generated {_when(report.generated_at)} · reloads every {report.refresh_seconds} s</p>"
    )
    cores = _table(
        ["core", "signal", "last tick", "last signal", "ticks/min", "signals/min", "error"],
        [
            _row(
                [
                    _td(c.name + (" (essential)" if c.essential else "")),
                    _td(c.freshness.value, c.freshness.value),
                    _td(_age(c.tick_age_seconds)),
                    _td(_age(c.signal_age_seconds)),
                    _td(f"{c.ticks_per_minute:.1f}", "num"),
                    _td(f"{c.signals_per_minute:.1f}", "num"),
                    _td(
                        c.last_error or "", "crashing" if c.freshness is Freshness.CRASHING else ""
                    ),
                ],
                f' data-core="{escape(c.name)}" data-freshness="{c.freshness.value}"',
            )
            for c in report.cores
        ],
        "no cores registered",
    )
    venues = _table(
        ["venue", "role", "mode", "health", "failures", "last probe", "error"],
        [
            _row(
                [
                    _td(v.name + (" ◀ active" if v.active else "")),
                    _td(v.role),
                    _td(v.mode.value),
                    _td(
                        "unknown" if v.healthy is None else "ok" if v.healthy else "down",
                        "muted" if v.healthy is None else "ok" if v.healthy else "down",
                    ),
                    _td(v.consecutive_failures, "num"),
                    _td(_when(v.last_probe_at)),
                    _td(v.last_error or ""),
                ],
                f' data-venue="{escape(v.name)}"',
            )
            for v in report.venues
        ],
        "no venues configured",
    )
    a = report.assistant
    share = "no answers yet" if a.llm_share is None else f"{a.llm_share:.0%} from the LLM"
    assistant = (
        f'<p id="assistant">answering with <b>{escape(a.answering_with)}</b> '
        f"(circuit {escape(a.circuit.value)}) · {a.llm_answers} LLM / {a.fallback_answers} "
        f"fallback answers since start · {escape(share)}</p>"
    )
    counts = ", ".join(f"{n} {s.value}" for s, n in report.open_incidents.items() if n) or "none"
    incidents = _table(
        ["#", "severity", "state", "title", "source", "count", "open for"],
        [
            _row(
                [
                    _td(i.id),
                    _td(i.severity.value, i.severity.value),
                    _td(i.state.value),
                    _td(i.title),
                    _td(i.source),
                    _td(i.count, "num"),
                    _td(_age(i.age_seconds).removesuffix(" ago")),
                ],
                f' data-incident="{i.id}"',
            )
            for i in report.incidents
        ],
        "no open incidents",
    )
    body = (
        f"{header}<h2>Cores</h2>{cores}<h2>Venues</h2>{venues}<h2>Assistant</h2>{assistant}"
        f"<h2>Open incidents ({escape(counts)})</h2>{incidents}"
    )
    return _document("Signal Health", body, report.refresh_seconds)
